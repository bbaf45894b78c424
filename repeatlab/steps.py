"""The study's steps as plain functions: what each KFP component does, without KFP.

Each step takes the study config (YAML text, as the pipeline passes it) and URLs in the study's storage, is
idempotent through content addressing (a finished corpus, plan, run or eval is reused, never recomputed), and returns
small JSON-able summaries. The components in components/ are thin wrappers over these; `benchmarks/` times the
same steps called directly against the pipeline to measure orchestration overhead.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from repeatlab import layout, logs, storage
from repeatlab.config import StudyConfig, loads
from repeatlab.errors import StorageError, TrainError
from repeatlab.records import Done, EvalRecord, Execution, Point

log = logging.getLogger(__name__)


def load_study(study_config: str) -> StudyConfig:
    logs.ensure_configured()
    cfg = loads(study_config)
    storage.configure(cfg.storage.options, anonymous=cfg.storage.anonymous)
    return cfg


def prepare(study_config: str) -> dict:
    """Prepare (or reuse) the study's corpus; returns {corpus_id, corpus_url, manifest}."""
    from repeatlab.corpus import prepare_corpus

    cfg = load_study(study_config)
    manifest = prepare_corpus(cfg.corpus, cfg.storage.root)
    return {
        "corpus_id": manifest["corpus_id"],
        "corpus_url": layout.corpus_url(cfg.storage.root, manifest["corpus_id"]),
        "manifest": manifest,
    }


def plan_grid(study_config: str, corpus_url: str) -> list[str]:
    """Write every point's point.json and the study's points.json; returns the run URLs, in grid order."""
    from repeatlab import grid
    from repeatlab.corpus import load_manifest

    cfg = load_study(study_config)
    manifest = load_manifest(corpus_url)
    points = grid.plan_grid(cfg, manifest, corpus_url)
    return [layout.run_url(cfg.storage.root, p["point_id"]) for p in points]


def mix(run_url: str) -> dict:
    logs.ensure_configured()
    from repeatlab.mix import mix_run

    return mix_run(run_url)


def is_trained(run_url: str) -> bool:
    return layout.Run(run_url).is_trained()


def trainer_env() -> dict[str, str]:
    """The trainer's environment: one OpenMP thread per rank unless set (torchrun's own default for several ranks;
    train.threads_per_rank sets torch's threads inside the trainer)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def execution_of(run: layout.Run) -> dict:
    """The run's execution-only train settings: execution.json, else (runs planned before it existed) point.json."""
    if storage.exists(run.execution):
        return Execution.read(run.execution).train
    return Point.read(run.point).train


def train(
    run_url: str,
    nproc_per_node: int | None = None,
    evaluate: bool = True,
    *,
    nnodes: int | None = None,
    max_steps: int | None = None,
) -> dict:
    """Train one point with torchrun as a subprocess (resuming from its last checkpoint); skip a finished point.

    nproc_per_node / nnodes: default to the run's execution settings (execution.json), else 1.
    evaluate: the training processes also evaluate the final checkpoint, so the evaluate step that follows only
    publishes eval.json instead of starting torch and loading the model a second time.
    """
    logs.ensure_configured()
    from repeatlab.launch import torchrun_command

    run = layout.Run(run_url)
    if run.is_trained():
        log.info(f"train: {run_url} already trained; skipping")
        return {"skipped": True, **Done.read(run.done).to_json()}
    if nproc_per_node is None or nnodes is None:
        execution = execution_of(run)
        nproc_per_node = nproc_per_node or int(execution.get("nproc_per_node", 1))
        nnodes = nnodes or int(execution.get("nnodes", 1))
    command = torchrun_command(
        run_url,
        nproc_per_node=nproc_per_node,
        nnodes=nnodes,
        max_steps=max_steps,
        evaluate=evaluate,
    )
    _run_torchrun(command, run_url)
    if not run.is_trained():
        if max_steps is not None:  # testing: stopped as if preempted
            return {"skipped": False, "stopped_at": max_steps}
        raise TrainError(f"{run.done}: training exited cleanly but did not write it")
    return {"skipped": False, **Done.read(run.done).to_json()}


def _run_torchrun(command: list[str], what: str) -> None:
    """Run a trainer command (tied to this process); a non-zero exit is a TrainError naming `what` was trained."""
    from repeatlab.launch import run_trainer

    started = time.time()
    log.info("train: %s", " ".join(command))
    returncode = run_trainer(command, env=trainer_env(), stdout=sys.stdout, stderr=sys.stderr)
    if returncode != 0:
        raise TrainError(
            f"{what}: training exited with code {returncode} after "
            f"{time.time() - started:.0f} s (see the log above); a rerun resumes from the last checkpoint"
        )


def plan_packs(study_config: str) -> list[str]:
    """The study's training packs (repeatlab.packs, from the points.json plan_grid wrote), each a JSON list of run
    URLs: the items of the train fan-out. Strings, not lists: the local runner turns values inside list parameters
    into floats."""
    import json

    from repeatlab import grid

    cfg = load_study(study_config)
    points = storage.read_json(layout.Study(grid.study_url(cfg.storage.root, cfg.name)).points)
    return [json.dumps(pack["run_urls"]) for pack in grid.study_packs(cfg, points)]


def train_pack(
    run_urls: list[str],
    nproc_per_node: int | None = None,
    evaluate: bool = True,
) -> list[dict]:
    """Train the points of one pack together with torchrun as a subprocess; finished points are skipped (a pack
    whose points are all finished starts no process). One {"skipped", **done.json} per run URL."""
    if len(run_urls) == 1:
        return [train(run_urls[0], nproc_per_node=nproc_per_node, evaluate=evaluate)]
    logs.ensure_configured()
    from repeatlab.launch import torchrun_command

    todo = [url for url in run_urls if not is_trained(url)]
    for url in sorted(set(run_urls) - set(todo)):
        log.info(f"train: {url} already trained; skipping")
    if todo:
        nproc = nproc_per_node or int(execution_of(layout.Run(todo[0])).get("nproc_per_node", 1))
        command = torchrun_command(todo, nproc_per_node=nproc, evaluate=evaluate)
        _run_torchrun(command, " ".join(todo))
    results = []
    for url in run_urls:
        run = layout.Run(url)
        if not run.is_trained():
            raise TrainError(f"{run.done}: training exited cleanly but did not write it")
        results.append({"skipped": url not in todo, **Done.read(run.done).to_json()})
    return results


def evaluate(run_url: str) -> dict:
    """Evaluate a trained point (reusing an eval.json of the same final checkpoint)."""
    logs.ensure_configured()
    run = layout.Run(run_url)
    if storage.exists(run.eval) and run.is_trained():
        from repeatlab.errors import IntegrityError, RecordError
        from repeatlab.integrity import check_record

        try:
            record: dict | None = EvalRecord.from_json(
                check_record(run.eval, storage.read_json(run.eval)), where=run.eval
            ).to_json()
        except (IntegrityError, StorageError, RecordError) as exc:  # corrupt: evaluate again, never publish it
            log.info(f"evaluate: {exc}; evaluating again")
            record = None
        if record is not None and record.get("step") == Done.read(run.done).step:
            log.info(f"evaluate: {run_url} already evaluated; reusing eval.json")
            return record
    from repeatlab.evaluate import evaluate_run  # torch: only imported when there is something to evaluate

    return evaluate_run(run_url)


def run_point(run_url: str, nproc_per_node: int = 1) -> dict:
    """mix -> train -> evaluate for one point (what one ParallelFor iteration does)."""
    mix(run_url)
    train(run_url, nproc_per_node=nproc_per_node)
    return evaluate(run_url)


def analyze(study_config: str) -> dict:
    """Fit the study from the eval records in storage; writes and returns analysis.json."""
    from repeatlab import analyze as analyze_lib

    cfg = load_study(study_config)
    analysis = analyze_lib.run_analysis(cfg.storage.root, cfg.name)
    if analysis.get("missing"):
        log.info(f"analyze: {len(analysis['missing'])} points have no eval.json yet: the analysis is partial")
    return analysis


def report_title(study: str) -> str:
    """The report's title, the same from the pipeline and from `repeatlab report`."""
    return f"repeatlab study: {study}"


def report(study_config: str) -> dict:
    """Write the study report; returns the URLs of index.html, report.md and results.csv."""
    from repeatlab import analyze as analyze_lib
    from repeatlab.report import write_report

    cfg = load_study(study_config)
    study = layout.Study(layout.study_url(cfg.storage.root, cfg.name))
    analysis = storage.read_json(study.analysis)
    records, _ = analyze_lib.load_records(cfg.storage.root, cfg.name)
    paths = write_report(analysis, records, study.report, title=report_title(cfg.name))
    log.info(f"report: {paths['index.html']}")
    return paths


def run_study_directly(study_config: str) -> dict:
    """Every step in order in this process, no KFP: the baseline for the pipeline-overhead benchmark."""
    import json

    prepared = prepare(study_config)
    cfg = load_study(study_config)
    run_urls = plan_grid(study_config, prepared["corpus_url"])
    for run_url in run_urls:
        mix(run_url)
    for pack in logs.progress(plan_packs(study_config), desc="study", unit="pack"):
        train_pack(json.loads(pack), nproc_per_node=cfg.train.nproc_per_node)
    for run_url in run_urls:
        evaluate(run_url)
    analyze(study_config)
    return report(study_config)
