"""repeatlab/progress.py: the task-output log (per-thread tails, --verbose echo), failed-task detection from kfp.local's
own log records, the per-point line and the failure summary. The whole terminal of a real run is checked in
tests/test_pipeline_local.py."""

import io
import json
import logging
import threading

from repeatlab import progress, storage


def test_task_output_goes_to_the_log_keeps_tails_per_thread_and_echoes_only_when_verbose(tmp_path):
    log_file, terminal = io.StringIO(), io.StringIO()
    quiet, loud = progress.TaskOutput(log_file), progress.TaskOutput(io.StringIO(), echo=terminal)
    idents = {}
    together = threading.Barrier(2)  # both alive at once: distinct thread idents, interleaved writes

    def task(name: str, lines: int) -> None:
        idents[name] = threading.get_ident()
        together.wait()
        for i in range(lines):
            quiet.write(f"{name} line {i}\n")
        quiet.write(f"{name} partial")  # no newline yet: not a line
        together.wait()

    threads = [threading.Thread(target=task, args=(n, 40)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log_file.getvalue().count("\n") == 80
    assert quiet.tail(idents["a"]) == [f"a line {i}" for i in range(40 - progress.TAIL_LINES, 40)]
    assert quiet.history(idents["b"]) == [f"b line {i}" for i in range(40)]
    loud.write("\x1b[92mshown\x1b[0m\n")
    assert terminal.getvalue() == "\x1b[92mshown\x1b[0m\n"
    assert loud.tail(threading.get_ident()) == ["shown"]  # colour codes stripped from the tail


def test_captured_output_records_failed_tasks_even_while_kfp_replaces_root_handlers(tmp_path):
    """kfp.local clears the root logger's handlers while a task runs; the failure is still seen (a root filter), the
    task's lines go to the log file, and the terminal's own handler shows no kfp record."""
    terminal = io.StringIO()
    handler = logging.StreamHandler(terminal)
    root = logging.getLogger()
    level_before = root.level
    root.setLevel(logging.WARNING)  # pinned: an earlier test may have left the root logger at another level
    root.addHandler(handler)
    try:
        with progress.captured_task_output(str(tmp_path / "logs" / "run.log"), False, terminal) as (out, failed):
            saved = root.handlers[:]
            root.handlers.clear()  # what kfp/local/logging_utils.local_logger_context does
            root.addHandler(logging.StreamHandler(out))
            root.setLevel(logging.INFO)
            logging.info("Executing task \x1b[96m'mix'\x1b[0m")
            print("an earlier task's line, same thread")
            logging.info("Executing task \x1b[96m'train'\x1b[0m")  # kfp.local reuses threads: starts afresh
            print("Traceback (most recent call last): boom")
            logging.error("Task \x1b[96m'train'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m")
            logging.error("Task \x1b[96m'train'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m")  # twice: once
            root.handlers[:] = saved
            logging.warning("Cleaned up workspace: /tmp/x")  # outside a task: still not on the terminal
            kfp_handler = logging.StreamHandler(out)
            root.addHandler(kfp_handler)  # what interleaved restores of parallel tasks can leave behind
        assert root.handlers[-1] is handler and kfp_handler not in root.handlers  # the root logger as it was
        assert root.level == logging.WARNING  # restored from kfp's INFO
    finally:
        root.removeHandler(handler)
        root.setLevel(level_before)
    assert len(failed.failed) == 1 and failed.failed[0].task == "train"
    assert failed.failed[0].lines[:2] == ["Executing task 'train'", "Traceback (most recent call last): boom"]
    assert "earlier task" not in " ".join(failed.failed[0].lines)
    text = (tmp_path / "logs" / "run.log").read_text()
    assert "boom" in text and "finished with status" in text and "earlier task" in text
    assert terminal.getvalue() == ""


def point(model: str, fraction: float, epochs: float, seed: int = 0, pid: str = "p") -> dict:
    return {"point_id": pid, "model": {"name": model}, "fraction": fraction, "epochs": epochs, "seed": seed}


def test_finished_point_line_gives_damage_against_the_finished_baselines():
    base0 = {"point": point("d1", 0.0, 0.0, 0), "test_loss": 2.0}
    base1 = {"point": point("d1", 0.0, 0.0, 1), "test_loss": 2.2}
    other = {"point": point("d2", 0.0, 0.0), "test_loss": 1.0}
    hurt = point("d1", 0.5, 32.0)
    assert progress.finished_point_line(point("d1", 0.0, 0.0), base0, [base0]).endswith("test loss 2.0000  baseline")
    line = progress.finished_point_line(hurt, {"test_loss": 2.35}, [base0, base1, other], reused=True)
    assert line.startswith("d1 f=0.5 E=32 seed=0") and line.endswith("test loss 2.3500  damage +0.2500  (reused)")
    assert progress.finished_point_line(hurt, {"test_loss": 2.35}, [other]).endswith("damage: no baseline yet")


def test_failures_name_the_point_its_step_and_its_tasks_last_lines(tmp_path):
    root = "file://" + str(tmp_path)
    planned, trained = point("d1", 0.5, 4.0, pid="aaa"), point("d1", 0.5, 32.0, pid="bbb")
    for p in (planned, trained):
        storage.write_json(storage.join(root, "runs", p["point_id"], "plan.json"), {})
    storage.write_json(storage.join(root, "runs", "bbb", "done.json"), {})
    watcher = progress.StudyProgress(root, "s", str(tmp_path), 0.0, io.StringIO())
    watcher.points = [planned, trained, point("d1", 0.0, 0.0, pid="ccc")]
    watcher.finished = {"ccc": {}}
    watch = progress.TaskWatch(progress.TaskOutput(io.StringIO()))
    watch.failed = [
        progress.FailedTask("evaluate", ["evaluating", "ValueError: bad record"]),
        progress.FailedTask(
            "train",
            [
                "train: torchrun ... file:///x/runs/aaa",
                *[f"l{i}" for i in range(30)],
                "TrainError: training exited with code 1",
            ],
        ),
    ]
    lines = progress.describe_failures(watcher, watch)
    assert lines == [
        "point d1 f=0.5 E=4 seed=0 (aaa) failed in train",  # its task's output names its id
        "  last lines of its train task:",
        *[f"    l{i}" for i in range(16, 30)],
        "    TrainError: training exited with code 1",
        "point d1 f=0.5 E=32 seed=0 (bbb) failed in evaluate",  # the only task left for the only point
        "  last lines of its evaluate task:",
        "    evaluating",
        "    ValueError: bad record",
    ]
    assert progress.failed_step(storage.join(root, "runs", "zzz")) == "mix"


def test_planned_points_come_from_this_runs_plan_grid_pointer(tmp_path):
    import os
    import time

    root = "file://" + str(tmp_path / "store")
    points = [point("d1", 0.0, 0.0, pid="a")]
    storage.write_json(storage.join(root, "studies", "s", "points.json"), points)
    pointer = tmp_path / "kfp" / "repeatlab-repetition-grid-1" / "plan-grid" / "points"
    pointer.parent.mkdir(parents=True)
    pointer.write_text(
        json.dumps({"kind": "repeatlab.pointer", "storage_url": storage.join(root, "studies", "s", "points.json")})
    )
    old = time.time() - 3600
    os.utime(pointer, (old, old))
    watcher = progress.StudyProgress(root, "s", str(tmp_path / "kfp"), time.time(), io.StringIO())
    assert watcher._planned_points() is None  # an earlier run's pointer is not this run's plan
    os.utime(pointer, None)
    assert watcher._planned_points() == points
