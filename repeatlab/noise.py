"""Noise floors, significance and suspect runs: how far apart two runs that should agree land.

Pure functions on the analysis's run dicts (repeatlab.analyze._run_of), used by analyze_study.

- Run-to-run noise per model size, sigma (nats of test loss), from two kinds of replicates, pooled:
    seeds:  every group of runs that differ only in the seed (k >= 2 values): sum of squares about the group mean,
            k - 1 degrees of freedom;
    low E:  every repeated point with E <= LOW_E (repeating a subset twice or four times should not change the test
            loss): (its mean - the baseline mean)^2 / (1/k + 1/n_baseline), one degree of freedom; only while its
            repeated subset is not being memorized yet (repeated-subset loss >= UNMEMORIZED x test loss): a model
            that already memorizes at E <= 4 is damaged there, not a replicate.
  A size with fewer than MIN_OWN_DOF degrees of freedom uses the estimate pooled over all sizes.
- A damage is significant when it exceeds SIGNIFICANCE standard errors, SE = sigma * sqrt(1/k + 1/n_baseline).
- Suspect baselines: an "outlier" when the low-E points of its size beat it by more than SIGNIFICANCE standard errors
  of a noise estimated without them; "not converged" when its learning curve still falls steeply at the end (the
  drop per doubling of tokens over its last segment exceeds SIGNIFICANCE * sigma and twice the median of the same
  size's other runs). Then the damage is also given against the pooled baseline (the baseline runs and the low-E
  points together).
- Loss spikes: a learning curve that rises more than SPIKE_NATS above its running minimum at any point (warmup
  included).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

LOW_E = 4.0  # repeated points with E <= LOW_E count as replicates of the baseline
SIGNIFICANCE = 3.0  # a damage is reported as significant beyond this many standard errors
MIN_OWN_DOF = 2  # a size with fewer degrees of freedom uses the noise pooled over sizes
SPIKE_NATS = 0.3  # a learning-curve rise above its running minimum larger than this is a loss spike
UNMEMORIZED = 0.95  # a low-E point counts as a baseline replicate only while repeated loss >= this x test loss
STEEP_FACTOR = 2.0  # a baseline's final drop per doubling more than this x its size's median is "still falling"

METRIC = "test_loss"


def _model_key(run: dict) -> tuple[str, float]:
    return run["model"], run["n_params"]


def _values(runs: list[dict], metric: str = METRIC) -> list[float]:
    return [r["values"][metric] for r in runs if r["values"].get(metric) is not None]


def _groups(runs: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in runs:
        out.setdefault((r["fraction"], r["epochs"], r["control"]), []).append(r)
    return out


def _is_baseline(key: tuple) -> bool:
    return key[0] == 0 and not key[2]


def _is_low_e(key: tuple, runs: list[dict] | None = None, metric: str = METRIC) -> bool:
    """A repeated point at E <= LOW_E whose repeated subset is not being memorized (see the module docstring)."""
    if not (key[0] > 0 and not key[2] and 0 < key[1] <= LOW_E):
        return False
    rep = [r["repeated_loss"] for r in runs or [] if r.get("repeated_loss") is not None]
    val = _values(runs or [], metric)
    return not rep or not val or float(np.mean(rep)) >= UNMEMORIZED * float(np.mean(val))


def replicate_sums(runs: list[dict], metric: str = METRIC) -> dict:
    """Sums of squares and degrees of freedom of one size's replicates (seeds and low-E points)."""
    groups = _groups(runs)
    seed_ss, seed_dof = 0.0, 0
    for vals in (_values(g, metric) for g in groups.values()):
        if len(vals) >= 2:
            seed_ss += float(np.sum((np.asarray(vals) - np.mean(vals)) ** 2))
            seed_dof += len(vals) - 1
    low_ss, low_dof, low_points = 0.0, 0, []
    base = next((_values(g, metric) for k, g in groups.items() if _is_baseline(k)), [])
    if base:
        b = float(np.mean(base))
        for key, g in sorted(groups.items()):
            vals = _values(g, metric)
            if _is_low_e(key, g, metric) and vals:
                dev = float(np.mean(vals)) - b
                low_ss += dev**2 / (1 / len(vals) + 1 / len(base))
                low_dof += 1
                low_points.append({"fraction": key[0], "epochs": key[1], "n": len(vals), "deviation": dev})
    return {
        "seed_ss": seed_ss,
        "seed_dof": seed_dof,
        "low_e_ss": low_ss,
        "low_e_dof": low_dof,
        "low_e_points": low_points,
    }


def _sigma(ss: float, dof: int) -> float | None:
    return math.sqrt(ss / dof) if dof > 0 else None


def noise_floors(runs: list[dict], metric: str = METRIC) -> dict:
    """{"per_model": [...], "pooled": {...}}: sigma per size from its replicates, pooled where it has too few."""
    by_model: dict[tuple, list[dict]] = {}
    for r in runs:
        by_model.setdefault(_model_key(r), []).append(r)
    sums = {key: replicate_sums(rs, metric) for key, rs in by_model.items()}
    total_ss = sum(s["seed_ss"] + s["low_e_ss"] for s in sums.values())
    total_dof = sum(s["seed_dof"] + s["low_e_dof"] for s in sums.values())
    pooled = {"sigma": _sigma(total_ss, total_dof), "dof": total_dof}
    per_model = []
    for (name, n), s in sorted(sums.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        dof = s["seed_dof"] + s["low_e_dof"]
        own = _sigma(s["seed_ss"] + s["low_e_ss"], dof)
        use_own = own is not None and dof >= MIN_OWN_DOF
        per_model.append(
            {
                "model": name,
                "n_params": n,
                "own_sigma": own,
                "own_dof": dof,
                "seed_dof": s["seed_dof"],
                "low_e_dof": s["low_e_dof"],
                "low_e_points": s["low_e_points"],
                "sigma": own if use_own else pooled["sigma"],
                "source": "own"
                if use_own
                else ("pooled over sizes" if pooled["sigma"] is not None else "none: no seeds and no low-E points"),
            }
        )
    return {"metric": metric, "low_e": LOW_E, "significance": SIGNIFICANCE, "per_model": per_model, "pooled": pooled}


def sigma_of(noise: dict, model: str, n_params: float) -> float | None:
    for row in noise.get("per_model", []):
        if row["model"] == model and row["n_params"] == n_params:
            return row["sigma"]
    return None


def significance(damage: float | None, sigma: float | None, n_point: int, n_base: int) -> dict:
    """Standard error, z and the verdict of one damage against its baseline."""
    if damage is None or sigma is None or sigma <= 0 or n_point < 1 or n_base < 1:
        return {"damage_se": None, "z": None, "significant": None}
    se = sigma * math.sqrt(1 / n_point + 1 / n_base)
    z = damage / se
    return {"damage_se": se, "z": z, "significant": bool(z > SIGNIFICANCE)}


def difference_significant(a: float, b: float, sigma: float | None, n_a: int, n_b: int) -> bool | None:
    """Whether a - b > SIGNIFICANCE standard errors of the difference of two means."""
    if sigma is None or sigma <= 0:
        return None
    return bool(a - b > SIGNIFICANCE * sigma * math.sqrt(1 / n_a + 1 / n_b))


# ----------------------------------------------------------------------------------------------------------------------
# Suspect baselines and loss spikes


def _curve(run_curve: Any) -> list[tuple[float, float]]:
    rows = []
    for r in run_curve or []:
        if isinstance(r, dict) and r.get("tokens") and r.get("test_loss") is not None:
            try:
                t, v = float(r["tokens"]), float(r["test_loss"])
            except (TypeError, ValueError):
                continue
            if t > 0 and math.isfinite(v):
                rows.append((t, v))
    return sorted(rows)


def final_drop_per_doubling(curve: Any) -> float | None:
    """Test-loss drop per doubling of tokens over the last segment of a learning curve (nats; > 0: still falling)."""
    rows = _curve(curve)
    if len(rows) < 2 or rows[-1][0] <= rows[-2][0]:
        return None
    (t1, v1), (t2, v2) = rows[-2], rows[-1]
    return (v1 - v2) / math.log2(t2 / t1)


def loss_spike(curve: Any, threshold: float = SPIKE_NATS) -> dict | None:
    """The largest rise of a learning curve above its running minimum, when it exceeds `threshold` nats."""
    rows = _curve(curve)
    best, low = None, None
    for t, v in rows:
        if low is not None and v - low[1] > threshold and (best is None or v - low[1] > best["rise"]):
            best = {"rise": v - low[1], "at_tokens": t, "from_loss": low[1], "to_loss": v}
        if low is None or v < low[1]:
            low = (t, v)
    if best is not None:
        best["recovered"] = bool(rows[-1][1] <= best["from_loss"] + threshold)
    return best


def suspect_baselines(runs: list[dict], noise: dict, metric: str = METRIC) -> list[dict]:
    """Per size, the baseline flags (outlier / not converged) and the pooled baseline."""
    by_model: dict[tuple, list[dict]] = {}
    for r in runs:
        by_model.setdefault(_model_key(r), []).append(r)
    out = []
    for (name, n), rs in sorted(by_model.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        groups = _groups(rs)
        base_runs = [r for k, g in groups.items() if _is_baseline(k) for r in g]
        base = _values(base_runs, metric)
        if not base:
            continue
        low_runs = [r for k, g in groups.items() if _is_low_e(k, g, metric) for r in g]
        low = _values(low_runs, metric)
        pooled_vals = base + low
        row: dict[str, Any] = {
            "model": name,
            "n_params": n,
            "baseline_mean": float(np.mean(base)),
            "baseline_runs": len(base),
            "pooled_mean": float(np.mean(pooled_vals)),
            "pooled_runs": len(pooled_vals),
            "outlier": False,
            "not_converged": False,
            "notes": [],
        }
        sigma_ref = _reference_sigma(runs, noise, name, n, metric)
        if low and sigma_ref:
            dev = float(np.mean(low)) - row["baseline_mean"]
            limit = SIGNIFICANCE * sigma_ref * math.sqrt(1 / len(low) + 1 / len(base))
            row["low_e_deviation"] = dev
            if dev < -limit:
                row["outlier"] = True
                row["notes"].append(
                    f"its low-E neighbours (E <= {LOW_E:g}) beat it by {-dev:.3f} nats, more "
                    f"than {SIGNIFICANCE:g} standard errors ({limit:.3f})"
                )
        sigma = sigma_of(noise, name, n)
        drops = [final_drop_per_doubling(r.get("curve")) for r in base_runs]
        drops_known = [d for d in drops if d is not None]
        others_all = [final_drop_per_doubling(r.get("curve")) for r in rs if r not in base_runs]
        others = [d for d in others_all if d is not None]
        if drops_known and sigma:
            drop = max(drops_known)
            row["final_drop_per_doubling"] = drop
            reference = float(np.median(others)) if others else 0.0
            if drop > SIGNIFICANCE * sigma and drop > STEEP_FACTOR * max(reference, 0.0):
                row["not_converged"] = True
                row["notes"].append(
                    f"its learning curve still falls {drop:.3f} nats per doubling of tokens at the "
                    f"end (its size's other runs: {reference:.3f})"
                )
        out.append(row)
    return out


def _reference_sigma(runs: list[dict], noise: dict, name: str, n: float, metric: str) -> float | None:
    """Noise estimated without this size's low-E deviations: its seeds plus every other size's replicates."""
    ss, dof = 0.0, 0
    by_model: dict[tuple, list[dict]] = {}
    for r in runs:
        by_model.setdefault(_model_key(r), []).append(r)
    for key, rs in by_model.items():
        s = replicate_sums(rs, metric)
        ss += s["seed_ss"]
        dof += s["seed_dof"]
        if key != (name, n):
            ss += s["low_e_ss"]
            dof += s["low_e_dof"]
    return _sigma(ss, dof)
