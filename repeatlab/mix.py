"""Exact mixture plans: which training sequence goes where, for one grid point (N, f, E, seed).

Every model trains on the same budget of T tokens = S sequences of `context` tokens. A fraction f of those sequences
are exposures of a small **repeated subset**; the rest are **unique** sequences, each seen exactly once:

    S      = T // context                       training sequences
    R      = round(f * S)                       repeated exposures (within half a sequence of f * S)
    n_rep  = round(R / E)                       sequences in the repeated subset (U_rep = n_rep * context tokens)
    unique = S - R                              unique sequences, drawn without replacement from the rest of the pool

Uneven repeats: when R is not a multiple of n_rep, the first R mod n_rep repeated sequences (in the subset's random
order) are seen ceil(R / n_rep) times and the others floor(R / n_rep) times; the realized E = R / n_rep is reported.

Sequences are windows of the train shard (docs/architecture.md): window k starts at token k * context and holds
context + 1 tokens. The repeated subset is a uniform random sample of windows; repeated exposures are spread
uniformly at random through training (the whole sequence of S slots is shuffled). A plan is an index (one int64 offset
per sequence), never a copy of token data: memory and time are linear in S.

A **control** point (`control: true`) trains on the (1 - f) * T unique tokens alone, with no repeats: it separates the
harm of repetition from the loss of unique data.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass

import numpy as np

from repeatlab import layout, storage
from repeatlab.errors import PlanError
from repeatlab.records import Point

log = logging.getLogger(__name__)
PLAN_FORMAT_VERSION = 1
UNEVEN_RULE = (
    "when R is not a multiple of n_rep, the first R mod n_rep repeated sequences (in random order) are seen "
    "ceil(R/n_rep) times and the rest floor(R/n_rep) times"
)


@dataclass
class Plan:
    offsets: np.ndarray  # int64 [S]: token offset of each training sequence, in training order
    repeated: np.ndarray  # int64 [n_rep]: token offsets of the repeated subset (empty for f = 0)
    info: dict  # plan.json content (without file hashes)


def count_windows(train_tokens: int, context: int) -> int:
    """Number of non-overlapping (context + 1)-token windows that start at multiples of context."""
    return max(0, (int(train_tokens) - 1) // int(context))


def _rng(seed: int, salt: str) -> np.random.Generator:
    # The salt ties the stream to the point's other settings, so two points with the same seed do not share a subset.
    salt_words = np.frombuffer(hashlib.sha256(salt.encode()).digest()[:16], dtype=np.uint32)
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, salt_words)]))


def plan_counts(*, total_tokens: int, context: int, fraction: float, epochs: float, control: bool = False) -> dict:
    """The plan's sizes without building it: sequences, repeated exposures, repeated sequences (U_rep / context) and
    the realized E. Raises PlanError with a one-line reason when a point cannot be built as asked."""
    if not 0.0 <= fraction < 1.0:
        raise PlanError(f"fraction: {fraction!r} is not allowed: a repeated fraction must be in [0, 1)")
    if fraction > 0 and not control and not epochs >= 1.0:
        raise PlanError(f"epochs: {epochs!r} is not allowed: repeated epochs E must be >= 1")
    if context < 1:
        raise PlanError(f"context: {context!r} is not allowed: must be >= 1")
    sequences = int(total_tokens) // int(context)
    if sequences < 1:
        raise PlanError(f"total_tokens: {total_tokens} is less than one sequence of context {context}")
    repeated_exposures = int(round(fraction * sequences)) if fraction > 0 else 0
    if fraction > 0 and repeated_exposures < 1:
        raise PlanError(
            f"fraction: f = {fraction} of {sequences} sequences is less than one repeated sequence; raise f or T"
        )
    n_repeated = 0
    if repeated_exposures and not control:
        n_repeated = int(round(repeated_exposures / epochs))
        if n_repeated < 1:
            raise PlanError(
                f"epochs: the repeated subset f*T/E = {fraction * total_tokens / epochs:.0f} tokens is shorter than "
                f"one sequence ({context} tokens); lower E (at most {repeated_exposures}) or raise f or T"
            )
    return {
        "sequences": sequences,
        # the plan's length (what the trainer's step count comes from): a control leaves out the repeated exposures
        "plan_sequences": sequences - repeated_exposures if control else sequences,
        "repeated_exposures": repeated_exposures,
        "n_repeated": n_repeated,
        "realized_epochs": repeated_exposures / n_repeated if n_repeated else 0.0,
    }


def build_plan(
    *,
    train_tokens: int,
    total_tokens: int,
    context: int,
    fraction: float,
    epochs: float,
    seed: int,
    control: bool = False,
    salt: str = "",
) -> Plan:
    """Build the plan for one point; raises PlanError with a one-line reason when it cannot be built as asked."""
    counts = plan_counts(total_tokens=total_tokens, context=context, fraction=fraction, epochs=epochs, control=control)
    windows = count_windows(train_tokens, context)
    sequences, repeated_exposures, n_repeated = counts["sequences"], counts["repeated_exposures"], counts["n_repeated"]
    n_unique = sequences - repeated_exposures
    needed = n_unique + n_repeated
    if needed > windows:
        missing_tokens = (needed - windows) * context
        raise PlanError(
            f"corpus too small for the unique stream: this point needs {needed} distinct sequences "
            f"({needed * context} tokens) but the train split has {windows} ({int(train_tokens)} tokens); "
            f"{missing_tokens} tokens are missing: use a larger corpus or a smaller budget.total_tokens"
        )

    rng = _rng(seed, salt)
    # int32 indices where they fit keep the peak memory near 1.5x the final int64 plan for T = 1e11.
    index_dtype = np.int32 if windows < 2**31 else np.int64
    pool = np.arange(windows, dtype=index_dtype)
    rng.shuffle(pool)
    repeated_windows = pool[:n_repeated].copy()
    slots = np.empty(counts["plan_sequences"], dtype=index_dtype)  # a control's plan has no repeated exposures
    slots[:n_unique] = pool[n_repeated:needed]
    del pool
    if n_repeated:
        base, extra = divmod(repeated_exposures, n_repeated)
        repeats = np.full(n_repeated, base, dtype=np.int64)
        repeats[:extra] += 1
        slots[n_unique:] = np.repeat(repeated_windows, repeats)
    rng.shuffle(slots)
    offsets = slots.astype(np.int64)
    del slots
    offsets *= int(context)
    repeated = repeated_windows.astype(np.int64) * int(context)

    realized_exposures = 0 if control else repeated_exposures
    info = {
        "format_version": PLAN_FORMAT_VERSION,
        "requested": {
            "fraction": fraction,
            "epochs": epochs,
            "total_tokens": int(total_tokens),
            "repeated_tokens": fraction * total_tokens / epochs if fraction > 0 and epochs else 0.0,
        },
        "realized": {
            "fraction": realized_exposures / sequences,
            "epochs": (repeated_exposures / n_repeated) if n_repeated else 0.0,
            "epochs_min": (repeated_exposures // n_repeated) if n_repeated else 0,
            "epochs_max": -(-repeated_exposures // n_repeated) if n_repeated else 0,
            "total_tokens": len(offsets) * int(context),
            "repeated_tokens": n_repeated * int(context),  # U_rep
            "unique_tokens": n_unique * int(context),
        },
        "context": int(context),
        "sequences": int(len(offsets)),
        "unique_sequences": n_unique,
        "repeated_sequences": n_repeated,
        "repeated_exposures": realized_exposures,
        "pool_windows": windows,
        "control": bool(control),
        "seed": int(seed),
        "uneven_rule": UNEVEN_RULE,
    }
    return Plan(offsets=offsets, repeated=repeated, info=info)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_plan(run_url: str, plan: Plan, corpus_id: str, point_id: str) -> dict:
    """Write plan.npy, repeated.npy, then plan.json last (a plan without plan.json is incomplete)."""
    plan_bytes = _npy_bytes(plan.offsets)
    repeated_bytes = _npy_bytes(plan.repeated)
    run = layout.Run(run_url)
    storage.write_bytes(run.plan_npy, plan_bytes)
    storage.write_bytes(run.repeated_npy, repeated_bytes)
    info = dict(plan.info)
    info.update(
        corpus_id=corpus_id,
        point_id=point_id,
        plan_sha256=hashlib.sha256(plan_bytes).hexdigest(),
        repeated_sha256=hashlib.sha256(repeated_bytes).hexdigest(),
    )
    storage.write_json(run.plan_json, info)
    return info


def load_array(url: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False)


def mix_run(run_url: str) -> dict:
    """Build and write the plan of the point described by `{run_url}/point.json`; reuse a complete plan."""
    from repeatlab.corpus import load_manifest

    run = layout.Run(run_url)
    point = Point.read(run.point)
    if storage.exists(run.plan_json):
        info = storage.read_json(run.plan_json)
        if info.get("point_id") == point.point_id and info.get("corpus_id") == point.corpus_id:
            log.info(f"mix: plan for {point.point_id} already built; reusing it")
            return info
    manifest = load_manifest(point.corpus_url)
    if manifest["corpus_id"] != point.corpus_id:
        raise PlanError(
            f"{point.corpus_url}: corpus id {manifest['corpus_id']} does not match the point's {point.corpus_id}"
        )
    budget = point.budget_config()
    plan = build_plan(
        train_tokens=manifest["splits"]["train"]["tokens"],
        total_tokens=budget.total_tokens,
        context=budget.context,
        fraction=point.fraction,
        epochs=point.epochs or 0.0,
        seed=point.seed,
        control=point.control,
        salt=point.point_id,
    )
    info = write_plan(run_url, plan, manifest["corpus_id"], point.point_id)
    log.info(f"mix: {summarize(info)}")
    return info


def summarize(info: dict) -> str:
    r = info["realized"]
    if info["control"]:
        return f"control plan: {info['sequences']} unique sequences ({r['total_tokens']} tokens), no repeats"
    if not info["repeated_sequences"]:
        return f"baseline plan: {info['sequences']} unique sequences ({r['total_tokens']} tokens), no repeats"
    return (
        f"plan: {info['sequences']} sequences ({r['total_tokens']} tokens); repeated subset of "
        f"{info['repeated_sequences']} sequences ({r['repeated_tokens']} tokens) seen E = {r['epochs']:.3f} times "
        f"({r['epochs_min']}-{r['epochs_max']}), realized f = {r['fraction']:.4f}; "
        f"{info['unique_sequences']} unique sequences"
    )
