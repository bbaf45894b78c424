"""Packed training (repeatlab.train.Trainer over several points, repeatlab.model.PackedGPT, repeatlab.packs).

The equivalence tolerance (docs/architecture.md, "Packed training"): fp32 on CPU, a pack and a lone model compute the
same sums in a different order (one batched matmul over P models instead of one per model, layer norm's affine part
outside the fused kernel), so losses agree to float rounding, measured at <= 2.4e-7 nats on these curves, and the
final weights to a relative norm difference of <= 8.8e-4: Adam divides by sqrt(v), turning rounding-level gradient
differences on near-zero entries into steps of order lr (the same bound test_train uses for DDP vs one process).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import (
    PY,
    REPO,
    SMALL_EVAL,
    _env,
    assert_weights_close,
    final_weights,
    losses,
    make_corpus,
    make_run,
    rows,
)

from repeatlab import storage

CURVE_ATOL = 2e-6  # nats; measured <= 3e-7 (see the module docstring)
WEIGHT_REL = 1e-3
EVAL_REL = 1e-4  # eval.json's losses and ICL score from the final weights; measured <= 1.2e-6
POINTS = (("a", {}), ("b", {"seed": 3, "fraction": 0.0}), ("c", {"seed": 1, "fraction": 0.5, "n_rep": 2}))


def train_cmd(*run_urls: str, max_steps: int | None = None, evaluate: bool = False) -> list[str]:
    cmd = [PY, "-m", "repeatlab.train", "--run-url", *run_urls]
    if max_steps is not None:
        cmd += ["--max-steps", str(max_steps)]
    return cmd + (["--evaluate"] if evaluate else [])


def run_pack(*run_urls: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(*run_urls, **kw), env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"pack training failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def make_points(root: Path, corpus: str, **extra) -> list[str]:
    return [make_run(root / name, corpus, point_id=name, eval_cfg=SMALL_EVAL, **{**kw, **extra}) for name, kw in POINTS]


def curve(run: str) -> list[dict]:
    """train.jsonl without the timing fields (wall time differs between any two runs)."""
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in rows(run)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return make_corpus(tmp_path_factory.mktemp("corpus"), probe_tokens=512)


@pytest.fixture(scope="module")
def packed(tmp_path_factory, corpus) -> list[str]:
    """The three points trained as one uninterrupted pack, evaluated in the training process."""
    runs = make_points(tmp_path_factory.mktemp("packed"), corpus)
    run_pack(*runs, evaluate=True)
    return runs


# ----------------------------------------------------------------------------------------------------------------------
# The model


def test_packed_gpt_keeps_each_seeds_init_and_matches_lone_models():
    from repeatlab.model import GPT, GPTConfig, PackedGPT

    cfg = GPTConfig(vocab_size=32, context=8, n_layer=2, n_head=2, n_embd=16)
    models = []
    for seed in (0, 5, 9):
        torch.manual_seed(seed)
        models.append(GPT(cfg))
    pack = PackedGPT.from_models(models)
    for p, model in enumerate(models):
        sd, mine = model.state_dict(), pack.point_state_dict(p)
        assert list(mine) == list(sd)  # GPT's keys and order, lm_head.weight included: a GPT loads it
        assert all(torch.equal(mine[k], sd[k]) for k in sd), "initial weights differ from the lone model's"
    idx = torch.randint(0, 32, (3, 4, 8))
    logits, loss = pack(idx, idx)
    for p, model in enumerate(models):
        lone_logits, lone_loss = model(idx[p], idx[p])
        torch.testing.assert_close(logits[p], lone_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loss[p], lone_loss, atol=1e-6, rtol=1e-6)


def test_packed_gradients_are_each_models_own_and_clipping_is_per_model():
    from repeatlab.model import GPT, GPTConfig, PackedGPT

    cfg = GPTConfig(vocab_size=32, context=8, n_layer=1, n_head=2, n_embd=16)
    models = [GPT(cfg) for _ in range(2)]
    pack = PackedGPT.from_models(models)
    idx = torch.randint(0, 32, (2, 4, 8))
    _, loss = pack(idx, idx)
    loss.sum().backward()
    name = "transformer.h.0.attn.c_attn.weight"
    lone_norms = []
    for p, model in enumerate(models):
        model(idx[p], idx[p])[1].backward()
        torch.testing.assert_close(
            pack.stacked(name).grad[p], dict(model.named_parameters())[name].grad, atol=1e-7, rtol=1e-4
        )  # before clipping: model p's own gradient
        lone_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)))
    norms = pack.clip_grad_norm_(0.01)
    assert [float(n) for n in norms] == pytest.approx(lone_norms, rel=1e-5)
    for p, model in enumerate(models):  # each clipped by its own norm
        torch.testing.assert_close(
            pack.stacked(name).grad[p], dict(model.named_parameters())[name].grad, atol=1e-9, rtol=1e-4
        )


# ----------------------------------------------------------------------------------------------------------------------
# Packed vs one at a time


def test_pack_equals_one_at_a_time(tmp_path, corpus, packed):
    """The same 3 points (f = 0.25, a baseline, f = 0.5; three seeds) one at a time: the same exposure counts exactly,
    curves and eval records within the measured fp32 tolerance, every point's files in its own folder."""
    for (name, _), run in zip(POINTS, packed):
        lone = make_run(tmp_path / name, corpus, point_id=name, eval_cfg=SMALL_EVAL, **dict(POINTS)[name])
        run_pack(lone, evaluate=True)
        a, b = curve(run), curve(lone)
        assert [r["step"] for r in a] == [r["step"] for r in b]
        np.testing.assert_allclose(losses(run), losses(lone), atol=CURVE_ATOL, rtol=0)
        assert_weights_close(final_weights(lone), final_weights(run), rel=WEIGHT_REL)
        done_p, done_l = (storage.read_json(storage.join(r, "done.json")) for r in (run, lone))
        assert done_p["repeated_exposures"] == done_l["repeated_exposures"] and done_p["pack_size"] == 3
        ev_p, ev_l = (storage.read_json(storage.join(r, "eval.json")) for r in (run, lone))
        for key in ("test_loss", "repeated_loss", "icl_score"):
            if ev_l[key] is None:
                assert ev_p[key] is None
            else:
                assert ev_p[key] == pytest.approx(ev_l[key], rel=EVAL_REL), key


def test_finished_points_of_a_pack_are_skipped(tmp_path, corpus, packed):
    """A finished point in a pack is skipped untouched; the others train (content addressing stays per point)."""
    a_done = Path(storage.local_path(packed[0])) / "done.json"
    before = a_done.stat().st_mtime_ns
    fresh = make_run(tmp_path / "fresh", corpus, point_id="fresh", eval_cfg=SMALL_EVAL, seed=7)
    proc = run_pack(packed[0], fresh)
    assert "already trained" in proc.stderr and a_done.stat().st_mtime_ns == before
    assert storage.read_json(storage.join(fresh, "done.json"))["pack_size"] == 1


def _complete(run: str, step: int) -> bool:
    return (Path(storage.local_path(run)) / "checkpoints" / f"step-{step:07d}" / "state.json").exists()


def test_sigkilled_pack_resumes_to_the_uninterrupted_result(tmp_path, corpus, packed):
    """SIGKILL the pack once every point has its step-10 checkpoint, rerun: each point resumes from step 10 and ends
    bit-identical to the uninterrupted pack (curves, weights, exposures)."""
    runs = make_points(tmp_path, corpus)
    proc = subprocess.Popen(
        train_cmd(*runs, evaluate=True), env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 240
        while not all(_complete(r, 10) for r in runs) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert all(_complete(r, 10) for r in runs) and not any(
        (Path(storage.local_path(r)) / "done.json").exists() for r in runs
    ), "killed too late to test a resume"
    out = run_pack(*runs, evaluate=True)
    assert out.stderr.count("resuming from") == 3
    for run, ref in zip(runs, packed):
        assert curve(run) == curve(ref)
        wa, wb = final_weights(run), final_weights(ref)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        done, ref_done = (storage.read_json(storage.join(r, "done.json")) for r in (run, ref))
        assert done["repeated_exposures"] == ref_done["repeated_exposures"]
        ev, ref_ev = (storage.read_json(storage.join(r, "eval.json")) for r in (run, ref))
        assert ev["test_loss"] == ref_ev["test_loss"]


def test_points_at_different_checkpoints_train_as_separate_packs(tmp_path, corpus):
    """A crash between two points' checkpoint writes leaves them at different steps: they resume as two packs, each
    from its own checkpoint (the unpacked format: a point stopped alone resumes in a pack)."""
    runs = make_points(tmp_path, corpus)[:2]
    run_pack(runs[0], max_steps=10)
    run_pack(runs[1], max_steps=5)
    proc = run_pack(*runs)
    assert "step-0000010 (step 10/" in proc.stderr and "step-0000005 (step 5/" in proc.stderr
    for run in runs:
        assert storage.read_json(storage.join(run, "done.json"))["step"] == 21


@pytest.mark.slow
def test_ddp_pack_matches_one_process(tmp_path, corpus, packed):
    """torchrun with 2 ranks splits every packed model's batch: the same results up to float rounding."""
    from repeatlab.launch import torchrun_command

    runs = make_points(tmp_path, corpus)
    proc = subprocess.run(
        torchrun_command(runs, nproc_per_node=2), env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for run, ref in zip(runs, packed):
        np.testing.assert_allclose(losses(run), losses(ref), atol=CURVE_ATOL, rtol=0)
        assert storage.read_json(storage.join(run, "done.json"))["world_size"] == 2


# ----------------------------------------------------------------------------------------------------------------------
# Bad input


def _refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("repeatlab train: error: ") and all(n in last for n in needles), last


def test_points_of_other_shapes_cannot_share_a_pack(tmp_path, corpus):
    a = make_run(tmp_path / "a", corpus, point_id="a")
    wide = make_run(tmp_path / "wide", corpus, point_id="wide", model={"n_embd": 32})
    longer = make_run(tmp_path / "long", corpus, point_id="long", sequences=120)
    _refused(run_pack(a, wide, check=False), "cannot share a pack", "model differs")
    _refused(run_pack(a, longer, check=False), "cannot share a pack", "differs")
    assert not any((Path(storage.local_path(r)) / "checkpoints").exists() for r in (a, wide, longer))


def test_fsdp_pack_is_refused(tmp_path, corpus):
    runs = [
        make_run(tmp_path / n, corpus, point_id=n, seed=i, train={"parallelism": "fsdp"}) for i, n in enumerate("xy")
    ]
    _refused(run_pack(*runs, check=False), "train.parallelism", "fsdp", "pack")


def test_config_refuses_fsdp_with_packs_and_bad_pack_size():
    from repeatlab.config import loads
    from repeatlab.errors import ConfigError

    base = {"name": "s", "corpus": {"url": "default"}, "models": [{"n_layer": 1, "n_embd": 16, "n_head": 2}]}
    with pytest.raises(ConfigError, match="train.pack_size"):
        loads(json.dumps({**base, "train": {"parallelism": "fsdp", "pack_size": 4}}))
    with pytest.raises(ConfigError, match="train.pack_size"):
        loads(json.dumps({**base, "train": {"pack_size": -1}}))
    assert loads(json.dumps({**base, "train": {"parallelism": "fsdp", "pack_size": 1}})).train.pack_size == 1
    from repeatlab.packs import effective_pack_size

    fsdp = loads(json.dumps({**base, "train": {"parallelism": "fsdp"}})).train  # the default: automatic
    assert effective_pack_size(fsdp) == 1 and effective_pack_size(loads(json.dumps(base)).train) == 8


# ----------------------------------------------------------------------------------------------------------------------
# Grouping


def _point(pid: str, n_embd: int = 16, **over) -> dict:
    point = {
        "point_id": pid,
        "corpus_id": "c",
        "corpus_url": "file:///c",
        "fraction": 0.5,
        "epochs": 4.0,
        "seed": 0,
        "control": False,
        "eval": {},
        "model": {
            "name": "m",
            "n_layer": 1,
            "n_embd": n_embd,
            "n_head": 2,
            "mlp_ratio": 4,
            "vocab_size": 256,
            "context": 128,
            "n_params_nonembed": 12 * n_embd**2,
            "n_params_total": 12 * n_embd**2,
        },
        "budget": {"total_tokens": 1 << 20, "context": 128, "batch_tokens": 4096},
        "train": {"learning_rate": 3e-3, "pack_size": 4, "nproc_per_node": 1, "nnodes": 1, "micro_batch_sequences": 0},
    }
    point.update(over)
    return point


def test_packs_group_by_shape_and_schedule_and_respect_pack_size():
    from repeatlab.packs import plan_packs

    points = (
        [_point(f"a{i}", seed=i) for i in range(6)]
        + [_point("w0", n_embd=32), _point("w1", n_embd=32)]
        + [_point("lr", train={**_point("x")["train"], "learning_rate": 1e-3})]
    )
    packs = plan_packs(points, pack_size=4, pod_memory="8Gi")
    # the most expensive pack first: 2 points of width 32 cost more than 4 of width 16
    assert [p["point_ids"] for p in packs] == [["w0", "w1"], ["a0", "a1", "a2", "a3"], ["a4", "a5"], ["lr"]]
    assert not any(p["split"] for p in packs)


def test_controls_pack_only_with_points_of_their_plan_length():
    """A unique-only control trains on (1 - f) T tokens: fewer steps than the repeated points and the baseline, and
    a different count for each f. Packing it with them made the trainer refuse the pack (paper-small, 2026-11-30)."""
    from repeatlab.packs import plan_packs

    points = [
        _point("base", fraction=0.0, epochs=0.0),
        _point("r01", fraction=0.1),
        _point("r05", fraction=0.5),
        _point("c01", fraction=0.1, epochs=0.0, control=True),
        _point("c05", fraction=0.5, epochs=0.0, control=True),
        _point("c05s1", fraction=0.5, epochs=0.0, control=True, seed=1),
    ]
    packs = plan_packs(points, pack_size=8, pod_memory="8Gi")
    assert sorted(sorted(p["point_ids"]) for p in packs) == [["base", "r01", "r05"], ["c01"], ["c05", "c05s1"]]


@pytest.mark.parametrize("study", sorted(p.stem for p in (REPO / "pipelines" / "configs").glob("*.yaml")))
def test_every_planned_pack_has_one_step_schedule(study):
    """Each pack of the checked-in studies, checked with the plans the mix step builds and the trainer's step count:
    every point of a pack has the same number of sequences and steps (what check_pack demands)."""
    from repeatlab import config, grid, mix

    cfg = config.load(str(REPO / "pipelines" / "configs" / f"{study}.yaml"))
    points = {p["point_id"]: p for p in grid.grid_points(cfg, "cid", "file:///c", 256)}
    for pack in grid.study_packs(cfg, list(points.values())):
        schedules = set()
        for pid in pack["point_ids"]:
            p, b = points[pid], points[pid]["budget"]
            plan = mix.build_plan(
                train_tokens=4 * int(b["total_tokens"]),
                total_tokens=int(b["total_tokens"]),
                context=int(b["context"]),
                fraction=p["fraction"],
                epochs=p["epochs"],
                seed=p["seed"],
                control=p["control"],
            )
            batch = int(b["batch_tokens"]) // int(b["context"])
            schedules.add((len(plan.offsets), -(-len(plan.offsets) // batch)))
        assert len(schedules) == 1, (pack["point_ids"], schedules)


def test_a_pack_too_big_for_memory_is_split_and_grid_says_so(caplog):
    from repeatlab.packs import plan_packs, point_train_bytes

    points = [_point(f"p{i}", n_embd=256, seed=i) for i in range(8)]
    per_point = point_train_bytes(points[0])
    pod = str(int(per_point * 3 / 0.5) + 1)  # room for 3 points in half the pod's memory
    with caplog.at_level("WARNING"):
        packs = plan_packs(points, pack_size=8, pod_memory=pod)
    assert [len(p["point_ids"]) for p in packs] == [3, 3, 2] and all(p["split"] for p in packs)
    assert "split into packs of 3" in packs[0]["note"] and "split into packs of 3" in caplog.text


def test_study_packs_of_the_demo_config(tmp_path):
    """The demo study's points grouped by model size into packs of at most train.pack_size, every point once, with
    its run URL; what `repeatlab grid` lists and plan_grid writes to packs.json."""
    import dataclasses

    from repeatlab import config, grid
    from repeatlab.packs import describe_packs

    cfg = config.load(str(REPO / "pipelines" / "configs" / "demo.yaml"))
    cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root="file://" + str(tmp_path)))
    points = grid.grid_points(cfg, "cid", "file:///c", 256)
    packs = grid.study_packs(cfg, points)
    assert sorted(pid for p in packs for pid in p["point_ids"]) == sorted(p["point_id"] for p in points)
    assert all(len(p["point_ids"]) <= cfg.train.pack_size == 8 for p in packs)
    by_id = {p["point_id"]: p for p in points}
    for pack in packs:
        assert len({by_id[pid]["model"]["n_embd"] for pid in pack["point_ids"]}) == 1
        assert pack["run_urls"] == [grid.run_url(cfg.storage.root, pid) for pid in pack["point_ids"]]
    assert len(packs) >= len(cfg.models)
    lines = describe_packs(packs, points)
    assert len(lines) == len(packs) and lines[0].startswith("pack 1: ")


def test_launchers_pass_every_run_url_of_a_pack():
    from repeatlab.launch import torchrun_command

    cmd = torchrun_command(["file:///r/a", "file:///r/b"], nproc_per_node=2, evaluate=True)
    assert cmd[-6:] == ["-m", "repeatlab.train", "--evaluate", "--run-url", "file:///r/a", "file:///r/b"]
    assert torchrun_command("file:///r/a", nproc_per_node=1)[-2:] == ["--run-url", "file:///r/a"]


def test_a_bad_point_does_not_keep_its_pack_from_training(tmp_path, corpus):
    """A point whose inputs are refused is set aside: the pack's other points train, then the step fails with the
    bad point's one-line error (a rerun retries only it)."""
    runs = make_points(tmp_path, corpus)[:2]
    bad = make_run(tmp_path / "bad", corpus, point_id="bad", model={"n_head": 3})  # 16 is not a multiple of 3
    proc = run_pack(runs[0], bad, runs[1], check=False)
    _refused(proc, "bad", "n_head", "the other 2 point(s) of its pack trained")
    assert all(storage.exists(storage.join(r, "done.json")) for r in runs)
    assert not storage.exists(storage.join(bad, "done.json"))


def test_repeatlab_train_trains_several_run_urls_as_one_pack(tmp_path, corpus):
    """`repeatlab train --run-url A B`: one torchrun, one pack (done.json says pack_size 2)."""
    runs = make_points(tmp_path, corpus)[:2]
    proc = subprocess.run(
        [PY, "-m", "repeatlab", "train", "--run-url", *runs, "--nproc-per-node", "1", "--no-evaluate"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [storage.read_json(storage.join(r, "done.json"))["pack_size"] for r in runs] == [2, 2]
