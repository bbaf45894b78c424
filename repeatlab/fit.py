"""The pure math of the study analysis: robust power-law fits of the baselines, their inversion (effective model
size), a monotone interpolation fallback, and the poor-performance region's edges (docs/architecture.md,
repeatlab.analyze's module docstring for the conventions). numpy in, plain dicts out; no records, no storage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

REGION_LEVEL = 0.5  # the poor-performance region: damage >= 50 % of the maximum


# ----------------------------------------------------------------------------------------------------------------------
# Baseline fit: y = c + A * N^-alpha (y = badness), robust


ALPHA_GRID = np.concatenate([np.linspace(0.005, 1.0, 200), np.linspace(1.01, 4.0, 120)])
OUTLIER_T = 6.0  # a size whose externally studentized residual exceeds this is left out of the fit


def _solve_at_alphas(x: np.ndarray, y: np.ndarray, alphas, c_bounds: tuple[float, float] = (-np.inf, np.inf)):
    """(c, A', sum of squared residuals, residuals) for y = c + A' * x^-alpha at every alpha at once (arrays).

    c and A' by linear least squares in closed form, with c held inside c_bounds (the physical range of the
    asymptote: where the unconstrained c falls outside, c sits at the bound and A' is refitted, which is the
    constrained optimum of this quadratic at fixed alpha); an alpha whose A' is not > 0 gets an infinite sum (the
    law must improve with N).
    """
    alphas = np.atleast_1d(np.asarray(alphas, dtype=float))
    b = x[None, :] ** (-alphas[:, None])
    k = x.size
    sb, sy, sbb, sby = b.sum(1), y.sum(), (b * b).sum(1), (b * y).sum(1)
    det = k * sbb - sb * sb
    det = np.where(np.abs(det) < 1e-300, 1e-300, det)
    a_coef = (k * sby - sb * sy) / det
    c = (sy - a_coef * sb) / k
    clamped = np.clip(c, c_bounds[0], c_bounds[1])
    if np.any(clamped != c):
        refit = (sby - clamped * sb) / np.where(sbb > 0, sbb, 1e-300)
        a_coef = np.where(clamped != c, refit, a_coef)
        c = clamped
    r = y - (c[:, None] + a_coef[:, None] * b)
    return c, a_coef, np.where(a_coef > 0, np.sum(r**2, axis=1), np.inf), r


def _best_alpha(
    x: np.ndarray, y: np.ndarray, grid: np.ndarray = ALPHA_GRID, c_bounds: tuple[float, float] = (-np.inf, np.inf)
) -> float | None:
    """The least-squares alpha: the whole grid, then finer grids around the best one; None if A' <= 0 always."""
    cand = grid
    total = _solve_at_alphas(x, y, cand, c_bounds)[2]
    if not np.isfinite(total).any():
        return None
    for _ in range(3):
        i = int(np.argmin(total))
        cand = np.linspace(cand[max(i - 1, 0)], cand[min(i + 1, len(cand) - 1)], 41)
        total = _solve_at_alphas(x, y, cand, c_bounds)[2]
    return float(cand[int(np.argmin(total))])


def _c_bounds(y: np.ndarray, sign: float) -> tuple[float, float]:
    """The physical range of the asymptote in badness units: a loss's L_inf in [0, the smallest observed loss]; a
    score's S_inf in [the largest observed score, 1] (prefix matching is an attention weight)."""
    return (0.0, float(np.min(y))) if sign > 0 else (-1.0, float(np.min(y)))


def _least_squares(
    x: np.ndarray, y: np.ndarray, c_bounds: tuple[float, float] = (-np.inf, np.inf)
) -> tuple[float, float, float, float] | None:
    """(alpha, c, A', sum of squared residuals) of the least-squares law, None when no alpha has A' > 0."""
    alpha = _best_alpha(x, y, c_bounds=c_bounds)
    if alpha is None:
        return None
    c, a_coef, ssr, _ = _solve_at_alphas(x, y, alpha, c_bounds)
    return alpha, float(c[0]), float(a_coef[0]), float(ssr[0])


def _outliers(x: np.ndarray, y: np.ndarray, c_bounds: tuple[float, float] = (-np.inf, np.inf)) -> np.ndarray:
    """Mask of the points kept: one at a time, the point whose removal helps most is dropped while its externally
    studentized residual t = sqrt((SSR - SSR_without) / (SSR_without / dof)) exceeds OUTLIER_T; at most (n - 4) // 2
    points, and only while >= 5 remain (2 degrees of freedom)."""
    keep = np.ones(len(x), dtype=bool)
    floor = (1e-6 * float(np.ptp(y))) ** 2 + 1e-300
    while keep.sum() >= 6 and (~keep).sum() < (len(x) - 4) // 2:
        full = _least_squares(x[keep], y[keep], c_bounds)
        if full is None:
            break
        best = None
        for i in np.flatnonzero(keep):
            rest = keep.copy()
            rest[i] = False
            fit = _least_squares(x[rest], y[rest], c_bounds)
            if fit is None:
                continue
            t2 = (full[3] - fit[3]) / max(fit[3] / (rest.sum() - 3), floor)
            if best is None or t2 > best[0]:
                best = (t2, i)
        if best is None or best[0] <= OUTLIER_T**2:
            break
        keep[best[1]] = False
    return keep


POOR_RESIDUAL_SIGMAS = 3.0  # an rms residual above this many noise sigmas: the law does not describe the baselines


def fit_power_law(
    n_params: Iterable[float], values: Iterable[float], direction: str = "lower", noise: float | None = None
) -> dict:
    """Robust fit of a baseline law to (N, value) pairs. Returns a dict with `ok` and either the parameters or `note`.

    lower is better: value = L_inf + A * N^-alpha;  higher is better: value = S_inf - A * N^-alpha.
    The asymptote is held in its physical range (0 <= L_inf <= the smallest observed loss). `usable` is false, with
    `unusable_reason`, when alpha or the asymptote ends at a bound of its search, or when the rms residual exceeds
    POOR_RESIDUAL_SIGMAS x `noise` (the run-to-run noise, when known): then N_eff comes from interpolation only.
    """
    n = np.asarray(list(n_params), dtype=float)
    v = np.asarray(list(values), dtype=float)
    sign = 1.0 if direction == "lower" else -1.0
    form = "L_inf + A * N^-alpha" if sign > 0 else "S_inf - A * N^-alpha"
    sizes = len(np.unique(n))
    if sizes < 3:
        return {
            "ok": False,
            "form": form,
            "note": f"no fit: {sizes} model size(s); the 3-parameter law needs at "
            "least 3" + (" (interpolation only)" if sizes == 2 else ""),
        }
    y = sign * v
    n_ref = float(np.exp(np.mean(np.log(n))))
    x = n / n_ref
    bounds = _c_bounds(y, sign)
    if _least_squares(x, y) is None or _least_squares(x, y, bounds) is None:
        return {"ok": False, "form": form, "note": "no fit: the baseline does not improve with N"}
    keep = _outliers(x, y, bounds)
    bounds = _c_bounds(y[keep], sign)
    fitted = _least_squares(x[keep], y[keep], bounds)
    if fitted is None:
        return {"ok": False, "form": form, "note": "no fit: the baseline does not improve with N"}
    alpha, c, a_ref, ssr = fitted
    amp = a_ref * n_ref**alpha
    pred = c + amp * n ** (-alpha)
    dof = int(keep.sum() - 3)
    return {
        "ok": True,
        "form": form,
        "direction": direction,
        "asymptote": float(sign * c),
        "A": float(amp),
        "alpha": float(alpha),
        "n_ref": n_ref,
        "A_at_n_ref": float(a_ref),
        "n_params": n.tolist(),
        "observed": v.tolist(),
        "predicted": (sign * pred).tolist(),
        "residuals": (v - sign * pred).tolist(),
        "rms_residual": float(np.sqrt(np.mean((v - sign * pred)[keep] ** 2))),
        "sigma": float(math.sqrt(ssr / dof)) if dof > 0 else None,
        "dof": dof,
        "outliers": n[~keep].tolist(),
        "alpha_at_bound": bool(alpha <= ALPHA_GRID[0] + 1e-9 or alpha >= ALPHA_GRID[-1] - 1e-9),
        "asymptote_bounds": [float(sign * bounds[0]), float(sign * bounds[1])],
        "asymptote_at_bound": bool(
            np.isclose(c, bounds[0], rtol=0, atol=1e-9) or np.isclose(c, bounds[1], rtol=0, atol=1e-9)
        ),
    } | _usability(alpha, c, bounds, float(np.sqrt(np.mean((v - sign * pred)[keep] ** 2))), noise)


def _usability(alpha: float, c: float, bounds: tuple[float, float], rms: float, noise: float | None) -> dict:
    reasons = []
    if alpha <= ALPHA_GRID[0] + 1e-9 or alpha >= ALPHA_GRID[-1] - 1e-9:
        reasons.append(f"alpha at its search bound ({alpha:.3g})")
    if np.isclose(c, bounds[0], rtol=0, atol=1e-9) or np.isclose(c, bounds[1], rtol=0, atol=1e-9):
        reasons.append("the asymptote at the edge of its physical range (0 or the best observed value)")
    if noise and rms > POOR_RESIDUAL_SIGMAS * noise:
        reasons.append(f"rms residual {rms:.3g} above {POOR_RESIDUAL_SIGMAS:g}x the run-to-run noise ({noise:.3g})")
    return {"usable": not reasons, "unusable_reason": "; ".join(reasons) or None, "noise_sigma": noise}


def predict(fit: dict, n: float) -> float:
    sign = 1.0 if fit["direction"] == "lower" else -1.0
    return fit["asymptote"] + sign * fit["A"] * n ** (-fit["alpha"])


def invert_fit(fit: dict, value: float) -> float | None:
    """N whose fitted baseline equals value; None when the value beats the asymptote (no finite N)."""
    sign = 1.0 if fit["direction"] == "lower" else -1.0
    excess = sign * (value - fit["asymptote"])
    if excess <= 0:
        return None
    log_n = (math.log(fit["A"]) - math.log(excess)) / fit["alpha"]
    if log_n > 700:
        return None
    return math.exp(log_n)


def _isotonic_decreasing(y: np.ndarray) -> np.ndarray:
    """Pool-adjacent-violators: the closest non-increasing sequence (least squares)."""
    blocks = [[float(v), 1] for v in y]
    out: list[list[float]] = []
    for b in blocks:
        out.append(b)
        while len(out) > 1 and out[-2][0] < out[-1][0]:
            v2, w2 = out.pop()
            v1, w1 = out.pop()
            out.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2])
    res: list[float] = []
    for v, w in out:
        res += [v] * int(w)
    return np.asarray(res)


def make_interpolation(n_params: Iterable[float], values: Iterable[float], direction: str = "lower") -> dict | None:
    """Monotone piecewise-linear baseline in log N (badness non-increasing in N); None with < 2 sizes."""
    n = np.asarray(list(n_params), dtype=float)
    if len(n) < 2:
        return None
    order = np.argsort(n)
    sign = 1.0 if direction == "lower" else -1.0
    y = _isotonic_decreasing(sign * np.asarray(list(values), dtype=float)[order])
    return {
        "method": "piecewise-linear in log N through the baseline means, made monotone (isotonic)",
        "direction": direction,
        "log_n": np.log(n[order]).tolist(),
        "values": (sign * y).tolist(),
    }


def invert_interpolation(interp: dict, value: float) -> float | None:
    """N where the monotone interpolation reaches value; the end segments extend it beyond the baseline range."""
    sign = 1.0 if interp["direction"] == "lower" else -1.0
    ln = np.asarray(interp["log_n"])
    y = sign * np.asarray(interp["values"])  # non-increasing in N
    t = sign * value
    segs = [j for j in range(len(y) - 1) if y[j] > y[j + 1]]
    if not segs:
        return None
    inside = [j for j in segs if y[j] >= t >= y[j + 1]]
    j = inside[0] if inside else (segs[0] if t > y[0] else segs[-1])
    log_n = ln[j] + (y[j] - t) / (y[j] - y[j + 1]) * (ln[j + 1] - ln[j])
    if log_n > 700:
        return None
    return math.exp(log_n)


# ----------------------------------------------------------------------------------------------------------------------
# Region edges and learning curves


def _crossing(log_e: np.ndarray, d: np.ndarray, i_peak: int, level: float, step: int) -> float | None:
    """log E where d falls below level walking from the peak by `step` (+1 right, -1 left); None if it never does."""
    i = i_peak
    while 0 <= i + step < len(d):
        j = i + step
        if d[j] < level:
            t = (d[i] - level) / (d[i] - d[j])
            return float(log_e[i] + t * (log_e[j] - log_e[i]))
        i = j
    return None


def region_edges(epochs: Iterable[float], damage: Iterable[float], level: float = REGION_LEVEL) -> dict:
    """Edges (in E) of the range where damage >= level * max damage, interpolated in log E."""
    e = np.asarray(list(epochs), dtype=float)
    d = np.asarray(list(damage), dtype=float)
    order = np.argsort(e)
    e, d = e[order], d[order]
    out: dict[str, Any] = {
        "max_damage": None,
        "peak_epochs": None,
        "threshold": None,
        "left": None,
        "right": None,
        "left_censored": False,
        "right_censored": False,
        "note": None,
    }
    if len(e) == 0:
        out["note"] = "no points"
        return out
    i_peak = int(np.argmax(d))
    dmax = float(d[i_peak])
    out.update(max_damage=dmax, peak_epochs=float(e[i_peak]))
    if dmax <= 0:
        out["note"] = "no damage at any E (max damage <= 0)"
        return out
    level_v = level * dmax
    out["threshold"] = level_v
    log_e = np.log(e)
    left = _crossing(log_e, d, i_peak, level_v, -1)
    right = _crossing(log_e, d, i_peak, level_v, +1)
    out["left"] = None if left is None else math.exp(left)
    out["right"] = None if right is None else math.exp(right)
    out["left_censored"] = left is None
    out["right_censored"] = right is None
    notes = []
    if left is None:
        notes.append(f"left edge at or below the smallest E ({e[0]:g}): censored")
    if right is None:
        notes.append(f"right edge at or above the largest E ({e[-1]:g}): censored")
    out["note"] = "; ".join(notes) or None
    return out


def fit_edge(n_params: Iterable[float], edges: Iterable[float]) -> dict:
    """E = k * N^alpha by least squares in log-log space; needs >= 2 distinct sizes."""
    n = np.asarray(list(n_params), dtype=float)
    e = np.asarray(list(edges), dtype=float)
    if len(np.unique(n)) < 2:
        return {"ok": False, "note": f"no fit: the edge is known at {len(np.unique(n))} model size(s), need >= 2"}
    ln, le = np.log(n), np.log(e)
    alpha, logk = np.polyfit(ln, le, 1)
    resid = le - (logk + alpha * ln)
    return {
        "ok": True,
        "k": float(math.exp(logk)),
        "alpha": float(alpha),
        "n_sizes": len(np.unique(n)),
        "n_params": n.tolist(),
        "edges": e.tolist(),
        "log_residuals": resid.tolist(),
        "rms_log_residual": float(np.sqrt(np.mean(resid**2))),
    }
