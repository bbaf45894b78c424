"""Fits across the study grid: baselines, effective model sizes, worst E, the poor-performance region -> analysis.json.

Pure functions on eval records (eval.json objects, docs/architecture.md); no log grepping, no parsing of names.

Conventions
- Metrics: test_loss, copying (mean loss over copies 2..last), ood_loss (losses: lower is better) and prefix_matching
  (top-k mean prefix-matching score over heads: higher is better). Internally every metric is turned into a
  "badness" y = sign * value (sign +1 for losses, -1 for scores), so that one code path fits and inverts all of them.
- Baseline law, fitted on the f = 0 (non-control) runs, one point per model (the mean over seeds):
      losses:  L(N) = L_inf + A * N^-alpha          scores:  S(N) = S_inf - A * N^-alpha      (A > 0, alpha > 0)
  Least squares: a grid over alpha, then finer grids around the best one, with L_inf and A solved in closed form
  at each alpha. It is made robust by deletion diagnostics: a size whose externally studentized residual (refit
  without it) exceeds OUTLIER_T is left out, one at a time, at most (n - 4) // 2 of n sizes and only with >= 6
  (listed as `outliers`; the rms residual is over the kept sizes). It needs >= 3 model sizes.
  A fallback is always reported next to it when >= 2 sizes exist: a piecewise-linear interpolation in log N of the
  baseline means, made monotone (pool-adjacent-violators), inverted linearly (the end segments extend it, flagged).
- N_eff: the baseline size whose predicted metric equals the point's value; multiplier = N / N_eff (> 1: the point
  behaves like a smaller model). `extrapolated` is true when the value is better than the best baseline or worse than
  the worst one (outside the observed baseline range), and whenever the fit's asymptote is beaten (N_eff = None).
- damage = sign * (value - baseline value at the same model), positive = worse (nats for losses, score points
  for scores). With control runs: repetition_harm = sign * (value - control value at the same (N, f)), and
  unique_data_loss = sign * (control - baseline).
- Worst E per (N, f): the E of maximal mean damage (of the raw metric when there is no baseline: same argmax);
  interior = not at the smallest or largest E of that (N, f).
- Poor-performance region per f (test loss): per N, the E range where damage >= 50 % of that N's maximum damage;
  edges linearly interpolated in log E; an edge the grid does not reach is censored (None). Edges across N are
  fitted as E = k * N^alpha by least squares in log-log space when >= 2 sizes have the edge.
- Epoch-wise double descent, per run: on the learning curve (test loss vs tokens), the largest rise above the
  running minimum (nats) and whether the loss falls again after that peak.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from repeatlab import mechanism as mechanism_lib
from repeatlab import noise as noise_lib
from repeatlab.errors import AnalysisError, RepeatlabError
from repeatlab.fit import (  # re-exported: the fits are part of the analysis API
    REGION_LEVEL,
    fit_edge,
    fit_power_law,
    invert_fit,
    invert_interpolation,
    make_interpolation,
    predict,
    region_edges,
)

FORMAT_VERSION = 2  # 2: noise floors, significance, baseline flags, bounded fits, ICL with errors, mechanism
EPOCHWISE_TOLERANCE = 0.01  # nats: a rise smaller than this is noise, not epoch-wise double descent
# Rises in the first 10% of the tokens are optimization transients (warmup loss spikes), not epoch-wise double descent.
EPOCHWISE_BURN_IN = 0.1
MEMORIZED_RATIO = 0.8  # repeated_loss > 0.8 * test_loss at the largest E: the subset was never memorized


def _get(record: dict, *path: str) -> Any:
    cur: Any = record
    for key in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(key)
    return cur


_finite = mechanism_lib.finite_number  # a finite float, or None for anything else (bools, NaN, text)


# name -> (label, direction, accessor)
METRICS: dict[str, tuple[str, str, Callable[[dict], Any]]] = {
    "test_loss": ("test loss (nats/token)", "lower", lambda r: r.get("test_loss")),
    "copying": (
        "copying loss, mean of copies 2..last (nats/token)",
        "lower",
        lambda r: _get(r, "copying", "mean_copies_2_to_last"),
    ),
    "prefix_matching": (
        "prefix-matching score (top-k mean over heads)",
        "higher",
        lambda r: _get(r, "aggregates", "prefix_matching_top_mean"),
    ),
    "ood_loss": ("out-of-distribution loss (nats/token)", "lower", lambda r: r.get("ood_loss")),
}
FIELDS = {
    "test_loss": "test_loss",
    "copying": "copying.mean_copies_2_to_last",
    "prefix_matching": "aggregates.prefix_matching_top_mean",
    "ood_loss": "ood_loss",
}


# The fields that name one run in the analysis' lists (runs, loss spikes, mechanism), in this order.
RUN_IDENTITY = ("point_id", "model", "n_params", "fraction", "epochs", "seed", "control")


def sign_of(metric: str) -> float:
    return 1.0 if METRICS[metric][1] == "lower" else -1.0


def epochwise_double_descent(
    curve: list[dict] | None, tol: float = EPOCHWISE_TOLERANCE, burn_in: float = EPOCHWISE_BURN_IN
) -> dict | None:
    """Non-monotonicity of test loss vs tokens after the first `burn_in` of the tokens: the largest rise above the
    running minimum and whether it falls again."""
    rows = [
        (float(r["tokens"]), _finite(r.get("test_loss")))
        for r in (curve or [])
        if isinstance(r, dict) and _finite(r.get("tokens")) is not None
    ]
    rows = sorted((t, v) for t, v in rows if v is not None)
    if rows:
        rows = [(t, v) for t, v in rows if t >= burn_in * rows[-1][0]]
    if len(rows) < 3:
        return None
    t = np.array([r[0] for r in rows])
    v = np.array([r[1] for r in rows])
    best = (0.0, 0, 0)  # rise, i_min, j_peak
    i_min = 0
    for j in range(1, len(v)):
        if v[j - 1] < v[i_min]:
            i_min = j - 1
        if v[j] - v[i_min] > best[0]:
            best = (float(v[j] - v[i_min]), i_min, j)
    rise, i, j = best
    after = v[j + 1 :]
    fall = float(v[j] - after.min()) if len(after) else 0.0
    return {
        "max_rise": rise,
        "min_tokens": float(t[i]) if rise > 0 else None,
        "peak_tokens": float(t[j]) if rise > 0 else None,
        "fall_after_peak": fall,
        "non_monotone": bool(rise > tol),
        "falls_again": bool(rise > tol and fall > tol),
        "final_test_loss": float(v[-1]),
        "min_test_loss": float(v.min()),
    }


# ----------------------------------------------------------------------------------------------------------------------
# The study analysis


def _run_of(record: dict) -> dict:
    """The fields of one eval record the analysis uses; raises KeyError/TypeError/ValueError when malformed."""
    p = record["point"]
    m = p["model"]
    n = float(m["n_params_nonembed"])
    if not (n > 0):
        raise ValueError("model.n_params_nonembed must be > 0")
    return {
        "point_id": str(record.get("point_id") or p.get("point_id")),
        "model": str(m.get("name") or f"N={n:g}"),
        "n_params": n,
        "attention_only": bool(m.get("attention_only")),
        "fraction": float(p["fraction"]),
        "epochs": float(p.get("epochs") or 0.0),
        "seed": int(p.get("seed", 0)),
        "control": bool(p.get("control", False)),
        "values": {k: _finite(acc(record)) for k, (_, _, acc) in METRICS.items()},
        "repeated_loss": _finite(record.get("repeated_loss")),
        "icl_score": _finite(record.get("icl_score")),
        "prefix_matching_max": _finite(_get(record, "aggregates", "prefix_matching_max")),
        "prefix_chance": _prefix_chance(p.get("eval") or {}),
        "epochwise": epochwise_double_descent(record.get("learning_curve")),
        "curve": record.get("learning_curve"),
        "mechanism": mechanism_lib.evidence(record),
    }


INDUCTION_FACTOR = 2.0  # a baseline's best prefix-matching head below 2x the uniform-attention score: no induction head


def _prefix_chance(eval_cfg: dict) -> float:
    """The prefix-matching score of a head attending uniformly, for the point's probe shape (scores.py)."""
    from repeatlab.scores import uniform_attention_prefix_score

    return uniform_attention_prefix_score(
        int(eval_cfg.get("prefix_random_tokens", 25)), int(eval_cfg.get("prefix_repeats", 4))
    )


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    mean = float(np.mean(vals))
    return mean, (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


@dataclass
class _Study:
    """What every stage of the analysis reads: the usable runs grouped over seeds, the baselines, the noise floors,
    and the warnings collected so far."""

    run_list: list[dict]
    groups: dict[tuple, dict]
    models: list[tuple[float, str, bool]]
    baseline_groups: dict[tuple, dict]
    control_groups: dict[tuple, dict]
    available: list[str]
    warnings: list[dict] = field(default_factory=list)
    noise: dict = field(default_factory=dict)
    suspect_by_model: dict[tuple, dict] = field(default_factory=dict)
    other_family: bool = False  # attention-only models are not on the fitted law
    baseline: dict[str, dict] = field(default_factory=dict)

    @property
    def has_baseline(self) -> bool:
        return bool(self.baseline_groups)

    def warn(self, code: str, message: str) -> None:
        self.warnings.append({"code": code, "message": " ".join(message.split())})


def load_runs(records: list[dict], warn: Callable[[str, str], None]) -> list[dict]:
    """The usable runs of the eval records (malformed, diverged and duplicate records warned about), sorted."""
    runs: dict[str, dict] = {}
    for i, rec in enumerate(records):
        try:
            run = _run_of(rec)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            pid = rec.get("point_id") if isinstance(rec, dict) else None
            warn("bad_record", f"record {pid or i} skipped: malformed ({type(exc).__name__}: {exc})")
            continue
        if run["values"]["test_loss"] is None:
            warn("no_test_loss", f"record {run['point_id']} has no finite test_loss (diverged?): skipped")
            continue
        if run["point_id"] in runs:
            warn("duplicate", f"record {run['point_id']} appears twice: the last one is used")
        runs[run["point_id"]] = run
    if not runs:
        raise AnalysisError(f"none of the {len(records)} eval records is usable (see: malformed or no test_loss)")
    return sorted(
        runs.values(), key=lambda r: (r["n_params"], r["model"], r["fraction"], r["control"], r["epochs"], r["seed"])
    )


def missing_points(
    expected_points: list[dict] | None, run_list: list[dict], warn: Callable[[str, str], None]
) -> list[dict]:
    """The expected points without a usable eval record; the grid's plan sizes checked."""
    missing: list[dict] = []
    if not expected_points:
        return missing
    used = {r["point_id"] for r in run_list}
    for p in expected_points:
        pid = p.get("point_id")
        if pid not in used:
            m = p.get("model") or {}
            missing.append(
                {
                    "point_id": pid,
                    "model": m.get("name"),
                    "n_params": m.get("n_params_nonembed"),
                    "fraction": p.get("fraction"),
                    "epochs": p.get("epochs"),
                    "seed": p.get("seed"),
                    "control": p.get("control"),
                }
            )
    if missing:
        warn(
            "missing_evals",
            f"{len(missing)} of {len(expected_points)} expected points have no usable eval.json "
            f"(e.g. {missing[0]['point_id']}): results are partial",
        )
    try:
        from repeatlab.grid import check_points

        for message in check_points([p for p in expected_points if "budget" in p]):
            warn("grid_epochs", message)
    except (RepeatlabError, KeyError, TypeError, ValueError) as exc:
        warn("grid_check", f"the grid's plan sizes could not be checked: {exc}")
    return missing


def group_runs(run_list: list[dict]) -> _Study:
    """Runs grouped by (model, N, f, E, control), seeds together; the baseline and control groups."""
    groups: dict[tuple, dict] = {}
    for r in run_list:
        key = (r["model"], r["n_params"], r["fraction"], r["epochs"], r["control"])
        g = groups.setdefault(
            key,
            {
                "model": r["model"],
                "n_params": r["n_params"],
                "fraction": r["fraction"],
                "epochs": r["epochs"],
                "control": r["control"],
                "attention_only": r["attention_only"],
                "runs": [],
            },
        )
        g["runs"].append(r)
    return _Study(
        run_list=run_list,
        groups=groups,
        models=sorted({(g["n_params"], g["model"], g["attention_only"]) for g in groups.values()}),
        baseline_groups={
            (g["model"], g["n_params"]): g for g in groups.values() if g["fraction"] == 0 and not g["control"]
        },
        control_groups={(g["model"], g["n_params"], g["fraction"]): g for g in groups.values() if g["control"]},
        available=[m for m in METRICS if any(r["values"][m] is not None for r in run_list)],
    )


def _warn_about_the_grid(st: _Study) -> None:
    if not st.has_baseline:
        st.warn("no_baseline", "no f = 0 baseline runs: N_eff needs f = 0 runs; raw losses still reported")
    sizes = sorted({n for n, _, _ in st.models})
    if len(sizes) == 1:
        st.warn(
            "single_size",
            f"only one model size (N = {_fmt(sizes[0])}): no fit of the baseline law or of the "
            "region edges; damage and worst E are still reported",
        )
    no_induction = sorted(
        {
            r["model"]
            for r in st.run_list
            if r["fraction"] == 0
            and not r["control"]
            and r["prefix_matching_max"] is not None
            and r["prefix_matching_max"] < INDUCTION_FACTOR * r["prefix_chance"]
        }
    )
    if no_induction:
        st.warn(
            "no_induction_heads",
            f"baselines without an induction head (best prefix-matching head below "
            f"{INDUCTION_FACTOR:g}x the uniform-attention score): {', '.join(no_induction)}; damage to copying "
            "and prefix matching means little there (train longer, or use a longer context)",
        )


def noise_checks(st: _Study) -> tuple[list[dict], list[dict]]:
    """Noise floors (into st), suspect baselines and loss spikes, each warned about."""
    st.noise = noise_lib.noise_floors(st.run_list)
    suspects = noise_lib.suspect_baselines(st.run_list, st.noise)
    for row in suspects:
        if row["outlier"] or row["not_converged"]:
            what = " and ".join(
                x for x, flag in (("an outlier", row["outlier"]), ("not converged", row["not_converged"])) if flag
            )
            st.warn(
                "baseline_suspect",
                f"N = {_fmt(row['n_params'])}: the f = 0 baseline is {what}: "
                f"{'; '.join(row['notes'])}; damage at this size is also given against the pooled baseline "
                f"({row['pooled_runs']} runs: the baseline and E <= {noise_lib.LOW_E:g}, "
                f"{row['pooled_mean']:.3f} nats)",
            )
    spikes = []
    for r in st.run_list:
        spike = noise_lib.loss_spike(r["curve"])
        if spike:
            spikes.append(
                {
                    **{k: r[k] for k in RUN_IDENTITY if k != "control"},
                    **spike,
                }
            )
            st.warn(
                "loss_spike",
                f"N = {_fmt(r['n_params'])}, f = {r['fraction']:g}, E = {r['epochs']:g}, seed "
                f"{r['seed']}: the learning curve spikes from {spike['from_loss']:.2f} to "
                f"{spike['to_loss']:.2f} nats at {spike['at_tokens']:.3g} tokens"
                + (" and recovers" if spike["recovered"] else " and does not recover: treat this run as suspect"),
            )
    st.suspect_by_model = {(row["model"], row["n_params"]): row for row in suspects}
    return suspects, spikes


def _baseline_entry(st: _Study, metric: str, fit_models: list[tuple[float, str]]) -> dict:
    direction = METRICS[metric][1]
    pts: list[dict[str, Any]] = []
    for n, name in fit_models:
        g = st.baseline_groups.get((name, n))
        if not g:
            continue
        vals = [r["values"][metric] for r in g["runs"]]
        mean, std = _mean_std(vals)
        if mean is None:
            continue
        pts.append({"model": name, "n_params": n, "mean": mean, "std": std, "n_seeds": len(vals), "values": vals})
    entry: dict[str, Any] = {
        "direction": direction,
        "points": pts,
        "fit": None,
        "fit_note": None,
        "interpolation": None,
        "range": None,
    }
    if not pts:
        entry["fit_note"] = "no f = 0 baseline runs: N_eff needs f = 0 runs"
        return entry
    ns = [p["n_params"] for p in pts]
    ms = [p["mean"] for p in pts]
    entry["range"] = [min(ms), max(ms)]
    fit = fit_power_law(ns, ms, direction, noise=st.noise["pooled"]["sigma"] if metric == "test_loss" else None)
    if fit["ok"]:
        entry["fit"] = fit
        if not fit["usable"]:
            st.warn(
                "fit_unusable",
                f"{metric}: the baseline law is not usable for this study "
                f"({fit['unusable_reason']}); N_eff comes from interpolation between the baselines only",
            )
    else:
        entry["fit_note"] = fit["note"]
        if "does not improve" in fit["note"]:
            st.warn("fit_failed", f"{metric}: {fit['note']}; interpolation only")
    entry["interpolation"] = make_interpolation(ns, ms, direction)
    return entry


def fit_baselines(st: _Study) -> None:
    """The baseline law (and interpolation) per metric, over the f = 0 runs of the standard family, into st."""
    fit_models = [(n, name) for n, name, ao in st.models if not ao] or [(n, name) for n, name, _ in st.models]
    st.other_family = len(fit_models) < len(st.models)
    if st.other_family:
        st.warn(
            "attention_only_excluded",
            "attention-only models are left out of the baseline fits "
            "(another shape family); their damage is measured against their own baseline, and no N_eff is "
            "given for them",
        )
    st.baseline = {metric: _baseline_entry(st, metric, fit_models) for metric in st.available}


def _extrapolation(sign: float, value: float, value_range: list[float]) -> tuple[bool, str | None]:
    lo, hi = value_range
    worst_b, best_b = (hi, lo) if sign > 0 else (lo, hi)
    if sign * (value - best_b) < 0:
        return True, "better than the best baseline"
    if sign * (value - worst_b) > 0:
        return True, "worse than the worst baseline"
    return False, None


def effective(st: _Study, metric: str, value: float | None, n: float, attention_only: bool = False) -> dict:
    """N_eff and the multiplier N / N_eff of a value of `metric` at size n: by the usable law, else interpolation."""
    out: dict[str, Any] = {
        "n_eff": None,
        "multiplier": None,
        "n_eff_method": None,
        "n_eff_fit": None,
        "multiplier_fit": None,
        "n_eff_interp": None,
        "multiplier_interp": None,
        "extrapolated": None,
        "extrapolation": None,
        "multiplier_note": None,
    }
    b = st.baseline.get(metric)
    if value is None or not b or not b["points"]:
        return out
    if attention_only and st.other_family:
        out["multiplier_note"] = (
            "not meaningful for this study: attention-only models are another shape family, not on the baselines' law"
        )
        return out
    out["extrapolated"], out["extrapolation"] = _extrapolation(sign_of(metric), value, b["range"])
    if b["fit"]:
        ne = invert_fit(b["fit"], value)
        out["n_eff_fit"] = ne
        out["multiplier_fit"] = None if ne is None else n / ne
        if ne is None:
            out["extrapolated"], out["extrapolation"] = True, "beats the fitted asymptote (no finite N_eff)"
    if b["interpolation"]:
        ne = invert_interpolation(b["interpolation"], value)
        out["n_eff_interp"] = ne
        out["multiplier_interp"] = None if ne is None else n / ne
    if b["fit"] and b["fit"]["usable"]:
        out["n_eff"], out["multiplier"], out["n_eff_method"] = out["n_eff_fit"], out["multiplier_fit"], "fit"
    elif b["interpolation"]:
        out["n_eff"], out["multiplier"] = out["n_eff_interp"], out["multiplier_interp"]
        out["n_eff_method"] = "interpolation"
    if out["extrapolated"]:  # outside the baselines the study has no model to compare with: no number at all
        out["multiplier_note"] = (
            f"not meaningful for this study: {out['extrapolation']} "
            f"(baselines span N = {fmt_n(min(p['n_params'] for p in b['points']))}.."
            f"{fmt_n(max(p['n_params'] for p in b['points']))})"
        )
        out["n_eff"] = out["multiplier"] = None
    elif out["multiplier"] is None and out["n_eff_method"] is None:
        out["multiplier_note"] = "not meaningful for this study: no usable baseline law or interpolation"
    return out


def baseline_value(
    st: _Study, metric: str, name: str, n: float, attention_only: bool = False
) -> tuple[float | None, str | None]:
    """The baseline's value of `metric` at a model: observed (mean over seeds), else the law's prediction."""
    g = st.baseline_groups.get((name, n))
    if g:
        mean, _ = _mean_std([r["values"][metric] for r in g["runs"]])
        if mean is not None:
            return mean, "observed"
    fit = st.baseline.get(metric, {}).get("fit")
    if fit and not (attention_only and st.other_family):
        return predict(fit, n), "fit"
    return None, None


def _significance_of(st: _Study, m: dict, g: dict, kind: str) -> dict:
    """Standard error, z and verdict of a test-loss damage, against the baseline and the pooled baseline."""
    sigma = noise_lib.sigma_of(st.noise, g["model"], g["n_params"])
    base = st.baseline_groups.get((g["model"], g["n_params"]))
    n_point = len([v for v in m["values"] if v is not None])
    out: dict[str, Any] = {
        "sigma": sigma,
        "damage_se": None,
        "z": None,
        "significant": None,
        "damage_pooled": None,
        "z_pooled": None,
        "significant_pooled": None,
    }
    if kind != "repeated" and kind != "control":
        return out
    if base:
        out.update(noise_lib.significance(m["damage"], sigma, n_point, len(base["runs"])))
    sus = st.suspect_by_model.get((g["model"], g["n_params"]))
    if sus and m["mean"] is not None:
        pooled = noise_lib.significance(m["mean"] - sus["pooled_mean"], sigma, n_point, sus["pooled_runs"])
        out.update(
            damage_pooled=m["mean"] - sus["pooled_mean"], z_pooled=pooled["z"], significant_pooled=pooled["significant"]
        )
    return out


def _interior_significant(st: _Study, pts: list[dict], i: int, metric: str) -> bool | None:
    """Whether the worst E's damage exceeds both ends of the E grid by SIGNIFICANCE standard errors."""
    if not 0 < i < len(pts) - 1:
        return False
    p = pts[i]
    sigma = noise_lib.sigma_of(st.noise, p["model"], p["n_params"])
    verdicts = [
        noise_lib.difference_significant(
            p["metrics"][metric]["mean"], q["metrics"][metric]["mean"], sigma, p["n_seeds"], q["n_seeds"]
        )
        for q in (pts[0], pts[-1])
    ]
    return None if None in verdicts else all(verdicts)


def run_rows(st: _Study) -> list[dict]:
    """One row per run (the CSV): values, damage, N_eff and, for test loss, significance."""
    rows = []
    for r in st.run_list:
        row = {k: r[k] for k in RUN_IDENTITY}
        row.update(
            {
                "repeated_loss": r["repeated_loss"],
                "icl_score": r["icl_score"],
                "prefix_matching_max": r["prefix_matching_max"],
                "metrics": {},
                "icl": r["mechanism"]["icl"],
                "mechanism_verdict": r["mechanism"]["verdict"],
            }
        )
        for metric in st.available:
            v = r["values"][metric]
            bv, _ = baseline_value(st, metric, r["model"], r["n_params"], r["attention_only"])
            eff = effective(st, metric, v, r["n_params"], r["attention_only"])
            row["metrics"][metric] = {
                "value": v,
                "damage": None if v is None or bv is None else sign_of(metric) * (v - bv),
                "n_eff": eff["n_eff"],
                "multiplier": eff["multiplier"],
                "extrapolated": eff["extrapolated"],
            }
        base_g = st.baseline_groups.get((r["model"], r["n_params"]))
        if "test_loss" in row["metrics"] and base_g and (r["fraction"] > 0 or r["control"]):
            row["metrics"]["test_loss"].update(
                noise_lib.significance(
                    row["metrics"]["test_loss"]["damage"],
                    noise_lib.sigma_of(st.noise, r["model"], r["n_params"]),
                    1,
                    len(base_g["runs"]),
                )
            )
        row["epochwise"] = r["epochwise"]
        rows.append(row)
    return rows


def _group_metric(st: _Study, g: dict, metric: str, kind: str) -> dict:
    vals = [r["values"][metric] for r in g["runs"]]
    mean, std = _mean_std(vals)
    m: dict[str, Any] = {"mean": mean, "std": std, "values": vals}
    bv, src = baseline_value(st, metric, g["model"], g["n_params"], g["attention_only"])
    s = sign_of(metric)
    m["baseline"], m["baseline_source"] = bv, src
    m["damage"] = None if mean is None or bv is None else s * (mean - bv)
    cg = st.control_groups.get((g["model"], g["n_params"], g["fraction"]))
    cv = _mean_std([r["values"][metric] for r in cg["runs"]])[0] if cg else None
    m["control"] = cv
    m["repetition_harm"] = None if (g["control"] or mean is None or cv is None) else s * (mean - cv)
    m["unique_data_loss"] = None if cv is None or bv is None else s * (cv - bv)
    m.update(effective(st, metric, mean, g["n_params"], g["attention_only"]))
    if metric == "test_loss":
        m.update(_significance_of(st, m, g, kind))
    return m


def group_points(st: _Study) -> list[dict]:
    """One entry per (model, N, f, E, control), seeds aggregated: damage, repetition harm, N_eff, significance."""
    points = []
    for key in sorted(st.groups, key=lambda k: (k[1], k[0], k[2], k[4], k[3])):
        g = st.groups[key]
        entry = {k: g[k] for k in ("model", "n_params", "fraction", "epochs", "control")}
        entry["kind"] = "control" if g["control"] else ("baseline" if g["fraction"] == 0 else "repeated")
        entry["n_seeds"] = len(g["runs"])
        entry["seeds"] = [r["seed"] for r in g["runs"]]
        entry["point_ids"] = [r["point_id"] for r in g["runs"]]
        rl_mean, rl_std = _mean_std([r["repeated_loss"] for r in g["runs"]])
        entry["repeated_loss"] = {"mean": rl_mean, "std": rl_std, "values": [r["repeated_loss"] for r in g["runs"]]}
        entry["metrics"] = {metric: _group_metric(st, g, metric, entry["kind"]) for metric in st.available}
        ew = [r["epochwise"] for r in g["runs"] if r["epochwise"]]
        entry["epochwise"] = (
            None
            if not ew
            else {
                "max_rise_mean": float(np.mean([e["max_rise"] for e in ew])),
                "non_monotone_runs": sum(e["non_monotone"] for e in ew),
                "falls_again_runs": sum(e["falls_again"] for e in ew),
                "runs": len(ew),
            }
        )
        points.append(entry)
    return points


def _series(points: list[dict], name: str, n: float, f: float) -> list[dict]:
    """The repeated points of one (model, N, f), by E."""
    return sorted(
        [
            p
            for p in points
            if p["kind"] == "repeated" and p["model"] == name and p["n_params"] == n and p["fraction"] == f
        ],
        key=lambda p: p["epochs"],
    )


def _worst_row(st: _Study, pts: list[dict], metric: str, name: str, n: float, f: float) -> dict:
    badness = [sign_of(metric) * p["metrics"][metric]["mean"] for p in pts]
    i = int(np.argmax(badness))
    p = pts[i]
    pm = p["metrics"][metric]
    return {
        "model": name,
        "n_params": n,
        "fraction": f,
        "epochs": p["epochs"],
        "epochs_grid": [q["epochs"] for q in pts],
        "interior": bool(0 < i < len(pts) - 1) if len(pts) >= 3 else False,
        "edge": None if 0 < i < len(pts) - 1 else ("smallest E" if i == 0 else "largest E"),
        "value": pm["mean"],
        "std": pm["std"],
        "damage": pm["damage"],
        "repetition_harm": pm["repetition_harm"],
        "n_eff": pm["n_eff"],
        "multiplier": pm["multiplier"],
        "extrapolated": pm["extrapolated"],
        "multiplier_note": pm["multiplier_note"],
        "n_eff_method": pm["n_eff_method"],
        "repeated_loss": p["repeated_loss"]["mean"],
        "test_loss": p["metrics"]["test_loss"]["mean"],
        "n_seeds": p["n_seeds"],
        **(
            {
                k: pm.get(k)
                for k in ("damage_se", "z", "significant", "damage_pooled", "z_pooled", "significant_pooled", "sigma")
            }
            if metric == "test_loss"
            else {}
        ),
        "interior_significant": _interior_significant(st, pts, i, metric) if metric == "test_loss" else None,
    }


def worst_epochs(st: _Study, points: list[dict], fractions: list[float]) -> dict[str, list]:
    """Per metric and (N, f): the E of the largest mean damage, whether it is inside the grid, and its numbers."""
    worst: dict[str, list] = {}
    for metric in st.available:
        rows = []
        for n, name, _ in st.models:
            for f in fractions:
                pts = [p for p in _series(points, name, n, f) if p["metrics"][metric]["mean"] is not None]
                if pts:
                    rows.append(_worst_row(st, pts, metric, name, n, f))
        worst[metric] = rows
    for w in worst.get("test_loss", []):
        if w["edge"] and len(w["epochs_grid"]) >= 2:
            st.warn(
                "peak_at_edge",
                f"N = {_fmt(w['n_params'])}, f = {w['fraction']:g}: the worst test loss is at "
                f"the {w['edge']} of the grid (E = {w['epochs']:g}); widen the E grid to locate the peak",
            )
    return worst


def check_memorization(st: _Study, points: list[dict], fractions: list[float]) -> None:
    """Warn where even the largest E left the repeated subset unmemorized (the peak may lie beyond the grid)."""
    for n, name, _ in st.models:
        for f in fractions:
            pts = _series(points, name, n, f)
            if not pts:
                continue
            top = max(pts, key=lambda p: p["epochs"])
            rl, tl = top["repeated_loss"]["mean"], top["metrics"]["test_loss"]["mean"]
            if rl is not None and tl is not None and rl > MEMORIZED_RATIO * tl:
                st.warn(
                    "not_memorized",
                    f"N = {_fmt(n)}, f = {f:g}: even at the largest E = {top['epochs']:g} "
                    f"the repeated subset is not memorized (repeated loss {rl:.3f} > {MEMORIZED_RATIO:g} x test "
                    f"loss {tl:.3f}): every E may be too small to reach the peak",
                )


def _region_row(pts: list[dict], name: str, n: float, attention_only: bool) -> dict:
    dmg = [p["metrics"]["test_loss"]["damage"] for p in pts]
    row: dict[str, Any] = {
        "model": name,
        "n_params": n,
        "attention_only": attention_only,
        "epochs": [p["epochs"] for p in pts],
        "damage": dmg,
    }
    if any(d is None for d in dmg):
        row.update(
            {
                "max_damage": None,
                "peak_epochs": None,
                "threshold": None,
                "left": None,
                "right": None,
                "left_censored": None,
                "right_censored": None,
                "note": "no damage without an f = 0 baseline at this size",
            }
        )
        return row
    row.update(region_edges(row["epochs"], dmg))
    peak = [p for p in pts if p["epochs"] == row["peak_epochs"]]
    row["significant"] = peak[0]["metrics"]["test_loss"].get("significant") if peak else None
    if row["significant"] is False:
        row["note"] = "; ".join(
            x
            for x in (
                row.get("note"),
                f"the largest damage is within "
                f"{noise_lib.SIGNIFICANCE:g} standard errors of the noise: "
                "no region at this size",
            )
            if x
        )
        row.update(left=None, right=None)
    return row


def regions(st: _Study, points: list[dict], fractions: list[float]) -> list[dict]:
    """The poor-performance region per f (test loss): per model its E edges, and the edges fitted across N."""
    out = []
    for f in fractions:
        per_model = [_region_row(pts, name, n, ao) for n, name, ao in st.models if (pts := _series(points, name, n, f))]
        fits = {}
        for side in ("left", "right"):
            known = [
                (r["n_params"], r[side])
                for r in per_model
                if r[side] is not None and not r["attention_only"] and r.get("significant") is not False
            ]
            if not st.has_baseline:
                fits[side] = {"ok": False, "note": "no fit: the region needs damage, which needs f = 0 baselines"}
            else:
                fits[side] = fit_edge([k[0] for k in known], [k[1] for k in known])
        out.append({"fraction": f, "metric": "test_loss", "level": REGION_LEVEL, "per_model": per_model, "fits": fits})
    return out


def epochwise_summary(run_list: list[dict], rows: list[dict]) -> list[dict]:
    """Epoch-wise double descent per f: how many runs' test loss rises after its minimum, and the largest rise."""
    out = []
    for f in sorted({r["fraction"] for r in run_list}):
        ew = [r for r in rows if r["fraction"] == f and r["epochwise"]]
        if not ew:
            continue
        top = max(ew, key=lambda r: r["epochwise"]["max_rise"])
        out.append(
            {
                "fraction": f,
                "runs": len(ew),
                "non_monotone_runs": sum(r["epochwise"]["non_monotone"] for r in ew),
                "falls_again_runs": sum(r["epochwise"]["falls_again"] for r in ew),
                "max_rise": top["epochwise"]["max_rise"],
                "max_rise_point_id": top["point_id"],
                "max_rise_model": top["model"],
                "max_rise_n_params": top["n_params"],
                "max_rise_epochs": top["epochs"],
                "tolerance": EPOCHWISE_TOLERANCE,
            }
        )
    return out


def _summary(st: _Study, records: list[dict], expected_points: list[dict] | None, missing: list[dict]) -> dict:
    run_list = st.run_list
    return {
        "records": len(records),
        "runs_used": len(run_list),
        "models": [{"model": name, "n_params": n, "attention_only": ao} for n, name, ao in st.models],
        "fractions": sorted({r["fraction"] for r in run_list}),
        "epochs": sorted({r["epochs"] for r in run_list if r["fraction"] > 0 and not r["control"]}),
        "seeds": sorted({r["seed"] for r in run_list}),
        "has_baseline": st.has_baseline,
        "has_controls": bool(st.control_groups),
        "expected_points": len(expected_points) if expected_points else None,
        "missing_points": len(missing),
        "partial": bool(missing),
    }


def analyze_study(
    records: list[dict],
    expected_points: list[dict] | None = None,
    study: str | None = None,
    corpora: dict[str, dict] | None = None,
) -> dict:
    """The content of analysis.json for a list of eval records (see the module docstring); `corpora` maps the
    records' corpus ids to their manifests (for the split composition).

    The stages, each a function of its own: load_runs -> group_runs -> noise_checks -> fit_baselines (the math in
    repeatlab.fit) -> run_rows / group_points (damage, effective size) -> worst_epochs -> regions ->
    epochwise_summary."""
    from repeatlab import __version__

    if not isinstance(records, list) or not records:
        raise AnalysisError("no eval records to analyze: evaluate at least one point first (repeatlab evaluate)")
    warnings: list[dict] = []

    def warn(code: str, message: str) -> None:
        warnings.append({"code": code, "message": " ".join(message.split())})

    run_list = load_runs(records, warn)
    missing = missing_points(expected_points, run_list, warn)
    st = group_runs(run_list)
    st.warnings = warnings
    _warn_about_the_grid(st)
    suspects, spikes = noise_checks(st)
    fit_baselines(st)
    rows = run_rows(st)
    points = group_points(st)
    fractions = sorted({p["fraction"] for p in points if p["kind"] == "repeated"})
    worst = worst_epochs(st, points, fractions)
    check_memorization(st, points, fractions)
    region_list = regions(st, points, fractions)
    epochwise = epochwise_summary(run_list, rows)
    mechanism = _mechanism_section(run_list, worst.get("test_loss", []))
    icl = _icl_section(run_list)
    if any(r["mechanism"]["icl"]["note"] for r in run_list):
        st.warn(
            "icl_single_position",
            "some records predate the ICL estimate with an error bar (a single-position "
            "score at fixed window offsets): their ICL is listed but not judged; evaluate them again for it",
        )
    analysis = {
        "format_version": FORMAT_VERSION,
        "created_by": f"repeatlab {__version__}",
        "study": study,
        "summary": _summary(st, records, expected_points, missing),
        "metrics": {m: {"label": METRICS[m][0], "direction": METRICS[m][1], "field": FIELDS[m]} for m in st.available},
        "baseline": st.baseline,
        "points": points,
        "runs": rows,
        "worst": worst,
        "regions": region_list,
        "epochwise": epochwise,
        "warnings": warnings,
        "missing": missing,
        "noise": st.noise,
        "baseline_checks": suspects,
        "loss_spikes": spikes,
        "icl": icl,
        "mechanism": mechanism,
        "corpus": _corpus_section(run_list, records, corpora or {}),
    }
    analysis["findings"] = findings(analysis)
    return _clean(analysis)


def _icl_section(run_list: list[dict]) -> list[dict]:
    """ICL per f = 0 baseline size: the mean over seeds, its standard error, and whether it is present."""
    out = []
    by_model: dict[tuple, list[dict]] = {}
    for r in run_list:
        if r["fraction"] == 0 and not r["control"]:
            by_model.setdefault((r["n_params"], r["model"]), []).append(r)
    for (n, name), rs in sorted(by_model.items()):
        icls = [r["mechanism"]["icl"] for r in rs if r["mechanism"]["icl"]["score"] is not None]
        if not icls:
            continue
        score = float(np.mean([i["score"] for i in icls]))
        ses = [i["stderr"] for i in icls]
        # every run reads the same windows, so the seeds' errors are correlated: the mean of their standard errors
        # (the fully correlated case) rather than sqrt(sum se^2) / k, which would assume independent windows
        se = None if any(x is None for x in ses) else float(np.mean(ses))
        present = None if se is None else bool(score < -mechanism_lib.ICL_SE_FACTOR * se)
        out.append(
            {
                "model": name,
                "n_params": n,
                "score": score,
                "stderr": se,
                "runs": len(icls),
                "present": present,
                "per_run": [i["score"] for i in icls],
                "note": None if se is not None else icls[0]["note"] or "no standard error",
            }
        )
    return out


def _evidence_of(
    run_list: list[dict], w: dict, fraction: float, epochs: float | None = None, control: bool = False
) -> list[dict]:
    """The mechanism evidence of the runs of w's model at one fraction (and E), controls or not."""
    return [
        r["mechanism"]
        for r in run_list
        if (r["model"], r["n_params"], r["fraction"], r["control"]) == (w["model"], w["n_params"], fraction, control)
        and (epochs is None or r["epochs"] == epochs)
    ]


def _mechanism_section(run_list: list[dict], worst_rows: list[dict]) -> dict:
    """Per run evidence, and baseline vs worst-E evidence per (N, f)."""
    per_run = [
        {
            **{k: r[k] for k in RUN_IDENTITY},
            **r["mechanism"],
        }
        for r in run_list
    ]
    at_worst = []
    for w in worst_rows:
        base, worst = _evidence_of(run_list, w, 0.0), _evidence_of(run_list, w, w["fraction"], w["epochs"])
        control = _evidence_of(run_list, w, w["fraction"], control=True)
        if base and worst:
            at_worst.append(
                {
                    "model": w["model"],
                    "n_params": w["n_params"],
                    "fraction": w["fraction"],
                    "epochs": w["epochs"],
                    **mechanism_lib.damage_at_worst(base, worst, control),
                }
            )
    return {
        "clear_factor": mechanism_lib.CLEAR_FACTOR,
        "copy_gain_threshold": mechanism_lib.COPY_GAIN,
        "per_run": per_run,
        "at_worst": at_worst,
    }


def _corpus_section(run_list: list[dict], records: list[dict], corpora: dict[str, dict]) -> list[dict]:
    """The split composition of every corpus the records used (from its manifest, when the caller found it)."""
    ids = sorted(
        {
            str((rec.get("point") or {}).get("corpus_id"))
            for rec in records
            if isinstance(rec, dict) and isinstance(rec.get("point"), dict)
        }
    )
    out: list[dict[str, Any]] = []
    for cid in ids:
        manifest = corpora.get(cid)
        if not manifest:
            out.append({"corpus_id": cid, "composition": None, "note": "corpus manifest not found"})
            continue
        splits = manifest.get("splits") or {}
        out.append(
            {
                "corpus_id": cid,
                "chunk_tokens": manifest.get("chunk_tokens"),
                "documents": {k: v.get("documents") for k, v in splits.items()},
                "tokens": {k: v.get("tokens") for k, v in splits.items()},
                "composition": manifest.get("composition"),
                "warnings": manifest.get("warnings") or [],
                "note": None
                if manifest.get("composition")
                else "prepared before split composition was recorded: the splits were drawn per whole document",
            }
        )
    return out


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None, keys sorted."""
    if isinstance(obj, dict):
        return {str(k): _clean(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


# ----------------------------------------------------------------------------------------------------------------------
# Findings in words (shared by the CLI summary and the report)


def fmt_n(n: float) -> str:
    return f"{n:.3g}"


def multiplier_text(entry: dict) -> str:
    """N/N_eff as text, or why the study cannot give one (never a bound phrased as a multiplier)."""
    if entry.get("multiplier") is None:
        return entry.get("multiplier_note") or "not meaningful for this study"
    how = "interpolated between the baselines" if entry.get("n_eff_method") == "interpolation" else "from the fit"
    return f"{entry['multiplier']:.2f}x smaller effective model ({how})"


def damage_text(w: dict) -> str:
    """'+0.104 nats +- 0.011 (9.5 sigma: significant)' for a worst-E row or a point's test-loss metrics."""
    if w.get("damage") is None:
        return "no damage without a baseline"
    text = f"{w['damage']:+.3f} nats"
    if w.get("damage_se") is None:
        return text + " (no noise estimate: significance unknown)"
    verdict = "significant" if w["significant"] else "within the noise, not significant"
    return text + f" +- {w['damage_se']:.3f} ({w['z']:.1f} sigma: {verdict})"


def _noise_sentence(analysis: dict) -> str | None:
    rows = (analysis.get("noise") or {}).get("per_model") or []
    if not rows:
        return None
    parts = []
    for r in rows:
        if r["sigma"] is None:
            parts.append(f"N = {fmt_n(r['n_params'])}: unknown")
        else:
            src = (
                f"{r['seed_dof']} seed and {r['low_e_dof']} low-E degrees of freedom"
                if r["source"] == "own"
                else "pooled over sizes"
            )
            parts.append(f"N = {fmt_n(r['n_params'])}: {r['sigma']:.3f} nats ({src})")
    return (
        "Run-to-run noise of the test loss (from extra seeds and E <= 4 points): "
        + "; ".join(parts)
        + ". A damage counts only beyond 3 standard errors; more seeds at the worst E narrow them."
    )


def _baseline_sentence(analysis: dict) -> str | None:
    base = analysis["baseline"].get("test_loss") or {}
    fit = base.get("fit")
    if fit and fit.get("usable", True):
        return (
            f"Baseline test loss fit: L(N) = {fit['asymptote']:.3f} + {fit['A']:.3g} * N^-{fit['alpha']:.3f} "
            f"(rms residual {fit['rms_residual']:.4f} nats); effective sizes come from it."
            + (
                f" Left out as outliers: N = {', '.join(fmt_n(n) for n in fit['outliers'])}."
                if fit.get("outliers")
                else ""
            )
        )
    if fit:
        return (
            f"The baseline law is not usable for this study ({fit['unusable_reason']}): effective sizes are "
            "interpolated between the baselines, and given only for points inside their range; add model sizes "
            "to fit a law."
        )
    if base.get("fit_note"):
        return (
            f"Baseline test loss: {base['fit_note']}; effective sizes are interpolated between the baselines "
            "and given only for points inside their range."
            if base.get("interpolation")
            else f"Baseline test loss: {base['fit_note']}."
        )
    return None


def _worst_sentence(w: dict, suspect: dict | None) -> str:
    text = (
        f"At N = {fmt_n(w['n_params'])}, f = {w['fraction']:g}, the worst E is {w['epochs']:g}: test loss "
        f"{damage_text(w)}"
    )
    if w["edge"]:
        text += f"; it is at the {w['edge']} of the grid, so the peak may lie outside it: widen the E grid"
    elif w.get("interior_significant") is False:
        text += "; the peak is not resolved from the ends of the E grid at 3 sigma (more seeds there would tell)"
    elif w.get("interior_significant"):
        text += "; an interior peak, above both ends of the E grid at 3 sigma"
    if suspect and w.get("damage_pooled") is not None:
        text += f"; against the pooled baseline (the baseline is suspect) {w['damage_pooled']:+.3f} nats" + (
            f" ({w['z_pooled']:.1f} sigma)" if w.get("z_pooled") is not None else ""
        )
    text += f"; effective size: {multiplier_text(w)}"
    if w["repeated_loss"] is not None:
        text += f"; repeated-subset loss {w['repeated_loss']:.3f}"
    return text + "."


def _icl_sentence(analysis: dict) -> str | None:
    rows = analysis.get("icl") or []
    if not rows:
        return None
    parts = []
    for r in rows:
        if r["stderr"] is None:
            parts.append(
                f"N = {fmt_n(r['n_params'])}: {r['score']:+.3f} (single-position score without an error "
                "bar: not judged; evaluate again for the estimate)"
            )
        else:
            if r["present"]:
                verdict = "ICL present (below -2 standard errors)"
            elif r["score"] > mechanism_lib.ICL_SE_FACTOR * r["stderr"]:
                verdict = "no ICL: late positions cost more than early ones (beyond 2 standard errors)"
            else:
                verdict = "no ICL (within 2 standard errors of zero)"
            parts.append(f"N = {fmt_n(r['n_params'])}: {r['score']:+.3f} +- {r['stderr']:.3f} nats, {verdict}")
    return "In-context learning at the f = 0 baselines (late minus early loss): " + "; ".join(parts) + "."


def _mechanism_sentence(row: dict) -> str:
    def val(key: str) -> str:
        m = row[key]
        if m["baseline"] is None:
            return "n/a"
        text = f"{m['baseline']:.3f} -> {m['worst']:.3f}" if m["worst"] is not None else f"{m['baseline']:.3f}"
        return text + mechanism_lib.control_note(m)

    def verdicts(names: list[str]) -> str:
        return " / ".join(names) + " (the seeds disagree)" if len(names) > 1 else (names[0] if names else "unknown")

    base_v, worst_v = verdicts(row["baseline_verdicts"]), verdicts(row["worst_verdicts"])
    text = (
        f"Mechanism at N = {fmt_n(row['n_params'])}, f = 0 -> f = {row['fraction']:g}, E = {row['epochs']:g} "
        f"(the worst E): best previous-token head {val('previous_token_max')}, best prefix-matching head "
        f"{val('prefix_matching_max')}, copy gain (copy 1 minus copies 2..n, nats) {val('copy_gain')}; "
        f"baseline: {base_v}; worst E: {worst_v}"
    )
    if base_v == worst_v and base_v in ("no copying mechanism", "previous-token head, no copying"):
        text += " (no induction mechanism to damage: read copying and prefix-matching damage as noise)"
    against_control = mechanism_lib.head_loss_against_control(row)
    if against_control:
        text += f"; {against_control}"
    return text + "."


def _region_sentences(reg: dict) -> list[str]:
    """The fitted edges of one fraction's poor-performance region, or what would give them."""
    f = reg["fraction"]
    rows = [r for r in reg["per_model"] if r.get("max_damage") is not None]
    if rows and all(r.get("significant") is False for r in rows):
        return [
            f"f = {f:g}: no poor-performance region: the largest damage is within 3 standard errors of the noise "
            "at every size; more seeds (or more tokens per run) would tell."
        ]
    out = []
    for side in ("left", "right"):
        fe = reg["fits"][side]
        if fe.get("ok"):
            out.append(
                f"f = {f:g}: {side} edge of the poor-performance region E = {fe['k']:.3g} * "
                f"N^{fe['alpha']:.3f} ({fe['n_sizes']} sizes)."
            )
        elif rows and all(r.get(f"{side}_censored") for r in rows if r.get("significant") is not False):
            where = "above the largest" if side == "right" else "below the smallest"
            out.append(
                f"f = {f:g}: the {side} edge lies {where} E of the grid at every size; widen the E grid to fit it."
            )
        else:
            out.append(f"f = {f:g}: {side} edge: {fe.get('note')}.")
    return out


def composition_shares(corpus: dict, split: str) -> str:
    """'King James Bible 42% / Milton 11% / Shakespeare 47%' for one split of an analysis corpus entry."""
    per = (corpus.get("composition") or {}).get(split, {})
    return " / ".join(f"{src} {row['share']:.0%}" for src, row in per.items())


def findings(analysis: dict) -> list[str]:
    """Short sentences with the headline numbers, every one computed from the analysis dict and each one a reader
    can act on."""
    out: list[str] = []
    s = analysis["summary"]
    out.append(
        f"{s['runs_used']} runs over {len(s['models'])} model size(s), fractions "
        f"{', '.join(f'{f:g}' for f in s['fractions'])}"
        + (f" (partial: {s['missing_points']} expected points missing)" if s["partial"] else "")
        + "."
    )
    for c in analysis.get("corpus") or []:
        if c.get("composition"):
            out.append(
                f"Corpus {c['corpus_id']}: the test split ({c['documents'].get('test')} documents) is "
                f"{composition_shares(c, 'test')} of its tokens, train {composition_shares(c, 'train')}."
                + (f" Warning: {c['warnings'][0]}." if c.get("warnings") else "")
            )
        elif c.get("note") and c["note"].startswith("prepared before"):
            out.append(
                f"Corpus {c['corpus_id']} was split per whole document before split composition was "
                "recorded: its test split may represent a few works only; prepare the corpus again."
            )
    out += [x for x in (_noise_sentence(analysis), _baseline_sentence(analysis)) if x]
    suspects = {
        (r["model"], r["n_params"]): r
        for r in analysis.get("baseline_checks") or []
        if r["outlier"] or r["not_converged"]
    }
    for w in analysis["worst"].get("test_loss", []):
        out.append(_worst_sentence(w, suspects.get((w["model"], w["n_params"]))))
    for reg in analysis["regions"]:
        out += _region_sentences(reg)
    for ew in analysis["epochwise"]:
        if ew["non_monotone_runs"]:
            out.append(
                f"f = {ew['fraction']:g}: {ew['non_monotone_runs']} of {ew['runs']} learning curves rise "
                f"mid-training (largest rise {ew['max_rise']:.3f} nats at N = {fmt_n(ew['max_rise_n_params'])}, "
                f"E = {ew['max_rise_epochs']:g}); {ew['falls_again_runs']} fall again."
            )
    icl = _icl_sentence(analysis)
    if icl:
        out.append(icl)
    for row in (analysis.get("mechanism") or {}).get("at_worst", []):
        out.append(_mechanism_sentence(row))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Storage and CLI


def load_records(root: str, study: str) -> tuple[list[dict], list[dict]]:
    """(eval records, expected points without an eval.json) of a study; AnalysisError when none was evaluated."""
    import logging

    from repeatlab import layout, storage
    from repeatlab.errors import IntegrityError, RecordError, StorageError
    from repeatlab.integrity import check_record
    from repeatlab.records import EvalRecord

    points_url = layout.Study(layout.study_url(root, study)).points
    try:
        points = storage.read_json(points_url)
    except StorageError as exc:
        raise AnalysisError(
            f"{points_url}: cannot read the study's points ({exc}); run `repeatlab grid --write` or the pipeline first"
        ) from exc
    if not isinstance(points, list):
        raise AnalysisError(f"{points_url}: expected a list of points")
    records, missing = [], []
    for p in points:
        url = layout.Run(layout.run_url(root, str(p.get("point_id")))).eval
        if not storage.exists(url):
            missing.append(p)
            continue
        try:  # a corrupt eval.json counts as missing (the analysis says so) rather than stopping the whole study
            data = check_record(url, json.loads(storage.read_bytes(url)))
            records.append(EvalRecord.from_json(data, where=url).to_json())
        except (json.JSONDecodeError, UnicodeDecodeError, IntegrityError, RecordError) as exc:
            logging.getLogger(__name__).warning("%s: %s; counted as missing", url, str(exc).splitlines()[0])
            missing.append(p)
    if not records:
        raise AnalysisError(f"study {study!r}: none of its {len(points)} points has an eval.json under {root}/runs")
    return records, missing


def corpus_manifests(root: str, records: list[dict]) -> dict[str, dict]:
    """The manifests of the corpora the records used, where {root}/corpora/{id}/manifest.json exists."""
    from repeatlab import layout, storage
    from repeatlab.errors import StorageError

    out = {}
    for cid in sorted({str((r.get("point") or {}).get("corpus_id")) for r in records if isinstance(r, dict)}):
        url = layout.Corpus(layout.corpus_url(root, cid)).manifest
        try:
            if storage.exists(url):
                manifest = storage.read_json(url)
                if isinstance(manifest, dict):
                    out[cid] = manifest
        except (StorageError, ValueError):
            continue  # the analysis says the manifest was not found
    return out


def run_analysis(root: str, study: str) -> dict:
    """Load, analyze and write {root}/studies/{study}/analysis.json (atomically); return the analysis."""
    from repeatlab import layout, storage

    records, _ = load_records(root, study)
    folder = layout.Study(layout.study_url(root, study))
    analysis = analyze_study(
        records, storage.read_json(folder.points), study=study, corpora=corpus_manifests(root, records)
    )
    storage.write_json(folder.analysis, analysis)
    return analysis
