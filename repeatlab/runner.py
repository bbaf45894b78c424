"""Run a whole study: `repeatlab run --local --config study.yaml` (what `make demo` calls).

The local run goes through KFP's own local runner (`kfp.local.SubprocessRunner(use_venv=False)`), so it executes the
same compiled DAG, components and artifacts as a cluster run, on this machine's CPU. Large data (corpus shards,
plans, checkpoints) lives at the study's storage root (file://, s3://, gs://); KFP's pipeline root only holds the
small step artifacts and must be a local folder (a gs:// pipeline root silently becomes a folder named `gs:`).
Known local quirks, handled here: loops run at most 2 iterations at a time; ints inside list/dict parameters arrive as
floats (the grid is passed as run URLs, strings); container components are rejected (training runs torchrun as a
subprocess of a Python component); kfp-kubernetes settings are ignored.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import dataclasses
import os
import re
import sys
import time
import warnings

from repeatlab import config as config_lib
from repeatlab import storage
from repeatlab.errors import RepeatlabError


class PipelineRunError(RepeatlabError):
    """A pipeline run finished with a failed step."""


# Steps whose failure comes from their inputs (config, corpus, plan): rerunning them unchanged fails the same way.
INPUT_STEPS = ("prepare", "plan-grid", "plan_grid", "mix")


def _rerun_advice(task: str, root: str) -> str:
    if any(step in task for step in INPUT_STEPS):
        return ("this step checks its inputs, so a rerun fails the same way until the error in its log above is "
                f"fixed; finished points are kept in {root}/runs")
    return (f"finished points are kept in {root}/runs and a rerun resumes the rest from their last checkpoints "
            "(step logs above)")


@contextlib.contextmanager
def print_restored():
    """Put builtins.print back after a KFP local run. kfp.local indents print() while a task runs
    (kfp/local/logging_utils.py, indented_print) and restores the function it saw on entry; the tasks of a ParallelFor
    run in threads, so their restores interleave and an indented print outlives the run (every later line of the
    process started with four spaces)."""
    original = builtins.print
    try:
        yield
    finally:
        builtins.print = original


def run_local(cfg: config_lib.StudyConfig, *, pipeline_root: str | None = None, log=print) -> dict:
    """Run the study through the KFP local runner; returns {status, report, study, seconds}."""
    import kfp.local

    from repeatlab.grid import study_url
    from repeatlab.pipelines.repetition_grid import build_pipeline

    # Every step runs in a subprocess whose working folder is not guaranteed: make the storage root absolute.
    cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root=storage.normalize_root(cfg.storage.root)))
    storage.configure(cfg.storage.options, anonymous=cfg.storage.anonymous)
    if pipeline_root is None:
        base = storage.local_path(cfg.storage.root) if storage.is_local(cfg.storage.root) else os.path.abspath(".repeatlab")
        pipeline_root = os.path.join(base, "kfp-local", cfg.name)
    elif not storage.is_local(pipeline_root):
        raise config_lib.ConfigError(f"--pipeline-root: {pipeline_root!r} is not allowed: the KFP local runner needs "
                                     "a local folder (keep large data at storage.root instead)")
    os.makedirs(pipeline_root, exist_ok=True)
    # The local runner warns on every task that its cluster settings (images, limits) are ignored: known, by design.
    warnings.filterwarnings("ignore", module=r"kfp\.local\..*")
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root,
                   raise_on_error=True)
    pipeline = build_pipeline(cfg)
    started = time.time()
    log(f"run: study {cfg.name!r} at {cfg.storage.root} through the KFP local runner (artifacts in {pipeline_root})")
    study = study_url(cfg.storage.root, cfg.name)
    report = storage.join(study, "report", "index.html")
    try:
        # The local orchestrator lets every submitted loop iteration finish before it reports a failed one, so one
        # failing point does not stop the others.
        with print_restored():
            pipeline(study_config=cfg.to_json())
    except RuntimeError as exc:
        failed = re.search(r"Inner task failed: (.*?)\.?$", re.sub(r"\x1b\[[0-9;]*m", "", str(exc)))
        task = failed.group(1) if failed else ""
        raise PipelineRunError(
            f"study {cfg.name!r}: the pipeline failed after {time.time() - started:.0f} s"
            + (f" in {task}" if task else "") + "; " + _rerun_advice(task, cfg.storage.root)
        ) from exc
    seconds = time.time() - started
    if not storage.exists(report):
        raise PipelineRunError(f"study {cfg.name!r}: the pipeline finished but wrote no report at {report}")
    return {"status": "SUCCEEDED", "study": study, "report": report, "seconds": round(seconds, 1),
            "pipeline_root": pipeline_root}


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="repeatlab run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="study YAML")
    parser.add_argument("--local", action="store_true", required=True,
                        help="run through the KFP local runner on this machine (use `repeatlab submit` for a cluster)")
    parser.add_argument("--root", default=None, help="override storage.root (file://, s3://, gs://)")
    parser.add_argument("--pipeline-root", default=None, help="local folder for KFP's step artifacts")
    args = parser.parse_args(argv)
    cfg = config_lib.load(args.config)
    if args.root:
        cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root=args.root))
        config_lib.validate(cfg)
    result = run_local(cfg, pipeline_root=args.pipeline_root, log=lambda m: print(m, file=sys.stderr))
    print(f"study {cfg.name} finished in {result['seconds']:.0f} s")
    print(f"report: {result['report']}")
    return 0
