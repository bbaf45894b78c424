"""The study's steps as plain functions: what each KFP component does, without KFP.

Each step takes the study config (YAML text, as the pipeline passes it) and URLs in the study's storage, is
idempotent through content addressing (a finished corpus, plan, run or eval is reused, never recomputed), and returns
small JSON-able summaries. The components in components/ are thin wrappers over these; `benchmarks/` times the
same steps called directly against the pipeline to measure orchestration overhead.
"""

from __future__ import annotations

import os
import sys
import time

from repeatlab import storage
from repeatlab.config import StudyConfig, loads
from repeatlab.errors import StorageError, TrainError


def load_study(study_config: str) -> StudyConfig:
    cfg = loads(study_config)
    storage.configure(cfg.storage.options, anonymous=cfg.storage.anonymous)
    return cfg


def prepare(study_config: str, log=print) -> dict:
    """Prepare (or reuse) the study's corpus; returns {corpus_id, corpus_url, manifest}."""
    from repeatlab.corpus import corpus_url, prepare_corpus

    cfg = load_study(study_config)
    manifest = prepare_corpus(cfg.corpus, cfg.storage.root, log=log)
    return {"corpus_id": manifest["corpus_id"], "corpus_url": corpus_url(cfg.storage.root, manifest["corpus_id"]),
            "manifest": manifest}


def plan_grid(study_config: str, corpus_url: str) -> list[str]:
    """Write every point's point.json and the study's points.json; returns the run URLs, in grid order."""
    from repeatlab import grid
    from repeatlab.corpus import load_manifest

    cfg = load_study(study_config)
    manifest = load_manifest(corpus_url)
    points = grid.plan_grid(cfg, manifest, corpus_url)
    return [grid.run_url(cfg.storage.root, p["point_id"]) for p in points]


def mix(run_url: str, log=print) -> dict:
    from repeatlab.mix import mix_run

    return mix_run(run_url, log=log)


def is_trained(run_url: str) -> bool:
    return storage.exists(storage.join(run_url, "done.json"))


def train(run_url: str, nproc_per_node: int = 1, log=print, evaluate: bool = True) -> dict:
    """Train one point with torchrun as a subprocess (resuming from its last checkpoint); skip a finished point.

    evaluate: the training processes also evaluate the final checkpoint, so the evaluate step that follows only
    publishes eval.json instead of starting torch and loading the model a second time.
    """
    return train_pack([run_url], nproc_per_node=nproc_per_node, log=log, evaluate=evaluate)[0]


def plan_packs(study_config: str) -> list[str]:
    """The study's training packs (repeatlab.packs, from the points.json plan_grid wrote), each a JSON list of run
    URLs: the items of the train fan-out. Strings, not lists: the local runner turns values inside list parameters
    into floats."""
    import json

    from repeatlab import grid

    cfg = load_study(study_config)
    points = storage.read_json(storage.join(grid.study_url(cfg.storage.root, cfg.name), "points.json"))
    return [json.dumps(pack["run_urls"]) for pack in grid.study_packs(cfg, points)]


def train_pack(run_urls: list[str], nproc_per_node: int = 1, log=print, evaluate: bool = True) -> list[dict]:
    """Train the points of one pack together with torchrun as a subprocess; finished points are skipped (and a
    pack whose points are all finished starts no process). One {"skipped", **done.json} per run URL."""
    from repeatlab.launch import run_trainer, torchrun_command

    todo = [url for url in run_urls if not is_trained(url)]
    for url in run_urls:
        if url not in todo:
            log(f"train: {url} already trained; skipping")
    if todo:
        command = torchrun_command(todo, nproc_per_node=nproc_per_node, evaluate=evaluate)
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        started = time.time()
        log("train: " + " ".join(command))
        returncode = run_trainer(command, env=env, stdout=sys.stdout, stderr=sys.stderr)
        if returncode != 0:
            raise TrainError(f"{' '.join(todo)}: training exited with code {returncode} after "
                             f"{time.time() - started:.0f} s (see the log above); a rerun resumes from the last "
                             "checkpoint")
    results = []
    for url in run_urls:
        done_url = storage.join(url, "done.json")
        if not storage.exists(done_url):
            raise TrainError(f"{url}: training exited cleanly but wrote no done.json")
        results.append({"skipped": url not in todo, **storage.read_json(done_url)})
    return results


def evaluate(run_url: str, log=print) -> dict:
    """Evaluate a trained point (reusing an eval.json of the same final checkpoint)."""
    eval_url = storage.join(run_url, "eval.json")
    if storage.exists(eval_url) and is_trained(run_url):
        from repeatlab.errors import IntegrityError
        from repeatlab.integrity import check_record

        try:
            record = check_record(eval_url, storage.read_json(eval_url))
        except (IntegrityError, StorageError) as exc:  # corrupt: evaluate again rather than publish it
            log(f"evaluate: {exc}; evaluating again")
            record = {}
        done = storage.read_json(storage.join(run_url, "done.json"))
        if record.get("step") == done.get("step"):
            log(f"evaluate: {run_url} already evaluated; reusing eval.json")
            return record
    from repeatlab.evaluate import evaluate_run  # torch: only imported when there is something to evaluate

    return evaluate_run(run_url, log=log)


def run_point(run_url: str, nproc_per_node: int = 1, log=print) -> dict:
    """mix -> train -> evaluate for one point (what one ParallelFor iteration does)."""
    mix(run_url, log=log)
    train(run_url, nproc_per_node=nproc_per_node, log=log)
    return evaluate(run_url, log=log)


def analyze(study_config: str, log=print) -> dict:
    """Fit the study from the eval records in storage; writes and returns analysis.json."""
    from repeatlab import analyze as analyze_lib

    cfg = load_study(study_config)
    analysis = analyze_lib.run_analysis(cfg.storage.root, cfg.name)
    if analysis.get("missing"):
        log(f"analyze: {len(analysis['missing'])} points have no eval.json yet: the analysis is partial")
    return analysis


def report(study_config: str, log=print) -> dict:
    """Write the study report; returns the URLs of index.html, report.md and results.csv."""
    from repeatlab import analyze as analyze_lib
    from repeatlab import grid
    from repeatlab.report import write_report

    cfg = load_study(study_config)
    study = grid.study_url(cfg.storage.root, cfg.name)
    analysis = storage.read_json(storage.join(study, "analysis.json"))
    records, _ = analyze_lib.load_records(cfg.storage.root, cfg.name)
    paths = write_report(analysis, records, storage.join(study, "report"), title=f"repeatlab study: {cfg.name}")
    log(f"report: {paths['index.html']}")
    return paths


def run_study_directly(study_config: str, log=print) -> dict:
    """Every step in order in this process, no KFP: the baseline for the pipeline-overhead benchmark."""
    import json

    prepared = prepare(study_config, log=log)
    cfg = load_study(study_config)
    run_urls = plan_grid(study_config, prepared["corpus_url"])
    for run_url in run_urls:
        mix(run_url, log=log)
    for pack in plan_packs(study_config):
        train_pack(json.loads(pack), nproc_per_node=cfg.train.nproc_per_node, log=log)
    for run_url in run_urls:
        evaluate(run_url, log=log)
    analyze(study_config, log=log)
    return report(study_config, log=log)
