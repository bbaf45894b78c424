"""The study report: one self-contained HTML page and Markdown (figures as embedded PNGs, data URIs), and a CSV.

The first screen is the answer in words (`answer_lines`: where repetition hurts, how much, for which sizes), then
the figures, each with a one-sentence caption of what to see, then the detailed findings, warnings and tables. The
Markdown inlines its figures as data URIs so the Kubeflow UI renders it from the artifact alone; the PNGs are also
written beside it.

Every sentence with a number is computed from the analysis (repeatlab.analyze.findings); figures come from the analysis
and from the eval records (heads, per-copy losses, learning curves). A figure whose data is absent is replaced by a
visible note. Everything is rendered in memory first, then each file is written atomically, index.html last, so a
failure while rendering leaves the previous report untouched and a reader never sees a half-written file.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from typing import Any

import numpy as np

from repeatlab.errors import AnalysisError
from repeatlab.mechanism import control_note

CSV_COLUMNS = [
    "point_id",
    "model",
    "n_params",
    "fraction",
    "epochs",
    "seed",
    "control",
    "test_loss",
    "repeated_loss",
    "copying",
    "prefix_matching_top_mean",
    "prefix_matching_max",
    "icl_score",
    "ood_loss",
    "n_eff",
    "multiplier",
    "damage",
    "extrapolated",
    "icl_stderr",
    "damage_se",
    "significant",
    "mechanism",
]
FIGURES = [
    "loss_vs_epochs",
    "multiplier_heatmap",
    "repeated_loss",
    "learning_curves",
    "prefix_heads",
    "per_copy_loss",
    "region",
]
CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
.table{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f4f4f4}figure{margin:1.5em 0}img{max-width:100%;height:auto}
figcaption{color:#555;font-size:.9em}.note{background:#fff7e0;border-left:4px solid #e0a800;padding:.5em 1em;
margin:1em 0}.partial{background:#fde8e8;border-left:4px solid #c00;padding:.5em 1em;font-weight:bold}
code{background:#f4f4f4;padding:0 .2em;overflow-wrap:anywhere}li,p{overflow-wrap:anywhere}
.answer{background:#eef6ee;border-left:4px solid #2a7a2a;padding:.4em 1em;font-size:1.05em}
.answer p{margin:.4em 0}"""
Table = tuple[str, list[str], list[list[str]]]  # (caption, column headers, rows of cells)


def _fmt(x: Any, spec: str = ".4g") -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        return format(x, spec)
    return str(x)


# ----------------------------------------------------------------------------------------------------------------------
# Figures


def _colors(sizes: list[float]) -> dict[float, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    n = max(len(sizes) - 1, 1)
    return {s: cmap(0.1 + 0.8 * i / n) for i, s in enumerate(sorted(sizes))}


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _subplots(count: int, width: float = 5.0, height: float = 3.8):
    import matplotlib.pyplot as plt

    cols = min(count, 3)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def _repeated(analysis: dict) -> list[dict]:
    return [p for p in analysis["points"] if p["kind"] == "repeated"]


def _fig_loss_vs_epochs(analysis, records, colors):
    pts = _repeated(analysis)
    fractions = sorted({p["fraction"] for p in pts})
    if not fractions:
        return None, "no runs with repeated data (f > 0)"
    fig, axes = _subplots(len(fractions))
    base = {(p["model"], p["n_params"]): p for p in analysis["points"] if p["kind"] == "baseline"}
    for ax, f in zip(axes, fractions):
        for size in sorted({p["n_params"] for p in pts if p["fraction"] == f}):
            rows = sorted([p for p in pts if p["fraction"] == f and p["n_params"] == size], key=lambda p: p["epochs"])
            e = [p["epochs"] for p in rows]
            y = [p["metrics"]["test_loss"]["mean"] for p in rows]
            err = [p["metrics"]["test_loss"]["std"] or 0.0 for p in rows]
            ax.errorbar(e, y, yerr=err, marker="o", ms=3, color=colors[size], label=f"N = {size:.3g}")
            b = base.get((rows[0]["model"], size))
            if b:
                mean = b["metrics"]["test_loss"]["mean"]
                ax.axhline(mean, color=colors[size], ls="--", lw=1)
                se = rows[0]["metrics"]["test_loss"].get("damage_se")
                if se:  # where a one-seed point is within 3 standard errors of the baseline: not significant
                    ax.axhspan(mean - 3 * se, mean + 3 * se, color=colors[size], alpha=0.12, lw=0)
        ax.set(
            xscale="log", xlabel="repeated epochs E", ylabel="test loss (nats/token)", title=f"f = {f:g}"
        )  # the caption says what the dashed line and the band are
        ax.legend(fontsize=7)
    return _png(fig), None


def _fig_multiplier(analysis, records, colors):
    pts = [p for p in _repeated(analysis) if p["metrics"]["test_loss"].get("multiplier")]
    fractions = sorted({p["fraction"] for p in pts})
    if not fractions:
        return None, "no effective sizes: N_eff needs f = 0 baseline runs"
    fig, axes = _subplots(len(fractions), 5.5, 3.8)
    for ax, f in zip(axes, fractions):
        sub = [p for p in pts if p["fraction"] == f]
        sizes = sorted({p["n_params"] for p in sub})
        eps = sorted({p["epochs"] for p in sub})
        grid = np.full((len(sizes), len(eps)), np.nan)
        for p in sub:
            grid[sizes.index(p["n_params"]), eps.index(p["epochs"])] = p["metrics"]["test_loss"]["multiplier"]
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="magma_r")
        ax.set_xticks(range(len(eps)), [f"{e:g}" for e in eps], rotation=90, fontsize=7)
        ax.set_yticks(range(len(sizes)), [f"{s:.3g}" for s in sizes], fontsize=7)
        ax.set_xlabel("repeated epochs E (log-spaced grid)")
        ax.set_ylabel("non-embedding parameters N")
        ax.set_title(f"N / N_eff from test loss, f = {f:g}")
        fig.colorbar(im, ax=ax, label="N / N_eff")
    return _png(fig), None


def _fig_repeated_loss(analysis, records, colors):
    pts = [p for p in _repeated(analysis) if p["repeated_loss"]["mean"] is not None]
    fractions = sorted({p["fraction"] for p in pts})
    if not fractions:
        return None, "no repeated-subset losses in the eval records"
    fig, axes = _subplots(len(fractions))
    for ax, f in zip(axes, fractions):
        for size in sorted({p["n_params"] for p in pts if p["fraction"] == f}):
            rows = sorted([p for p in pts if p["fraction"] == f and p["n_params"] == size], key=lambda p: p["epochs"])
            ax.plot(
                [p["epochs"] for p in rows],
                [p["repeated_loss"]["mean"] for p in rows],
                marker="o",
                ms=3,
                color=colors[size],
                label=f"N = {size:.3g}",
            )
        ax.set(
            xscale="log",
            xlabel="repeated epochs E",
            ylabel="repeated-subset loss (nats/token)",
            title=f"memorization of the repeated subset, f = {f:g}",
        )
        ax.legend(fontsize=7)
    return _png(fig), None


def _record_by_id(records):
    return {str(r.get("point_id") or (r.get("point") or {}).get("point_id")): r for r in records if isinstance(r, dict)}


def _fig_learning_curves(analysis, records, colors):
    pts = _repeated(analysis)
    if not pts:
        return None, "no runs with repeated data (f > 0)"
    by_id = _record_by_id(records)
    f = max(p["fraction"] for p in pts)
    worst = {w["n_params"]: w for w in analysis["worst"].get("test_loss", []) if w["fraction"] == f}
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    drawn = 0
    for size, w in sorted(worst.items()):
        match = [p for p in pts if p["fraction"] == f and p["n_params"] == size and p["epochs"] == w["epochs"]]
        base = [p for p in analysis["points"] if p["kind"] == "baseline" and p["n_params"] == size]
        for p, ls, label in (
            (match[0] if match else None, "-", f"N = {size:.3g}, E = {w['epochs']:g} (worst)"),
            (base[0] if base else None, "--", f"N = {size:.3g}, f = 0"),
        ):
            if not p:
                continue
            curve = (by_id.get(p["point_ids"][0]) or {}).get("learning_curve") or []
            rows = sorted(
                (r["tokens"], r["test_loss"]) for r in curve if r.get("tokens") and r.get("test_loss") is not None
            )
            if rows:
                ax.plot([r[0] for r in rows], [r[1] for r in rows], ls=ls, color=colors[size], label=label)
                drawn += 1
    if not drawn:
        plt.close(fig)
        return None, "no learning curves in the eval records"
    ax.set(
        xscale="log",
        xlabel="training tokens",
        ylabel="test loss (nats/token)",
        title=f"learning curves at the highest f = {f:g} (epoch-wise double descent)",
    )
    ax.legend(fontsize=7)
    return _png(fig), None


def _worst_pair(analysis, records):
    """(baseline record, worst record, worst row): the point with the largest prefix-matching (else test) damage."""
    by_id = _record_by_id(records)
    rows = [w for w in analysis["worst"].get("prefix_matching", []) if w["damage"] is not None]
    metric = "prefix_matching"
    if not rows:
        rows = [w for w in analysis["worst"].get("test_loss", []) if w["damage"] is not None]
        metric = "test_loss"
    if not rows:
        return None, None, None, None
    w = max(rows, key=lambda r: r["damage"])
    worst = [
        p
        for p in _repeated(analysis)
        if p["n_params"] == w["n_params"] and p["fraction"] == w["fraction"] and p["epochs"] == w["epochs"]
    ]
    base = [p for p in analysis["points"] if p["kind"] == "baseline" and p["n_params"] == w["n_params"]]
    if not worst or not base:
        return None, None, None, None
    return by_id.get(base[0]["point_ids"][0]), by_id.get(worst[0]["point_ids"][0]), w, metric


def _fig_prefix_heads(analysis, records, colors):
    base, worst, w, metric = _worst_pair(analysis, records)
    mats = [np.asarray(((r or {}).get("heads") or {}).get("prefix_matching") or [], dtype=float) for r in (base, worst)]
    if w is None or any(m.ndim != 2 or m.size == 0 for m in mats):
        return None, "no per-head prefix-matching scores for a baseline and a damaged point of the same size"
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    vmax = max(float(np.nanmax(m)) for m in mats) or 1.0
    for ax, m, title in zip(
        axes,
        mats,
        (f"baseline f = 0, N = {w['n_params']:.3g}", f"f = {w['fraction']:g}, E = {w['epochs']:g} (worst {metric})"),
    ):
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=list(axes), label="prefix-matching score")
    return _png(fig), None


def _fig_per_copy(analysis, records, colors):
    base, worst, w, _ = _worst_pair(analysis, records)
    curves = [((r or {}).get("copying") or {}).get("per_copy_loss") or [] for r in (base, worst)]
    if w is None or not all(curves):
        return None, "no per-copy losses for a baseline and a damaged point of the same size"
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(curves[0]) + 1), curves[0], marker="o", ls="--", color="k", label="baseline f = 0")
    ax.plot(
        range(1, len(curves[1]) + 1),
        curves[1],
        marker="o",
        color="C3",
        label=f"f = {w['fraction']:g}, E = {w['epochs']:g}",
    )
    ax.set(
        xlabel="copy of the probe paragraph",
        ylabel="loss (nats/token)",
        title=f"loss per copy, N = {w['n_params']:.3g}",
    )
    ax.legend(fontsize=8)
    return _png(fig), None


def _fig_region(analysis, records, colors):
    regions = [r for r in analysis["regions"] if any(m.get("max_damage") for m in r["per_model"])]
    if not regions:
        return None, "no poor-performance region: it needs damage, i.e. f = 0 baselines and f > 0 runs"
    fig, axes = _subplots(len(regions))
    for ax, reg in zip(axes, regions):
        pm = [m for m in reg["per_model"] if m.get("max_damage")]
        for m in pm:
            c = colors[m["n_params"]]
            if m["left"] is not None and m["right"] is not None:
                ax.plot([m["n_params"]] * 2, [m["left"], m["right"]], color=c, lw=4, alpha=0.5)
            ax.scatter([m["n_params"]], [m["peak_epochs"]], color=c, marker="*", s=60, zorder=3)
            for side, mk in (("left", "v"), ("right", "^")):
                if m[side] is not None:
                    ax.scatter([m["n_params"]], [m[side]], color=c, marker=mk, zorder=3)
        ns = np.geomspace(min(m["n_params"] for m in pm) / 1.5, max(m["n_params"] for m in pm) * 1.5, 50)
        for side, ls in (("left", "--"), ("right", ":")):
            fe = reg["fits"][side]
            if fe.get("ok"):
                ax.plot(
                    ns, fe["k"] * ns ** fe["alpha"], "k", ls=ls, label=f"{side}: E = {fe['k']:.3g} N^{fe['alpha']:.2f}"
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("non-embedding parameters N")
        ax.set_ylabel("repeated epochs E")
        ax.set_title(
            f"poor-performance region (damage >= {reg['level']:.0%} of max), f = {reg['fraction']:g}", fontsize=9
        )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _png(fig), None


# One sentence per figure: what a reader should look at.
FIGURE_WHAT_TO_SEE = {
    "loss_vs_epochs": "Each line is one model size at one repeated fraction: a bump above its f = 0 baseline (dashed; "
    "the band is +-3 standard errors) is the damage, and where it peaks along E is where repetition "
    "hurts most.",
    "multiplier_heatmap": "Each cell is N / N_eff at one (N, E): a value above 1 means the model performs like one "
    "that many times smaller trained on unique data.",
    "repeated_loss": "Loss on the repeated subset falls as E grows: low values mean the model has memorized the "
    "repeated data.",
    "learning_curves": "Test loss during training at the highest repeated fraction: a curve that rises mid-training "
    "is the repeated data starting to hurt.",
    "prefix_heads": "Induction heads score high here: compare the baseline (left) with the worst point (right) to see "
    "whether repetition weakened them.",
    "per_copy_loss": "The loss should fall after the first copy of a paragraph (copying in context): a flatter line at "
    "the worst point means copying was damaged.",
    "region": "For each size the bar spans the E range where the damage is at least half its peak (star: the worst "
    "E); the lines are the region's fitted edges across sizes.",
}

FIGURE_SPECS = {
    "loss_vs_epochs": ("Test loss vs repeated epochs E, per model size", _fig_loss_vs_epochs),
    "multiplier_heatmap": ("Effective-size multiplier N / N_eff over (N, E)", _fig_multiplier),
    "repeated_loss": ("Repeated-subset loss vs E", _fig_repeated_loss),
    "learning_curves": ("Learning curves (test loss vs tokens) at the highest f", _fig_learning_curves),
    "prefix_heads": ("Prefix-matching score per layer and head: baseline vs the worst point", _fig_prefix_heads),
    "per_copy_loss": ("Loss per copy of the probe paragraph: baseline vs the worst point", _fig_per_copy),
    "region": ("The poor-performance region and its fitted edges in (N, E)", _fig_region),
}


def render_figures(analysis: dict, records: list[dict]) -> dict[str, tuple[bytes | None, str | None]]:
    """figure id -> (PNG bytes or None, reason it was skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    sizes = [m["n_params"] for m in analysis["summary"]["models"]]
    colors = _colors(sizes)
    out = {}
    for fid in FIGURES:
        _, fn = FIGURE_SPECS[fid]
        try:
            out[fid] = fn(analysis, records, colors)
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # odd records: skip the figure, say why
            out[fid] = (None, f"could not draw from these records ({type(exc).__name__}: {exc})")
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Tables and text


def csv_rows(analysis: dict) -> list[dict]:
    rows = []
    for r in analysis["runs"]:
        tl = r["metrics"].get("test_loss", {})
        row = {
            "point_id": r["point_id"],
            "model": r["model"],
            "n_params": r["n_params"],
            "fraction": r["fraction"],
            "epochs": r["epochs"],
            "seed": r["seed"],
            "control": r["control"],
            "test_loss": tl.get("value"),
            "repeated_loss": r["repeated_loss"],
            "copying": (r["metrics"].get("copying") or {}).get("value"),
            "prefix_matching_top_mean": (r["metrics"].get("prefix_matching") or {}).get("value"),
            "prefix_matching_max": r["prefix_matching_max"],
            "icl_score": r["icl_score"],
            "ood_loss": (r["metrics"].get("ood_loss") or {}).get("value"),
            "n_eff": tl.get("n_eff"),
            "multiplier": tl.get("multiplier"),
            "damage": tl.get("damage"),
            "extrapolated": tl.get("extrapolated"),
            "icl_stderr": (r.get("icl") or {}).get("stderr"),
            "damage_se": tl.get("damage_se"),
            "significant": tl.get("significant"),
            "mechanism": r.get("mechanism_verdict"),
        }
        rows.append(row)
    return rows


def _csv_text(analysis: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(analysis):
        writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _pm(value: Any, se: Any, spec: str = "+.3f") -> str:
    if value is None:
        return ""
    return _fmt(value, spec) + ("" if se is None else f" ± {se:.3f}")


def _corpus_tables(analysis: dict) -> list[Table]:
    tables = []
    for c in analysis.get("corpus") or []:
        if not c.get("composition"):
            tables.append((f"Split composition of corpus {c['corpus_id']}", ["note"], [[c.get("note") or ""]]))
            continue
        rows = [
            [split, src, _fmt(row["documents"], "d"), _fmt(row["tokens"], ",d"), f"{row['share']:.1%}"]
            for split, per in c["composition"].items()
            for src, row in per.items()
        ]
        unit = (
            f"chunks of about {c['chunk_tokens']} tokens"
            if c.get("chunk_tokens")
            else "whole input documents, not chunked"
        )
        tables.append(
            (
                f"Split composition of corpus {c['corpus_id']} (documents: {unit})",
                ["split", "source", "documents", "tokens", "share of the split"],
                rows,
            )
        )
    return tables


def _noise_tables(analysis: dict) -> list[Table]:
    noise = analysis.get("noise") or {}
    rows = [
        [
            f"{r['n_params']:.3g}",
            _fmt(r["sigma"], ".4f"),
            r["source"],
            _fmt(r["seed_dof"]),
            _fmt(r["low_e_dof"]),
            ", ".join(f"f = {p['fraction']:g}, E = {p['epochs']:g}: {p['deviation']:+.4f}" for p in r["low_e_points"]),
        ]
        for r in noise.get("per_model", [])
    ]
    tables = [
        (
            "Run-to-run noise of the test loss (sigma, nats): extra seeds and E <= 4 points",
            ["N", "sigma", "source", "seed dof", "low-E dof", "low-E points vs baseline"],
            rows,
        )
    ]
    rows = [
        [
            f"{r['n_params']:.3g}",
            _fmt(r["baseline_mean"], ".4f"),
            _fmt(r["baseline_runs"]),
            _fmt(r["pooled_mean"], ".4f"),
            _fmt(r["pooled_runs"]),
            _fmt(r["outlier"]),
            _fmt(r["not_converged"]),
            "; ".join(r["notes"]),
        ]
        for r in analysis.get("baseline_checks") or []
    ]
    tables.append(
        (
            "Baseline checks (pooled baseline: the f = 0 runs and the E <= 4 points)",
            ["N", "baseline", "runs", "pooled baseline", "runs", "outlier", "not converged", "why"],
            rows,
        )
    )
    if analysis.get("loss_spikes"):
        rows = [
            [
                f"{r['n_params']:.3g}",
                f"{r['fraction']:g}",
                f"{r['epochs']:g}",
                _fmt(r["seed"]),
                f"{r['from_loss']:.2f} -> {r['to_loss']:.2f}",
                f"{r['at_tokens']:.3g}",
                _fmt(r["recovered"]),
            ]
            for r in analysis["loss_spikes"]
        ]
        tables.append(
            ("Loss spikes in the learning curves", ["N", "f", "E", "seed", "test loss", "at tokens", "recovered"], rows)
        )
    return tables


def _mechanism_tables(analysis: dict) -> list[Table]:
    rows = [
        [
            f"{r['n_params']:.3g}",
            _pm(r["score"], r["stderr"]),
            _fmt(r["runs"]),
            {True: "yes", False: "no"}.get(r["present"], "not judged"),
        ]
        for r in analysis.get("icl") or []
    ]
    tables = [
        (
            "In-context learning at the f = 0 baselines: late minus early loss (nats), ± standard error; "
            "present only beyond 2 standard errors",
            ["N", "ICL score", "runs", "ICL present"],
            rows,
        )
    ]
    mech = analysis.get("mechanism") or {}

    def pair(m: dict) -> str:
        return "" if m["baseline"] is None else f"{m['baseline']:.3f} -> {_fmt(m['worst'], '.3f')}{control_note(m)}"

    rows = [
        [
            f"{r['n_params']:.3g}",
            f"{r['fraction']:g}",
            f"{r['epochs']:g}",
            pair(r["previous_token_max"]),
            pair(r["prefix_matching_max"]),
            pair(r["copy_gain"]),
            ", ".join(r["baseline_verdicts"]),
            ", ".join(r["worst_verdicts"]),
        ]
        for r in mech.get("at_worst", [])
    ]
    tables.append(
        (
            "Mechanism evidence: f = 0 baseline -> the worst E (best previous-token head, best "
            "prefix-matching head, copy gain = copy 1 minus copies 2..n in nats), and the unique-only control",
            ["N", "f", "worst E", "previous-token", "prefix-matching", "copy gain", "baseline", "worst E"],
            rows,
        )
    )
    return tables


def _tables(analysis: dict) -> list[Table]:
    return [
        *_corpus_tables(analysis),
        *_noise_tables(analysis),
        _baseline_table(analysis),
        _worst_table(analysis),
        _damage_table(analysis),
        _region_table(analysis),
        _region_fit_table(analysis),
        *_mechanism_tables(analysis),
        *_missing_tables(analysis),
    ]


def _yes_no(value: Any) -> str:
    return {True: "yes", False: "no"}.get(value, "unknown")


def _baseline_table(analysis: dict) -> Table:
    rows = []
    for metric, b in analysis["baseline"].items():
        fit = b.get("fit")
        rows.append(
            [
                metric,
                b["direction"],
                str(len(b["points"])),
                _fmt(fit and fit["asymptote"]),
                _fmt(fit and fit["A"]),
                _fmt(fit and fit["alpha"]),
                _fmt(fit and fit["rms_residual"]),
                ("yes" if fit.get("usable", True) else f"no: {fit.get('unusable_reason')}") if fit else "",
                "" if fit else (b.get("fit_note") or ""),
            ]
        )
    return (
        "Baseline fits (f = 0): L(N) = L_inf + A N^-alpha (scores: S_inf - A N^-alpha), "
        "0 <= L_inf <= the smallest observed loss",
        ["metric", "better", "sizes", "L_inf / S_inf", "A", "alpha", "rms residual", "usable", "note"],
        rows,
    )


def _point_cells(row: dict) -> list[str]:
    """N, f, E of a grid point."""
    return [f"{row['n_params']:.3g}", f"{row['fraction']:g}", f"{row['epochs']:g}"]


def _damage_cells(metric: dict) -> list[str]:
    """Damage ± standard error, z, significant."""
    return [
        _pm(metric["damage"], metric.get("damage_se"), "+.4f"),
        _fmt(metric.get("z"), ".1f"),
        _yes_no(metric.get("significant")),
    ]


def _worst_table(analysis: dict) -> Table:
    from repeatlab.analyze import multiplier_text

    rows = [
        [
            *_point_cells(w),
            _fmt(w["interior"]),
            *_damage_cells(w),
            _yes_no(w.get("interior_significant")),
            _fmt(w.get("damage_pooled"), "+.4f"),
            multiplier_text(w),
            _fmt(w["repeated_loss"], ".4f"),
            _fmt(w["test_loss"], ".4f"),
        ]
        for w in analysis["worst"].get("test_loss", [])
    ]
    header = ["N", "f", "worst E", "interior", "damage (nats)", "z", "significant", "peak above both grid ends"]
    header += ["damage vs pooled baseline", "effective size", "repeated loss", "test loss"]
    return ("Worst E per (N, f), test loss: damage ± standard error, significant beyond 3 sigma", header, rows)


def _damage_table(analysis: dict) -> Table:
    from repeatlab.analyze import multiplier_text

    rows = []
    for p in analysis["points"]:
        if p["kind"] != "repeated":
            continue
        m = p["metrics"]["test_loss"]
        rows.append([*_point_cells(p), _fmt(p["n_seeds"]), *_damage_cells(m), multiplier_text(m)])
    return (
        "Damage at every repeated point (test loss)",
        ["N", "f", "E", "seeds", "damage (nats)", "z", "significant", "effective size"],
        rows,
    )


def _region_table(analysis: dict) -> Table:
    rows = [
        [
            f"{reg['fraction']:g}",
            f"{m['n_params']:.3g}",
            _fmt(m.get("max_damage"), "+.4f"),
            _fmt(m.get("peak_epochs"), "g"),
            _fmt(m.get("left"), ".4g"),
            _fmt(m.get("right"), ".4g"),
            m.get("note") or "",
        ]
        for reg in analysis["regions"]
        for m in reg["per_model"]
    ]
    return (
        "Poor-performance region per (f, N)",
        ["f", "N", "max damage", "peak E", "left edge E", "right edge E", "note"],
        rows,
    )


def _region_fit_table(analysis: dict) -> Table:
    rows = [
        [
            f"{reg['fraction']:g}",
            side,
            _fmt(reg["fits"][side].get("k")),
            _fmt(reg["fits"][side].get("alpha")),
            _fmt(reg["fits"][side].get("n_sizes")),
            "" if reg["fits"][side].get("ok") else reg["fits"][side].get("note", ""),
        ]
        for reg in analysis["regions"]
        for side in ("left", "right")
    ]
    return ("Region edge fits E = k N^alpha", ["f", "edge", "k", "alpha", "sizes", "note"], rows)


def _missing_tables(analysis: dict) -> list[Table]:
    """The eval files that were missing, as a table; none when nothing was missing."""
    if not analysis["missing"]:
        return []
    rows = [
        [str(m["point_id"]), str(m["model"]), _fmt(m["fraction"]), _fmt(m["epochs"]), _fmt(m["seed"])]
        for m in analysis["missing"]
    ]
    return [("Missing eval files", ["point_id", "model", "f", "E", "seed"], rows)]


def _n(n: float) -> str:
    return f"{n:.3g}"


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g} to {high:g}"


def _fraction_sentence(fraction: float, rows: list[dict], region: dict | None) -> str:
    """One f: at which sizes the damage is significant, how large, at which E, and the region's E range."""
    hurt = [r for r in rows if r.get("significant")]
    sizes = sorted({r["n_params"] for r in rows})
    head = f"When {fraction:.0%} of the training tokens are repeats (f = {fraction:g})"
    if not hurt:
        worst = max(rows, key=lambda r: r["damage"])
        noise = (
            f" ({worst['z']:.1f} standard errors: below the 3 that tell damage from run-to-run noise)"
            if worst.get("z") is not None
            else " (no noise estimate: add seeds to judge it)"
        )
        return (
            f"{head}, no model size (N = {', '.join(map(_n, sizes))}) is measurably hurt: the largest damage is "
            f"{worst['damage']:+.3f} nats of test loss at N = {_n(worst['n_params'])}, E = {worst['epochs']:g}"
            f"{noise}."
        )
    damages = [r["damage"] for r in hurt]
    text = (
        f"{head}, repetition hurts {len(hurt)} of {len(sizes)} model sizes (N = "
        f"{', '.join(_n(r['n_params']) for r in sorted(hurt, key=lambda r: r['n_params']))}): test loss is "
        f"{_span([round(d, 3) for d in damages])} nats worse than training on unique data, worst when "
        f"the repeated data is seen E = {_span([r['epochs'] for r in hurt])} times"
    )
    spared = [r for r in rows if not r.get("significant")]
    if spared:
        text += f"; not measurably at N = {', '.join(_n(r['n_params']) for r in spared)}"
    edges = [
        (m["left"], m["right"])
        for m in (region or {}).get("per_model") or []
        if m.get("significant") and m.get("left") is not None and m.get("right") is not None
    ]
    if edges:
        text += (
            f"; the damage is at least half its peak for E between about {min(e[0] for e in edges):.0f} and "
            f"{max(e[1] for e in edges):.0f}"
        )
    return text + "."


def answer_lines(analysis: dict) -> list[str]:
    """The study's answer in a few sentences a reader understands without the paper: where repetition hurts (which
    fraction f and how many repeats E), how much (nats of test loss against the f = 0 baseline of the same size,
    with significance at 3 standard errors), and for which model sizes. Empty when nothing can be said."""
    rows = [r for r in (analysis.get("worst") or {}).get("test_loss") or [] if r.get("damage") is not None]
    if not rows:
        return ["No damage can be measured: the study has no f = 0 baseline runs to compare the repeated runs with."]
    regions = {r["fraction"]: r for r in analysis.get("regions") or [] if r.get("metric", "test_loss") == "test_loss"}
    lines = [
        _fraction_sentence(f, [r for r in rows if r["fraction"] == f], regions.get(f))
        for f in sorted({r["fraction"] for r in rows})
    ]
    hurt = [r for r in rows if r.get("significant")]
    if hurt:
        worst = max(hurt, key=lambda r: r["damage"])
        lines.append(
            f"The largest damage: {worst['damage']:+.3f} nats at N = {_n(worst['n_params'])}, "
            f"f = {worst['fraction']:g}, E = {worst['epochs']:g}"
            + (f" ({worst['z']:.0f} standard errors)." if worst.get("z") is not None else ".")
        )
    if analysis["summary"].get("partial"):
        lines.append(
            f"Partial: {analysis['summary']['missing_points']} of {analysis['summary']['expected_points']} "
            "points have no results yet; the answer may change."
        )
    return lines


ANSWER_NOTE = (
    "Damage is the increase in test loss (nats per token) over a model of the same size trained on the "
    "same number of unique tokens (f = 0); it counts as measured only beyond 3 standard errors of the "
    "run-to-run noise."
)


def figure_captions() -> dict[str, str]:
    """Figure id -> its caption: the title, then one sentence of what to see."""
    return {fid: f"{FIGURE_SPECS[fid][0]}. {FIGURE_WHAT_TO_SEE[fid]}" for fid in FIGURES}


def html_figures(captions: dict[str, str], figures: dict) -> list[str]:
    """The Figures section of a report page: each figure embedded, with its caption (or why it was skipped)."""
    e = html.escape
    parts = ['<h2 id="figures">Figures</h2>']
    for fid, caption in captions.items():
        png, reason = figures[fid]
        if png:
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure id="fig-{fid}"><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(caption)}</figcaption></figure>"
            )
        else:
            parts.append(
                f'<div class="note" id="fig-{fid}-skipped"><b>{e(caption)}</b>: figure skipped: '
                f"{e(reason or 'no data')}.</div>"
            )
    return parts


def html_tables(tables: list) -> list[str]:
    """The Tables section; each table scrolls inside its own box on a narrow screen, never the page."""
    e = html.escape
    parts = ['<h2 id="tables">Tables</h2>']
    for name, header, rows in tables:
        parts.append(
            f'<h3>{e(name)}</h3><div class="table"><table><tr>' + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
        )
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table></div>")
    return parts


def html_figures_and_tables(captions: dict[str, str], figures: dict, tables: list) -> list[str]:
    """The Figures and Tables sections of a report page (shared by the study and the audit report)."""
    return html_figures(captions, figures) + html_tables(tables)


def markdown_figures(captions: dict[str, str], figures: dict) -> list[str]:
    """The Figures section in Markdown, each figure inlined as a data URI (the Kubeflow UI renders a Markdown
    artifact on its own: a relative link to fig-<id>.png would not resolve there), its caption below it."""
    lines = ["## Figures", ""]
    for fid, caption in captions.items():
        png, reason = figures[fid]
        if png:
            data = base64.b64encode(png).decode("ascii")
            lines += [f"![{caption.split('. ')[0]}](data:image/png;base64,{data})", "", f"*{caption}*", ""]
        else:
            lines += [f"> **{caption}**: figure skipped: {reason or 'no data'}.", ""]
    return lines


def markdown_tables(tables: list) -> list[str]:
    lines = ["## Tables", ""]
    for name, header, rows in tables:
        lines += [f"### {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    return lines


def markdown_figures_and_tables(captions: dict[str, str], figures: dict, tables: list) -> list[str]:
    """The Figures and Tables sections in Markdown (shared by the study and the audit report)."""
    return markdown_figures(captions, figures) + markdown_tables(tables)


def _html(analysis: dict, figures: dict, title: str) -> str:
    """Title, the answer in words, the figures with captions; then findings, warnings and tables."""
    e = html.escape
    s = analysis["summary"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    if s["partial"]:
        parts.append(
            f'<p class="partial" id="partial">Partial results: {s["missing_points"]} of '
            f"{s['expected_points']} expected points have no eval.json (listed below).</p>"
        )
    parts.append('<section class="answer" id="answer"><h2>The answer</h2>')
    parts += [f"<p>{e(line)}</p>" for line in answer_lines(analysis)]
    parts.append(f'<p class="how"><small>{e(ANSWER_NOTE)}</small></p></section>')
    parts += html_figures(figure_captions(), figures)
    parts.append('<h2 id="findings">Findings</h2><ul>')
    parts += [f"<li>{e(line)}</li>" for line in analysis["findings"]]
    parts.append("</ul>")
    if analysis["warnings"]:
        parts.append('<h2 id="warnings">Warnings</h2><ul>')
        parts += [f'<li class="warning">{e(w["message"])}</li>' for w in analysis["warnings"]]
        parts.append("</ul>")
    parts += html_tables(_tables(analysis))
    parts.append(f"<p>Per-run values: <code>results.csv</code>. Made by {e(analysis['created_by'])}.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _markdown(analysis: dict, figures: dict, title: str) -> str:
    s = analysis["summary"]
    lines = [f"# {title}", ""]
    if s["partial"]:
        lines += [
            (
                f"**Partial results: {s['missing_points']} of {s['expected_points']} expected points have no "
                "eval.json (listed below).**"
            ),
            "",
        ]
    lines += ["## The answer", ""] + [f"{line}" + "\n" for line in answer_lines(analysis)] + [f"*{ANSWER_NOTE}*", ""]
    lines += markdown_figures(figure_captions(), figures)
    lines += ["## Findings", ""] + [f"- {line}" for line in analysis["findings"]] + [""]
    if analysis["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w['message']}" for w in analysis["warnings"]] + [""]
    lines += markdown_tables(_tables(analysis))
    lines.append("Per-run values: `results.csv`.")
    return "\n".join(lines) + "\n"


def write_report(analysis: dict, records: list[dict], out_url: str, title: str) -> dict:
    """Write index.html, report.md (+ fig-*.png) and results.csv under out_url; returns {name: url}."""
    from repeatlab import storage

    if not isinstance(analysis, dict) or "summary" not in analysis:
        raise AnalysisError("the report needs an analysis (repeatlab analyze) with a summary")
    figures = render_figures(analysis, records or [])
    files: dict[str, bytes] = {}
    for fid, (png, _) in figures.items():
        if png:
            files[f"fig-{fid}.png"] = png
    files["results.csv"] = _csv_text(analysis).encode()
    files["report.md"] = _markdown(analysis, figures, title).encode()
    html_text = _html(analysis, figures, title).encode()
    paths = {}
    for name, data in files.items():
        url = storage.join(out_url, name)
        storage.write_bytes(url, data)
        paths[name] = url
    for fid, (png, _) in figures.items():  # a figure skipped now must not leave an old PNG behind
        if not png:
            storage.remove(storage.join(out_url, f"fig-{fid}.png"))
    storage.write_bytes(storage.join(out_url, "index.html"), html_text)  # last: the report is complete
    paths["index.html"] = storage.join(out_url, "index.html")
    return {
        "index.html": paths["index.html"],
        "report.md": paths["report.md"],
        "results.csv": paths["results.csv"],
        "figures": {k: v for k, v in paths.items() if k.endswith(".png")},
    }
