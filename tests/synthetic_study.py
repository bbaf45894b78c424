"""A synthetic study with known answers, for the analysis / danger / report tests (and anyone else's).

Every metric follows a known baseline law in the non-embedding size N, and repeated data adds a known damage bump in
log E per (N, f): a trapezoid with a flat top (half-width PLATEAU in ln E, so the grid always samples the maximum)
and linear ramps down to zero at RAMP from the centre. Damage >= 50 % of the maximum therefore holds exactly for
|ln E - mu(N)| <= (PLATEAU + RAMP) / 2 = HALF_WIDTH, and linear interpolation in ln E recovers the edges exactly
while grid steps are at most ln 2. The centre moves with N as E_peak(N) = PEAK_K * N^PEAK_ALPHA, so

    left edge  E = PEAK_K * exp(-HALF_WIDTH) * N^PEAK_ALPHA,
    right edge E = PEAK_K * exp(+HALF_WIDTH) * N^PEAK_ALPHA.

The records follow the eval.json format of docs/architecture.md (heads matrices, per-copy losses, learning curves).
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np

# metric -> (asymptote, A, alpha); losses: L = a + A N^-alpha, prefix-matching (a score): S = a - A N^-alpha
BASELINE = {
    "test_loss": (1.8, 30.0, 0.3),
    "copying": (0.5, 50.0, 0.35),
    "prefix_matching": (0.9, 20.0, 0.3),
    "ood_loss": (3.0, 40.0, 0.3),
}
SIZES = (1e5, 3e5, 1e6, 3e6)
EPOCHS = tuple(float(2**k) for k in range(15))  # 1 .. 16384, steps of ln 2
PEAK_K, PEAK_ALPHA = 3e4, -0.5
PLATEAU, RAMP = 0.5, 3.5
HALF_WIDTH = (PLATEAU + RAMP) / 2
LEFT_K, RIGHT_K = PEAK_K * math.exp(-HALF_WIDTH), PEAK_K * math.exp(HALF_WIDTH)
DAMAGE = {0.1: 0.05, 0.5: 0.2}  # maximum test-loss damage (nats) per f
COPY_FACTOR, PREFIX_FACTOR = 3.0, 1.5  # mechanistic damage relative to test-loss damage
UNIQUE_LOSS_PER_F = 0.02  # control: nats lost per unit f from having fewer unique tokens
TOTAL_TOKENS = 10_000_000


def baseline_value(metric: str, n: float) -> float:
    a, amp, alpha = BASELINE[metric]
    return a - amp * n**-alpha if metric == "prefix_matching" else a + amp * n**-alpha


def peak_epochs(n: float) -> float:
    return PEAK_K * n**PEAK_ALPHA


def damage(n: float, fraction: float, epochs: float) -> float:
    """Known test-loss damage of (N, f, E): DAMAGE[f] times the trapezoid in ln E."""
    if fraction <= 0 or epochs <= 0:
        return 0.0
    amp = DAMAGE.get(fraction, 0.3 * fraction)
    dist = abs(math.log(epochs) - math.log(peak_epochs(n)))
    return amp * min(1.0, max(0.0, (RAMP - dist) / (RAMP - PLATEAU)))


def point_id(model: str, fraction: float, epochs: float, seed: int, control: bool) -> str:
    blob = json.dumps([model, fraction, epochs, seed, control])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _curve(final: float, bump: float, points: int = 12) -> list[dict]:
    tokens = np.geomspace(1e4, TOTAL_TOKENS, points)
    rows = []
    for t in tokens:
        loss = final + 0.5 * ((t / TOTAL_TOKENS) ** -0.25 - 1.0)
        # mid-training, after the burn-in
        loss += bump * math.exp(-((math.log(t) - math.log(TOTAL_TOKENS / 3)) ** 2) / 0.3)
        rows.append(
            {
                "step": int(t // 4096),
                "tokens": int(t),
                "lr": 1e-3,
                "train_loss": loss,
                "test_loss": loss,
                "repeated_loss": None,
                "tokens_per_s": 1e5,
                "elapsed_s": float(t / 1e5),
            }
        )
    return rows


def make_record(
    n: float,
    fraction: float,
    epochs: float,
    seed: int = 0,
    control: bool = False,
    noise: float = 0.0,
    rng: np.random.Generator | None = None,
    ood: bool = True,
    epochwise_bump: bool = True,
) -> dict:
    rng = rng or np.random.default_rng(seed)
    name = f"N{int(n)}"
    d = 0.0 if control else damage(n, fraction, epochs)
    unique_loss = UNIQUE_LOSS_PER_F * fraction if control else 0.0  # repeated runs: damage d only

    def jitter() -> float:
        return float(rng.normal(0.0, noise)) if noise else 0.0

    test = baseline_value("test_loss", n) + d + unique_loss + jitter()
    copy = baseline_value("copying", n) + COPY_FACTOR * d + jitter()
    prefix = baseline_value("prefix_matching", n) - PREFIX_FACTOR * d + jitter()
    ood_loss = baseline_value("ood_loss", n) + d * (1 + fraction) + jitter() if ood else None
    if fraction > 0 and not control:
        memo_e = peak_epochs(n) / 4
        repeated = test / (1.0 + (epochs / memo_e) ** 2)
    else:
        repeated = None
    pid = point_id(name, fraction, epochs if fraction > 0 and not control else 0.0, seed, control)
    point = {
        "point_id": pid,
        "corpus_id": "synthetic",
        "corpus_url": "memory://synthetic",
        "model": {
            "name": name,
            "n_layer": 2,
            "n_embd": 64,
            "n_head": 4,
            "mlp_ratio": 4,
            "attention_only": False,
            "vocab_size": 256,
            "context": 128,
            "n_params_nonembed": int(n),
            "n_params_total": int(n) + 24576,
        },
        "fraction": float(fraction),
        "epochs": float(epochs) if fraction > 0 and not control else 0.0,
        "seed": int(seed),
        "control": bool(control),
        "budget": {"total_tokens": TOTAL_TOKENS, "context": 128, "batch_tokens": 4096},
        "train": {},
        "eval": {},
    }
    per_copy = [test] + [copy] * 10
    bump = 3.0 * d if (epochwise_bump and fraction >= 0.5 and not control) else 0.0
    prefix_heads = [[0.01, 0.02, 0.03, 0.04], [prefix, prefix, prefix, 0.05]]
    return {
        "point_id": pid,
        "point": point,
        "test_loss": test,
        "repeated_loss": repeated,
        "ood_loss": ood_loss,
        "copying": {"per_copy_loss": per_copy, "mean_copies_2_to_last": copy, "last_copy": copy},
        "icl_score": -0.4 * prefix,
        "icl_positions": [12, 125],
        "heads": {
            "prefix_matching": prefix_heads,
            "previous_token": [[0.8, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1]],
            "copying": [[0.1, 0.1, 0.1, 0.1], [0.6, 0.6, 0.6, 0.1]],
        },
        "aggregates": {
            "prefix_matching_max": max(prefix, 0.05),
            "prefix_matching_top_mean": prefix,
            "previous_token_max": 0.8,
            "copying_max": 0.6,
        },
        "learning_curve": _curve(test, bump),
    }


def synthetic_records(
    sizes=SIZES,
    fractions=(0.1, 0.5),
    epochs=EPOCHS,
    seeds=(0,),
    baseline: bool = True,
    controls: bool = False,
    noise: float = 0.0,
    ood: bool = True,
    rng_seed: int = 0,
) -> list[dict]:
    """Eval records of a whole synthetic study (baselines, every (N, f, E, seed), optional controls)."""
    rng = np.random.default_rng(rng_seed)
    out = []
    for n in sizes:
        for seed in seeds:
            if baseline:
                out.append(make_record(n, 0.0, 0.0, seed, noise=noise, rng=rng, ood=ood))
            for f in fractions:
                for e in epochs:
                    out.append(make_record(n, f, e, seed, noise=noise, rng=rng, ood=ood))
                if controls:
                    out.append(make_record(n, f, 0.0, seed, control=True, noise=noise, rng=rng, ood=ood))
    return out


def write_study(root: str, study: str, records: list[dict], drop: int = 0) -> list[dict]:
    """Write points.json and every run's eval.json under a local root, leaving out the last `drop` evals."""
    from repeatlab import storage

    points = [r["point"] for r in records]
    storage.write_json(storage.join(root, "studies", study, "points.json"), points)
    kept = records[: len(records) - drop] if drop else records
    for r in kept:
        storage.write_json(storage.join(root, "runs", r["point_id"], "eval.json"), r)
    return points
