"""The whole study through the KFP local runner: file:// and s3:// roots, reruns, and a failing point."""

import glob
import json
import logging
import os
import pathlib
import random
import re
import subprocess
import sys
import time

import pytest

from repeatlab import config, storage
from repeatlab.runner import PipelineRunError, run_local

WORDS = (
    "the of and to in that is was he for it with as his on be at by had are but from or have an they which "
    "one you were her all she there would their we him been has when who will more no if out so said what up "
    "its about into than them can only other new some could time these two may then do first any my now such "
    "like our over man me even most made after also did many before must through back years where much your way "
    "well down should because each just those people how too little state good very make world still own see "
    "men work long get here between both life being under never day same another know while last might us great "
    "old year off come since against go came right used take three"
).split()


def write_corpus(folder: pathlib.Path, documents: int = 240, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    for i in range(documents):
        words = [rng.choice(WORDS) for _ in range(rng.randint(40, 90))]
        lines.append(json.dumps({"text": f"Document {i}. " + " ".join(words) + "."}))
    path = folder / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def tiny_study(name: str, corpus_url: str, root: str) -> config.StudyConfig:
    return config.from_dict(
        {
            "name": name,
            "corpus": {"url": corpus_url, "format": "jsonl", "test_fraction": 0.1, "probe_fraction": 0.05},
            "budget": {"total_tokens": 8192, "context": 32, "batch_tokens": 1024},
            "models": [{"n_layer": 1, "n_embd": 16, "n_head": 2}, {"n_layer": 1, "n_embd": 32, "n_head": 2}],
            "grid": {"fractions": [0.0, 0.5], "epochs": [4, 32], "seeds": [0]},
            "train": {"learning_rate": 0.01, "eval_points": 3, "eval_sequences": 4, "threads_per_rank": 1},
            "eval": {
                "eval_tokens": 512,
                "copy_repeats": 3,
                "prefix_samples": 2,
                "prefix_random_tokens": 5,
                "prefix_repeats": 3,
                "top_k_heads": 1,
            },
            "storage": {"root": root},
            "cluster": {"parallelism": 2},
        }
    )


def trained_points(root: str) -> dict:
    runs = storage.join(root, "runs")
    return {
        pid: storage.read_json(storage.join(runs, pid, "done.json"))
        for pid in storage.listdir(runs)
        if storage.exists(storage.join(runs, pid, "done.json"))
    }


def check_report(cfg, result):
    study = result["study"]
    analysis = storage.read_json(storage.join(study, "analysis.json"))
    points = storage.read_json(storage.join(study, "points.json"))
    assert len(points) == 6
    html = storage.read_text(result["report"])
    assert "<img" in html
    csv_rows = storage.read_text(storage.join(study, "report", "results.csv")).strip().splitlines()
    assert len(csv_rows) == 1 + len(points)
    markdown = storage.read_text(storage.join(study, "report", "report.md"))
    # numbers in the report's words come from analysis.json: the worst point's damage per (N, f)
    assert analysis["summary"]["records"] == len(points) and not analysis["summary"]["partial"]
    for worst in analysis["worst"]["test_loss"]:
        assert f"{worst['damage']:+.3f} nats" in markdown
        assert f"{worst['damage']:+.3f} nats" in html
    for point in points:
        root = study.rsplit("/studies/", 1)[0]
        record = storage.read_json(storage.join(root, "runs", point["point_id"], "eval.json"))
        assert record["point_id"] == point["point_id"]
        assert record["test_loss"] > 0
    return analysis


@pytest.fixture(scope="module")
def file_study(tmp_path_factory):
    """The study through the CLI (`repeatlab run --local`, what `make demo` runs), its terminal output captured."""
    folder = tmp_path_factory.mktemp("pipeline")
    cfg = tiny_study("tiny", write_corpus(folder), "file://" + str(folder / "store"))
    (folder / "study.yaml").write_text(cfg.to_json())  # JSON is YAML
    started = time.time()
    # bytes: text mode would turn the progress bar's \r redraws into line breaks
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "repeatlab",
            "run",
            "--local",
            "--config",
            str(folder / "study.yaml"),
            "--pipeline-root",
            str(folder / "kfp"),
        ],
        capture_output=True,
        timeout=900,
    )
    first_seconds = time.time() - started
    assert proc.returncode == 0, proc.stderr[-3000:].decode(errors="replace")
    study = storage.join(cfg.storage.root, "studies", "tiny")
    first = {
        "status": "SUCCEEDED",
        "study": study,
        "report": storage.join(study, "report", "index.html"),
        "pipeline_root": str(folder / "kfp"),
        "stdout": proc.stdout.decode(),
        "stderr": proc.stderr.decode(),
    }
    first_done = trained_points(cfg.storage.root)
    return cfg, first, first_seconds, first_done


def test_study_runs_end_to_end_on_a_file_root(file_study):
    cfg, result, _, done = file_study
    assert result["status"] == "SUCCEEDED"
    assert len(done) == 6
    check_report(cfg, result)


def test_terminal_shows_progress_points_and_the_answer_not_the_task_output(file_study):
    """A study's terminal: a progress bar, one line per finished point, the answer and the report's path; the
    KFP task output (executor JSON, component logs) only in the log file. Before: ~100 lines per point."""
    cfg, result, _, _ = file_study
    out, raw_err = result["stdout"], result["stderr"]
    lines = (out + raw_err).count("\n")  # tqdm redraws its bar with \r: those are not lines
    assert lines < 20, f"{lines} lines on the terminal:\n{out}{raw_err}"  # 6 points: 13 lines
    err = raw_err.replace("\r", "\n")  # each redraw of the bar, and each line, on its own line
    points = storage.read_json(storage.join(result["study"], "points.json"))
    finished = re.findall(
        r"^\s*\d+/6 (\S+) f=(\S+)(?: E=(\S+))? seed=\d+\s+test loss (\d+\.\d+)\s+"
        r"(baseline|damage [+-]\d+\.\d+|damage: no baseline yet)",
        err,
        flags=re.M,
    )
    assert len(finished) == len(points) == 6
    assert {(m, float(f), float(e or 0)) for m, f, e, _, _ in finished} == {
        (p["model"]["name"], p["fraction"], p["epochs"]) for p in points
    }
    assert re.search(r"tiny: 100%\|.*\| 6/6 \[", err), "no finished progress bar"
    assert "executor_input" not in out + err and "Executing task" not in out + err
    log_files = glob.glob(os.path.join(result["pipeline_root"], "logs", "run-*.log"))
    assert len(log_files) == 1 and log_files[0] in err
    task_log = pathlib.Path(log_files[0]).read_text()
    assert "Got executor_input" in task_log and "Executing task" in task_log
    analysis = storage.read_json(storage.join(result["study"], "analysis.json"))
    from repeatlab.report import answer_lines

    for line in answer_lines(analysis):
        assert f"- {line}" in out
    assert out.rstrip().endswith(f"report: {result['report']}")


def test_steps_exchange_pointer_artifacts_to_the_real_objects(file_study):
    """Every step's typed output is a pointer to the object in the study's storage; the Markdown and HTML are the
    report itself, figures inlined."""
    from repeatlab import lineage

    cfg, result, _, _ = file_study
    run_root = glob.glob(os.path.join(result["pipeline_root"], "repeatlab-repetition-grid-*"))[0]

    class Found:
        def __init__(self, path):
            self.path, self.name, self.metadata = path, os.path.basename(path), {}

    def pointers(task, output):
        # loop tasks sit in for-loop-1-iteration-<i>/
        return [
            lineage.read_pointer(Found(p))
            for p in glob.glob(os.path.join(run_root, "**", task, output), recursive=True)
        ]

    corpus = pointers("prepare-corpus", "corpus")
    assert len(corpus) == 1 and storage.exists(storage.join(corpus[0]["storage_url"], "manifest.json"))
    packs = pointers("plan-packs", "packs")
    assert len(packs) == 1 and storage.exists(packs[0]["storage_url"]) and packs[0]["points"] == 6
    for task, output, name in (
        ("mix", "plan", "plan.npy"),
        ("train", "model", "checkpoints"),
        ("evaluate", "evaluation", "eval.json"),
    ):
        found = pointers(task, output)
        # one plan per point; one model and evaluation per pack, listing every point of the pack
        covered = [url for p in found for url in (p.get("run_urls") or [p["run_url"]])]
        assert len(covered) == len(set(covered)) == 6, f"{task}.{output} pointers cover {covered}, not each point"
        if task != "mix":
            assert len(found) == packs[0]["packs"]
        for pointer in found:
            assert pointer["storage_url"].endswith(name) and storage.exists(pointer["storage_url"])
            assert all(storage.exists(url) for url in pointer.get("eval_urls", []))
    analysis = pointers("analyze", "analysis")
    assert analysis[0]["storage_url"] == storage.join(result["study"], "analysis.json")
    markdown = pathlib.Path(run_root, "report", "markdown").read_text()
    assert "](data:image/png;base64," in markdown and "](fig-" not in markdown
    assert pathlib.Path(run_root, "report", "html").read_bytes() == storage.read_bytes(result["report"])


def test_storage_fan_in_runs_end_to_end_with_the_same_results(file_study, tmp_path):
    """`--fan-in storage` (KFP backends 2.4.1-2.13: plan_packs and analyze after the loops, reading storage) trains
    and evaluates the same points to the same numbers as the default dsl.Collected fan-in."""
    cfg, first, _, first_done = file_study
    corpus = write_corpus(tmp_path)  # the same documents: the same corpus id, so the same point ids
    storage_cfg = tiny_study("tiny", corpus, f"file://{tmp_path / 'store'}")
    result = run_local(storage_cfg, pipeline_root=str(tmp_path / "kfp"), fan_in="storage")
    assert result["status"] == "SUCCEEDED"
    assert set(trained_points(storage_cfg.storage.root)) == set(first_done)
    for pid in first_done:
        ours = storage.read_json(storage.join(storage_cfg.storage.root, "runs", pid, "eval.json"))
        theirs = storage.read_json(storage.join(cfg.storage.root, "runs", pid, "eval.json"))
        assert ours["test_loss"] == theirs["test_loss"] and ours["repeated_loss"] == theirs["repeated_loss"]
    analysis = check_report(storage_cfg, result)
    collected = storage.read_json(storage.join(first["study"], "analysis.json"))
    assert json.dumps(analysis["worst"], sort_keys=True) == json.dumps(collected["worst"], sort_keys=True)


def test_rerun_trains_nothing_and_is_faster(file_study):
    cfg, _, first_seconds, first_done = file_study
    started = time.time()  # in-process this time (the first run was a subprocess: compare loosely)
    result = run_local(cfg, pipeline_root=str(pathlib.Path(storage.local_path(cfg.storage.root)).parent / "kfp2"))
    seconds = time.time() - started
    again = trained_points(cfg.storage.root)
    assert again == first_done, "a rerun must not retrain a finished point"
    assert result["status"] == "SUCCEEDED"
    # ratio, not absolute time: reuse skips training and evaluation entirely
    assert seconds < first_seconds


@pytest.mark.storage
def test_s3_root_with_a_failing_point_then_a_rerun_completes(tmp_path, s3_env, caplog):
    from repeatlab.grid import grid_points, run_url

    cfg = tiny_study("tiny-s3", write_corpus(tmp_path), s3_env + "/store")
    # Break one point before the run: its point.json names a shape the model rejects, so its training fails.
    from repeatlab.corpus import corpus_url, prepare_corpus

    manifest = prepare_corpus(cfg.corpus, cfg.storage.root)
    points = grid_points(
        cfg,
        manifest["corpus_id"],
        corpus_url(cfg.storage.root, manifest["corpus_id"]),
        manifest["tokenizer"]["vocab_size"],
    )
    broken = points[-1]
    bad = json.loads(json.dumps(broken))
    bad["model"]["n_head"] = 3  # 32 is not a multiple of 3
    broken_url = storage.join(run_url(cfg.storage.root, broken["point_id"]), "point.json")
    storage.write_json(broken_url, bad)

    with (
        caplog.at_level(logging.ERROR, logger="repeatlab.runner"),
        pytest.raises(PipelineRunError, match="finished points are kept") as failed,
    ):
        run_local(cfg, pipeline_root=str(tmp_path / "kfp"))
    log_path = str(failed.value).rsplit("full log: ", 1)[1]
    assert log_path.startswith(str(tmp_path / "kfp" / "logs")) and os.path.exists(log_path)
    details = [r.getMessage() for r in caplog.records if r.name == "repeatlab.runner"]
    from repeatlab.lineage import point_label

    assert f"point {point_label(broken)} ({broken['point_id']}) failed in train" in details
    tail = details[details.index(f"point {point_label(broken)} ({broken['point_id']}) failed in train") + 1 :]
    assert tail[0].startswith("  last lines of its train") and any("Traceback" in t or "Error" in t for t in tail)
    survivors = trained_points(cfg.storage.root)
    assert broken["point_id"] not in survivors
    assert len(survivors) == len(points) - 1, "the other points' results must survive one failing point"
    for pid in survivors:
        assert storage.exists(storage.join(cfg.storage.root, "runs", pid, "eval.json"))

    storage.remove(broken_url)  # fix the input; the rerun recreates it and trains only that point
    result = run_local(cfg, pipeline_root=str(tmp_path / "kfp-rerun"))
    done = trained_points(cfg.storage.root)
    assert len(done) == len(points)
    assert {pid: done[pid] for pid in survivors} == survivors
    check_report(cfg, result)
    assert result["report"].startswith("s3://")


def test_print_is_restored_after_a_local_run():
    """kfp.local's indented print() can outlive a ParallelFor run (threads restore out of order): run_local puts it
    back, so the CLI's own lines after the run are not indented."""
    import builtins

    from repeatlab.runner import print_restored

    original = builtins.print
    with print_restored():
        builtins.print = lambda *args, **kwargs: original("    ", *args, **kwargs)  # what the leak leaves behind
    assert builtins.print is original
