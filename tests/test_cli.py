"""The CLI as one thin layer over the steps: the traps it used to have, each pinned by a test."""

import json
import os
import random
from pathlib import Path

import pytest

from repeatlab import cli, layout, storage
from repeatlab.cli import main

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "pipelines" / "repetition_grid.yaml"


def _study(tmp_path: Path, **train) -> Path:
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    docs = [f"Doc {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(40, 90))) for i in range(80)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    study = {
        "name": "clitest",
        "corpus": {"url": str(corpus), "test_fraction": 0.2, "probe_fraction": 0.2},
        "budget": {"total_tokens": 8192, "context": 128, "batch_tokens": 1024},
        "eval": {"eval_tokens": 256, "icl_windows": 8},
        "models": [{"n_layer": 1, "n_embd": 16, "n_head": 2}],
        "grid": {"fractions": [0.0, 0.5], "epochs": [2], "seeds": [0]},
        "train": {"threads_per_rank": 1, **train},
        "storage": {"root": str(tmp_path / "root")},
    }
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(study))
    return path


def test_run_without_local_or_host_runs_locally(tmp_path, monkeypatch, capsys):
    """Was: `repeatlab run --config x.yaml` failed with "the following arguments are required: --local"."""
    import repeatlab.runner

    calls = []
    monkeypatch.setattr(
        repeatlab.runner,
        "run_local",
        lambda cfg, pipeline_root=None, verbose=False, fan_in="collected": (
            calls.append((cfg.name, verbose, fan_in))
            or {"seconds": 1.0, "report": "file:///r/index.html", "answer": ["repetition hurts"]}
        ),
    )
    assert main(["run", "--config", str(_study(tmp_path))]) == 0
    assert calls == [("clitest", False, "collected")]
    assert main(["run", "--local", "--config", str(_study(tmp_path)), "--verbose"]) == 0 and len(calls) == 2
    assert calls[1] == ("clitest", True, "collected")  # --verbose also shows the tasks' KFP output
    assert main(["run", "--config", str(_study(tmp_path)), "--fan-in", "storage"]) == 0
    assert calls[2] == ("clitest", False, "storage")  # for KFP backends 2.4.1-2.13
    out = capsys.readouterr().out
    assert "- repetition hurts\nreport: file:///r/index.html" in out


def test_compile_writes_stdout_and_leaves_the_golden_file_alone(capsys):
    """Was: `repeatlab compile` overwrote the checked-in pipelines/repetition_grid.yaml by default."""
    before = (GOLDEN.stat().st_mtime_ns, GOLDEN.read_bytes())
    assert main(["compile"]) == 0
    out = capsys.readouterr().out
    assert out == before[1].decode()  # the same YAML as the golden file, on stdout
    assert (GOLDEN.stat().st_mtime_ns, GOLDEN.read_bytes()) == before


def test_grid_is_a_listing_without_side_effects(tmp_path, capsys):
    """Was: `repeatlab grid` prepared the corpus (wrote shards under the storage root) to list the points."""
    path = _study(tmp_path)
    assert main(["grid", "--config", str(path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert not (tmp_path / "root").exists()
    assert main(["grid", "--config", str(path), "--write", "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert [p["point_id"] for p in listed] == [p["point_id"] for p in written]  # the same ids before preparing
    assert (tmp_path / "root" / "studies" / "clitest" / "points.json").exists()


def test_mix_logs_its_summary_once(tmp_path, capfd):
    """Was: `repeatlab mix` printed the plan's summary twice (the step's log line and the CLI's own print)."""
    path = _study(tmp_path)
    assert main(["grid", "--config", str(path), "--write"]) == 0
    point = json.loads((tmp_path / "root" / "studies" / "clitest" / "points.json").read_text())[-1]
    capfd.readouterr()
    run = layout.run_url(str(tmp_path / "root"), point["point_id"])
    assert main(["mix", "--run-url", run]) == 0
    captured = capfd.readouterr()
    assert (captured.out + captured.err).count("realized f =") == 1, captured


def test_train_help_describes_the_command_not_the_launcher_module(capsys):
    """Was: `repeatlab train --help` printed launch.py's module docstring (TorchX, TrainJob, PET_ variables)."""
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "Train one grid point" in text and "--no-evaluate" in text
    assert "TorchX" not in text and "PET_" not in text


def test_train_cli_uses_the_steps_defaults(monkeypatch):
    """Was: the CLI trained without evaluating and set OMP_NUM_THREADS only without CUDA; the pipeline's step
    evaluated in training and always set it. Now the CLI calls the step itself."""
    from repeatlab import steps

    seen = {}
    monkeypatch.setattr(steps, "train", lambda run_url, **kw: seen.update(kw, run_url=run_url) or {"skipped": True})
    assert main(["train", "--run-url", "file:///r/runs/x"]) == 0
    assert seen["evaluate"] is True and seen["nproc_per_node"] is None
    assert main(["train", "--run-url", "file:///r/runs/x", "--no-evaluate", "--nproc-per-node", "2"]) == 0
    assert seen["evaluate"] is False and seen["nproc_per_node"] == 2
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert steps.trainer_env()["OMP_NUM_THREADS"] == "1"


def test_report_title_is_the_pipelines(tmp_path):
    """Was: `repeatlab report` titled the report "repeatlab study NAME", the pipeline "repeatlab study: NAME"."""
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    import synthetic_study as syn

    from repeatlab import steps

    root = str(tmp_path / "root")
    syn.write_study(root, "syn", syn.synthetic_records(sizes=(2e5, 1e6, 5e6), epochs=(2, 16)))
    assert main(["report", "--root", root, "--study", "syn"]) == 0
    markdown = Path(root, "studies", "syn", "report", "report.md").read_text()
    assert markdown.splitlines()[0] == f"# {steps.report_title('syn')}"


def test_unknown_command_and_bad_input_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["nonsense"])
    assert exit_.value.code == 2
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  fractions: [1.5]\n")
    assert main(["grid", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "grid.fractions[0]: 1.5 is not allowed" in err


def test_every_command_has_its_own_help(capsys):
    parser = cli.build_parser()
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        assert f"usage: repeatlab {name}" in capsys.readouterr().out


def test_json_log_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REPEATLAB_LOG_FORMAT", "human")
    path = _study(tmp_path)
    assert main(["--log-format", "json", "grid", "--config", str(path), "--write"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any("corpus" in line["message"] for line in lines)
    monkeypatch.setenv("REPEATLAB_LOG_FORMAT", "human")
    from repeatlab import logs

    logs.setup("human")


def test_an_edited_execution_setting_reaches_existing_points(tmp_path):
    """Was: point.json (written once, content-addressed) carried the device, micro-batch and thread settings, so
    editing them was silently ignored for points planned before."""
    from repeatlab.records import Execution, Point

    path = _study(tmp_path, threads_per_rank=1)
    assert main(["grid", "--config", str(path), "--write"]) == 0
    points = json.loads((tmp_path / "root" / "studies" / "clitest" / "points.json").read_text())
    run = layout.Run(layout.run_url(str(tmp_path / "root"), points[0]["point_id"]))
    assert Execution.read(run.execution).train["threads_per_rank"] == 1
    assert "threads_per_rank" not in Point.read(run.point).train
    path = _study(tmp_path, threads_per_rank=2)  # same study, another thread count
    assert main(["grid", "--config", str(path), "--write"]) == 0
    again = json.loads((tmp_path / "root" / "studies" / "clitest" / "points.json").read_text())
    assert [p["point_id"] for p in again] == [p["point_id"] for p in points]  # the same points
    assert Execution.read(run.execution).train["threads_per_rank"] == 2
    assert storage.exists(run.point)
