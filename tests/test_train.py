"""The trainer (repeatlab.train) and launcher (repeatlab.launch) on tiny synthetic runs, CPU, gloo.

One synthetic corpus (uint16 tokens with learnable structure) and tiny plans built directly with numpy in the
documented formats (docs/architecture.md). torchrun runs use 2 ranks and OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from repeatlab import storage
from repeatlab.proc import descendants

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
CONTEXT = 16
VOCAB = 48
BATCH = 8  # sequences per global batch
CORPUS_ID = "c0ffee"


# ----------------------------------------------------------------------------------------------------------------------
# Synthetic inputs


SMALL_EVAL = {
    "eval_tokens": 256,
    "copy_repeats": 3,
    "prefix_samples": 4,
    "prefix_random_tokens": 5,
    "prefix_repeats": 3,
    "top_k_heads": 2,
}  # evaluation settings sized for the 16-token context of make_run


def make_corpus(
    folder: Path,
    train_tokens: int = 8192,
    test_tokens: int = 1024,
    vocab: int = VOCAB,
    corpus_id: str = CORPUS_ID,
    probe_tokens: int = 0,
) -> str:
    """train.bin/test.bin (and probe.bin when asked, for evaluation) of uint16 tokens from a noisy deterministic
    successor rule (something to learn)."""
    rng = np.random.default_rng(123)

    def stream(n):
        out = np.empty(n, dtype=np.uint16)
        t = 1
        for i in range(n):
            t = (t * 5 + 3) % (vocab - 1) + 1 if rng.random() > 0.2 else int(rng.integers(1, vocab))
            out[i] = t
        return out

    folder.mkdir(parents=True, exist_ok=True)
    stream(train_tokens).tofile(folder / "train.bin")
    stream(test_tokens).tofile(folder / "test.bin")
    splits = {
        "train": {"tokens": train_tokens, "bytes": 2 * train_tokens, "file": "train.bin"},
        "test": {"tokens": test_tokens, "bytes": 2 * test_tokens, "file": "test.bin"},
    }
    if probe_tokens:
        stream(probe_tokens).tofile(folder / "probe.bin")
        splits["probe"] = {"tokens": probe_tokens, "bytes": 2 * probe_tokens, "file": "probe.bin"}
    manifest = {
        "corpus_id": corpus_id,
        "format_version": 1,
        "dtype": "uint16",
        "tokenizer": {"kind": "byte", "vocab_size": vocab, "eot_id": 0, "file": None},
        "splits": splits,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return "file://" + str(folder)


def make_run(
    folder: Path,
    corpus_url: str,
    *,
    sequences: int = 166,
    fraction: float = 0.25,
    n_rep: int = 4,
    seed: int = 0,
    train: dict | None = None,
    model: dict | None = None,
    plan_corpus_id: str = CORPUS_ID,
    batch: int = BATCH,
    point_id: str | None = None,
    eval_cfg: dict | None = None,
) -> str:
    """A run folder: point.json, plan.npy (repeated windows shuffled among unique ones), repeated.npy, plan.json."""
    folder.mkdir(parents=True, exist_ok=True)
    windows = (8192 - 1) // CONTEXT
    rng = np.random.default_rng(7)
    pool = rng.permutation(windows)
    exposures = int(round(fraction * sequences)) if fraction > 0 else 0
    n_rep = n_rep if exposures else 0
    repeated = pool[:n_rep].astype(np.int64) * CONTEXT
    unique = pool[n_rep : n_rep + sequences - exposures].astype(np.int64) * CONTEXT
    slots = (
        np.concatenate([unique, np.repeat(repeated, np.diff(np.linspace(0, exposures, n_rep + 1).round()).astype(int))])
        if n_rep
        else unique
    )
    plan = rng.permutation(slots).astype(np.int64)
    assert len(plan) == sequences
    np.save(folder / "plan.npy", plan)
    np.save(folder / "repeated.npy", repeated)
    tc = {
        "learning_rate": 1e-2,
        "warmup_fraction": 0.1,
        "micro_batch_sequences": 2,
        "eval_points": 5,
        "eval_sequences": 6,
        "checkpoint_every": 5,
        "keep_checkpoints": 2,
        "threads_per_rank": 1,
        "process_group_timeout_s": 60,
    }
    tc.update(train or {})
    m = {
        "name": "tiny",
        "n_layer": 1,
        "n_embd": 16,
        "n_head": 2,
        "mlp_ratio": 2,
        "attention_only": False,
        "vocab_size": VOCAB,
        "context": CONTEXT,
    }
    m.update(model or {})
    point = {
        "point_id": point_id or folder.name,
        "corpus_id": CORPUS_ID,
        "corpus_url": corpus_url,
        "model": m,
        "fraction": fraction,
        "epochs": exposures / n_rep if n_rep else 0.0,
        "seed": seed,
        "control": False,
        "budget": {"total_tokens": sequences * CONTEXT, "context": CONTEXT, "batch_tokens": batch * CONTEXT},
        "train": tc,
        "eval": dict(eval_cfg or {}),
    }
    (folder / "point.json").write_text(json.dumps(point))
    (folder / "plan.json").write_text(
        json.dumps(
            {
                "corpus_id": plan_corpus_id,
                "point_id": point["point_id"],
                "sequences": sequences,
                "plan_sha256": _file_sha256(folder / "plan.npy"),
                "repeated_sha256": _file_sha256(folder / "repeated.npy"),
            }
        )
    )
    return "file://" + str(folder)


def _file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# Running


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(extra)
    return env


def run_train(run_url: str, nproc: int = 1, max_steps: int | None = None, check: bool = True, evaluate: bool = False):
    """Train through the launcher's torchrun command (nproc > 1) or as one plain process."""
    from repeatlab.launch import torchrun_command

    if nproc > 1:
        cmd = torchrun_command(run_url, nproc_per_node=nproc, max_steps=max_steps, evaluate=evaluate)
    else:
        cmd = [PY, "-m", "repeatlab.train", "--run-url", run_url]
        if max_steps is not None:
            cmd += ["--max-steps", str(max_steps)]
        if evaluate:
            cmd += ["--evaluate"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def rows(run: str) -> list[dict]:
    return [json.loads(line) for line in Path(storage.local_path(run), "train.jsonl").read_text().splitlines()]


def final_weights(run: str) -> dict:
    import torch

    done = json.loads(Path(storage.local_path(run), "done.json").read_text())
    return torch.load(Path(storage.local_path(run), "checkpoints", done["checkpoint"], "model.pt"), weights_only=True)


def losses(run: str) -> np.ndarray:
    return np.array([[r["train_loss"], r["test_loss"], r["repeated_loss"] or 0.0] for r in rows(run)])


def assert_weights_close(wa: dict, wb: dict, rel: float = 1e-3) -> None:
    """Per tensor, ||a - b|| <= rel * ||a||. Element-wise tolerances do not fit: Adam turns rounding-level gradient
    differences on near-zero entries into differences of order lr * step size."""
    assert set(wa) == set(wb)
    for k in wa:
        a, b = wa[k].double(), wb[k].double()
        assert float((a - b).norm()) <= rel * float(a.norm()) + 1e-12, k


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus):
    """One uninterrupted single-process run and one 2-rank DDP run of the same point (reused by several tests)."""
    root = tmp_path_factory.mktemp("runs")
    single = make_run(root / "single", corpus, point_id="p")
    run_train(single)
    ddp = make_run(root / "ddp", corpus, point_id="p")
    run_train(ddp, nproc=2)
    return {"root": root, "single": single, "ddp": ddp, "corpus": corpus}


# ----------------------------------------------------------------------------------------------------------------------
# Units


def test_schedule_and_eval_steps():
    from repeatlab.config import TrainConfig
    from repeatlab.train import checkpoint_interval, eval_steps, lr_at

    tc = TrainConfig(learning_rate=0.5, warmup_fraction=0.1, min_lr_ratio=0.1)  # a TrainConfig is validated: lr < 1
    lrs = [lr_at(s, 100, tc) for s in range(1, 101)]
    assert lrs[0] == pytest.approx(0.05) and lrs[9] == pytest.approx(0.5)  # linear warmup over 10 steps
    assert lrs[-1] == pytest.approx(0.05)  # cosine to min_lr_ratio at the last step
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    points = eval_steps(1000, 12)
    assert points[0] == 1 and points[-1] == 1000 and len(points) <= 12
    assert np.all(np.diff(np.log(points[1:])) > 0)
    assert checkpoint_interval(95, TrainConfig()) == 10


def test_exposure_counter_matches_bincount():
    from repeatlab.train import ExposureCounter

    repeated = np.array([48, 16, 400], dtype=np.int64)
    c = ExposureCounter(repeated)
    c.add(np.array([16, 16, 32, 400, 48, 16]))
    c.add(np.array([1000]))
    assert c.counts.tolist() == [1, 3, 1]


# ----------------------------------------------------------------------------------------------------------------------
# Training runs


def test_ddp_two_ranks_matches_single_process(base):
    """(a) 2 ranks on gloo with the same global batch give the same curve as one process."""
    a, b = losses(base["single"]), losses(base["ddp"])
    assert a.shape == b.shape and len(a) >= 4
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert_weights_close(final_weights(base["single"]), final_weights(base["ddp"]))
    first, last = rows(base["single"])[0], rows(base["single"])[-1]
    assert last["test_loss"] < first["test_loss"] - 0.3  # it learns
    assert last["step"] == 21 and last["tokens"] == 166 * CONTEXT  # ceil(166 / 8) steps; the partial batch trained


def test_done_json_and_exposures(base):
    """(d) every repeated sequence was trained on exactly as often as the plan lists it (summed over ranks)."""
    from repeatlab.train import plan_exposures

    for run in (base["single"], base["ddp"]):
        folder = Path(storage.local_path(run))
        done = json.loads((folder / "done.json").read_text())
        expected = plan_exposures(np.load(folder / "plan.npy"), np.load(folder / "repeated.npy"))
        measured = np.load(folder / "checkpoints" / done["checkpoint"] / "exposures.npy")
        assert measured.tolist() == expected.tolist()
        assert done["repeated_exposures"] == {
            "sequences": 4,
            "min": int(expected.min()),
            "max": int(expected.max()),
            "total": round(0.25 * 166),
        }
        assert done["step"] == 21 and done["last_batch_sequences"] == 166 - 20 * BATCH
        # keep_checkpoints = 2: only the last two complete checkpoints remain
        assert sorted(os.listdir(folder / "checkpoints")) == ["step-0000020", "step-0000021"]


def test_rerun_of_finished_point_does_nothing(base):
    """(f) a finished point: "already trained", exit 0, nothing touched."""
    folder = Path(storage.local_path(base["single"]))
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    proc = run_train(base["single"])
    assert "already trained" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


def test_same_seed_same_curve_other_seed_differs(base, tmp_path):
    """(e) the same seed reproduces the curve exactly; another seed does not."""
    again = make_run(tmp_path / "again", base["corpus"], point_id="p")
    run_train(again)
    np.testing.assert_array_equal(losses(again), losses(base["single"]))
    other = make_run(tmp_path / "other", base["corpus"], point_id="p2", seed=1)
    run_train(other)
    assert not np.array_equal(losses(other), losses(base["single"]))


def test_preempted_then_resumed_is_bit_identical(base, tmp_path):
    """(c) stop at step 13 (last checkpoint at 10), rerun: resumes from step 10 and ends bit-identical."""
    run = make_run(tmp_path / "resumed", base["corpus"], point_id="p")
    run_train(run, max_steps=13)
    folder = Path(storage.local_path(run))
    assert not (folder / "done.json").exists()
    assert sorted(os.listdir(folder / "checkpoints")) == ["step-0000005", "step-0000010"]
    proc = run_train(run)
    assert "resuming from" in proc.stderr and "step-0000010" in proc.stderr
    np.testing.assert_array_equal(losses(run), losses(base["single"]))
    assert [r["step"] for r in rows(run)] == [r["step"] for r in rows(base["single"])]
    wa, wb = final_weights(run), final_weights(base["single"])
    for k in wa:
        assert np.array_equal(wa[k].numpy(), wb[k].numpy()), k


def test_corrupt_and_partial_checkpoints_are_skipped(base, tmp_path):
    """(c) a checkpoint without state.json, and one with a truncated model.pt, are skipped for the previous one."""
    run = make_run(tmp_path / "corrupt", base["corpus"], point_id="p", train={"keep_checkpoints": 5})
    run_train(run, max_steps=15)
    ck = Path(storage.local_path(run)) / "checkpoints"
    assert sorted(os.listdir(ck)) == ["step-0000005", "step-0000010", "step-0000015"]
    data = (ck / "step-0000015" / "model.pt").read_bytes()
    (ck / "step-0000015" / "model.pt").write_bytes(data[: len(data) // 2])  # truncated
    shutil.copytree(ck / "step-0000010", ck / "step-0000020")
    (ck / "step-0000020" / "state.json").unlink()  # incomplete: no state.json
    proc = run_train(run)
    assert "incomplete checkpoint" in proc.stderr and "step-0000020" in proc.stderr
    assert "skipping checkpoint" in proc.stderr and "step-0000015" in proc.stderr
    assert "resuming from" in proc.stderr and "step-0000010 (step 10/" in proc.stderr
    np.testing.assert_array_equal(losses(run), losses(base["single"]))
    wa, wb = final_weights(run), final_weights(base["single"])
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout_s: float = 30) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids), "killed ranks still running"


def test_sigkill_of_torchrun_job_then_resume(base, tmp_path):
    """(c) SIGKILL the whole 2-rank torchrun job after its first checkpoint; the rerun ends identical to the
    uninterrupted 2-rank run."""
    from repeatlab.launch import torchrun_command

    # Long enough (75 steps) that the kill lands mid-run; every checkpoint kept so the one seen is still there.
    settings = dict(
        sequences=600,
        train={"checkpoint_every": 3, "keep_checkpoints": 100},
        model={"n_layer": 2, "n_embd": 64, "n_head": 4},
    )
    run = make_run(tmp_path / "killed", base["corpus"], point_id="p", **settings)
    ref = make_run(tmp_path / "killed-ref", base["corpus"], point_id="p", **settings)
    run_train(ref, nproc=2)
    ck = Path(storage.local_path(run)) / "checkpoints"
    proc = subprocess.Popen(
        torchrun_command(run, nproc_per_node=2),
        env=_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (ck / "step-0000003" / "state.json").exists():
        time.sleep(0.002)
    victims = descendants(proc.pid)  # torchrun starts its ranks in sessions of their own: kill them by pid
    for pid in [proc.pid, *victims]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    _wait_gone(victims)
    assert (ck / "step-0000003" / "state.json").exists()
    assert not (Path(storage.local_path(run)) / "done.json").exists()
    out = run_train(run, nproc=2)
    assert "resuming from" in out.stderr
    np.testing.assert_array_equal(losses(run), losses(ref))
    wa, wb = final_weights(run), final_weights(ref)
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


def test_fsdp2_matches_ddp(base, tmp_path):
    """(b) FSDP2 (fully_shard, gloo, CPU) and DDP agree on the same point, and FSDP2 resumes from its checkpoint."""
    run = make_run(tmp_path / "fsdp", base["corpus"], point_id="p", train={"parallelism": "fsdp"})
    run_train(run, nproc=2, max_steps=7)
    run_train(run, nproc=2)
    np.testing.assert_allclose(losses(run), losses(base["ddp"]), rtol=1e-5)
    assert_weights_close(final_weights(run), final_weights(base["ddp"]))


def test_baseline_has_null_repeated_loss(base, tmp_path):
    run = make_run(tmp_path / "f0", base["corpus"], point_id="f0", fraction=0.0, sequences=40)
    run_train(run)
    assert all(r["repeated_loss"] is None for r in rows(run))
    done = json.loads(Path(storage.local_path(run), "done.json").read_text())
    assert done["repeated_exposures"] == {"sequences": 0, "min": 0, "max": 0, "total": 0}


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


def _assert_refused(run: str, proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("repeatlab train: error:")]
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    folder = Path(storage.local_path(run))
    assert not (folder / "train.jsonl").exists() and not (folder / "done.json").exists()


@pytest.mark.parametrize("case", ["corpus_id", "vocab", "batch", "micro"])
def test_bad_input_is_one_line(base, tmp_path, case):
    kwargs = {
        "corpus_id": dict(plan_corpus_id="other"),
        "vocab": dict(model={"vocab_size": 32}),
        "batch": dict(batch=7),
        "micro": dict(train={"micro_batch_sequences": 3}),
    }[case]
    run = make_run(tmp_path / case, base["corpus"], sequences=40, **kwargs)
    proc = run_train(run, check=False)
    words = {
        "corpus_id": ["corpus ids do not match", "other"],
        "vocab": ["vocab_size", "48"],
        "batch": ["world size 1"],
        "micro": ["micro batch 3"],
    }[case]
    _assert_refused(run, proc, *words)


def test_world_size_that_does_not_divide_the_batch(base, tmp_path):
    run = make_run(tmp_path / "odd", base["corpus"], sequences=40, batch=6, train={"micro_batch_sequences": 0})
    from repeatlab.launch import torchrun_command

    proc = subprocess.run(
        torchrun_command(run, nproc_per_node=4), env=_env(), capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode != 0
    assert (
        proc.stderr.count("repeatlab train: error: global batch of 6 sequences is not divisible by world size 4") == 1
    )
    assert not list(Path(storage.local_path(run)).glob("train.jsonl"))


def test_checkpoint_of_another_config_is_refused(base, tmp_path):
    run = make_run(tmp_path / "foreign", base["corpus"], point_id="p", sequences=40)
    ck = Path(storage.local_path(base["single"])) / "checkpoints" / "step-0000020"
    shutil.copytree(ck, Path(storage.local_path(run)) / "checkpoints" / "step-0000020")
    proc = run_train(run, check=False)
    _assert_refused(run, proc, "belongs to another config", "step-0000020")


def test_evaluate_in_the_training_processes_matches_the_evaluate_step(tmp_path, caplog):
    """--evaluate: the 2 DDP ranks evaluate the final checkpoint before they exit; the record equals a separate
    one-process evaluation, and steps.evaluate reuses it instead of evaluating again."""
    from repeatlab import steps
    from repeatlab.evaluate import evaluate_run

    corpus = make_corpus(tmp_path / "corpus", probe_tokens=512)
    run = make_run(tmp_path / "run", corpus, point_id="ev", sequences=48, eval_cfg=SMALL_EVAL)
    proc = run_train(run, nproc=2, evaluate=True)
    in_training = storage.read_json(storage.join(run, "eval.json"))
    done = storage.read_json(storage.join(run, "done.json"))
    assert in_training["step"] == done["step"] == done["steps"]
    assert len([line for line in proc.stderr.splitlines() if line.startswith('{"event": "eval"')]) == 1  # rank 0 only
    caplog.set_level(logging.INFO, logger="repeatlab")
    assert steps.evaluate(run) == in_training
    lines = [r.getMessage() for r in caplog.records if r.name == steps.__name__]
    assert lines == [f"evaluate: {run} already evaluated; reusing eval.json"]
    storage.remove(storage.join(run, "eval.json"))
    separate = evaluate_run(run, device="cpu")
    for key in ("test_loss", "repeated_loss", "icl_score"):
        assert in_training[key] == pytest.approx(separate[key], rel=1e-5)
    assert np.allclose(in_training["heads"]["prefix_matching"], separate["heads"]["prefix_matching"], rtol=1e-5)


def test_failed_evaluation_in_training_leaves_the_trained_run(base, tmp_path):
    """A corpus without a probe split cannot be evaluated: training still succeeds, done.json is written, no
    eval.json, and the log says the evaluate step will evaluate again (where the error surfaces)."""
    from repeatlab import steps
    from repeatlab.errors import CorpusError

    run = make_run(tmp_path / "noprobe", base["corpus"], point_id="np", sequences=40)
    proc = run_train(run, evaluate=True)
    assert storage.exists(storage.join(run, "done.json")) and not storage.exists(storage.join(run, "eval.json"))
    assert "evaluation in the training process failed" in proc.stderr and "probe" in proc.stderr
    with pytest.raises(CorpusError, match="probe"):
        steps.evaluate(run)


# ----------------------------------------------------------------------------------------------------------------------
# Launcher


def test_torchrun_command_is_explicit():
    from repeatlab.launch import torchrun_command

    cmd = torchrun_command("file:///r", nproc_per_node=3)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and cmd[cmd.index("--nproc-per-node") + 1] == "3" and "auto" not in cmd
    assert cmd[-4:] == ["-m", "repeatlab.train", "--run-url", "file:///r"]
    assert torchrun_command("file:///r", nproc_per_node=1, evaluate=True)[-3:] == [
        "--evaluate",
        "--run-url",
        "file:///r",
    ]
    multi = torchrun_command("file:///r", nproc_per_node=2, nnodes=4, rdzv_endpoint="head:29400", rdzv_id="job1")
    assert "--standalone" not in multi
    assert multi[multi.index("--nnodes") + 1] == "4" and multi[multi.index("--rdzv-endpoint") + 1] == "head:29400"
    assert multi[multi.index("--rdzv-id") + 1] == "job1" and multi[multi.index("--rdzv-backend") + 1] == "c10d"


def test_launch_cli_runs_and_returns_exit_code(base, tmp_path):
    from repeatlab.cli import main

    run = make_run(tmp_path / "cli", base["corpus"], point_id="cli", sequences=40)
    proc = subprocess.run(
        [PY, "-m", "repeatlab", "train", "--run-url", run, "--nproc-per-node", "1"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert (Path(storage.local_path(run)) / "done.json").exists()
    assert main(["train", "--run-url", run]) == 0  # already trained
    bad = make_run(tmp_path / "clibad", base["corpus"], sequences=40, batch=7)
    assert main(["train", "--run-url", bad]) == 2  # the trainer's one-line error, raised again and printed
    proc = subprocess.run(
        [PY, "-m", "repeatlab", "train", "--run-url", bad],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("repeatlab train: error: ")


def test_trainer_component_appdef():
    from torchx import specs

    from repeatlab.torchx_component import trainer_component

    app = trainer_component(
        "s3://b/runs/p1", image="img:1", nnodes=2, nproc_per_node=4, cpu=8, gpu=4, memMB=32000, env={"FOO": "bar"}
    )
    assert isinstance(app, specs.AppDef)
    (role,) = app.roles
    assert role.image == "img:1" and role.num_replicas == 2
    assert role.resource.cpu == 8 and role.resource.gpu == 4 and role.resource.memMB == 32000
    assert role.env["FOO"] == "bar"
    line = " ".join([role.entrypoint, *role.args])
    assert line.startswith("bash -c python -m torch.distributed.run ") and "torchrun" not in line.replace(
        "torch.distributed.run", ""
    )
    assert "--nnodes 2" in line and "--nproc_per_node 4" in line
    assert "-m repeatlab.train --run-url s3://b/runs/p1" in line


def test_build_trainjob_spec():
    from kubeflow_trainer_api import models

    from repeatlab.launch import build_trainjob

    job = build_trainjob(
        "rl-p1",
        "research",
        "s3://b/runs/p1",
        "img:1",
        num_nodes=2,
        nproc_per_node=4,
        resources={"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 4},
        env={"A": "1"},
        node_selector={"pool": "gpu"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        evaluate=True,
    )
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["metadata"] == {
        "name": "rl-p1",
        "namespace": "research",
        "labels": {"app.kubernetes.io/name": "repeatlab"},
    }
    spec = job["spec"]
    assert spec["runtimeRef"]["name"] == "torch-distributed"
    t = spec["trainer"]
    assert t["numNodes"] == 2 and t["numProcPerNode"] == 4 and t["image"] == "img:1"
    # the venv's python runs torchrun: a bare `torchrun` would be the CUDA base image's conda one (no repeatlab)
    assert t["command"][:4] == ["python", "-m", "torch.distributed.run", "--nproc-per-node=4"]
    # the job's workers also evaluate the final checkpoint on their GPUs
    assert t["command"][-5:] == ["-m", "repeatlab.train", "--evaluate", "--run-url", "s3://b/runs/p1"]
    assert {"name": "A", "value": "1"} in t["env"]
    assert t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert t["resourcesPerNode"]["requests"]["memory"] == "32Gi"
    pod = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert pod["name"] == "node"
    podspec = pod["template"]["spec"]["template"]["spec"]
    assert podspec["nodeSelector"] == {"pool": "gpu"} and podspec["tolerations"][0]["key"] == "gpu"
    assert models.TrainerV1alpha1TrainJob.from_dict(job).to_dict() == job  # round-trips through the typed model
    json.dumps(job)


@pytest.mark.slow
def test_torchx_local_cwd_runs_a_point(base, tmp_path):
    """`torchx run -s local_cwd repeatlab/torchx_component.py:trainer_component --run_url ...` trains a point."""
    torchx = Path(sys.executable).parent / "torchx"
    if not torchx.exists():
        pytest.skip("torchx CLI not installed")
    run = make_run(tmp_path / "torchx", base["corpus"], point_id="tx", sequences=40)
    env = _env(PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(
        [
            str(torchx),
            "run",
            "-s",
            "local_cwd",
            "repeatlab/torchx_component.py:trainer_component",
            "--run_url",
            run,
            "--nproc_per_node",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (Path(storage.local_path(run)) / "done.json").exists()
