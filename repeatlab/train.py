"""The trainer: `python -m repeatlab.train --run-url URL`, always under torchrun or as one plain process.

Contract (docs/architecture.md):
- Reads only the torchrun env contract (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT);
  without it, one process (a process group of one, so every code path is the same). nccl on CUDA, gloo otherwise,
  with an explicit timeout (train.process_group_timeout_s).
- Inputs: `{run}/point.json`, `{run}/plan.json`, `{run}/plan.npy`, `{run}/repeated.npy`, and the corpus
  `{corpus_url}/manifest.json`, `train.bin`, `test.bin` (memory-mapped through storage.cached_local_copy, so remote
  roots work too). plan.json's, point.json's and the manifest's corpus_id must agree.
- Steps: S = len(plan) sequences, global batch B = budget.batch_tokens // context sequences, steps = ceil(S / B).
  Every planned sequence is trained exactly once, in plan order: when B does not divide S, the LAST step trains the
  remaining S mod B sequences (a smaller batch, its gradient the mean over those sequences). Nothing is dropped, so the
  repeated-exposure counts equal the plan's.
- Data parallelism: rank r of W takes global-batch positions r, r+W, r+2W, ... (plan order), in micro-batches of
  train.micro_batch_sequences (0: the whole per-rank batch); each micro loss is scaled so the gradient, after DDP's
  (or FSDP's) mean over ranks, is the mean over the global batch: results do not depend on W up to float rounding.
  A full batch needs B % W == 0 and (B / W) % micro == 0. In the last, partial batch a rank with fewer sequences runs
  zero-weighted padding micro-batches so every rank makes the same collective calls.
- Optimizer: AdamW from GPT.configure_optimizer, linear warmup over round(warmup_fraction * steps) steps, then cosine
  decay to min_lr_ratio * lr at the last step; grad-norm clipping; bf16 autocast and optional torch.compile on CUDA only.
  DDP by default (not wrapped for a single process), FSDP2 `fully_shard` (every block, then the root) for "fsdp".
- Curves: at about train.eval_points log-spaced steps (always step 1 and the last step) the test loss on the first
  train.eval_sequences windows of test.bin and the loss on the first train.eval_sequences repeated sequences (null for
  f = 0), sharded over ranks and all-reduced; one JSON row per evaluation in `{run}/train.jsonl` (rewritten whole and
  atomically each time): step, tokens, lr, train_loss (mean of the steps since the previous row), test_loss,
  repeated_loss, tokens_per_s (this session), elapsed_s (training wall time across resumes).
- Checkpoints: every train.checkpoint_every steps (0: ceil(steps / 10)) and at the end,
  `{run}/checkpoints/step-XXXXXXX/` with model.pt (full state dict, FQN keys), optim.pt (full optimizer state dict
  from torch.distributed.checkpoint.state_dict, the same format for DDP and FSDP), rng.pt (rank 0's torch RNG states),
  exposures.npy (per repeated sequence, exposures so far summed over ranks) and state.json LAST (step, plan cursor,
  config hash, sha256 of every file). Without a valid state.json a checkpoint is incomplete and skipped; a file whose
  hash does not match or that does not load is skipped with a warning in favour of the previous checkpoint. The last
  train.keep_checkpoints complete checkpoints are kept. A start resumes from the latest complete checkpoint; one from
  another config raises CheckpointError. Data order is a pure function of (plan, step), so a resume with the same
  world size gives bit-identical weights and losses to an uninterrupted run.
- `done.json` at the end (final step, tokens, wall time, final losses, repeated_exposures {min, max, total}); a rerun
  of a finished point prints "already trained" and exits 0 without touching anything.
- `--max-steps N` (testing) stops after step N as if preempted: no extra checkpoint, no done.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import time
from datetime import timedelta
from typing import Any

import numpy as np

from repeatlab import integrity, storage
from repeatlab.config import BudgetConfig, TrainConfig, stable_hash
from repeatlab.errors import CheckpointError, PlanError, RepeatlabError, StorageError, TrainError

CHECKPOINT_FORMAT_VERSION = 1
# Train settings that change how a run is executed but not what it computes: they may differ on a resume.
OPERATIONAL_TRAIN_KEYS = ("checkpoint_every", "keep_checkpoints", "nproc_per_node", "nnodes", "process_group_timeout_s",
                          "threads_per_rank", "compile", "eval_points", "eval_sequences")


# ----------------------------------------------------------------------------------------------------------------------
# The distributed environment (torchrun's contract)


@dataclasses.dataclass
class DistEnv:
    rank: int
    local_rank: int
    world: int
    local_world: int
    distributed: bool  # started by torchrun (the env contract is present)


def dist_env() -> DistEnv:
    env = os.environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return DistEnv(0, 0, 1, 1, False)
    world = int(env["WORLD_SIZE"])
    return DistEnv(rank=int(env["RANK"]), local_rank=int(env.get("LOCAL_RANK", "0")), world=world,
                   local_world=int(env.get("LOCAL_WORLD_SIZE", str(world))), distributed=True)


def _log(msg: str, env: DistEnv | None = None) -> None:
    if env is None or env.rank == 0:
        print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# Inputs


@dataclasses.dataclass
class Inputs:
    run_url: str
    point: dict
    budget: BudgetConfig
    tc: TrainConfig
    model_cfg: Any  # GPTConfig
    context: int
    plan: np.ndarray  # int64 [S], memory-mapped
    repeated: np.ndarray  # int64 [n_rep]
    train_data: np.ndarray  # memmap of train.bin
    test_data: np.ndarray | None  # memmap of test.bin
    batch: int  # B, sequences per global batch
    steps: int
    config_hash: str
    lease: Any = None  # repeatlab.lease.Lease on rank 0: checked before every write

    def check_lease(self) -> None:
        if self.lease is not None:
            self.lease.check()


def _known(cls, data: dict) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in (data or {}).items() if k in names})


def config_hash(point: dict, plan_info: dict) -> str:
    """What a checkpoint must match: everything that determines the computation (not operational settings)."""
    train = {k: v for k, v in (point.get("train") or {}).items() if k not in OPERATIONAL_TRAIN_KEYS}
    return stable_hash({"point_id": point.get("point_id"), "corpus_id": point.get("corpus_id"),
                        "model": point.get("model"), "budget": point.get("budget"), "train": train,
                        "seed": point.get("seed"), "fraction": point.get("fraction"), "epochs": point.get("epochs"),
                        "control": point.get("control", False), "plan_sha256": plan_info.get("plan_sha256"),
                        "plan_sequences": plan_info.get("sequences")})


def _load_npy(url: str) -> np.ndarray:
    path = storage.cached_local_copy(url)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise PlanError(f"{url}: not a readable .npy array ({exc})") from exc


def _open_shard(corpus_url: str, manifest: dict, split: str, dtype: np.dtype) -> np.ndarray:
    """Memory map of a corpus shard, its sha256 checked against the manifest once per process."""
    url = storage.join(corpus_url, f"{split}.bin")
    path = storage.cached_local_copy(url)
    info = (manifest.get("splits") or {}).get(split) or {"file": f"{split}.bin"}
    integrity.verify_shard(corpus_url, info, path)
    return np.memmap(path, dtype=dtype, mode="r")


def load_inputs(run_url: str, world: int) -> Inputs:
    """Read and check everything before anything is written; every failure is one line."""
    from repeatlab.model import GPTConfig

    run_url = run_url.rstrip("/")
    point = storage.read_json(storage.join(run_url, "point.json"))
    budget = _known(BudgetConfig, point.get("budget"))
    tc = _known(TrainConfig, point.get("train"))
    m = dict(point["model"])
    context = int(budget.context)
    if int(m.get("context", context)) != context:
        raise TrainError(f"model.context: {m.get('context')} is not allowed: must equal budget.context ({context})")
    model_cfg = GPTConfig(vocab_size=int(m["vocab_size"]), context=context, n_layer=int(m["n_layer"]),
                          n_head=int(m["n_head"]), n_embd=int(m["n_embd"]), mlp_ratio=int(m.get("mlp_ratio", 4)),
                          attention_only=bool(m.get("attention_only", False)), name=str(m.get("name") or ""))

    corpus_url = point["corpus_url"].rstrip("/")
    manifest = storage.read_json(storage.join(corpus_url, "manifest.json"))
    plan_url = storage.join(run_url, "plan.json")
    if not storage.exists(plan_url):
        raise PlanError(f"{plan_url}: not found: the point has no mixture plan yet; build it first "
                        f"(repeatlab mix --run-url {run_url})")
    plan_info = storage.read_json(plan_url)
    ids = {"plan.json": plan_info.get("corpus_id"), "point.json": point.get("corpus_id"),
           "manifest.json": manifest.get("corpus_id")}
    if len(set(ids.values())) != 1:
        raise PlanError(f"{run_url}: corpus ids do not match: " + ", ".join(f"{k} {v}" for k, v in ids.items())
                        + "; rebuild the plan (repeatlab mix) for this corpus")
    vocab = int((manifest.get("tokenizer") or {}).get("vocab_size", 0))
    if vocab > model_cfg.vocab_size:
        raise TrainError(f"model.vocab_size: {model_cfg.vocab_size} is not allowed: the corpus tokenizer has "
                         f"{vocab} tokens (the model's vocabulary must be at least as large)")
    dtype = np.dtype(manifest.get("dtype", "uint16"))

    integrity.verify_plan(run_url, plan_info)  # a flipped byte would silently train on other windows
    plan = _load_npy(storage.join(run_url, "plan.npy"))
    repeated = np.asarray(_load_npy(storage.join(run_url, "repeated.npy")), dtype=np.int64)
    if plan.ndim != 1 or len(plan) == 0:
        raise PlanError(f"{run_url}/plan.npy: expected a non-empty 1-D array of offsets, got shape {plan.shape}")
    if "sequences" in plan_info and int(plan_info["sequences"]) != len(plan):
        raise PlanError(f"{run_url}/plan.npy: {len(plan)} entries but plan.json says {plan_info['sequences']}")

    train_data = _open_shard(corpus_url, manifest, "train", dtype)
    hi = int(plan.max())
    if int(plan.min()) < 0 or hi + context + 1 > len(train_data) or (len(repeated) and (
            int(repeated.min()) < 0 or int(repeated.max()) + context + 1 > len(train_data))):
        raise PlanError(f"{run_url}/plan.npy: offsets run past the train shard ({len(train_data)} tokens, windows of "
                        f"{context + 1}); the plan was built for another corpus or context")
    test_data = None
    if storage.exists(storage.join(corpus_url, "test.bin")):
        test_data = _open_shard(corpus_url, manifest, "test", dtype)

    batch = int(budget.batch_tokens) // context
    if batch < 1 or int(budget.batch_tokens) % context:
        raise TrainError(f"budget.batch_tokens: {budget.batch_tokens} is not allowed: a positive multiple of "
                         f"the context ({context})")
    per_rank = batch // world if batch % world == 0 else None
    micro = int(tc.micro_batch_sequences) or (per_rank or 1)
    if per_rank is None or per_rank % micro:
        raise TrainError(f"global batch of {batch} sequences is not divisible by world size {world} x micro batch "
                         f"{tc.micro_batch_sequences or 'the whole per-rank batch'}: choose nproc so that it divides "
                         f"the batch, or change train.micro_batch_sequences")
    steps = -(-len(plan) // batch)
    return Inputs(run_url=run_url, point=point, budget=budget, tc=tc, model_cfg=model_cfg, context=context,
                  plan=plan, repeated=repeated, train_data=train_data, test_data=test_data, batch=batch, steps=steps,
                  config_hash=config_hash(point, plan_info))


# ----------------------------------------------------------------------------------------------------------------------
# Schedule


def lr_at(step: int, steps: int, tc: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (1-based): linear warmup, then cosine to min_lr_ratio * lr."""
    warmup = int(round(tc.warmup_fraction * steps))
    if warmup > 0 and step <= warmup:
        return tc.learning_rate * step / warmup
    if steps <= warmup:
        return tc.learning_rate
    progress = min(1.0, (step - warmup) / (steps - warmup))
    return tc.learning_rate * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def eval_steps(steps: int, points: int) -> list[int]:
    """About `points` log-spaced steps in [1, steps], always including 1 and the last step."""
    if points <= 1:
        return [steps]
    return sorted({int(round(s)) for s in np.geomspace(1, steps, points)} | {1, steps})


def checkpoint_interval(steps: int, tc: TrainConfig) -> int:
    return int(tc.checkpoint_every) if tc.checkpoint_every > 0 else max(1, -(-steps // 10))


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_name(step: int) -> str:
    return f"step-{int(step):07d}"


def checkpoint_url(run_url: str, step: int) -> str:
    return storage.join(run_url, "checkpoints", checkpoint_name(step))


def checkpoint_steps(run_url: str, complete_only: bool = False) -> list[int]:
    """Steps of the checkpoint folders, ascending; with complete_only, those holding state.json (written last)."""
    out = []
    for name in storage.listdir(storage.join(run_url, "checkpoints")):
        if name.startswith("step-") and name[5:].isdigit():
            step = int(name[5:])
            if not complete_only or storage.exists(storage.join(checkpoint_url(run_url, step), "state.json")):
                out.append(step)
    return sorted(out)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _torch_load_bytes(data: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def find_checkpoint(inputs: Inputs, env: DistEnv) -> dict | None:
    """The latest complete, readable checkpoint of this config: {"step", "state", "model", "optim", "rng",
    "exposures", "url"}; None when there is none. Another config's checkpoint raises CheckpointError."""
    for step in reversed(checkpoint_steps(inputs.run_url)):
        url = checkpoint_url(inputs.run_url, step)
        state_url = storage.join(url, "state.json")
        if not storage.exists(state_url):
            _log(f"train: skipping incomplete checkpoint {url} (no state.json)", env)
            continue
        try:
            state = storage.read_json(state_url)
        except StorageError as exc:
            _log(f"train: warning: skipping checkpoint {url}: {exc}", env)
            continue
        if state.get("point_id") != inputs.point.get("point_id") or state.get("config_hash") != inputs.config_hash:
            raise CheckpointError(f"checkpoint {url} belongs to another config (point {state.get('point_id')}, "
                                  f"config hash {state.get('config_hash')}; this point is "
                                  f"{inputs.point.get('point_id')}, {inputs.config_hash}): move it away or use a new "
                                  f"run folder")
        try:
            loaded: dict[str, Any] = {"step": int(state["step"]), "state": state, "url": url}
            for name, key in (("model.pt", "model"), ("optim.pt", "optim"), ("rng.pt", "rng"),
                              ("exposures.npy", "exposures")):
                data = storage.read_bytes(storage.join(url, name))
                expected = (state.get("files") or {}).get(name)
                if expected and _sha256(data) != expected:
                    raise CheckpointError(f"{name} does not match the sha256 in state.json (truncated or corrupt)")
                if name.endswith(".npy"):
                    loaded[key] = np.load(io.BytesIO(data), allow_pickle=False).astype(np.int64)
                else:
                    loaded[key] = _torch_load_bytes(data)
            if len(loaded["exposures"]) != len(inputs.repeated):
                raise CheckpointError("exposures.npy does not match repeated.npy")
            return loaded
        except Exception as exc:  # a corrupt file of any kind: fall back to the previous checkpoint
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            _log(f"train: warning: skipping checkpoint {url}: {msg}; trying the previous one", env)
            continue
    return None


def _write_torch(url: str, obj: Any) -> str:
    import torch

    with storage.atomic_local_file(url) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # a full disk: "[enforce fail at inline_container.cc:...] unexpected pos ..."
            raise storage.write_failed(url, exc, tmp) from None
        with open(tmp, "rb") as fh:
            return _sha256(fh.read())


def _write_file(url: str, data: bytes) -> str:
    storage.write_bytes(url, data)
    return _sha256(data)


def save_checkpoint(run_url: str, step: int, model_sd: dict, optim_sd: dict, rng: dict, exposures: np.ndarray,
                    state: dict, keep: int) -> str:
    """Rank 0: write one checkpoint, state.json last, then prune to the last `keep` complete checkpoints."""
    url = checkpoint_url(run_url, step)
    storage.remove(url, recursive=True)  # a partial leftover of an earlier attempt at this step
    buf = io.BytesIO()
    np.save(buf, np.asarray(exposures, dtype=np.int64), allow_pickle=False)
    files = {
        "model.pt": _write_torch(storage.join(url, "model.pt"), model_sd),
        "optim.pt": _write_torch(storage.join(url, "optim.pt"), optim_sd),
        "rng.pt": _write_torch(storage.join(url, "rng.pt"), rng),
        "exposures.npy": _write_file(storage.join(url, "exposures.npy"), buf.getvalue()),
    }
    storage.write_json(storage.join(url, "state.json"), {**state, "files": files})
    keep_steps = set(checkpoint_steps(run_url, complete_only=True)[-max(1, keep):])
    for s in checkpoint_steps(run_url):
        if s not in keep_steps and s < step:
            storage.remove(checkpoint_url(run_url, s), recursive=True)
    return url


# Bytes per parameter while training: fp32 weights, gradients and AdamW's two moments.
TRAIN_BYTES_PER_PARAM = 16


def available_memory(device) -> int | None:
    """Bytes this process can still allocate on `device` (None when unknown)."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if line.split()}
        return info.get("MemAvailable")
    except (OSError, ValueError, IndexError):
        return None


def check_memory(model_cfg, device, env: DistEnv, parallelism: str) -> None:
    """TrainError before allocating a model whose weights, gradients and optimizer state cannot fit (activations
    not counted: this is the floor); FSDP shards them over the world, DDP keeps a full copy per rank."""
    need = model_cfg.n_params_total * TRAIN_BYTES_PER_PARAM
    if parallelism == "fsdp":
        need //= max(1, env.world)
    ranks_here = env.local_world if device.type == "cpu" else 1  # CPU ranks of this node share its memory
    free = available_memory(device)
    if free is not None and need * ranks_here > free:
        raise TrainError(f"model {model_cfg.name or ''} ({model_cfg.n_params_total:.3g} parameters) needs at least "
                         f"{need * ranks_here / 2**30:,.1f} GiB for weights, gradients and AdamW state on "
                         f"{device.type} ({ranks_here} rank(s)), {free / 2**30:,.1f} GiB is available: choose a "
                         "smaller model, train.parallelism: fsdp over more ranks, or a larger machine")


# ----------------------------------------------------------------------------------------------------------------------
# Data


def windows(data: np.ndarray, offsets: np.ndarray, context: int) -> np.ndarray:
    """int64 [n, context + 1] token windows starting at `offsets`."""
    out = np.empty((len(offsets), context + 1), dtype=np.int64)
    for i, off in enumerate(offsets):
        out[i] = data[int(off):int(off) + context + 1]
    return out


class ExposureCounter:
    """Counts, per repeated sequence, how often this rank trained on it (offsets identify windows exactly)."""

    def __init__(self, repeated: np.ndarray):
        self.order = np.argsort(repeated, kind="stable")
        self.sorted = np.asarray(repeated, dtype=np.int64)[self.order]
        self.counts = np.zeros(len(repeated), dtype=np.int64)

    def add(self, offsets: np.ndarray) -> None:
        if not len(self.sorted) or not len(offsets):
            return
        offsets = np.asarray(offsets, dtype=np.int64)
        pos = np.searchsorted(self.sorted, offsets)
        pos_c = np.minimum(pos, len(self.sorted) - 1)
        hit = self.sorted[pos_c] == offsets
        np.add.at(self.counts, self.order[pos_c[hit]], 1)


def plan_exposures(plan: np.ndarray, repeated: np.ndarray) -> np.ndarray:
    """Per repeated sequence, how often the plan lists it (what training must reproduce)."""
    counter = ExposureCounter(repeated)
    for start in range(0, len(plan), 1 << 22):
        counter.add(np.asarray(plan[start:start + (1 << 22)]))
    return counter.counts


# ----------------------------------------------------------------------------------------------------------------------
# Training


def _progress_line(step, steps, loss, tok_s, eta_s) -> str:
    return f"step {step}/{steps}  loss {loss:.4f}  {tok_s:,.0f} tok/s  ETA {eta_s:,.0f} s"


def already_trained(run_url: str) -> dict | None:
    done_url = storage.join(run_url.rstrip("/"), "done.json")
    if not storage.exists(done_url):
        return None
    done = storage.read_json(done_url)
    point = storage.read_json(storage.join(run_url.rstrip("/"), "point.json"))
    if done.get("point_id") != point.get("point_id"):
        raise CheckpointError(f"{done_url} belongs to another point ({done.get('point_id')}, not "
                              f"{point.get('point_id')}): move it away to retrain")
    return done


def train(run_url: str, max_steps: int | None = None, evaluate: bool = False) -> dict:
    """Train (or resume) the point at run_url in this process; returns done.json's content, or a status dict.

    evaluate: once training finishes, evaluate the final checkpoint here too (eval.json), in the same process group.
    """
    env = dist_env()
    done = already_trained(run_url)
    if done is not None:
        _log(f"train: {run_url} already trained (step {done.get('step')}); nothing to do", env)
        return {"status": "already trained", **done}

    lease = _take_lease(run_url, env)
    try:
        done = already_trained(run_url)  # the previous holder of the lease may have finished this run
        if done is not None:
            _log(f"train: {run_url} already trained (step {done.get('step')}); nothing to do", env)
            return {"status": "already trained", **done}
        return _train_leased(run_url, env, lease, max_steps, evaluate)
    finally:
        if lease is not None:
            lease.release()


def _take_lease(run_url: str, env: DistEnv):
    """Rank 0 holds the run's lease (repeatlab.lease): one trainer per run folder. Other ranks follow rank 0."""
    from repeatlab.lease import Lease, wait_for_job

    job = None
    if env.distributed:
        job = "{}:{}/{}".format(os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", ""),
                                os.environ.get("TORCHELASTIC_RUN_ID", ""))
    if env.rank != 0:
        wait_for_job(run_url, job)
        return None
    lease = Lease(run_url, owner=f"repeatlab.train (world size {env.world})", job=job)
    lease.acquire(on_wait=lambda msg: _log(f"train: {msg}", env))
    return lease


def _train_leased(run_url: str, env: DistEnv, lease, max_steps: int | None, evaluate: bool) -> dict:
    inputs = load_inputs(run_url, env.world)
    inputs.lease = lease
    resume = find_checkpoint(inputs, env)  # raises on another config's checkpoint, before anything is written

    import torch
    import torch.distributed as dist

    tc = inputs.tc
    if tc.threads_per_rank > 0:
        torch.set_num_threads(int(tc.threads_per_rank))
    use_cuda = tc.device == "cuda" or (tc.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise TrainError("train.device: 'cuda' is not allowed here: no CUDA device is available")
    device = torch.device("cuda", env.local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    check_memory(inputs.model_cfg, device, env, tc.parallelism)
    backend = "nccl" if use_cuda else "gloo"
    timeout = timedelta(seconds=int(tc.process_group_timeout_s))
    if env.distributed:
        dist.init_process_group(backend=backend, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    try:
        result = _train(inputs, resume, env, device, max_steps)
        if evaluate and result.get("status") == "trained":
            evaluate_here(run_url, device, env)
        return result
    finally:
        dist.destroy_process_group()


def evaluate_here(run_url: str, device, env: DistEnv) -> None:
    """Evaluate the final checkpoint in the training processes, reusing their torch, device and process group.

    A separate evaluate step would pay a second process start and torch import (most of a small run's wall time
    locally) or a second GPU pod on a cluster. A failure here is logged, not raised: training has finished and
    done.json is written, and the evaluate step evaluates the run again in its own process, where errors surface.
    """
    from repeatlab.evaluate import evaluate_run

    try:
        evaluate_run(run_url, log=lambda msg: _log(msg, env), device=device.type)
    except Exception as exc:  # noqa: BLE001 - see the docstring: the evaluate step retries and reports
        print(f"train: rank {env.rank}: evaluation in the training process failed ({type(exc).__name__}: {exc}); "
              "the evaluate step will evaluate this run again", file=sys.stderr, flush=True)


def _train(inputs: Inputs, resume: dict | None, env: DistEnv, device, max_steps: int | None) -> dict:
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )
    from torch.nn import functional as F

    from repeatlab.model import GPT

    tc, ctx, W, rank = inputs.tc, inputs.context, env.world, env.rank
    steps, B = inputs.steps, inputs.batch
    run_url = inputs.run_url

    # All ranks must resume from the same checkpoint.
    chosen = [None] * W
    dist.all_gather_object(chosen, resume["step"] if resume else 0)
    if len(set(chosen)) != 1:
        raise CheckpointError(f"{run_url}: ranks found different latest checkpoints {chosen}; is storage shared?")

    torch.manual_seed(int(inputs.point.get("seed", 0)))  # identical init on every rank
    model = GPT(inputs.model_cfg)
    if resume:
        model.load_state_dict(resume["model"])
    model.to(device)
    raw = model
    fsdp = tc.parallelism == "fsdp"
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
        train_model = model
    elif W > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        train_model = model
    optimizer = raw.configure_optimizer(tc.weight_decay, tc.learning_rate, (tc.beta1, tc.beta2), device.type)
    sd_opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if resume:
        set_optimizer_state_dict(raw, optimizer, resume["optim"], options=StateDictOptions(full_state_dict=True))
        rng = resume["rng"]
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)
    eval_model = model if fsdp else raw  # FSDP all-gathers in forward: eval must go through the sharded module
    run_model = train_model
    if device.type == "cuda" and tc.compile:
        run_model = torch.compile(train_model)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if device.type == "cuda" and tc.dtype in ("auto", "bfloat16") else contextlib.nullcontext())

    micro = int(tc.micro_batch_sequences) or B // W
    start_step = resume["step"] if resume else 0
    state0 = resume["state"] if resume else {}
    base_elapsed = float(state0.get("elapsed_s", 0.0))
    loss_sum = float(state0.get("train_loss_sum", 0.0))  # train losses since the last eval row
    loss_steps = int(state0.get("train_loss_steps", 0))
    base_exposures = resume["exposures"] if resume else np.zeros(len(inputs.repeated), dtype=np.int64)
    counter = ExposureCounter(inputs.repeated)

    rows: list[dict] = []
    jsonl_url = storage.join(run_url, "train.jsonl")
    if resume and storage.exists(jsonl_url):
        rows = [json.loads(line) for line in storage.read_text(jsonl_url).splitlines() if line.strip()]
        rows = [r for r in rows if r.get("step", 0) <= start_step]
    evals = set(eval_steps(steps, tc.eval_points))
    every = checkpoint_interval(steps, tc)
    tty = sys.stderr.isatty() and rank == 0

    test_offsets = np.zeros(0, dtype=np.int64)
    if inputs.test_data is not None:
        n_test = min(int(tc.eval_sequences), max(0, (len(inputs.test_data) - 1) // ctx))
        test_offsets = np.arange(n_test, dtype=np.int64) * ctx
    rep_offsets = np.asarray(inputs.repeated[:int(tc.eval_sequences)], dtype=np.int64)

    def to_device(win: np.ndarray):
        t = torch.from_numpy(win).to(device, non_blocking=True)
        return t[:, :-1], t[:, 1:]

    def evaluate(data, offsets: np.ndarray) -> float | None:
        if data is None or len(offsets) == 0:
            return None
        mine = np.array_split(offsets, W)[rank]
        per = -(-len(offsets) // W)
        calls = -(-per // micro)
        total = torch.zeros(2, dtype=torch.float64, device=device)
        eval_model.eval()
        with torch.no_grad():
            for j in range(calls):
                sel = mine[j * micro:(j + 1) * micro]
                real = len(sel) > 0
                x, y = to_device(windows(data, sel if real else offsets[:1], ctx))
                with autocast:
                    logits, _ = eval_model(x, y)
                if real:
                    total[0] += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                                reduction="sum").double()
                    total[1] += y.numel()
        eval_model.train()
        dist.all_reduce(total)
        return float(total[0] / total[1])

    def gather_state():
        msd = get_model_state_dict(raw if not fsdp else model, options=sd_opts)
        osd = get_optimizer_state_dict(raw if not fsdp else model, optimizer, options=sd_opts)
        return msd, osd

    def total_exposures() -> np.ndarray:
        t = torch.from_numpy(counter.counts.copy())
        if device.type == "cuda":
            t = t.to(device)
        dist.all_reduce(t)
        return base_exposures + t.cpu().numpy()

    def write_checkpoint(step: int, cursor: int, elapsed: float):
        msd, osd = gather_state()
        exposures = total_exposures()
        if rank == 0:
            rng = {"torch": torch.get_rng_state(),
                   "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
            state = {"format_version": CHECKPOINT_FORMAT_VERSION, "point_id": inputs.point.get("point_id"),
                     "config_hash": inputs.config_hash, "step": step, "steps": steps, "cursor": cursor,
                     "tokens": cursor * ctx, "world_size": W, "elapsed_s": elapsed,
                     "train_loss_sum": loss_sum, "train_loss_steps": loss_steps, "parallelism": tc.parallelism}
            inputs.check_lease()
            save_checkpoint(run_url, step, msd, osd, rng, exposures, state, int(tc.keep_checkpoints))
        dist.barrier()
        return exposures

    if resume:
        if int(resume["state"].get("world_size", W)) != W:
            _log(f"train: resuming with world size {W} (checkpoint had {resume['state'].get('world_size')}): "
                 f"correct, but not bit-identical to an uninterrupted run", env)
        _log(f"train: resuming from {resume['url']} (step {start_step}/{steps})", env)
    else:
        _log(f"train: {run_url}: {steps} steps of {B} sequences x {ctx} tokens ({len(inputs.plan)} sequences), "
             f"world size {W}, {tc.parallelism}, device {device.type}", env)

    session_start = time.time()
    session_tokens = 0
    train_time = 0.0
    step = start_step
    last_row = None
    for step in range(start_step + 1, steps + 1):
        if max_steps is not None and step > max_steps:
            _log(f"train: stopped after step {step - 1} of {steps} (--max-steps {max_steps}); "
                 f"rerun to resume from the last checkpoint", env)
            return {"status": "stopped", "step": step - 1, "steps": steps}
        inputs.check_lease()
        t0 = time.time()
        lo, hi = (step - 1) * B, min(step * B, len(inputs.plan))
        P = hi - lo
        positions = np.arange(lo, hi)[rank::W]
        calls = math.ceil(math.ceil(P / W) / micro)  # micro-batches on the rank with the most sequences
        lr = lr_at(step, steps, tc)
        for group in optimizer.param_groups:
            group["lr"] = lr
        local_loss = torch.zeros((), dtype=torch.float64, device=device)
        for j in range(calls):
            sel = positions[j * micro:(j + 1) * micro]
            n = len(sel)
            offsets = np.asarray(inputs.plan[sel], dtype=np.int64) if n else np.asarray(inputs.plan[:1],
                                                                                          dtype=np.int64)
            if n:
                counter.add(offsets)
            x, y = to_device(windows(inputs.train_data, offsets, ctx))
            last = j == calls - 1
            if fsdp:
                model.set_requires_gradient_sync(last)
                sync = contextlib.nullcontext()
            else:
                sync = train_model.no_sync() if (W > 1 and not last) else contextlib.nullcontext()
            with sync:
                with autocast:
                    _, loss = run_model(x, y)
                # gradient = mean over the global batch after the mean over ranks: scale by n * W / P
                (loss * (n * W / P)).backward()
            local_loss += loss.detach().double() * n
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(train_model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dist.all_reduce(local_loss)
        step_loss = float(local_loss) / P
        loss_sum += step_loss
        loss_steps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time += time.time() - t0
        session_tokens += P * ctx
        tok_s = session_tokens / max(train_time, 1e-9)
        if tty:
            eta = (len(inputs.plan) - hi) * ctx / max(tok_s, 1e-9)
            print("\r" + _progress_line(step, steps, step_loss, tok_s, eta), end="", file=sys.stderr, flush=True)
        if step in evals:
            test_loss = evaluate(inputs.test_data, test_offsets)
            rep_loss = evaluate(inputs.train_data, rep_offsets)
            last_row = {"step": step, "tokens": hi * ctx, "lr": lr, "train_loss": loss_sum / max(loss_steps, 1),
                        "test_loss": test_loss, "repeated_loss": rep_loss, "tokens_per_s": tok_s,
                        "elapsed_s": base_elapsed + time.time() - session_start}
            loss_sum, loss_steps = 0.0, 0
            rows.append(last_row)
            if rank == 0:
                storage.write_text(jsonl_url, "".join(json.dumps(r) + "\n" for r in rows))
                if not tty:
                    tl = "n/a" if test_loss is None else f"{test_loss:.4f}"
                    rl = "n/a" if rep_loss is None else f"{rep_loss:.4f}"
                    print(f"train: step {step}/{steps} train {last_row['train_loss']:.4f} test {tl} repeated {rl} "
                          f"lr {lr:.3g} {tok_s:,.0f} tok/s", file=sys.stderr, flush=True)
        if step % every == 0 or step == steps:
            exposures = write_checkpoint(step, hi, base_elapsed + time.time() - session_start)
    if tty:
        print(file=sys.stderr)

    if start_step == steps:  # the final checkpoint was written but done.json was not
        exposures = base_exposures
    done = {"point_id": inputs.point.get("point_id"), "config_hash": inputs.config_hash, "step": steps,
            "steps": steps, "sequences": len(inputs.plan), "tokens": len(inputs.plan) * ctx,
            "batch_sequences": B, "last_batch_sequences": int(len(inputs.plan) - (steps - 1) * B),
            "world_size": W, "parallelism": tc.parallelism,
            "wall_time_s": base_elapsed + time.time() - session_start,
            "checkpoint": checkpoint_name(steps),
            "test_loss": (last_row or (rows[-1] if rows else {})).get("test_loss"),
            "repeated_loss": (last_row or (rows[-1] if rows else {})).get("repeated_loss"),
            "repeated_exposures": {"sequences": len(exposures),
                                   "min": int(exposures.min()) if len(exposures) else 0,
                                   "max": int(exposures.max()) if len(exposures) else 0,
                                   "total": int(exposures.sum())}}
    if rank == 0:
        inputs.check_lease()
        storage.write_json(storage.join(run_url, "done.json"), done)
        _log(f"train: done: {steps} steps, test loss {done['test_loss']}, repeated loss {done['repeated_loss']}, "
             f"repeated exposures {done['repeated_exposures']}", env)
    dist.barrier()
    return {"status": "trained", **done}


# ----------------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repeatlab.train",
                                     description="Train one grid point (under torchrun or as one process).")
    parser.add_argument("--run-url", required=True, help="the run folder holding point.json and the plan")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="testing: stop after this step as if preempted (no final checkpoint, no done.json)")
    parser.add_argument("--evaluate", action="store_true",
                        help="once trained, evaluate the final checkpoint in this process too (eval.json)")
    args = parser.parse_args(argv)
    env = dist_env()
    from repeatlab.proc import die_with_parent

    die_with_parent()  # a worker whose torchrun (or launcher) died stops instead of writing on its own
    try:
        train(args.run_url, max_steps=args.max_steps, evaluate=args.evaluate)
    except RepeatlabError as exc:
        if env.rank == 0:
            print(f"repeatlab train: error: {exc}", file=sys.stderr, flush=True)
        _write_error_file(exc)
        return exc.exit_code
    return 0


def _write_error_file(exc: RepeatlabError) -> None:
    """Hand the one-line error to the launcher (repeatlab.launch.run_trainer), which raises it again."""
    path = os.environ.get("REPEATLAB_ERROR_FILE")
    if not path:
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the first failing rank wins
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"message": str(exc), "type": type(exc).__name__}, fh)


if __name__ == "__main__":
    sys.exit(main())
