"""Packs: grid points trained together in one process as one batched program (repeatlab.train.Trainer).

Points can share a pack only when they train in lockstep: the same corpus, model shape, budget (context, batch,
tokens) and train settings, and plans of the same length, hence the same step schedule (a unique-only control trains
on (1 - f) T tokens, so a control never shares a pack with points of another plan length); they differ in seed, f, E
and control (their plans). Points of other shapes or schedules go to other packs, never to one trained with the wrong
schedule. A pack holds at most `train.pack_size` points, and fewer when `pack_size` copies of the model (weights,
gradients, AdamW state and the activations of one micro-batch) would not fit in the training pod's memory
(`cluster.memory`, half of it kept for the data, evaluation and torch itself): such a pack is split, and
`repeatlab grid` says so.

Content addressing stays per point: the pack is only how points are scheduled. A pack whose points are all finished
is skipped by the train step; one with some finished points trains only the others (repeatlab.train.train_pack).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from repeatlab.config import stable_hash
from repeatlab.mix import plan_counts

log = logging.getLogger(__name__)

# Settings of a point that may differ inside a pack: each point's own plan, seed and label.
PER_POINT_FIELDS = ("point_id", "fraction", "epochs", "seed", "control", "eval")
MEMORY_FRACTION = 0.5  # of the pod's memory, for the pack's weights, gradients, optimizer state and activations
QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|k|M|G|T)?\s*$")
UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


DEFAULT_PACK_SIZE = 8  # train.pack_size 0 with ddp: the per-process cost shared 8 ways (docs/benchmarks.md)


def effective_pack_size(train: Any) -> int:
    """train.pack_size, or for 0 (automatic) 8 with ddp and 1 with fsdp (FSDP trains a pack of one only)."""
    return int(train.pack_size) or (1 if train.parallelism == "fsdp" else DEFAULT_PACK_SIZE)


def memory_bytes(quantity: str) -> int | None:
    """A Kubernetes memory quantity ("8Gi", "512Mi", "2G", "1000000") in bytes; None when it is not one."""
    match = QUANTITY.match(str(quantity))
    if not match:
        return None
    return int(float(match.group(1)) * UNITS[match.group(2)])


def pack_key(point: dict) -> str:
    """Points with the same key train in lockstep: everything but their own plan, seed and label."""
    shared = {k: v for k, v in point.items() if k not in PER_POINT_FIELDS}
    shared["model"] = {k: v for k, v in point["model"].items() if k != "name"}
    shared["train"] = {k: v for k, v in point["train"].items() if k != "pack_size"}
    shared["plan_sequences"] = plan_sequences(point)
    return stable_hash(shared)


def plan_sequences(point: dict) -> int:
    """The length of the point's plan in sequences, which sets its number of steps (repeatlab.mix.plan_counts)."""
    b = point["budget"]
    counts = plan_counts(
        total_tokens=int(b["total_tokens"]),
        context=int(b["context"]),
        fraction=float(point["fraction"]),
        epochs=float(point["epochs"]),
        control=bool(point["control"]),
    )
    return int(counts["plan_sequences"])


def point_train_bytes(point: dict) -> int:
    """Memory one point of a pack needs while training: 16 bytes per parameter (fp32 weights, gradients, AdamW's two
    moments) plus fp32 activations kept for backward of one micro-batch (per token and layer about 34 x width + 5 x
    heads x context values, Korthikanti et al. 2022, plus the logits)."""
    m, b, t = point["model"], point["budget"], point["train"]
    context = int(b["context"])
    world = max(1, int(t.get("nproc_per_node", 1)) * int(t.get("nnodes", 1)))
    micro = int(t.get("micro_batch_sequences") or 0) or max(1, int(b["batch_tokens"]) // context // world)
    tokens = micro * context
    per_token = int(m["n_layer"]) * (34 * int(m["n_embd"]) + 5 * int(m["n_head"]) * context) + 3 * int(m["vocab_size"])
    return 16 * int(m["n_params_total"]) + 4 * tokens * per_token


def max_pack_size(point: dict, pod_memory: str) -> int:
    """The most points of this shape a pack may hold in the pod's memory (at least 1)."""
    budget = memory_bytes(pod_memory)
    if budget is None:
        return 1 << 30
    return max(1, int(budget * MEMORY_FRACTION) // max(1, point_train_bytes(point)))


def point_cost(point: dict) -> float:
    """Training FLOPs of one point (6 x all parameters, the tied unembedding included, + attention, per token)."""
    m, b = point["model"], point["budget"]
    per_token = 6 * int(m["n_params_total"]) + 6 * int(m["n_layer"]) * int(b["context"]) * int(m["n_embd"])
    return float(per_token) * int(b["total_tokens"])


def plan_packs(points: list[dict], pack_size: int, pod_memory: str) -> list[dict]:
    """Group points into packs, in grid order within each pack; returns [{"point_ids", "size_limit", "split",
    "note", "cost_flops"}], the most expensive pack first: the fan-out starts packs in this order, so the longest
    ones do not start last and leave the other slots idle at the end (longest-processing-time-first). `split` is
    true when memory, not pack_size, limited the pack."""
    groups: dict[str, list[dict]] = {}
    for point in points:
        groups.setdefault(pack_key(point), []).append(point)
    packs = []
    for members in groups.values():
        fits = max_pack_size(members[0], pod_memory)
        limit = max(1, min(int(pack_size), fits))
        split = fits < min(int(pack_size), len(members))
        note = ""
        if split:
            need = point_train_bytes(members[0]) * min(int(pack_size), len(members))
            note = (
                f"a pack of {min(int(pack_size), len(members))} x {members[0]['model'].get('name', 'model')} "
                f"needs about {need / 2**30:.2f} GiB, more than half of cluster.memory ({pod_memory}): split "
                f"into packs of {limit}"
            )
            log.warning("grid: %s", note)
        for start in range(0, len(members), limit):
            chunk = members[start : start + limit]
            packs.append(
                {
                    "point_ids": [p["point_id"] for p in chunk],
                    "size_limit": limit,
                    "split": split,
                    "note": note,
                    "cost_flops": sum(point_cost(p) for p in chunk),
                }
            )
    return sorted(packs, key=lambda pack: -pack["cost_flops"])  # stable: equal costs keep grid order


def describe_packs(packs: list[dict], points: list[dict]) -> list[str]:
    """One line per pack for `repeatlab grid`."""
    by_id: dict[str, Any] = {p["point_id"]: p for p in points}
    lines = []
    for i, pack in enumerate(packs, 1):
        model = by_id[pack["point_ids"][0]]["model"]
        split = "  (split: memory)" if pack["split"] else ""
        lines.append(
            f"pack {i}: {len(pack['point_ids'])} points of {model.get('name', '?')} "
            f"(N={model.get('n_params_nonembed')}){split}: {' '.join(pack['point_ids'])}"
        )
    return lines
