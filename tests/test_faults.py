"""Fault injection (issue 15): kills, concurrent writers, a stalled object store, bit flips.

- Process lifetime: the launcher (`repeatlab train`, the pipeline's train step, `run --local`) is killed (SIGKILL of
  its process group, SIGTERM to its pid): no trainer survives it and none writes done.json afterwards.
- Concurrent writers: two trainers of one run, and two `run --local` of one study, end with every point trained once.
- SIGKILL at random moments of `train` and `prepare` over several seeds, then a rerun: bitwise the uninterrupted
  result (slow).
- The S3 server frozen (SIGSTOP) in the middle of a checkpoint: no partial checkpoint is used, resume is identical.
- A bit flip in each artifact kind (shard, plan, checkpoint, eval record) is detected with a one-line error.

docs/reliability.md tabulates what these inject and what survived.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from test_pipeline_local import tiny_study, write_corpus
from test_train import PY, REPO, _env, final_weights, losses, make_corpus, make_run, run_train

from repeatlab import storage
from repeatlab.proc import descendants

# Long enough (75 steps of a 2-layer model) that a kill lands mid-run.
LONG = dict(
    sequences=600,
    train={"checkpoint_every": 3, "keep_checkpoints": 100},
    model={"n_layer": 2, "n_embd": 64, "n_head": 4},
)


def _flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _wait_for(predicate, timeout_s: float = 180.0, every_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return False


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                    out.append(pid)
        except OSError:
            pass
    return out


def _trainer_pids(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"repeatlab.train" in cmdline and b"torch.distributed.run" not in cmdline:  # a worker, not torchrun
                out.append(pid)
    return out


def _kill_group_of(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


# ----------------------------------------------------------------------------------------------------------------------
# Process lifetime

LAUNCHERS = {
    "repeatlab train": lambda run: [PY, "-m", "repeatlab", "train", "--run-url", run, "--nproc-per-node", "2"],
    "pipeline train step": lambda run: [
        PY,
        "-c",
        f"import sys; from repeatlab import steps; steps.train({run!r}, nproc_per_node=2, evaluate=False)",
    ],
}


@pytest.mark.parametrize(
    "how",
    [
        "SIGKILL the launcher's process group",  # the others: slow (make test's budget)
        pytest.param("SIGTERM the launcher", marks=pytest.mark.slow),
        pytest.param("SIGKILL the launcher alone", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_trainers_die_with_their_launcher(corpus, tmp_path, launcher, how):
    run = make_run(tmp_path / "run", corpus, point_id="p", **LONG)
    folder = Path(storage.local_path(run))
    proc = subprocess.Popen(
        LAUNCHERS[launcher](run),
        env=_env(REPEATLAB_KILL_GRACE_S="5"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert _wait_for(lambda: (folder / "checkpoints" / "step-0000003" / "state.json").exists())
        workers = _trainer_pids(descendants(proc.pid))
        assert len(workers) == 2, "two trainer ranks are running"
        if how.startswith("SIGKILL the launcher's"):
            _kill_group_of(proc, signal.SIGKILL)
        elif how.startswith("SIGTERM"):
            proc.send_signal(signal.SIGTERM)
        else:
            proc.kill()
        proc.wait(timeout=60)
        assert _wait_for(lambda: not _alive(workers), timeout_s=30), f"trainers {_alive(workers)} outlived {launcher}"
        time.sleep(1.0)
        assert not (folder / "done.json").exists()
    finally:
        _kill_group_of(proc, signal.SIGKILL)
        for pid in _alive(descendants(proc.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if not how.startswith("SIGKILL the launcher's"):
        return
    # and the run resumes to the uninterrupted result
    ref = make_run(tmp_path / "ref", corpus, point_id="p", **LONG)
    run_train(ref, nproc=2)
    run_train(run, nproc=2)
    np.testing.assert_array_equal(losses(run), losses(ref))


@pytest.mark.slow
def test_run_local_killed_leaves_no_trainer(tmp_path):
    cfg_path, root = _write_study(tmp_path, "killed")
    proc = subprocess.Popen(
        [PY, "-m", "repeatlab", "run", "--local", "--config", str(cfg_path)],
        env=_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        seen: set[int] = set()

        def training() -> bool:
            seen.update(_trainer_pids(descendants(proc.pid)))
            return bool(seen)

        assert _wait_for(training, timeout_s=300, every_s=0.2)
        _kill_group_of(proc, signal.SIGKILL)
        proc.wait(timeout=30)
        assert _wait_for(lambda: not _alive(list(seen)), timeout_s=30), "trainers outlived run --local"
    finally:
        _kill_group_of(proc, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------------------------------
# Concurrent writers


@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_two_trainers_of_one_run_train_it_once(corpus, tmp_path, nproc):
    """With checkpoint_every: 1, two trainers of one run used to collide ("step-0000006: not found (remove)"): now
    the second waits for the first (its other ranks too, without timing out in the rendezvous) and finds it done."""
    from repeatlab.launch import torchrun_command

    run = make_run(tmp_path / "run", corpus, point_id="p", sequences=160, train={"checkpoint_every": 1})
    env = _env(REPEATLAB_LEASE_POLL_S="0.2")
    command = torchrun_command(run, nproc_per_node=2) if nproc == 2 else [PY, "-m", "repeatlab.train", "--run-url", run]
    procs = [
        subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    logs = [o[1] for o in outs]
    assert sum("steps of" in log for log in logs) == 1, "exactly one trainer trained"
    assert sum("already trained" in log for log in logs) == 1
    assert any("waiting for" in log for log in logs)
    ref = make_run(tmp_path / "ref", corpus, point_id="p", sequences=160, train={"checkpoint_every": 1})
    run_train(ref, nproc=nproc)
    np.testing.assert_array_equal(losses(run), losses(ref))


def _write_study(tmp_path: Path, name: str) -> tuple[Path, str]:
    root = "file://" + str(tmp_path / "store")
    cfg = tiny_study(name, write_corpus(tmp_path), root)
    path = tmp_path / f"{name}.yaml"
    path.write_text(cfg.to_yaml())
    return path, root


@pytest.mark.slow
def test_two_concurrent_run_local_of_one_study(tmp_path):
    cfg_path, root = _write_study(tmp_path, "twice")
    env = _env(REPEATLAB_LEASE_POLL_S="0.5")
    procs = [
        subprocess.Popen(
            [
                PY,
                "-m",
                "repeatlab",
                "run",
                "--local",
                "--config",
                str(cfg_path),
                "--pipeline-root",
                str(tmp_path / f"kfp-{i}"),
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    runs = storage.join(root, "runs")
    points = [p["point_id"] for p in storage.read_json(storage.join(root, "studies", "twice", "points.json"))]
    assert sorted(points) == storage.listdir(runs)
    # the tasks' output is in each run's log file (<pipeline root>/logs/); a trainer names the points it starts
    log = "\n".join(outs + [Path(f).read_text() for f in glob.glob(str(tmp_path / "kfp-*" / "logs" / "*.log"))])
    for pid in points:
        assert storage.exists(storage.join(runs, pid, "done.json"))
        started = re.findall(rf"train: [^\n]*/runs/{pid}\b[^\n]*: \d+ steps of", log)
        assert len(started) == 1, f"point {pid} trained {len(started)} times"


# ----------------------------------------------------------------------------------------------------------------------
# SIGKILL at random moments, then rerun: bitwise the uninterrupted result


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_killed_at_a_random_moment_resumes_bitwise(corpus, tmp_path, seed):
    ref = make_run(tmp_path / "ref", corpus, point_id="p", **LONG)
    started = time.monotonic()
    run_train(ref, nproc=2)
    duration = time.monotonic() - started
    run = make_run(tmp_path / "run", corpus, point_id="p", **LONG)
    proc = subprocess.Popen(
        LAUNCHERS["repeatlab train"](run),
        env=_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(random.Random(seed).uniform(0.2, 0.9) * duration)
    _kill_group_of(proc, signal.SIGKILL)
    proc.wait(timeout=30)
    run_train(run, nproc=2)
    np.testing.assert_array_equal(losses(run), losses(ref))
    wa, wb = final_weights(run), final_weights(ref)
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prepare_killed_at_a_random_moment_then_rerun(tmp_path, seed):
    source = tmp_path / "docs.jsonl"
    rng = random.Random(1)
    source.write_text(
        "".join(
            json.dumps({"text": " ".join(rng.choice("abcdefghij") * rng.randint(1, 9) for _ in range(400))}) + "\n"
            for _ in range(600)
        )
    )
    study = tmp_path / "s.yaml"
    study.write_text(
        json.dumps(
            {"name": "p", "corpus": {"url": str(source), "format": "jsonl"}, "storage": {"root": str(tmp_path / "ref")}}
        )
    )
    cmd = [PY, "-m", "repeatlab", "prepare", "--config", str(study)]
    started = time.monotonic()
    subprocess.run(cmd, env=_env(), cwd=REPO, check=True, capture_output=True, timeout=300)
    duration = time.monotonic() - started
    study.write_text(study.read_text().replace(str(tmp_path / "ref"), str(tmp_path / "killed")))
    proc = subprocess.Popen(
        cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    time.sleep(random.Random(seed).uniform(0.3, 1.0) * duration)
    _kill_group_of(proc, signal.SIGKILL)
    proc.wait(timeout=30)
    subprocess.run(cmd, env=_env(), cwd=REPO, check=True, capture_output=True, timeout=300)

    def shards(root: Path) -> dict:
        (folder,) = list((root / "corpora").iterdir())
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}

    assert shards(tmp_path / "killed") == shards(tmp_path / "ref")  # no .tmp-* left, every file identical


# ----------------------------------------------------------------------------------------------------------------------
# The S3 server frozen in the middle of a checkpoint


@pytest.mark.slow
def test_s3_server_frozen_mid_checkpoint_then_resume(s3_server, s3_env, tmp_path, corpus):
    """SIGSTOP the SeaweedFS server while the trainer writes checkpoints to it, kill the stuck trainer, SIGCONT the
    server: whatever was half-written is never used (no state.json or a hash mismatch) and the resumed run equals an
    uninterrupted one bit for bit."""
    import shutil

    local = tmp_path / "local"
    local_run = make_run(local, corpus, point_id="p", **LONG)
    ref = make_run(tmp_path / "ref", corpus, point_id="p", **LONG)
    run_train(ref)
    run = s3_env + "/runs/p"
    for name in ("point.json", "plan.json", "plan.npy", "repeated.npy"):
        storage.write_bytes(storage.join(run, name), (local / name).read_bytes())
    shutil.rmtree(local)
    del local_run
    pid = _server_pid(s3_server.endpoint_url)
    env = _env(REPEATLAB_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [PY, "-m", "repeatlab.train", "--run-url", run],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert _wait_for(
            lambda: storage.exists(storage.join(run, "checkpoints", "step-0000006", "state.json")), every_s=0.05
        )
        time.sleep(random.Random(3).uniform(0.0, 0.5))
        os.kill(pid, signal.SIGSTOP)
        time.sleep(2)
        _kill_group_of(proc, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        os.kill(pid, signal.SIGCONT)
    storage.clear_instance_caches()
    out = subprocess.run(
        [PY, "-m", "repeatlab.train", "--run-url", run], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in storage.read_text(storage.join(run, "train.jsonl")).splitlines()]
    got = np.array([[r["train_loss"], r["test_loss"], r["repeated_loss"] or 0.0] for r in rows])
    np.testing.assert_array_equal(got, losses(ref))
    import io

    import torch

    done = storage.read_json(storage.join(run, "done.json"))
    weights = torch.load(
        io.BytesIO(storage.read_bytes(storage.join(run, "checkpoints", done["checkpoint"], "model.pt"))),
        weights_only=True,
    )
    wb = final_weights(ref)
    assert all(np.array_equal(weights[k].numpy(), wb[k].numpy()) for k in wb)


def _server_pid(endpoint: str) -> int:
    port = endpoint.rsplit(":", 1)[1]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"weed" in cmd and f"-s3.port={port}".encode() in cmd:
                    return int(pid)
    raise AssertionError("SeaweedFS server process not found")


# ----------------------------------------------------------------------------------------------------------------------
# A bit flip in each artifact kind


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "error:" in last and all(n in last for n in needles), proc.stderr[-3000:]
    return last


def _repeatlab_cli(command: str, run_url: str) -> subprocess.CompletedProcess:
    """`repeatlab train|evaluate --run-url URL` in a subprocess, its output captured (for _one_line_error)."""
    return subprocess.run(
        [PY, "-m", "repeatlab", command, "--run-url", run_url],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_bit_flip_in_a_shard_is_detected(tmp_path):
    folder = tmp_path / "corpus"
    corpus = make_corpus(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for split in manifest["splits"].values():
        split["sha256"] = hashlib.sha256((folder / split["file"]).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _flip(folder / "train.bin")
    run = make_run(tmp_path / "run", corpus, point_id="p", sequences=40)
    proc = _repeatlab_cli("train", run)
    _one_line_error(proc, "train.bin", "sha256", "manifest.json")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bit_flip_in_a_plan_is_detected(corpus, tmp_path):
    run = make_run(tmp_path / "run", corpus, point_id="p", sequences=40)
    _flip(tmp_path / "run" / "plan.npy", offset=-3)
    proc = _repeatlab_cli("train", run)
    _one_line_error(proc, "plan.npy", "plan.json", "repeatlab mix")


def test_train_before_mix_says_mix(corpus, tmp_path):
    run = make_run(tmp_path / "run", corpus, point_id="p", sequences=40)
    (tmp_path / "run" / "plan.json").unlink()
    proc = _repeatlab_cli("train", run)
    _one_line_error(proc, "plan.json", "repeatlab mix")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    corpus = make_corpus(folder / "corpus", probe_tokens=512)
    run = make_run(
        folder / "run",
        corpus,
        point_id="p",
        sequences=40,
        eval_cfg={
            "eval_tokens": 256,
            "copy_repeats": 3,
            "prefix_samples": 2,
            "prefix_random_tokens": 4,
            "prefix_repeats": 2,
            "top_k_heads": 1,
        },
    )
    run_train(run, evaluate=True)
    return folder / "run", run


def test_bit_flip_in_a_checkpoint_is_detected_by_evaluate(trained, tmp_path):
    import shutil

    src, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(src, copy)
    (model,) = sorted(copy.glob("checkpoints/*/model.pt"))[-1:]
    _flip(model)
    proc = _repeatlab_cli("evaluate", "file://" + str(copy))
    _one_line_error(proc, "model.pt", "sha256", "state.json")


def test_bit_flip_in_an_eval_record_is_detected(trained, tmp_path, caplog):
    import shutil

    from repeatlab import steps

    src, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(src, copy)
    record = json.loads((copy / "eval.json").read_text())
    assert "record_sha256" in record
    text = (copy / "eval.json").read_text()
    loss = f"{record['test_loss']!r}"
    flipped = loss[:-1] + ("1" if loss[-1] != "1" else "2")
    (copy / "eval.json").write_text(text.replace(loss, flipped, 1))
    caplog.set_level(logging.INFO, logger="repeatlab")
    out = steps.evaluate("file://" + str(copy))
    messages = [r.getMessage() for r in caplog.records if r.name == steps.__name__]
    assert any("record_sha256" in m and "evaluating again" in m for m in messages)
    assert out["test_loss"] == record["test_loss"]  # evaluated again, not the flipped value
