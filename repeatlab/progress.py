"""What a local study run shows in the terminal: a study-level progress bar, one line per finished point, and the
per-task KFP output kept in a log file (echoed with --verbose), with the last lines of a failed task at hand.

Progress comes from structured records, never from parsing the task output: the plan-grid step's pointer artifact in
this run's pipeline root names the study's points.json, and a point is finished when its eval.json exists in
storage. kfp.local prints each task's output (its executor input, the component's own output) through print() and
the root logger on sys.stdout (kfp/local/logging_utils.py, task_dispatcher.py); during the run both go to the log
file instead. The tasks of a ParallelFor run in threads, so the last lines are kept per thread, and a task that fails
is recognized by kfp.local's own "finished with status FAILURE" log record in its thread.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple, TextIO

from repeatlab import layout, storage
from repeatlab.lineage import point_label

log = logging.getLogger(__name__)

TAIL_LINES = 15
HISTORY_LINES = 2000
POLL_S = 1.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class TaskOutput(io.TextIOBase):
    """A stream for kfp.local's output: everything to the log file (and the terminal with verbose); each thread's
    lines since its task started kept (up to HISTORY_LINES) to find and show a failed task's point and last lines."""

    def __init__(self, log_file: TextIO, echo: TextIO | None = None):
        self.log_file, self.echo = log_file, echo
        self.lock = threading.Lock()
        self.lines: dict[int, collections.deque[str]] = collections.defaultdict(
            lambda: collections.deque(maxlen=HISTORY_LINES)
        )
        self.partial: dict[int, str] = collections.defaultdict(str)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        thread = threading.get_ident()
        with self.lock:
            self.log_file.write(text)
            if self.echo is not None:
                self.echo.write(text)
            lines = (self.partial[thread] + text).split("\n")
            self.partial[thread] = lines.pop()
            self.lines[thread].extend(_ANSI.sub("", line).rstrip() for line in lines if line.strip())
        return len(text)

    def flush(self) -> None:
        with self.lock:
            self.log_file.flush()
            if self.echo is not None:
                self.echo.flush()

    def history(self, thread: int) -> list[str]:
        with self.lock:
            return list(self.lines.get(thread, ()))

    def tail(self, thread: int) -> list[str]:
        return self.history(thread)[-TAIL_LINES:]

    def reset(self, thread: int) -> None:
        """A new task starts in this thread (kfp.local reuses threads): forget the previous task's lines."""
        with self.lock:
            self.lines.pop(thread, None)


class FailedTask(NamedTuple):
    task: str
    lines: list[str]  # the task's output up to its failure


class TaskWatch(logging.Filter):
    """Follows kfp.local's own log records: a task starting in a thread (its output starts afresh) and a task that
    failed, with its output at that moment. A filter on the root logger, not a handler: kfp.local replaces the root
    logger's handlers while it runs a task (logging_utils.local_logger_context), not its filters. Lets all through."""

    def __init__(self, output: TaskOutput) -> None:
        super().__init__()
        self.output = output
        self.failed: list[FailedTask] = []
        self.reported: set[tuple[int, str]] = set()  # (thread, task) since that thread's task started

    def filter(self, record: logging.LogRecord) -> bool:
        message = _ANSI.sub("", record.getMessage())
        thread = record.thread or 0
        if message.startswith("Executing task"):
            self.output.reset(thread)
            self.reported = {r for r in self.reported if r[0] != thread}
        elif record.levelno >= logging.ERROR:
            found = re.search(r"Task '?([\w.-]+)'? finished with status FAILURE", message)
            if found and (thread, found.group(1)) not in self.reported:  # kfp may log the same failure twice
                self.reported.add((thread, found.group(1)))
                self.failed.append(FailedTask(found.group(1), self.output.history(thread)))
        return True


class _DropKfpRecords(logging.Filter):
    """On the terminal's handlers during a run: kfp.local logs through the root logger (outside its tasks too, e.g.
    "Cleaned up workspace"); those lines belong in the log file, not on the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" or record.name.startswith("kfp"))


class _TqdmHandler(logging.Handler):
    """Log lines written above the progress bar (tqdm.write), to the terminal."""

    def __init__(self, terminal: TextIO):
        super().__init__(level=logging.INFO)
        self.terminal = terminal
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.terminal)
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)


@contextlib.contextmanager
def point_lines_on(terminal: TextIO) -> Iterator[None]:
    """This module's lines (one per finished point) go straight to the terminal during a run: the root logger's
    handlers are kfp.local's own while a task runs (its output goes to the log file), so they must not propagate."""
    handler = _TqdmHandler(terminal)
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


@contextlib.contextmanager
def captured_task_output(log_path: str, verbose: bool, terminal: TextIO) -> Iterator[tuple[TaskOutput, TaskWatch]]:
    """Send kfp.local's output to log_path (and to `terminal` when verbose) for the duration of the block."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    root = logging.getLogger()
    quiet = _DropKfpRecords()
    handlers, level = list(root.handlers), root.level
    with open(log_path, "a", encoding="utf-8") as fh:
        sink = TaskOutput(fh, terminal if verbose else None)
        failed = TaskWatch(sink)
        root.addFilter(failed)
        for handler in handlers:
            handler.addFilter(quiet)
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield sink, failed
        finally:
            # kfp.local swaps the root handlers per task and restores what it saw on entry; ParallelFor tasks run in
            # threads, so the restores interleave and one of its handlers (writing to this log file) can outlive the
            # run: put the root logger back as it was.
            root.handlers[:] = handlers
            root.setLevel(level)
            root.removeFilter(failed)
            for handler in handlers:
                handler.removeFilter(quiet)
            sink.flush()


class StudyProgress:
    """Polls storage in a thread: the study's points (once planned) and which of them have an eval.json; logs one
    line per finished point and drives a tqdm bar with an ETA on `terminal`."""

    def __init__(
        self, root: str, study: str, pipeline_root: str, started: float, terminal: TextIO, poll_s: float = POLL_S
    ):
        self.root, self.study, self.pipeline_root, self.started = root, study, pipeline_root, started
        self.terminal, self.poll_s = terminal, poll_s
        self.points: list[dict] | None = None
        self.reused: set[str] = set()
        self.finished: dict[str, dict] = {}
        self.bar: Any = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="repeatlab-progress", daemon=True)

    def __enter__(self) -> StudyProgress:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.poll()  # the last points, finished after the last tick
        if self.bar is not None:
            self.bar.close()

    def _loop(self) -> None:
        while not self.stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - progress must never break the run; the log file has details
                log.debug("progress: %s", exc)

    def _planned_points(self) -> list[dict] | None:
        """This run's points: the plan-grid task's pointer in this run's pipeline root names points.json."""
        pattern = os.path.join(self.pipeline_root, "*", "plan-grid", "points")
        fresh = [p for p in glob.glob(pattern) if os.path.getmtime(p) >= self.started - 1]
        if not fresh:
            return None
        with open(max(fresh, key=os.path.getmtime), encoding="utf-8") as fh:
            points = storage.read_json(json.load(fh)["storage_url"])
        return points if isinstance(points, list) else None

    def poll(self) -> None:
        if self.points is None:
            self.points = self._planned_points()
            if self.points is None:
                return
            from tqdm import tqdm

            reused = [p for p in self.points if storage.exists(self._eval_url(p))]
            self.reused = {p["point_id"] for p in reused}
            log.info("%d grid points, %d of them finished earlier (reused)", len(self.points), len(reused))
            for point in reused:
                self._finish(point, storage.read_json(self._eval_url(point)))
            # initial: the rate and the ETA count only the points this run trains
            self.bar = tqdm(
                total=len(self.points),
                initial=len(reused),
                desc=self.study,
                unit="point",
                file=self.terminal,
                dynamic_ncols=True,
                mininterval=0.5,
                leave=True,
            )
        for point in self.points:
            if point["point_id"] not in self.finished and storage.exists(self._eval_url(point)):
                self._finish(point, storage.read_json(self._eval_url(point)))
                if len(self.finished) == len(self.points):
                    log.info("every point is finished; analysing the study and writing the report")

    def _eval_url(self, point: dict) -> str:
        from repeatlab.grid import run_url

        return layout.Run(run_url(self.root, point["point_id"])).eval

    def _finish(self, point: dict, record: dict) -> None:
        self.finished[point["point_id"]] = record
        reused = point["point_id"] in self.reused
        line = finished_point_line(point, record, list(self.finished.values()), reused=reused)
        total = len(self.points or ())
        log.info("%*d/%d %s", len(str(total)), len(self.finished), total, line)
        if self.bar is not None:
            self.bar.update(1)

    def unfinished(self) -> list[dict]:
        return [p for p in self.points or [] if p["point_id"] not in self.finished]


def _baseline_loss(point: dict, records: list[dict]) -> float | None:
    """Mean test loss of the finished f = 0 runs of the same model (all seeds so far)."""
    model = (point.get("model") or {}).get("name")
    losses = [
        r["test_loss"]
        for r in records
        if (r.get("point") or {}).get("fraction") == 0
        and not (r.get("point") or {}).get("control")
        and ((r.get("point") or {}).get("model") or {}).get("name") == model
        and r.get("test_loss") is not None
    ]
    return sum(losses) / len(losses) if losses else None


def finished_point_line(point: dict, record: dict, records: list[dict], reused: bool = False) -> str:
    """`L1-E16-H2 f=0.5 E=32 seed=0  test loss 2.4121  damage +0.0312`: damage against the finished f = 0 runs of
    the same model (the report gives it with its standard error)."""
    loss = record.get("test_loss")
    text = f"{point_label(point):<34} test loss {loss:.4f}" if loss is not None else point_label(point)
    if point.get("fraction") == 0 and not point.get("control"):
        text += "  baseline"
    else:
        base = _baseline_loss(point, records)
        text += f"  damage {loss - base:+.4f}" if base is not None and loss is not None else "  damage: no baseline yet"
    return text + ("  (reused)" if reused else "")


def failed_step(run_url: str) -> str:
    """Where a point stopped, from what is in its run folder: mix (no plan), train (no done.json), evaluate."""
    if not storage.exists(layout.Run(run_url).plan_json):
        return "mix"
    if not storage.exists(layout.Run(run_url).done):
        return "train"
    return "evaluate"


def describe_failures(progress: StudyProgress | None, watch: TaskWatch) -> list[str]:
    """Lines naming each unfinished point and the step it stopped in, each with the last lines of its failed task:
    the task whose output names the point's id, or the only one left for the only point left."""
    from repeatlab.grid import run_url

    points = progress.unfinished() if progress else []
    failures = list(watch.failed)
    matched: dict[str, FailedTask] = {}
    for point in points:
        for failure in failures:
            if any(point["point_id"] in line for line in failure.lines):
                matched[point["point_id"]] = failure
                failures.remove(failure)
                break
    unmatched = [p for p in points if p["point_id"] not in matched]
    if len(unmatched) == 1 and len(failures) == 1:
        matched[unmatched[0]["point_id"]] = failures.pop()
    lines = []
    for point in points:
        url = run_url(progress.root, point["point_id"]) if progress else ""
        lines.append(f"point {point_label(point)} ({point['point_id']}) failed in {failed_step(url)}")
        if point["point_id"] in matched:
            failure = matched[point["point_id"]]
            lines += [f"  last lines of its {failure.task} task:"] + [
                f"    {line}" for line in failure.lines[-TAIL_LINES:]
            ]
    for failure in failures:
        lines += [f"task {failure.task} failed; its last lines:"] + [
            f"    {line}" for line in failure.lines[-TAIL_LINES:]
        ]
    return lines


def elapsed(started: float) -> str:
    seconds = int(time.time() - started)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"
