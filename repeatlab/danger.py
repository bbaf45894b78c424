"""Is repeating a data subset E times, as a fraction f of the tokens, dangerous for a model of N parameters?

With a fitted study (analysis.json): whether (N, f, E) falls in the study's poor-performance region (its fitted edges
E = k * N^alpha at this N, for the study fraction nearest to f; an edge without a fit is the nearest measured size's,
or a bound where that size's E grid does not reach it), the predicted effective-size multiplier N / N_eff,
interpolated linearly in (log N, log E) from the study's points (log of the multiplier), and the predicted test-loss
damage in nats with the study's nearest point, its standard error and significance as the report gives them (the
number to read where the multiplier is not meaningful). Flags when N or E lies outside the study's range.
Attention-only models are left out: N alone does not place another shape family between the GPT sizes.
Without a study: the paper's published region (Hernandez et al. 2022, T = 100B tokens,
f = 10 %, GPT-2 BPE): left edge E = 4.2e6 * N^-0.56, right edge E = 5.1e7 * N^-0.50; its constants depend on T and
the tokenizer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from repeatlab.errors import AnalysisError

PAPER: dict[str, Any] = {
    "left": {"k": 4.2e6, "alpha": -0.56},
    "right": {"k": 5.1e7, "alpha": -0.50},
    "total_tokens": 100e9,
    "fraction": 0.10,
    "n_range": [1.57e6, 8.05e8],
    "epochs_range": [1.0, 1e4],
    "source": "Hernandez et al. 2022 (arXiv 2205.10487), T = 100B tokens, f = 10%, GPT-2 BPE tokenizer",
}


ALLOWED = {
    "--params": "the non-embedding parameter count must be a number > 0",
    "--fraction": "the repeated fraction must be a number in [0, 1)",
    "--epochs": "repeated epochs E must be a number >= 1",
}


def _check_inputs(n_params: Any, fraction: Any, epochs: Any) -> tuple[float, float, float]:
    def num(name: str, v: Any) -> float:
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise AnalysisError(f"{name}: {v!r} is not a number; {ALLOWED[name]}") from None
        if not math.isfinite(x):
            raise AnalysisError(f"{name}: {v!r} is not a finite number; {ALLOWED[name]}")
        return x

    n, f, e = num("--params", n_params), num("--fraction", fraction), num("--epochs", epochs)
    if n <= 0:
        raise AnalysisError(f"--params: {n_params!r} is not allowed: {ALLOWED['--params']}")
    if not 0 <= f < 1:
        raise AnalysisError(f"--fraction: {fraction!r} is not allowed: {ALLOWED['--fraction']}")
    if e < 1:
        raise AnalysisError(f"--epochs: {epochs!r} is not allowed: {ALLOWED['--epochs']}")
    return n, f, e


def _edge_at(fit: dict | None, per_model: list[dict], side: str, n: float) -> tuple[float | None, float | None, str]:
    """(edge, bound, basis) of one side of the region at N. The fitted law where there is one; otherwise the edge
    of the nearest measured size (in log N) whose damage is significant, or, where that size's grid does not reach
    the edge (censored), the grid's end as a bound: the right edge is at or above it, the left at or below it."""
    if fit and fit.get("ok"):
        return fit["k"] * n ** fit["alpha"], None, f"fitted E = {fit['k']:.3g} * N^{fit['alpha']:.3f}"
    why = (fit or {}).get("note") or "no fitted law"
    rows = [
        r
        for r in per_model
        if not r.get("attention_only")
        and r.get("significant") is not False
        and (r.get(side) is not None or r.get(f"{side}_censored"))
    ]
    if not rows:
        return None, None, f"{why}; no size measures it"
    row = min(rows, key=lambda r: (abs(math.log(r["n_params"]) - math.log(n)), r["n_params"]))
    at = f"the nearest measured size N = {row['n_params']:.3g} ({why})"
    if row.get(side) is not None:
        return row[side], None, f"measured at {at}"
    grid = row.get("epochs") or []
    if not grid:
        return None, None, f"censored at {at}"
    bound = max(grid) if side == "right" else min(grid)
    where = "at or above" if side == "right" else "at or below"
    return None, bound, f"{where} E = {bound:g}, the end of the grid at {at}"


def _side_holds(edge: float | None, bound: float | None, side: str, e: float) -> bool | None:
    """Whether E is on the region's side of one edge: True, False, or None where only a bound beyond E is known."""
    if edge is not None:
        return e >= edge if side == "left" else e <= edge
    if bound is not None and (e >= bound if side == "left" else e <= bound):
        return True
    return None


def _interp_1d(x: np.ndarray, y: np.ndarray, t: float) -> tuple[float, bool]:
    """Linear interpolation, held constant beyond the ends; (value, outside range)."""
    order = np.argsort(x)
    x, y = x[order], y[order]
    return float(np.interp(t, x, y)), bool(t < x[0] or t > x[-1])


def _bracket(xs: list[float], t: float, tol: float = 1e-9) -> list[int]:
    """Indices of the log-grid values that enclose log value t (one index at or beyond an end, or within `tol` of a
    grid value)."""
    for i, x in enumerate(xs):
        if abs(x - t) <= tol:
            return [i]
    if t < xs[0]:
        return [0]
    if t > xs[-1]:
        return [len(xs) - 1]
    j = next(i for i, x in enumerate(xs) if x > t)
    return [j - 1, j]


def _study_points(analysis: dict, fraction: float) -> list[dict]:
    """The study's repeated-data points at one fraction with a test-loss damage, attention-only models left out:
    they are another shape family, so N alone does not place them between the GPT sizes."""
    other_family = {m["model"] for m in (analysis.get("summary") or {}).get("models", []) if m.get("attention_only")}
    return [
        p
        for p in analysis.get("points", [])
        if p.get("kind") == "repeated"
        and p["fraction"] == fraction
        and p["model"] not in other_family
        and ((p.get("metrics") or {}).get("test_loss") or {}).get("damage") is not None
    ]


def _nearest_point(analysis: dict, fraction: float, n: float, e: float) -> dict | None:
    """The study's measured point nearest to (N, E) in (log N, log E), with its damage and standard error as the
    report states them."""
    pts = _study_points(analysis, fraction)
    if not pts:
        return None
    p = min(pts, key=lambda p: math.hypot(math.log(p["n_params"] / n), math.log(p["epochs"] / e)))
    t = p["metrics"]["test_loss"]
    return {
        "model": p["model"],
        "n_params": p["n_params"],
        "epochs": p["epochs"],
        "damage": t["damage"],
        "damage_se": t.get("damage_se"),
        "z": t.get("z"),
        "significant": t.get("significant"),
    }


def _predict_multiplier(analysis: dict, fraction: float, n: float, e: float) -> dict:
    """N / N_eff at (N, E), interpolated in (log N, log E) between the study's points that enclose it. The same
    numbers as the report: where an enclosing point has no meaningful multiplier (worse than every baseline, or no
    usable baseline law), the answer is that note, not a number from points further away."""
    pts = _study_points(analysis, fraction)
    out: dict[str, Any] = {
        "multiplier": None,
        "n_eff": None,
        "n_extrapolated": None,
        "e_extrapolated": None,
        "note": None,
        "multiplier_note": None,
    }
    if not any(p["metrics"]["test_loss"].get("multiplier") for p in pts) and not (analysis.get("summary") or {}).get(
        "has_baseline", True
    ):
        out["note"] = "the study has no effective sizes at this fraction (no f = 0 baseline)"
        return out
    if not pts:
        out["note"] = "the study has no test-loss points at this fraction"
        return out
    sizes = sorted({p["n_params"] for p in pts})
    size_idx = _bracket([math.log(x) for x in sizes], math.log(n), tol=0.01)  # 1e5 names the 100,096 model
    per_size, e_out = [], False
    for size in (sizes[i] for i in size_idx):
        rows = sorted((p for p in pts if p["n_params"] == size), key=lambda p: p["epochs"])
        log_es = [math.log(p["epochs"]) for p in rows]
        used = [rows[i] for i in _bracket(log_es, math.log(e))]
        e_out = e_out or math.log(e) < log_es[0] or math.log(e) > log_es[-1]
        missing = [p for p in used if p["metrics"]["test_loss"].get("multiplier") is None]
        if missing:
            first = missing[0]
            note = first["metrics"]["test_loss"].get("multiplier_note") or "not meaningful for this study"
            out["multiplier_note"] = (
                f"effective size {note} (the study's point N = {first['n_params']:.3g}, E = {first['epochs']:g})"
            )
            return out
        val, _ = _interp_1d(
            np.log([p["epochs"] for p in used]),
            np.log([p["metrics"]["test_loss"]["multiplier"] for p in used]),
            math.log(e),
        )
        per_size.append(val)
    if len(per_size) == 1:
        log_m = per_size[0]
    else:
        log_m, _ = _interp_1d(np.log([sizes[i] for i in size_idx]), np.array(per_size), math.log(n))
    n_out = not sizes[0] * (1 - 1e-9) <= n <= sizes[-1] * (1 + 1e-9)
    m = math.exp(log_m)
    out.update(multiplier=m, n_eff=n / m, n_extrapolated=n_out, e_extrapolated=e_out)
    notes = []
    if n_out:
        notes.append(f"N is outside the study's sizes {sizes[0]:.3g}..{sizes[-1]:.3g}: held at the nearest size")
    if e_out:
        es = sorted({p["epochs"] for p in pts})
        notes.append(f"E is outside the study's E range {es[0]:g}..{es[-1]:g}: held at the nearest E")
    out["note"] = "; ".join(notes) or None
    return out


def predicted_damage(analysis: dict, fraction: float, n: float, e: float) -> float | None:
    """The study's test-loss damage (nats/token above its f = 0 baseline) at (N, E) for one of its fractions.

    Interpolated linearly in log E per size, then in log N, held at the nearest size / E outside the study's range
    (assess() reports that as extrapolated). None when the study measured no damage at this fraction. Used by
    `repeatlab audit` to rank a corpus's repetition by the damage it would do.
    """
    pts = _study_points(analysis, fraction)
    if not pts:
        return None
    sizes = sorted({p["n_params"] for p in pts})
    per_size = []
    for size in sizes:
        rows = [p for p in pts if p["n_params"] == size]
        per_size.append(
            _interp_1d(
                np.log([p["epochs"] for p in rows]),
                np.array([p["metrics"]["test_loss"]["damage"] for p in rows]),
                math.log(e),
            )[0]
        )
    if len(sizes) == 1:
        return per_size[0]
    return _interp_1d(np.log(sizes), np.array(per_size), math.log(n))[0]


def _from_paper(out: dict[str, Any], n: float, f: float, e: float) -> None:
    """Fill `out` from the paper's published region (no study given)."""
    left = PAPER["left"]["k"] * n ** PAPER["left"]["alpha"]
    right = PAPER["right"]["k"] * n ** PAPER["right"]["alpha"]
    n_out = not PAPER["n_range"][0] <= n <= PAPER["n_range"][1]
    e_out = not PAPER["epochs_range"][0] <= e <= PAPER["epochs_range"][1]
    out.update(
        source="paper",
        study_fraction=PAPER["fraction"],
        left_edge=left,
        right_edge=right,
        left_basis="paper: E = 4.2e6 * N^-0.56",
        right_basis="paper: E = 5.1e7 * N^-0.50",
        in_region=bool(left <= e <= right),
        extrapolated=bool(n_out or e_out),
    )
    out["notes"].append(
        f"No study given: the paper's published region ({PAPER['source']}); its constants "
        "depend on the token budget T and the tokenizer and do not transfer to other set-ups."
    )
    if not math.isclose(f, PAPER["fraction"]):
        out["fraction_note"] = f"the paper's edges are for f = 10%, not f = {f:g}"
    if n_out:
        out["notes"].append(f"N = {n:.3g} is outside the paper's sizes 1.57e6..8.05e8: extrapolated.")
    if e_out:
        out["notes"].append(f"E = {e:g} is outside the paper's E range 1..1e4: extrapolated.")
    out["notes"].append(
        "No effective-size multiplier without a study (the paper's headline: 800M behaves like "
        "~400M at f = 10%, E = 100)."
    )


def _from_study(out: dict[str, Any], analysis: dict, n: float, f: float, e: float) -> None:
    """Fill `out` from a study's region at its fraction nearest to f, and its effective-size prediction."""
    regions = [r for r in analysis.get("regions", []) if r.get("fraction", 0) > 0]
    if not regions:
        raise AnalysisError("the study's analysis has no repeated-data fraction (f > 0) to compare with")
    reg = min(regions, key=lambda r: (abs(r["fraction"] - f), r["fraction"]))
    out.update(source="study", study=analysis.get("study"), study_fraction=reg["fraction"])
    if not math.isclose(reg["fraction"], f):
        out["fraction_note"] = f"the study has no f = {f:g}; using its nearest fraction f = {reg['fraction']:g}"
    per_model = reg.get("per_model", [])
    left, left_bound, lb = _edge_at(reg["fits"].get("left"), per_model, "left", n)
    right, right_bound, rb = _edge_at(reg["fits"].get("right"), per_model, "right", n)
    out.update(left_edge=left, right_edge=right, left_edge_bound=left_bound, right_edge_bound=right_bound)
    out.update(left_basis=lb, right_basis=rb)
    sides = (_side_holds(left, left_bound, "left", e), _side_holds(right, right_bound, "right", e))
    out["in_region"] = False if False in sides else True if sides == (True, True) else None
    sizes = [r["n_params"] for r in per_model]
    n_out = bool(sizes) and not min(sizes) * (1 - 1e-9) <= n <= max(sizes) * (1 + 1e-9)
    pred = _predict_multiplier(analysis, reg["fraction"], n, e)
    out.update(multiplier=pred["multiplier"], n_eff=pred["n_eff"], multiplier_note=pred["multiplier_note"])
    damage, nearest = predicted_damage(analysis, reg["fraction"], n, e), _nearest_point(analysis, reg["fraction"], n, e)
    out.update(damage=damage, nearest_point=nearest)
    out["extrapolated"] = bool(n_out or pred["e_extrapolated"] or pred["n_extrapolated"])
    if n_out:
        out["notes"].append(
            f"N = {n:.3g} is outside the study's sizes {min(sizes):.3g}..{max(sizes):.3g}: the "
            "region edges are extrapolated."
        )
    if pred["note"]:
        out["notes"].append(pred["note"] + ".")


def assess(n_params: float, fraction: float, epochs: float, analysis: dict | None = None) -> dict:
    """The danger answer for (N, f, E), from a study's analysis or, without one, from the paper's region."""
    n, f, e = _check_inputs(n_params, fraction, epochs)
    out: dict[str, Any] = {
        "n_params": n,
        "fraction": f,
        "epochs": e,
        "source": None,
        "study": None,
        "study_fraction": None,
        "fraction_note": None,
        "left_edge": None,
        "right_edge": None,
        "left_edge_bound": None,
        "right_edge_bound": None,
        "left_basis": None,
        "right_basis": None,
        "in_region": None,
        "multiplier": None,
        "n_eff": None,
        "multiplier_note": None,
        "damage": None,
        "nearest_point": None,
        "extrapolated": None,
        "notes": [],
        "answer": None,
    }
    if f == 0:
        out.update(
            source="none needed",
            in_region=False,
            extrapolated=False,
            answer="f = 0: nothing is repeated, so there is no repetition damage to assess.",
        )
        return out
    if analysis is None:
        _from_paper(out, n, f, e)
    else:
        _from_study(out, analysis, n, f, e)
    out["answer"] = _answer(out)
    return out


def _answer(r: dict) -> str:
    where = {
        True: "IN the poor-performance region",
        False: "outside the poor-performance region",
        None: "of unknown danger (an edge of the region is not known here)",
    }[r["in_region"]]
    edges = " to ".join(edge_text(r[f"{side}_edge"], r.get(f"{side}_edge_bound"), side) for side in ("left", "right"))
    src = (
        "the paper's published region"
        if r["source"] == "paper"
        else f"study {r['study'] or ''} at f = {r['study_fraction']:g}".replace("study  ", "study ")
    )
    text = (
        f"N = {r['n_params']:.3g}, f = {r['fraction']:g}, E = {r['epochs']:g} is {where} "
        f"(E from {edges} at this N, from {src})"
    )
    if r["multiplier"] is not None:
        text += f"; predicted effective model {r['multiplier']:.2f}x smaller (N_eff = {r['n_eff']:.3g})"
    elif r.get("multiplier_note"):
        text += f"; {r['multiplier_note']}"
    if r.get("damage") is not None:
        text += f"; predicted test-loss damage {r['damage']:+.3f} nats"
        if r.get("nearest_point"):
            text += f" ({_point_text(r['nearest_point'])})"
    if r["extrapolated"]:
        text += "; EXTRAPOLATED beyond the data"
    return text + "."


def edge_text(edge: float | None, bound: float | None, side: str) -> str:
    """'220', 'at least 2048' (an edge beyond the E grid), or '?'."""
    if edge is not None:
        return f"{edge:.3g}"
    if bound is not None:
        return f"{'at least' if side == 'right' else 'at most'} {bound:g}"
    return "?"


def _point_text(p: dict) -> str:
    """'the study's nearest point N = 1e+05, E = 256: +0.200 +- 0.007 nats, 27.0 sigma, significant'."""
    text = f"the study's nearest point N = {p['n_params']:.3g}, E = {p['epochs']:g}: {p['damage']:+.3f}"
    if p.get("damage_se") is None:
        return text + " nats"
    verdict = "significant" if p.get("significant") else "within the noise"
    return text + f" +- {p['damage_se']:.3f} nats, {p['z']:.1f} sigma, {verdict}"


def load_analysis(study: str | None, config: str | None) -> dict | None:
    from repeatlab import layout, storage

    if config:
        from repeatlab import config as config_lib

        cfg = config_lib.load(config)
        storage.configure(cfg.storage.options, anonymous=cfg.storage.anonymous)
        url = layout.Study(layout.study_url(cfg.storage.root, cfg.name)).analysis
    elif study:
        url = study
    else:
        return None
    if not storage.exists(url):
        raise AnalysisError(f"{url}: no analysis.json; run `repeatlab analyze` first")
    data = storage.read_json(url)
    if not isinstance(data, dict) or "regions" not in data:
        raise AnalysisError(f"{url}: not an analysis.json (no 'regions')")
    return data
