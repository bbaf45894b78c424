"""The audit report: audit.json, one self-contained HTML page and Markdown with PNGs beside it (the study
report's style).

Figures: the repetition profile (share of tokens per E bucket) and the profile placed on the damage map (the
poor-performance region's edges in (N, E), the model size N as a vertical line, each repeated bucket a marker sized by
its share of tokens, red inside the region). Rendered in memory first; index.html is written last.
"""

from __future__ import annotations

import html

import numpy as np

from repeatlab import storage
from repeatlab.report import CSS, _fmt, _png, html_figures_and_tables, markdown_figures_and_tables

FIGURES = {
    "profile": "Repetition profile: share of tokens whose content occurs E times",
    "damage_map": "The profile on the damage map: repeated buckets at this N against the poor-performance region",
}


def _fig_profile(audit: dict):
    import matplotlib.pyplot as plt

    rows = audit["profile"]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    ax.bar(range(len(rows)), [r["fraction"] * 100 for r in rows], color="C0")
    ax.set_xticks(
        range(len(rows)),
        [f"{r['e_low']}-{r['e_high'] - 1}" if r["e_high"] - r["e_low"] > 1 else str(r["e_low"]) for r in rows],
        rotation=45,
        fontsize=8,
    )
    for i, r in enumerate(rows):
        ax.text(i, r["fraction"] * 100, f"{r['fraction']:.2%}", ha="center", va="bottom", fontsize=7)
    ax.set(
        xlabel="times the content occurs in the corpus, E (log2 buckets)",
        ylabel="share of tokens (%)",
        yscale="log",
        title=f"{audit['corpus']['tokens']:,} tokens",
    )
    return _png(fig), None


def _fig_damage_map(audit: dict):
    p = audit.get("placement")
    if not p or not p["buckets"]:
        return None, "no danger reading: run the audit with --params N" if not p else "no repeated content"
    import matplotlib.pyplot as plt

    from repeatlab import danger

    n = p["n_params"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    sizes = [m["n_params"] for m in (p.get("region") or {}).get("per_model", [])] + [n]
    ns = np.geomspace(min(sizes) / 3, max(sizes) * 3, 60)
    if p["source"] == "paper":
        for side, ls in (("left", "--"), ("right", ":")):
            k, a = danger.PAPER[side]["k"], danger.PAPER[side]["alpha"]
            ax.plot(ns, k * ns**a, "k", ls=ls, label=f"paper {side} edge: E = {k:.2g} N^{a}")
        lo, hi = danger.PAPER["left"], danger.PAPER["right"]
        ax.fill_between(
            ns,
            lo["k"] * ns ** lo["alpha"],
            hi["k"] * ns ** hi["alpha"],
            color="C3",
            alpha=0.08,
            label="poor-performance region (paper)",
        )
    else:
        region = p.get("region") or {"fits": {}, "per_model": [], "fraction": None}
        for side, ls, mk in (("left", "--", "v"), ("right", ":", "^")):
            fit = region["fits"].get(side)
            if fit:
                ax.plot(
                    ns,
                    fit["k"] * ns ** fit["alpha"],
                    "k",
                    ls=ls,
                    label=f"study {side} edge: E = {fit['k']:.3g} N^{fit['alpha']:.2f}",
                )
            pts = [(m["n_params"], m[side]) for m in region["per_model"] if m[side] is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, color="k", marker=mk, s=18, label=f"measured {side} edges")
            elif not fit and p["buckets"][0][f"{side}_edge"] is not None:
                ax.axhline(p["buckets"][0][f"{side}_edge"], color="k", ls=ls, lw=1, label=f"study {side} edge")
    ax.axvline(n, color="C0", lw=1, label=f"N = {n:.3g}")
    for b in p["buckets"]:
        color = "C3" if b["in_region"] else "C2" if b["in_region"] is False else "C7"
        ax.scatter([n], [b["epochs"]], s=20 + 2000 * b["fraction"], color=color, alpha=0.7, zorder=3)
        ax.annotate(f"f = {b['fraction']:.2%}", (n, b["epochs"]), textcoords="offset points", xytext=(8, 0), fontsize=7)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="non-embedding parameters N",
        ylabel="repeated epochs E",
        title="red: in the poor-performance region; green: outside; grey: unknown"
        + (" (EXTRAPOLATED)" if p["extrapolated"] else ""),
    )
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig), None


def render_figures(audit: dict) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    return {"profile": _fig_profile(audit), "damage_map": _fig_damage_map(audit)}


def _placement_tables(p: dict | None) -> list[tuple[str, list[str], list[list[str]]]]:
    """The danger reading per bucket and the deduplication ranking (with --params only)."""
    from repeatlab import danger

    if not p:
        return []
    tables: list[tuple[str, list[str], list[list[str]]]] = []
    tables.append(
        (
            "Danger reading per repeated bucket",
            [
                "E bucket",
                "E (x passes)",
                "f",
                "in region",
                "left edge E",
                "right edge E",
                "N/N_eff",
                "damage (nats)",
                "extrapolated",
            ],
            [
                [
                    _bucket(b),
                    _fmt(b["epochs"], ".1f"),
                    f"{b['fraction']:.4%}",
                    _fmt(b["in_region"]),
                    danger.edge_text(b["left_edge"], b.get("left_edge_bound"), "left"),
                    danger.edge_text(b["right_edge"], b.get("right_edge_bound"), "right"),
                    _fmt(b["multiplier"], ".3f"),
                    _fmt(b["damage"], "+.4f"),
                    _fmt(b["extrapolated"]),
                ]
                for b in p["buckets"]
            ],
        )
    )
    tables.append(
        (
            "What to deduplicate first (flagged first, then damage per token removed)",
            ["rank", "E bucket", "in region", "tokens removed", "damage (nats)", "damage per 1M tokens removed"],
            [
                [
                    str(r["rank"]),
                    _bucket(r),
                    _fmt(r["in_region"]),
                    f"{r['removable_tokens']:,}",
                    _fmt(r["damage"], "+.4f"),
                    _fmt(r["damage_per_million_removed"], ".3g"),
                ]
                for r in p["ranked"]
            ],
        )
    )
    return tables


def _tables(audit: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = [
        (
            "Repetition profile",
            ["E bucket", "mean E", "share f", "tokens", "unique tokens", "removable tokens"],
            [
                [
                    _bucket(r),
                    _fmt(r["epochs"], ".1f"),
                    f"{r['fraction']:.4%}",
                    f"{r['tokens']:,}",
                    f"{r['unique_tokens']:,}",
                    f"{r['removable_tokens']:,}",
                ]
                for r in audit["profile"]
            ],
        )
    ]
    tables += _placement_tables(audit.get("placement"))
    ex = audit["examples"]
    tables.append(
        (
            "Most repeated documents",
            ["exact copies", "with near-duplicates", "text"],
            [[str(d["exact_copies"]), str(d["cluster_copies"]), d["preview"]] for d in ex["documents"]],
        )
    )
    tables.append(
        (
            f"Most repeated spans (>= {audit['spans']['min_span']} tokens)",
            ["occurrences", "most repeated window", "tokens", "text"],
            [[str(d["occurrences"]), str(d["max_window_count"]), str(d["tokens"]), d["preview"]] for d in ex["spans"]],
        )
    )
    if audit.get("deduplicated"):
        d = audit["deduplicated"]
        tables.append(
            (
                "Deduplicated corpus",
                ["url", "documents in", "kept", "dropped", "spans cut", "bytes out"],
                [
                    [
                        d["url"],
                        f"{d['documents_in']:,}",
                        f"{d['documents_out']:,}",
                        f"{d['documents_dropped']:,}",
                        f"{d['spans_cut']:,}",
                        f"{d['bytes_out']:,}",
                    ]
                ],
            )
        )
    return tables


def _bucket(b: dict) -> str:
    return str(b["e_low"]) if b["e_high"] - b["e_low"] == 1 else f"{b['e_low']}-{b['e_high'] - 1}"


def _html(audit: dict, figures: dict, lines: list[str], title: str) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        '<h2 id="findings">Findings</h2><ul>',
    ]
    parts += [f"<li>{e(line.strip())}</li>" for line in lines]
    parts.append("</ul>")
    parts += html_figures_and_tables(FIGURES, figures, _tables(audit))
    parts.append(f"<p>All numbers: <code>audit.json</code>. Made by {e(audit['created_by'])}.</p></body></html>")
    return "\n".join(parts) + "\n"


def _markdown(audit: dict, figures: dict, lines: list[str], title: str) -> str:
    out = [f"# {title}", "", "## Findings", ""] + [f"- {line.strip()}" for line in lines] + [""]
    out += markdown_figures_and_tables(FIGURES, figures, _tables(audit))
    out.append("All numbers: `audit.json`.")
    return "\n".join(out) + "\n"


def write_audit_report(audit: dict, out_url: str) -> dict:
    """audit.json, report.md, fig-*.png and index.html (last) under out_url; returns {name: url}."""
    from repeatlab.audit import headline

    figures = render_figures(audit)
    lines = headline(audit)
    title = f"repeatlab audit of {audit['corpus']['url']}"
    files = {f"fig-{fid}.png": png for fid, (png, _) in figures.items() if png}
    files["report.md"] = _markdown(audit, figures, lines, title).encode()
    paths = {}
    storage.write_json(storage.join(out_url, "audit.json"), audit)
    paths["audit.json"] = storage.join(out_url, "audit.json")
    for name, data in files.items():
        storage.write_bytes(storage.join(out_url, name), data)
        paths[name] = storage.join(out_url, name)
    for fid, (png, _) in figures.items():  # a figure skipped now must not leave an old PNG behind
        if not png:
            storage.remove(storage.join(out_url, f"fig-{fid}.png"))
    storage.write_bytes(storage.join(out_url, "index.html"), _html(audit, figures, lines, title).encode())
    paths["index.html"] = storage.join(out_url, "index.html")
    return paths
