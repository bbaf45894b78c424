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
  decay to min_lr_ratio * lr at the last step; grad-norm clipping; bf16 autocast and optional torch.compile on CUDA
  only.
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
import json
import logging
import math
import os
import sys
import time
from typing import Any

import numpy as np

from repeatlab import integrity, layout, storage
from repeatlab.checkpoint import CHECKPOINT_FORMAT_VERSION, find_checkpoint, save_checkpoint
from repeatlab.checkpoint import write_torch as _write_torch  # noqa: F401 - the old name, still imported by tests
from repeatlab.config import BudgetConfig, TrainConfig, stable_hash
from repeatlab.distributed import DistEnv
from repeatlab.errors import CheckpointError, PlanError, RepeatlabError, TrainError

log = logging.getLogger(__name__)

# Train settings that change how a run is executed but not what it computes: they may differ on a resume.
OPERATIONAL_TRAIN_KEYS = (
    "checkpoint_every",
    "keep_checkpoints",
    "nproc_per_node",
    "nnodes",
    "process_group_timeout_s",
    "threads_per_rank",
    "compile",
    "eval_points",
    "eval_sequences",
    "pack_size",
)


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
    return stable_hash(
        {
            "point_id": point.get("point_id"),
            "corpus_id": point.get("corpus_id"),
            "model": point.get("model"),
            "budget": point.get("budget"),
            "train": train,
            "seed": point.get("seed"),
            "fraction": point.get("fraction"),
            "epochs": point.get("epochs"),
            "control": point.get("control", False),
            "plan_sha256": plan_info.get("plan_sha256"),
            "plan_sequences": plan_info.get("sequences"),
        }
    )


def _load_npy(url: str) -> np.ndarray:
    path = storage.cached_local_copy(url)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise PlanError(f"{url}: not a readable .npy array ({exc})") from exc


def _open_shard(corpus_url: str, manifest: dict, split: str, dtype: np.dtype) -> np.ndarray:
    """Memory map of a corpus shard, its sha256 checked against the manifest once per process."""
    path = storage.cached_local_copy(layout.Corpus(corpus_url).split(split))
    info = (manifest.get("splits") or {}).get(split) or {"file": layout.Corpus.split_file(split)}
    integrity.verify_shard(corpus_url, info, path)
    return np.memmap(path, dtype=dtype, mode="r")


def load_inputs(run_url: str, world: int) -> Inputs:
    """Read and check everything before anything is written; every failure is one line."""
    run_url = run_url.rstrip("/")
    point, budget, tc = _point_settings(run_url)
    context = int(budget.context)
    model_cfg = _model_config(point["model"], context)
    corpus_url = point["corpus_url"].rstrip("/")
    corpus = layout.Corpus(corpus_url)
    manifest = storage.read_json(corpus.manifest)
    plan_info = _plan_info(run_url, point, manifest)
    vocab = int((manifest.get("tokenizer") or {}).get("vocab_size", 0))
    if vocab > model_cfg.vocab_size:
        raise TrainError(
            f"model.vocab_size: {model_cfg.vocab_size} is not allowed: the corpus tokenizer has "
            f"{vocab} tokens (the model's vocabulary must be at least as large)"
        )
    dtype = np.dtype(manifest.get("dtype", "uint16"))
    plan, repeated = _load_plan(run_url, plan_info)
    train_data = _open_shard(corpus_url, manifest, "train", dtype)
    _check_offsets(run_url, plan, repeated, len(train_data), context)
    test_data = None
    if storage.exists(corpus.split("test")):
        test_data = _open_shard(corpus_url, manifest, "test", dtype)
    batch = _global_batch(budget, tc, world)
    return Inputs(
        run_url=run_url,
        point=point,
        budget=budget,
        tc=tc,
        model_cfg=model_cfg,
        context=context,
        plan=plan,
        repeated=repeated,
        train_data=train_data,
        test_data=test_data,
        batch=batch,
        steps=-(-len(plan) // batch),
        config_hash=config_hash(point, plan_info),
    )


def _point_settings(run_url: str) -> tuple[dict, BudgetConfig, TrainConfig]:
    """point.json, its budget, and its train settings updated by the execution-only settings (execution.json)."""
    run = layout.Run(run_url)
    point = storage.read_json(run.point)
    budget = _known(BudgetConfig, point.get("budget"))
    train = dict(point.get("train") or {})
    execution_url = run.execution  # the execution-only settings, rewritten by every plan
    if storage.exists(execution_url):
        train.update(storage.read_json(execution_url).get("train") or {})
    return point, budget, _known(TrainConfig, train)


def _model_config(model: dict, context: int) -> Any:
    """The GPTConfig of point.json's model; its context must be the budget's."""
    from repeatlab.model import GPTConfig

    m = dict(model)
    if int(m.get("context", context)) != context:
        raise TrainError(f"model.context: {m.get('context')} is not allowed: must equal budget.context ({context})")
    return GPTConfig(
        vocab_size=int(m["vocab_size"]),
        context=context,
        n_layer=int(m["n_layer"]),
        n_head=int(m["n_head"]),
        n_embd=int(m["n_embd"]),
        mlp_ratio=int(m.get("mlp_ratio", 4)),
        attention_only=bool(m.get("attention_only", False)),
        name=str(m.get("name") or ""),
    )


def _plan_info(run_url: str, point: dict, manifest: dict) -> dict:
    """plan.json, which must exist and name the same corpus as point.json and the corpus manifest."""
    plan_url = layout.Run(run_url).plan_json
    if not storage.exists(plan_url):
        raise PlanError(
            f"{plan_url}: not found: the point has no mixture plan yet; build it first "
            f"(repeatlab mix --run-url {run_url})"
        )
    plan_info = storage.read_json(plan_url)
    ids = {
        layout.PLAN: plan_info.get("corpus_id"),
        layout.POINT: point.get("corpus_id"),
        layout.MANIFEST: manifest.get("corpus_id"),
    }
    if len(set(ids.values())) != 1:
        raise PlanError(
            f"{run_url}: corpus ids do not match: "
            + ", ".join(f"{k} {v}" for k, v in ids.items())
            + "; rebuild the plan (repeatlab mix) for this corpus"
        )
    return plan_info


def _load_plan(run_url: str, plan_info: dict) -> tuple[np.ndarray, np.ndarray]:
    """(plan.npy memory-mapped, repeated.npy as int64), their hashes checked against plan.json."""
    integrity.verify_plan(run_url, plan_info)  # a flipped byte would silently train on other windows
    run = layout.Run(run_url)
    plan = _load_npy(run.plan_npy)
    repeated = np.asarray(_load_npy(run.repeated_npy), dtype=np.int64)
    if plan.ndim != 1 or len(plan) == 0:
        raise PlanError(f"{run_url}/plan.npy: expected a non-empty 1-D array of offsets, got shape {plan.shape}")
    if "sequences" in plan_info and int(plan_info["sequences"]) != len(plan):
        raise PlanError(f"{run_url}/plan.npy: {len(plan)} entries but plan.json says {plan_info['sequences']}")
    return plan, repeated


def _check_offsets(run_url: str, plan: np.ndarray, repeated: np.ndarray, tokens: int, context: int) -> None:
    """Every window (context + 1 tokens) of the plan and of the repeated set lies inside the train shard."""
    hi = int(plan.max())
    if (
        int(plan.min()) < 0
        or hi + context + 1 > tokens
        or (len(repeated) and (int(repeated.min()) < 0 or int(repeated.max()) + context + 1 > tokens))
    ):
        raise PlanError(
            f"{run_url}/plan.npy: offsets run past the train shard ({tokens} tokens, windows of "
            f"{context + 1}); the plan was built for another corpus or context"
        )


def _global_batch(budget: BudgetConfig, tc: TrainConfig, world: int) -> int:
    """B, sequences per global batch: it must split evenly over `world` ranks and their micro-batches."""
    context = int(budget.context)
    batch = int(budget.batch_tokens) // context
    if batch < 1 or int(budget.batch_tokens) % context:
        raise TrainError(
            f"budget.batch_tokens: {budget.batch_tokens} is not allowed: a positive multiple of the context ({context})"
        )
    per_rank = batch // world if batch % world == 0 else None
    micro = int(tc.micro_batch_sequences) or (per_rank or 1)
    if per_rank is None or per_rank % micro:
        raise TrainError(
            f"global batch of {batch} sequences is not divisible by world size {world} x micro batch "
            f"{tc.micro_batch_sequences or 'the whole per-rank batch'}: choose nproc so that it divides "
            f"the batch, or change train.micro_batch_sequences"
        )
    return batch


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


def check_memory(model_cfg: Any, device: Any, env: DistEnv, parallelism: str, pack_size: int = 1) -> None:
    """TrainError before allocating a model (or a pack of pack_size models) whose weights, gradients and optimizer
    state cannot fit (activations not counted: this is the floor); FSDP shards them over the world, DDP keeps a full
    copy per rank."""
    need = model_cfg.n_params_total * TRAIN_BYTES_PER_PARAM * max(1, int(pack_size))
    if parallelism == "fsdp":
        need //= max(1, env.world)
    ranks_here = env.local_world if device.type == "cpu" else 1  # CPU ranks of this node share its memory
    free = available_memory(device)
    if free is not None and need * ranks_here > free:
        what = "model" if pack_size <= 1 else f"a pack of {pack_size} x model"
        raise TrainError(
            f"{what} {model_cfg.name or ''} ({model_cfg.n_params_total:.3g} parameters) needs at least "
            f"{need * ranks_here / 2**30:,.1f} GiB for weights, gradients and AdamW state on "
            f"{device.type} ({ranks_here} rank(s)), {free / 2**30:,.1f} GiB is available: choose a "
            "smaller model or train.pack_size, train.parallelism: fsdp over more ranks, or a larger "
            "machine"
        )


# ----------------------------------------------------------------------------------------------------------------------
# Data


def windows(data: np.ndarray, offsets: np.ndarray, context: int) -> np.ndarray:
    """int64 [n, context + 1] token windows starting at `offsets`."""
    out = np.empty((len(offsets), context + 1), dtype=np.int64)
    for i, off in enumerate(offsets):
        out[i] = data[int(off) : int(off) + context + 1]
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
        counter.add(np.asarray(plan[start : start + (1 << 22)]))
    return counter.counts


# ----------------------------------------------------------------------------------------------------------------------
# Models: one GPT (pack size 1, exactly the unpacked path), or a pack of them stacked along a leading model axis


def _sync_context(train_model: Any, fsdp: bool, world: int, last: bool) -> Any:
    """Gradient all-reduce only on the last micro-batch of a step (DDP's no_sync, FSDP's requires_gradient_sync)."""
    if fsdp:
        train_model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    return train_model.no_sync() if (world > 1 and not last) else contextlib.nullcontext()


class SingleModel:
    """Pack size 1: a plain GPT, DDP (W > 1) or FSDP2, torch's clip_grad_norm_, DCP's full state dicts."""

    def __init__(self, point: Inputs, resume: dict | None, env: DistEnv) -> None:
        import torch

        from repeatlab.model import GPT

        self.size, self.device, self.world = 1, env.device, env.world
        self.fsdp = point.tc.parallelism == "fsdp"
        torch.manual_seed(int(point.point.get("seed", 0)))  # identical init on every rank
        self.raw = GPT(point.model_cfg)
        if resume:
            self.raw.load_state_dict(resume["model"])
        self.raw.to(self.device)
        self.train_model = self._wrap()
        self.eval_model = self.raw  # FSDP all-gathers in forward: eval goes through the sharded module (this object)
        tc = point.tc
        self.optimizer = self.raw.configure_optimizer(
            tc.weight_decay, tc.learning_rate, (tc.beta1, tc.beta2), self.device.type
        )
        if resume:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self.raw, self.optimizer, resume["optim"], options=StateDictOptions(full_state_dict=True)
            )

    def _wrap(self) -> Any:
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in self.raw.transformer.h:  # type: ignore[union-attr]
                fully_shard(block)
            fully_shard(self.raw)
            return self.raw
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            return DDP(self.raw, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return self.raw

    def losses(self, run_model: Any, x: Any, y: Any) -> Any:
        _, loss = run_model(x[0], y[0])
        return loss.unsqueeze(0)

    def logits(self, x: Any, y: Any) -> Any:
        logits, _ = self.eval_model(x[0], y[0])
        return logits.unsqueeze(0)

    def clip_grads(self, max_norm: float) -> None:
        import torch

        torch.nn.utils.clip_grad_norm_(self.train_model.parameters(), max_norm)

    def state_dicts(self) -> list[tuple[dict, dict]]:
        """[(model, optimizer)] full state dicts on the CPU; a collective under FSDP: every rank calls it."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return [
            (
                get_model_state_dict(self.raw, options=opts),
                get_optimizer_state_dict(self.raw, self.optimizer, options=opts),
            )
        ]


class PackedModels:
    """Pack size P > 1: repeatlab.model.PackedGPT, one batched forward/backward and one AdamW step for all P; DDP
    (W > 1) averages every stacked gradient over ranks, which is each model's own average. Checkpoints hold each
    point's slice in the unpacked format, so a point resumes in any pack, or alone."""

    def __init__(self, points: list[Inputs], resumes: list[dict | None], env: DistEnv) -> None:
        import torch

        from repeatlab.model import GPT, PackedGPT

        self.size, self.device, self.world, self.fsdp = len(points), env.device, env.world, False
        models = []
        for point, resume in zip(points, resumes):
            torch.manual_seed(int(point.point.get("seed", 0)))  # each point's own init, as when trained alone
            model = GPT(point.model_cfg)
            if resume:
                model.load_state_dict(resume["model"])
            models.append(model)
        self.raw = PackedGPT.from_models(models).to(self.device)
        self.eval_model = self.raw
        self.train_model: Any = self.raw
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(self.raw, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        tc = points[0].tc
        self.optimizer = self.raw.configure_optimizer(
            tc.weight_decay, tc.learning_rate, (tc.beta1, tc.beta2), self.device.type
        )
        self.names = {id(self.raw.stacked(name)): name for name in self.raw.names}
        if any(resumes):
            self._load_optimizer([r["optim"] for r in resumes if r])

    def _load_optimizer(self, states: list[dict]) -> None:
        """Stack the points' unpacked optimizer states (the pack's points resume from the same step)."""
        import torch

        for group in self.optimizer.param_groups:
            for param in group["params"]:
                per_point = [s["state"][self.names[id(param)]] for s in states]
                self.optimizer.state[param] = {
                    key: (
                        torch.stack([st[key] for st in per_point]).to(param.device)
                        if per_point[0][key].dim()
                        else per_point[0][key].clone().to(param.device if self.device.type == "cuda" else "cpu")
                    )
                    for key in per_point[0]
                }

    def losses(self, run_model: Any, x: Any, y: Any) -> Any:
        _, loss = run_model(x, y)
        return loss

    def logits(self, x: Any, y: Any) -> Any:
        logits, _ = self.eval_model(x, y)
        return logits

    def clip_grads(self, max_norm: float) -> None:
        self.raw.clip_grad_norm_(max_norm)

    def _optimizer_state(self, p: int) -> dict:
        state = {}
        for param, st in self.optimizer.state.items():
            state[self.names[id(param)]] = {k: (v[p] if v.dim() else v).to("cpu", copy=True) for k, v in st.items()}
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [self.names[id(q)] for q in g["params"]]}
            for g in self.optimizer.param_groups
        ]
        return {"state": state, "param_groups": groups}

    def state_dicts(self) -> list[tuple[dict, dict]]:
        return [(self.raw.point_state_dict(p), self._optimizer_state(p)) for p in range(self.size)]


# ----------------------------------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass
class PointRun:
    """One point's own training state in a pack: its curve, exposure counts and loss accumulators."""

    inputs: Inputs
    resume: dict | None
    counter: ExposureCounter
    base_exposures: np.ndarray
    rows: list[dict]
    loss_sum: float = 0.0  # train losses since the last curve row
    loss_steps: int = 0
    base_elapsed: float = 0.0  # training wall time of earlier sessions
    session_tokens: int = 0
    last_row: dict | None = None
    exposures: np.ndarray | None = None  # totals at the last checkpoint

    @classmethod
    def start(cls, inputs: Inputs, resume: dict | None) -> PointRun:
        state = resume["state"] if resume else {}
        rows: list[dict] = []
        jsonl = layout.Run(inputs.run_url).train_log
        if resume and storage.exists(jsonl):
            rows = [json.loads(line) for line in storage.read_text(jsonl).splitlines() if line.strip()]
            rows = [r for r in rows if r.get("step", 0) <= resume["step"]]
        base = resume["exposures"] if resume else np.zeros(len(inputs.repeated), dtype=np.int64)
        return cls(
            inputs=inputs,
            resume=resume,
            counter=ExposureCounter(inputs.repeated),
            base_exposures=base,
            rows=rows,
            loss_sum=float(state.get("train_loss_sum", 0.0)),
            loss_steps=int(state.get("train_loss_steps", 0)),
            base_elapsed=float(state.get("elapsed_s", 0.0)),
        )


class Trainer:
    """Trains a pack of >= 1 points of one shape and schedule in lockstep, in this process group.

    setup() builds the models (each from its own seed, or its checkpoint), train_step() runs one optimizer step of
    every point on its own plan's batch, eval_curves() appends a curve row per point, save() writes one checkpoint per
    point; fit() is the loop. Each point keeps its run folder, plan, data order, exposures, curve, checkpoints and
    done.json; a pack of one computes exactly what the unpacked trainer always did.
    """

    def __init__(
        self, points: list[Inputs], resumes: list[dict | None], env: DistEnv, max_steps: int | None = None
    ) -> None:
        self.points = points
        self.resumes = resumes
        self.env = env
        self.max_steps = max_steps
        first = points[0]
        self.tc, self.ctx, self.steps, self.batch = first.tc, first.context, first.steps, first.batch
        self.micro = int(self.tc.micro_batch_sequences) or self.batch // env.world
        self.start_step = resumes[0]["step"] if resumes[0] else 0
        self.runs: list[PointRun] = []
        self.bank: Any = None
        self.train_time = 0.0
        self.session_start = time.time()

    # -- setup

    def setup(self) -> None:
        import torch

        device = self.env.device
        self.bank = (
            SingleModel(self.points[0], self.resumes[0], self.env)
            if len(self.points) == 1
            else PackedModels(self.points, self.resumes, self.env)
        )
        self.run_model = self.bank.train_model
        if device.type == "cuda" and self.tc.compile:
            self.run_model = torch.compile(self.bank.train_model)
        bf16 = device.type == "cuda" and self.tc.dtype in ("auto", "bfloat16")
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        if self.resumes[0]:
            rng = self.resumes[0]["rng"]
            torch.set_rng_state(rng["torch"])
            if device.type == "cuda" and rng.get("cuda") is not None:
                torch.cuda.set_rng_state(rng["cuda"], device)
        self.runs = [PointRun.start(p, r) for p, r in zip(self.points, self.resumes)]
        self._log_start()

    def _log_start(self) -> None:
        first, resume = self.points[0], self.resumes[0]
        W = self.env.world
        if resume and int(resume["state"].get("world_size", W)) != W:
            log.info(
                "train: resuming with world size %d (checkpoint had %s): correct, but not bit-identical to an "
                "uninterrupted run",
                W,
                resume["state"].get("world_size"),
            )
        for r in self.resumes:
            if r:
                log.info("train: resuming from %s (step %d/%d)", r["url"], self.start_step, self.steps)
        if not resume:
            urls = " ".join(p.run_url for p in self.points)  # which points this process trains, by run URL
            what = first.run_url if len(self.points) == 1 else f"pack of {len(self.points)} points ({urls})"
            log.info(
                "train: %s: %d steps of %d sequences x %d tokens (%d sequences), world size %d, %s, device %s",
                what,
                self.steps,
                self.batch,
                self.ctx,
                len(first.plan),
                W,
                self.tc.parallelism,
                self.env.device.type,
            )

    # -- one step

    def _batch(self, positions: np.ndarray, record: bool) -> tuple[Any, Any]:
        """[P, n, ctx] inputs and targets: point p's plan windows at these global-batch positions."""
        import torch

        rows = []
        for run in self.runs:
            plan = run.inputs.plan
            offsets = np.asarray(plan[positions] if len(positions) else plan[:1], dtype=np.int64)
            if record:
                run.counter.add(offsets)
            rows.append(windows(run.inputs.train_data, offsets, self.ctx))
        t = torch.from_numpy(np.stack(rows)).to(self.env.device, non_blocking=True)
        return t[:, :, :-1], t[:, :, 1:]

    def train_step(self, step: int) -> np.ndarray:
        """One optimizer step of every point; returns the points' mean train losses over the global batch."""
        import torch
        import torch.distributed as dist

        W, rank, B = self.env.world, self.env.rank, self.batch
        lo, hi = (step - 1) * B, min(step * B, len(self.points[0].plan))
        n_batch = hi - lo
        positions = np.arange(lo, hi)[rank::W]
        calls = math.ceil(math.ceil(n_batch / W) / self.micro)  # micro-batches on the rank with the most sequences
        lr = lr_at(step, self.steps, self.tc)
        for group in self.bank.optimizer.param_groups:
            group["lr"] = lr
        local = torch.zeros(len(self.runs), dtype=torch.float64, device=self.env.device)
        for j in range(calls):
            sel = positions[j * self.micro : (j + 1) * self.micro]
            n = len(sel)
            x, y = self._batch(sel, record=n > 0)
            with _sync_context(self.bank.train_model, self.bank.fsdp, W, j == calls - 1):
                with self.autocast:
                    losses = self.bank.losses(self.run_model, x, y)
                # gradient = mean over the global batch after the mean over ranks: scale by n * W / n_batch
                (losses.sum() * (n * W / n_batch)).backward()
            local += losses.detach().double() * n
        if self.tc.grad_clip > 0:
            self.bank.clip_grads(self.tc.grad_clip)
        self.bank.optimizer.step()
        self.bank.optimizer.zero_grad(set_to_none=True)
        dist.all_reduce(local)
        return local.cpu().numpy() / n_batch

    # -- curves

    def _eval_offsets(self, run: PointRun, split: str) -> np.ndarray:
        n = int(self.tc.eval_sequences)
        if split == "repeated":
            return np.asarray(run.inputs.repeated[:n], dtype=np.int64)
        data = run.inputs.test_data
        if data is None:
            return np.zeros(0, dtype=np.int64)
        return np.arange(min(n, max(0, (len(data) - 1) // self.ctx)), dtype=np.int64) * self.ctx

    def _eval_loss(self, split: str) -> list[float | None]:
        """Mean loss per point on its first eval_sequences windows of `split`, sharded over ranks and all-reduced.
        Points with fewer windows are padded with a copy of their first and the padding is not counted."""
        import torch
        import torch.distributed as dist
        from torch.nn import functional as F

        W, micro = self.env.world, self.micro
        offsets = [self._eval_offsets(run, split) for run in self.runs]
        longest = max(len(o) for o in offsets)
        if longest == 0:
            return [None] * len(self.runs)
        mine = np.array_split(np.arange(longest), W)[self.env.rank]
        calls = math.ceil(math.ceil(longest / W) / micro)
        total = torch.zeros(len(self.runs), 2, dtype=torch.float64, device=self.env.device)
        data: list[Any] = [run.inputs.test_data if split == "test" else run.inputs.train_data for run in self.runs]
        filler = next(o[:1] for o in offsets if len(o))  # a window for points without one (f = 0: no repeats)
        self.bank.eval_model.eval()
        with torch.no_grad():
            for j in range(calls):
                sel = mine[j * micro : (j + 1) * micro]
                real = [sel[sel < len(o)] for o in offsets]  # this rank's windows that exist for each point
                rows = [
                    windows(d, o[idx] if len(idx) else (o[:1] if len(o) else filler), self.ctx)
                    for d, o, idx in zip(data, offsets, real)
                ]  # one corpus: any point's window reads the same
                width = max(len(r) for r in rows)
                t = torch.from_numpy(np.stack([np.resize(r, (width, self.ctx + 1)) for r in rows])).to(self.env.device)
                x, y = t[:, :, :-1], t[:, :, 1:]
                with self.autocast:
                    logits = self.bank.logits(x, y)
                for p, idx in enumerate(real):
                    if len(idx):
                        lp, yp = logits[p, : len(idx)], y[p, : len(idx)]
                        total[p, 0] += F.cross_entropy(
                            lp.float().reshape(-1, lp.size(-1)), yp.reshape(-1), reduction="sum"
                        ).double()
                        total[p, 1] += yp.numel()
        self.bank.eval_model.train()
        dist.all_reduce(total)
        return [float(total[p, 0] / total[p, 1]) if len(o) else None for p, o in enumerate(offsets)]

    def eval_curves(self, step: int, lr: float) -> None:
        """Append one curve row per point and rewrite its train.jsonl (rank 0)."""
        test, repeated = self._eval_loss("test"), self._eval_loss("repeated")
        hi = min(step * self.batch, len(self.points[0].plan))
        for run, test_loss, rep_loss in zip(self.runs, test, repeated):
            tok_s = run.session_tokens / max(self.train_time, 1e-9)
            run.last_row = {
                "step": step,
                "tokens": hi * self.ctx,
                "lr": lr,
                "train_loss": run.loss_sum / max(run.loss_steps, 1),
                "test_loss": test_loss,
                "repeated_loss": rep_loss,
                "tokens_per_s": tok_s,
                "elapsed_s": run.base_elapsed + time.time() - self.session_start,
            }
            run.loss_sum, run.loss_steps = 0.0, 0
            run.rows.append(run.last_row)
            if self.env.rank == 0:
                storage.write_text(
                    layout.Run(run.inputs.run_url).train_log, "".join(json.dumps(r) + "\n" for r in run.rows)
                )
                if not self._tty():
                    tl = "n/a" if test_loss is None else f"{test_loss:.4f}"
                    rl = "n/a" if rep_loss is None else f"{rep_loss:.4f}"
                    where = "" if len(self.runs) == 1 else f"{run.inputs.point.get('point_id')}: "
                    log.info(
                        "train: %sstep %d/%d train %.4f test %s repeated %s lr %.3g %s tok/s",
                        where,
                        step,
                        self.steps,
                        run.last_row["train_loss"],
                        tl,
                        rl,
                        lr,
                        f"{tok_s:,.0f}",
                    )

    def _tty(self) -> bool:
        return sys.stderr.isatty() and self.env.rank == 0

    # -- checkpoints

    def _total_exposures(self, run: PointRun) -> np.ndarray:
        import torch
        import torch.distributed as dist

        t = torch.from_numpy(run.counter.counts.copy())
        if self.env.device.type == "cuda":
            t = t.to(self.env.device)
        dist.all_reduce(t)
        return run.base_exposures + t.cpu().numpy()

    def state_dict(self, p: int, step: int, cursor: int, model_sd: dict, optim_sd: dict) -> dict:
        """Everything of point p's checkpoint: model, optim, rng, exposures and state (state.json's content)."""
        import torch

        run, device = self.runs[p], self.env.device
        rng = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        }
        state = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "point_id": run.inputs.point.get("point_id"),
            "config_hash": run.inputs.config_hash,
            "step": step,
            "steps": self.steps,
            "cursor": cursor,
            "tokens": cursor * self.ctx,
            "world_size": self.env.world,
            "elapsed_s": run.base_elapsed + time.time() - self.session_start,
            "train_loss_sum": run.loss_sum,
            "train_loss_steps": run.loss_steps,
            "parallelism": self.tc.parallelism,
            "pack_size": len(self.runs),
        }
        return {"model": model_sd, "optim": optim_sd, "rng": rng, "exposures": run.exposures, "state": state}

    def save(self, step: int, cursor: int) -> None:
        """One checkpoint per point in its own run folder (rank 0 writes; every rank joins the collectives)."""
        import torch.distributed as dist

        state_dicts = self.bank.state_dicts()
        for p, run in enumerate(self.runs):
            run.exposures = self._total_exposures(run)
            if self.env.rank == 0:
                sd = self.state_dict(p, step, cursor, *state_dicts[p])
                run.inputs.check_lease()
                save_checkpoint(
                    run.inputs.run_url,
                    step,
                    sd["model"],
                    sd["optim"],
                    sd["rng"],
                    sd["exposures"],
                    sd["state"],
                    int(self.tc.keep_checkpoints),
                )
        dist.barrier()

    # -- the loop

    def fit(self) -> list[dict]:
        """Train from start_step to the end (or --max-steps); returns each point's result."""
        evals = set(eval_steps(self.steps, self.tc.eval_points))
        every = checkpoint_interval(self.steps, self.tc)
        for step in range(self.start_step + 1, self.steps + 1):
            if self.max_steps is not None and step > self.max_steps:
                log.info(
                    "train: stopped after step %d of %d (--max-steps %d); rerun to resume from the last checkpoint",
                    step - 1,
                    self.steps,
                    self.max_steps,
                )
                return [{"status": "stopped", "step": step - 1, "steps": self.steps} for _ in self.runs]
            self._timed_step(step)
            if step in evals:
                self.eval_curves(step, lr_at(step, self.steps, self.tc))
            if step % every == 0 or step == self.steps:
                self.save(step, min(step * self.batch, len(self.points[0].plan)))
        if self._tty():
            sys.stderr.write("\n")
        return [self._finish(run) for run in self.runs]

    def _timed_step(self, step: int) -> None:
        import torch

        for run in self.runs:
            run.inputs.check_lease()
        t0 = time.time()
        step_losses = self.train_step(step)
        if self.env.device.type == "cuda":
            torch.cuda.synchronize(self.env.device)
        self.train_time += time.time() - t0
        hi = min(step * self.batch, len(self.points[0].plan))
        n_batch = hi - (step - 1) * self.batch
        for run, loss in zip(self.runs, step_losses):
            run.loss_sum += float(loss)
            run.loss_steps += 1
            run.session_tokens += n_batch * self.ctx
        if self._tty():
            tok_s = sum(r.session_tokens for r in self.runs) / max(self.train_time, 1e-9)
            eta = (len(self.points[0].plan) - hi) * self.ctx * len(self.runs) / max(tok_s, 1e-9)
            sys.stderr.write("\r" + _progress_line(step, self.steps, float(np.mean(step_losses)), tok_s, eta))
            sys.stderr.flush()

    def _finish(self, run: PointRun) -> dict:
        """done.json of one point (rank 0 writes it)."""
        import torch.distributed as dist

        inputs, steps = run.inputs, self.steps
        exposures = run.exposures if run.exposures is not None else run.base_exposures
        last = run.last_row or (run.rows[-1] if run.rows else {})
        done = {
            "point_id": inputs.point.get("point_id"),
            "config_hash": inputs.config_hash,
            "step": steps,
            "steps": steps,
            "sequences": len(inputs.plan),
            "tokens": len(inputs.plan) * self.ctx,
            "batch_sequences": self.batch,
            "last_batch_sequences": int(len(inputs.plan) - (steps - 1) * self.batch),
            "world_size": self.env.world,
            "parallelism": self.tc.parallelism,
            "pack_size": len(self.runs),
            "wall_time_s": run.base_elapsed + time.time() - self.session_start,
            "checkpoint": layout.checkpoint_name(steps),
            "test_loss": last.get("test_loss"),
            "repeated_loss": last.get("repeated_loss"),
            "repeated_exposures": {
                "sequences": len(exposures),
                "min": int(exposures.min()) if len(exposures) else 0,
                "max": int(exposures.max()) if len(exposures) else 0,
                "total": int(exposures.sum()),
            },
        }
        if self.env.rank == 0:
            inputs.check_lease()
            storage.write_json(layout.Run(inputs.run_url).done, done)
            log.info(
                "train: done: %s: %d steps, test loss %s, repeated loss %s, repeated exposures %s",
                inputs.run_url,
                steps,
                done["test_loss"],
                done["repeated_loss"],
                done["repeated_exposures"],
            )
        dist.barrier()
        return {"status": "trained", **done}


def _progress_line(step: int, steps: int, loss: float, tok_s: float, eta_s: float) -> str:
    return f"step {step}/{steps}  loss {loss:.4f}  {tok_s:,.0f} tok/s  ETA {eta_s:,.0f} s"


# ----------------------------------------------------------------------------------------------------------------------
# Entry: a pack of run folders


def already_trained(run_url: str) -> dict | None:
    run = layout.Run(run_url.rstrip("/"))
    done_url = run.done
    if not storage.exists(done_url):
        return None
    done = storage.read_json(done_url)
    point = storage.read_json(run.point)
    if done.get("point_id") != point.get("point_id"):
        raise CheckpointError(
            f"{done_url} belongs to another point ({done.get('point_id')}, not "
            f"{point.get('point_id')}): move it away to retrain"
        )
    return done


def train(run_url: str, max_steps: int | None = None, evaluate: bool = False) -> dict:
    """Train (or resume) the point at run_url in this process; returns done.json's content, or a status dict."""
    return train_pack([run_url], max_steps=max_steps, evaluate=evaluate)[0]


def _skip_trained(run_urls: list[str]) -> tuple[list[str], dict[str, dict]]:
    """(run URLs still to train, {run URL: 'already trained' result})."""
    finished = {}
    for url in run_urls:
        done = already_trained(url)
        if done is not None:
            log.info("train: %s already trained (step %s); nothing to do", url, done.get("step"))
            finished[url] = {"status": "already trained", **done}
    return [u for u in run_urls if u not in finished], finished


def train_pack(run_urls: list[str], max_steps: int | None = None, evaluate: bool = False) -> list[dict]:
    """Train (or resume) the points at run_urls together, as one pack, in this process; one result per URL.

    Finished points are skipped (content addressing: never retrained), the others train in lockstep. evaluate: once
    training finishes, evaluate each final checkpoint here too (eval.json), in the same process group.
    """
    env = DistEnv.from_env()
    run_urls = [u.rstrip("/") for u in run_urls]
    if len(set(run_urls)) != len(run_urls):
        raise TrainError(f"--run-url: {run_urls} is not allowed: a run folder appears twice in the pack")
    todo, results = _skip_trained(run_urls)
    leases = [_take_lease(url, env) for url in sorted(todo)] if todo else []
    try:
        todo, finished = _skip_trained(todo)  # the previous holder of a lease may have finished its run
        results.update(finished)
        if todo:
            results.update(zip(todo, _train_leased(todo, env, leases, max_steps, evaluate)))
    finally:
        for lease in leases:
            if lease is not None:
                lease.release()
    return [results[u] for u in run_urls]


def _take_lease(run_url: str, env: DistEnv) -> Any:
    """Rank 0 holds the run's lease (repeatlab.lease): one trainer per run folder. Other ranks follow rank 0."""
    from repeatlab.lease import Lease, wait_for_job

    job = None
    if env.distributed:
        job = "{}:{}/{}".format(
            os.environ.get("MASTER_ADDR", ""),
            os.environ.get("MASTER_PORT", ""),
            os.environ.get("TORCHELASTIC_RUN_ID", ""),
        )
    if env.rank != 0:
        wait_for_job(run_url, job or "")  # rank != 0: always under torchrun, so job is set
        return None
    lease = Lease(run_url, owner=f"repeatlab.train (world size {env.world})", job=job)
    lease.acquire(on_wait=lambda msg: log.info("train: %s", msg))
    return lease


PACK_FIELDS = ("model_cfg", "context", "batch", "steps")


def check_pack(points: list[Inputs], world: int) -> None:
    """TrainError unless the points can train in lockstep: one shape, context, batch, step schedule, corpus and
    computation-determining train settings; FSDP only for a pack of one."""
    first = points[0]
    if len(points) > 1 and first.tc.parallelism == "fsdp":
        raise TrainError(
            "train.parallelism: 'fsdp' is not allowed with a pack of more than one point: packs are for "
            "models too small to shard; set train.pack_size: 1 or train.parallelism: ddp"
        )

    def schedule(p: Inputs) -> dict:
        train = {k: v for k, v in dataclasses.asdict(p.tc).items() if k not in ("pack_size",)}
        return {
            "model": dataclasses.asdict(p.model_cfg) | {"name": ""},
            "context": p.context,
            "batch": p.batch,
            "steps": p.steps,
            "sequences": len(p.plan),
            "train": train,
            "corpus_url": p.point.get("corpus_url"),
            "budget": dataclasses.asdict(p.budget),
        }

    want = schedule(first)
    for p in points[1:]:
        got = schedule(p)
        for key in want:
            if got[key] != want[key]:
                raise TrainError(
                    f"{p.run_url}: cannot share a pack with {first.run_url}: {key} differs "
                    f"({got[key]} vs {want[key]}); train them in separate packs (repeatlab grid shows "
                    "the packs)"
                )


def _resume_groups(points: list[Inputs], resumes: list[dict | None]) -> list[list[int]]:
    """Indices of the points grouped by the step they resume from, earliest first: a pack trains in lockstep, so
    points whose latest checkpoints differ (a crash between two points' checkpoint writes) train as separate packs."""
    by_step: dict[int, list[int]] = {}
    for i, resume in enumerate(resumes):
        by_step.setdefault(resume["step"] if resume else 0, []).append(i)
    return [by_step[s] for s in sorted(by_step)]


def _agree_on_resume(resumes: list[dict | None], env: DistEnv, what: str) -> None:
    import torch.distributed as dist

    chosen: list[Any] = [None] * env.world
    dist.all_gather_object(chosen, [r["step"] if r else 0 for r in resumes])
    if any(c != chosen[0] for c in chosen):
        raise CheckpointError(f"{what}: ranks found different latest checkpoints {chosen}; is storage shared?")


def _load_points(run_urls: list[str], world: int) -> tuple[list[Inputs], list[dict | None], list[tuple[str, Any]]]:
    """(inputs, latest checkpoints, failures): a point whose inputs or checkpoints are bad is set aside with its
    one-line error, so it does not keep the rest of its pack from training (the rerun retries it alone)."""
    points, resumes, failed = [], [], []
    for url in run_urls:
        try:
            point = load_inputs(url, world)
            # raises on another config's checkpoint, before anything is written
            resumes.append(find_checkpoint(url, point.point.get("point_id"), point.config_hash, len(point.repeated)))
            points.append(point)
        except RepeatlabError as exc:
            failed.append((url, exc))
            if len(run_urls) > 1:
                log.error("train: %s: %s; training the other points of the pack", url, exc)
    return points, resumes, failed


def _train_leased(
    run_urls: list[str], env: DistEnv, leases: list[Any], max_steps: int | None, evaluate: bool
) -> list[dict]:
    points, resumes, failed = _load_points(run_urls, env.world)
    if points:
        by_url = {url: lease for url, lease in zip(sorted(run_urls), leases)}
        for p in points:
            p.lease = by_url.get(p.run_url)
        check_pack(points, env.world)
        results = dict(zip((p.run_url for p in points), _train_points(points, resumes, env, max_steps, evaluate)))
    if failed:
        url, exc = failed[0]
        if not points:
            raise exc
        raise type(exc)(f"{url}: {exc} (the other {len(points)} point(s) of its pack trained; fix it and rerun)")
    return [results[url] for url in run_urls]


def _train_points(
    points: list[Inputs], resumes: list[dict | None], env: DistEnv, max_steps: int | None, evaluate: bool
) -> list[dict]:
    """Train the (compatible) points in this process group: one Trainer per group of equal resume steps."""
    import torch

    tc = points[0].tc
    if tc.threads_per_rank > 0:
        torch.set_num_threads(int(tc.threads_per_rank))
    env.choose_device(tc.device)
    check_memory(points[0].model_cfg, env.device, env, tc.parallelism, pack_size=len(points))
    env.init_process_group(int(tc.process_group_timeout_s))
    try:
        _agree_on_resume(resumes, env, ", ".join(p.run_url for p in points))
        results: dict[int, dict] = {}
        for group in _resume_groups(points, resumes):
            trainer = Trainer([points[i] for i in group], [resumes[i] for i in group], env, max_steps)
            trainer.setup()
            results.update(zip(group, trainer.fit()))
        if evaluate:
            for i, point in enumerate(points):
                if results[i].get("status") == "trained":
                    evaluate_here(point.run_url, env)
        return [results[i] for i in range(len(points))]
    finally:
        env.teardown()


def evaluate_here(run_url: str, env: DistEnv) -> None:
    """Evaluate the final checkpoint in the training processes, reusing their torch, device and process group.

    A separate evaluate step would pay a second process start and torch import (most of a small run's wall time
    locally) or a second GPU pod on a cluster. A failure here is logged, not raised: training has finished and
    done.json is written, and the evaluate step evaluates the run again in its own process, where errors surface.
    """
    from repeatlab.evaluate import evaluate_run

    try:
        evaluate_run(run_url, device=env.device.type)  # its INFO lines: rank 0 only (_configure_logging)
    except Exception as exc:  # noqa: BLE001 - see the docstring: the evaluate step retries and reports
        log.error(
            "train: rank %d: evaluation in the training process failed (%s: %s); the evaluate step will "
            "evaluate this run again",
            env.rank,
            type(exc).__name__,
            exc,
        )


# ----------------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m repeatlab.train",
        description="Train one grid point, or a pack of them (under torchrun or as one process).",
    )
    parser.add_argument(
        "--run-url",
        required=True,
        nargs="+",
        action="extend",
        help="the run folder holding point.json and the plan; several: train them as one pack",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="testing: stop after this step as if preempted (no final checkpoint, no done.json)",
    )
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="once trained, evaluate the final checkpoint in this process too (eval.json)",
    )
    args = parser.parse_args(argv)
    env = DistEnv.from_env()
    _configure_logging(env)
    from repeatlab.proc import die_with_parent

    die_with_parent()  # a worker whose torchrun (or launcher) died stops instead of writing on its own
    try:
        train_pack(args.run_url, max_steps=args.max_steps, evaluate=args.evaluate)
    except RepeatlabError as exc:
        if env.rank == 0:
            print(f"repeatlab train: error: {exc}", file=sys.stderr, flush=True)
        _write_error_file(exc)
        return exc.exit_code
    return 0


def _configure_logging(env: DistEnv) -> None:
    """Progress on stderr from rank 0 only (other ranks: errors only), unless the application configured logging."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(stream=sys.stderr, format="%(message)s")
    root.setLevel(logging.INFO if env.rank == 0 else logging.ERROR)


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
