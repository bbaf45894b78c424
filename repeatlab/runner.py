"""Run a whole study: `repeatlab run --local --config study.yaml` (what `make demo` calls).

The local run goes through KFP's own local runner (`kfp.local.SubprocessRunner(use_venv=False)`), so it executes the
same compiled DAG, components and artifacts as a cluster run, on this machine's CPU. Large data (corpus shards,
plans, checkpoints) lives at the study's storage root (file://, s3://, gs://); KFP's pipeline root only holds the
small step artifacts and must be a local folder (a gs:// pipeline root silently becomes a folder named `gs:`).
Known local quirks, handled here: loops run at most 2 iterations at a time; ints inside list/dict parameters arrive as
floats (the grid is passed as run URLs, strings); container components are rejected (training runs torchrun as a
subprocess of a Python component); kfp-kubernetes settings are ignored.

The terminal shows a study-level progress bar and one line per finished point; the per-task KFP output goes to
`{pipeline_root}/logs/run-<UTC time>.log` (also to the terminal with --verbose), whose path is printed on failure
with the failed point, its step and the last lines of its task (repeatlab/progress.py).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import datetime
import logging
import os
import re
import sys
import time
import warnings
from typing import TextIO

from repeatlab import config as config_lib
from repeatlab import layout, storage
from repeatlab.errors import RepeatlabError

log = logging.getLogger(__name__)


class PipelineRunError(RepeatlabError):
    """A pipeline run finished with a failed step."""


# Steps whose failure comes from their inputs (config, corpus, plan): rerunning them unchanged fails the same way.
INPUT_STEPS = ("prepare", "plan-grid", "plan_grid", "mix")


def _rerun_advice(task: str, root: str) -> str:
    if any(step in task for step in INPUT_STEPS):
        return (
            "this step checks its inputs, so a rerun fails the same way until the error in its log above is "
            f"fixed; finished points are kept in {root}/runs"
        )
    return (
        f"finished points are kept in {root}/runs and a rerun resumes the rest from their last checkpoints "
        "(step logs above)"
    )


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


def _pipeline_root(cfg: config_lib.StudyConfig, pipeline_root: str | None) -> str:
    if pipeline_root is None:
        local = storage.is_local(cfg.storage.root)
        base = storage.local_path(cfg.storage.root) if local else os.path.abspath(".repeatlab")
        pipeline_root = os.path.join(base, "kfp-local", cfg.name)
    elif not storage.is_local(pipeline_root):
        raise config_lib.ConfigError(
            f"--pipeline-root: {pipeline_root!r} is not allowed: the KFP local runner needs "
            "a local folder (keep large data at storage.root instead)"
        )
    os.makedirs(pipeline_root, exist_ok=True)
    return os.path.abspath(pipeline_root)


def _failure(
    cfg: config_lib.StudyConfig, exc: RuntimeError, seconds: float, log_path: str, details: list[str]
) -> PipelineRunError:
    """Log what failed (points, steps, last lines of their tasks); the one-line error names the log file."""
    failed = re.search(r"Inner task failed: (.*?)\.?$", re.sub(r"\x1b\[[0-9;]*m", "", str(exc)))
    task = failed.group(1) if failed else ""
    for line in details:
        log.error("%s", line)
    return PipelineRunError(
        f"study {cfg.name!r}: the pipeline failed after {seconds:.0f} s"
        + (f" in {task}" if task else "")
        + "; "
        + _rerun_advice(task, cfg.storage.root)
        + f"; full log: {log_path}"
    )


def run_local(
    cfg: config_lib.StudyConfig,
    *,
    pipeline_root: str | None = None,
    verbose: bool = False,
    terminal: TextIO | None = None,
    fan_in: str = "collected",
) -> dict:
    """Run the study through the KFP local runner; returns {status, report, study, seconds, pipeline_root, log,
    answer}. Progress (a tqdm bar on `terminal`, default stderr) and one line per finished point are logged; the
    tasks' own output goes to the log file (and to `terminal` too when verbose)."""
    import kfp.local

    from repeatlab import progress
    from repeatlab.grid import study_url
    from repeatlab.pipelines.repetition_grid import build_pipeline

    terminal = terminal or sys.stderr
    # Every step runs in a subprocess whose working folder is not guaranteed: make the storage root absolute.
    root = storage.normalize_root(cfg.storage.root)
    cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root=root))
    storage.configure(cfg.storage.options, anonymous=cfg.storage.anonymous)
    pipeline_root = _pipeline_root(cfg, pipeline_root)
    log_path = os.path.join(pipeline_root, "logs", f"run-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}.log")
    # The local runner warns on every task that its cluster settings (images, limits) are ignored: known, by design.
    warnings.filterwarnings("ignore", module=r"kfp\.local\..*")
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
    pipeline = build_pipeline(cfg, fan_in=fan_in)
    started = time.time()
    log.info("study %r at %s through the KFP local runner; task output: %s", cfg.name, cfg.storage.root, log_path)
    study = study_url(cfg.storage.root, cfg.name)
    report = storage.join(study, "report", "index.html")
    watcher = progress.StudyProgress(cfg.storage.root, cfg.name, pipeline_root, started, terminal)
    error: RuntimeError | None = None
    with progress.point_lines_on(terminal), progress.captured_task_output(log_path, verbose, terminal) as (_, watch):
        try:
            # The local orchestrator lets every submitted loop iteration finish before it reports a failed one, so
            # one failing point does not stop the others.
            with print_restored(), watcher:
                pipeline(study_config=cfg.to_json())
        except RuntimeError as exc:
            error, details = exc, progress.describe_failures(watcher, watch)
    if error is not None:  # reported once the terminal is the terminal again
        raise _failure(cfg, error, time.time() - started, log_path, details) from error
    seconds = time.time() - started
    if not storage.exists(report):
        raise PipelineRunError(
            f"study {cfg.name!r}: the pipeline finished but wrote no report at {report}; full log: {log_path}"
        )
    return {
        "status": "SUCCEEDED",
        "study": study,
        "report": report,
        "seconds": round(seconds, 1),
        "pipeline_root": pipeline_root,
        "log": log_path,
        "answer": study_answer(study),
    }


def study_answer(study: str) -> list[str]:
    """The report's answer in words, from the study's analysis.json."""
    from repeatlab.report import answer_lines

    return answer_lines(storage.read_json(layout.Study(study).analysis))
