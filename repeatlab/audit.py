"""`repeatlab audit`: how much of a corpus is repeated how often, and is that dangerous for a model of N parameters?

The measurement (repeatlab.audit_scan) gives every token's multiplicity E: how many times its content occurs in the
corpus, from exact duplicate documents, near-duplicate documents (MinHash LSH) and repeated spans of at least
`min_span` tokens (suffix array). The **repetition profile** groups tokens into log2-spaced E buckets: bucket
[2^i, 2^(i+1)) holds the share f of all tokens whose content occurs that many times, and its token-weighted mean E.

Each repeated bucket is then read on the damage map exactly as `repeatlab danger` reads one (N, f, E): against a
fitted study (its analysis.json) or, without one, the paper's published region (flagged as extrapolated). A bucket is
read as if it were the only repeated subset, which is how the paper's experiments repeat data; several buckets in
one corpus are a combination no study measured, and the report says so. Buckets inside the poor-performance region
are flagged; the deduplication list ranks the repeated buckets by predicted damage per token that deduplication
(keeping one copy) would remove, flagged buckets first.

Outputs: audit.json, and a report (index.html, report.md, fig-*.png) in the style of the study report.
`--write-deduplicated URL` writes the corpus without the flagged repetition (one copy of each kept) as JSONL that
`repeatlab prepare` reads, atomically.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging
import math
from typing import Any

import numpy as np

from repeatlab import __version__, storage
from repeatlab.audit_scan import Scan, ScanSettings, iter_documents, resolve_corpus, scan
from repeatlab.config import CorpusConfig, stable_hash
from repeatlab.errors import AnalysisError, ConfigError, CorpusError

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------------
# Profile


def profile(histogram: dict[int, int], total_tokens: int) -> list[dict]:
    """Log2-spaced E buckets of the multiplicity histogram: share f of tokens, mean E, unique and removable tokens."""
    buckets: dict[int, dict] = {}
    for e, tokens in sorted(histogram.items()):
        i = int(math.floor(math.log2(e)))
        b = buckets.setdefault(
            i,
            {
                "e_low": 2**i,
                "e_high": 2 ** (i + 1),
                "tokens": 0,
                "weighted_e": 0.0,
                "unique_tokens": 0.0,
                "removable_tokens": 0.0,
            },
        )
        b["tokens"] += tokens
        b["weighted_e"] += tokens * e
        b["unique_tokens"] += tokens / e
        b["removable_tokens"] += tokens * (1 - 1 / e)
    rows = []
    for _, b in sorted(buckets.items()):
        rows.append(
            {
                "e_low": b["e_low"],
                "e_high": b["e_high"],
                "tokens": int(b["tokens"]),
                "fraction": b["tokens"] / total_tokens,
                "epochs": b["weighted_e"] / b["tokens"],
                "unique_tokens": int(round(b["unique_tokens"])),
                "removable_tokens": int(round(b["removable_tokens"])),
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# The damage map


def load_study(spec: str | None) -> dict | None:
    """None or 'paper': the paper's region; a study YAML: its analysis.json; else the URL of an analysis.json."""
    from repeatlab import danger

    if spec is None or spec == "paper":
        return None
    if spec.endswith((".yaml", ".yml")):
        return danger.load_analysis(None, spec)
    return danger.load_analysis(spec, None)


def place(rows: list[dict], n_params: float, analysis: dict | None, passes: float = 1.0) -> dict:
    """Read every repeated bucket on the damage map; flag the ones in the poor-performance region; rank them."""
    from repeatlab import danger

    readings = []
    for row in rows:
        if row["e_low"] < 2:
            continue
        epochs = max(row["epochs"] * passes, 1.0)  # fewer than one expected sighting: read as seen once
        r = danger.assess(n_params, min(row["fraction"], 0.999999), epochs, analysis)
        damage = r["damage"]  # the study's predicted damage; None from the paper's region
        per_removed = (
            max(damage, 0.0) / row["removable_tokens"] * 1e6 if damage is not None and row["removable_tokens"] else None
        )
        readings.append(
            {
                "e_low": row["e_low"],
                "e_high": row["e_high"],
                "epochs": epochs,
                "fraction": row["fraction"],
                "tokens": row["tokens"],
                "removable_tokens": row["removable_tokens"],
                "in_region": r["in_region"],
                "left_edge": r["left_edge"],
                "right_edge": r["right_edge"],
                "left_edge_bound": r["left_edge_bound"],
                "right_edge_bound": r["right_edge_bound"],
                "multiplier": r["multiplier"],
                "n_eff": r["n_eff"],
                "damage": damage,
                "damage_per_million_removed": per_removed,
                "extrapolated": r["extrapolated"],
                "study_fraction": r["study_fraction"],
                "fraction_note": r["fraction_note"],
                "answer": r["answer"],
                "notes": r["notes"],
            }
        )
    ranked = sorted(
        readings, key=lambda b: (b["in_region"] is not True, -(b["damage_per_million_removed"] or 0.0), -b["fraction"])
    )
    flagged = [b for b in readings if b["in_region"]]
    source = "paper" if analysis is None else "study"
    extrapolated = any(b["extrapolated"] for b in readings) or analysis is None
    return {
        "n_params": n_params,
        "passes": passes,
        "source": source,
        "region": _region_of(analysis, readings),
        "study": None if analysis is None else analysis.get("study"),
        "buckets": readings,
        "ranked": [
            {
                "rank": i + 1,
                "e_low": b["e_low"],
                "e_high": b["e_high"],
                "in_region": b["in_region"],
                "removable_tokens": b["removable_tokens"],
                "damage": b["damage"],
                "damage_per_million_removed": b["damage_per_million_removed"],
            }
            for i, b in enumerate(ranked)
        ],
        "flagged": [[b["e_low"], b["e_high"]] for b in flagged],
        "extrapolated": extrapolated,
        "notes": _placement_notes(readings, analysis),
    }


def _region_of(analysis: dict | None, readings: list[dict]) -> dict | None:
    """The study region the readings used (fitted edges and per-size edges), for the damage-map figure."""
    if analysis is None or not readings:
        return None
    fraction = readings[0]["study_fraction"]
    reg = next((r for r in analysis.get("regions", []) if r.get("fraction") == fraction), None)
    if reg is None:
        return None
    fits = {side: {"k": fit["k"], "alpha": fit["alpha"]} for side, fit in reg["fits"].items() if fit.get("ok")}
    sizes = [{"n_params": m["n_params"], "left": m.get("left"), "right": m.get("right")} for m in reg["per_model"]]
    return {"fraction": fraction, "fits": fits, "per_model": sizes}


def _placement_notes(readings: list[dict], analysis: dict | None) -> list[str]:
    notes = [
        "Each bucket is read as if it were the only repeated subset (the paper's design); a corpus with several "
        "repeated buckets is a mixture no study measured."
    ]
    if analysis is None:
        notes.append(
            "No study given: the paper's published region (Hernandez et al. 2022, T = 100B tokens, f = 10%, "
            "GPT-2 BPE); its constants do not transfer to other budgets and tokenizers: EXTRAPOLATED."
        )
    used = sorted({b["study_fraction"] for b in readings if b["study_fraction"] is not None})
    if used:
        notes.append(
            f"Each bucket's share f is read at the {'paper' if analysis is None else 'study'}'s nearest "
            f"measured fraction ({', '.join(f'f = {f:g}' for f in used)})."
        )
    seen = set()
    for b in readings:
        for line in ([b["fraction_note"]] if b["fraction_note"] else []) + b["notes"]:
            if line.startswith(("E = ", "No study", "No effective", "the study has no f", "the paper's edges")):
                continue  # per-bucket E and f notes and the paper boilerplate are summarized here
            if line not in seen:
                seen.add(line)
                notes.append(line)
    return notes


def headline(audit: dict) -> list[str]:
    """The lines `repeatlab audit` prints: corpus, profile, danger reading, what to deduplicate first."""
    c, lines = audit["corpus"], []
    lines.append(
        f"Corpus {c['url']}: {c['documents']:,} documents, {c['tokens']:,} tokens ({c['tokenizer']} "
        f"tokens); {audit['exact']['duplicate_documents']:,} exact duplicate documents, "
        f"{audit['near']['clusters']:,} near-duplicate clusters, "
        f"{audit['spans']['distinct_repeated_spans']:,} distinct repeated spans of >= "
        f"{audit['spans']['min_span']} tokens."
    )
    lines.append("Repetition profile (share f of tokens whose content occurs E times):")
    for row in audit["profile"]:
        lines.append(
            f"  E {_range(row):>13}  f = {row['fraction']:8.4%}  mean E = {row['epochs']:9.1f}  "
            f"tokens {row['tokens']:>12,}"
        )
    p = audit.get("placement")
    if p is None:
        lines.append(
            "Danger reading: give --params N (non-embedding parameters) to place the profile on the damage map."
        )
        return lines
    src = "the paper's region" if p["source"] == "paper" else f"study {p['study']}"
    flagged = [b for b in p["buckets"] if b["in_region"]]
    share = sum(b["fraction"] for b in flagged)
    lines.append(
        f"Danger reading for N = {p['n_params']:.3g} ({src}{', EXTRAPOLATED' if p['extrapolated'] else ''}): "
        f"{len(flagged)} of {len(p['buckets'])} repeated buckets IN the poor-performance region, holding "
        f"{share:.2%} of the tokens."
    )
    for b in p["buckets"]:
        lines.append(f"  E {_range(b):>13}: {b['answer']}")
    if p["ranked"]:
        first = p["ranked"][0]
        lines.append(
            f"Deduplicate first: E {_range(first)} ({first['removable_tokens']:,} tokens removed"
            + (f", predicted damage {first['damage']:+.4f} nats" if first["damage"] is not None else "")
            + ("; in the region" if first["in_region"] else "; not in the region")
            + ")."
        )
    lines += [f"  note: {n}" for n in p["notes"]]
    return lines


def _range(b: dict) -> str:
    return f"{b['e_low']}" if b["e_high"] - b["e_low"] == 1 else f"{b['e_low']}-{b['e_high'] - 1}"


# ----------------------------------------------------------------------------------------------------------------------
# The audit


def run_audit(
    url: str,
    settings: ScanSettings,
    n_params: float | None = None,
    study: str | None = None,
    passes: float = 1.0,
    corpus_cfg: CorpusConfig | None = None,
    tokenizer: str = "byte",
    strict_range: bool = False,
    scan_fn=None,
) -> tuple[dict, Scan]:
    """Measure the corpus and place its profile on the damage map; returns (audit.json content, the scan).

    scan_fn: what measures the corpus, called like `scan` (the fan-out's reduce step passes one that merges the
    map steps' partial results)."""
    from repeatlab import danger

    if n_params is not None:
        danger._check_inputs(n_params, 0.1, max(passes, 1.0))  # one-line errors for a bad --params
    if not (isinstance(passes, (int, float)) and math.isfinite(passes) and passes > 0):
        raise ConfigError(f"--passes: {passes!r} is not allowed: the number of passes over the corpus, > 0")
    analysis = load_study(study)  # before the long scan: a bad --study fails fast
    s = (scan_fn or scan)(url, settings, corpus_cfg, tokenizer)
    rows = profile(s.histogram, s.total_tokens)
    audit: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created_by": f"repeatlab {__version__}",
        "corpus": {
            "url": url,
            "files": s.files,
            "documents": s.documents,
            "empty_documents": s.empty,
            "tokens": s.total_tokens,
            "tokenizer": s.tokenizer["kind"],
        },
        "settings": dataclasses.asdict(settings),
        "exact": s.exact,
        "near": s.near,
        "spans": s.spans,
        "histogram": {str(k): v for k, v in sorted(s.histogram.items())},
        "profile": rows,
        "examples": s.examples,
        "timings": s.timings,
        "placement": None,
    }
    audit["audit_id"] = stable_hash(
        {"files": [[f["bytes"], f["sha256"]] for f in s.files], "settings": audit["settings"], "tokenizer": s.tokenizer}
    )
    if n_params is not None:
        audit["placement"] = place(rows, float(n_params), analysis, passes)
        if strict_range and audit["placement"]["extrapolated"]:
            raise AnalysisError(
                f"--params {n_params}: the reading is extrapolated beyond the "
                f"{'paper' if analysis is None else 'study'}'s fitted range (sizes or E); drop "
                "--strict-range to accept an extrapolated reading, or give a --study that covers it"
            )
    return audit, s


# ----------------------------------------------------------------------------------------------------------------------
# Deduplicated corpus


def removal_plan(s: Scan, flagged: list[list[int]] | None) -> dict:
    """Which documents to drop and which span occurrences to cut: every copy after the first of the flagged content.

    flagged: E ranges [low, high) to remove; None removes all repetition (E >= 2).
    """

    def hit(e: np.ndarray) -> np.ndarray:
        if flagged is None:
            return e >= 2
        out = np.zeros(e.shape, dtype=bool)
        for lo, hi in flagged:
            out |= (e >= lo) & (e < hi)
        return out

    docs = np.arange(len(s.doc_mult))
    drop = hit(s.doc_mult) & (s.doc_cluster != docs)  # not the first document of its cluster
    seg = s.segments
    cut = np.zeros(seg["doc"].size, dtype=bool)
    kept: set[int] = set()
    eligible = hit(seg["count"]) & ~drop[seg["doc"]] if seg["doc"].size else cut
    for j in np.flatnonzero(eligible).tolist():  # in corpus order: the first kept occurrence stays
        key = int(seg["key"][j])
        if key in kept:
            cut[j] = True
        else:
            kept.add(key)
    cuts: dict[int, list[tuple[int, int]]] = {}
    for j in np.flatnonzero(cut).tolist():
        cuts.setdefault(int(seg["doc"][j]), []).append((int(seg["start"][j]), int(seg["end"][j])))
    return {"drop": drop, "cuts": cuts}


def _cut_text(text: str, ranges: list[tuple[int, int]], tok) -> str:
    """The text without the token ranges; byte tokens are cut at UTF-8 character boundaries."""
    if tok.kind == "byte":
        data = text.encode("utf-8", errors="surrogatepass").replace(b"\x00", b"")
        keep = np.ones(len(data), dtype=bool)
        for a, b in ranges:
            while a < len(data) and (data[a] & 0xC0) == 0x80:  # never start a cut inside a character
                a += 1
            while b < len(data) and (data[b] & 0xC0) == 0x80:
                b += 1
            keep[a:b] = False
        return bytes(np.frombuffer(data, dtype=np.uint8)[keep]).decode("utf-8", errors="replace")
    ids = tok.encode_batch([text])[0]
    keep = np.ones(ids.size, dtype=bool)
    for a, b in ranges:
        keep[a:b] = False
    return tok.decode(ids[keep])


def write_deduplicated(
    audit: dict,
    s: Scan,
    out_url: str,
    remove: str = "flagged",
    corpus_cfg: CorpusConfig | None = None,
    tokenizer: str = "byte",
) -> dict:
    """Write the corpus without the removed repetition as JSONL ({"text": ...}) at out_url, atomically."""
    from repeatlab.audit_scan import load_tokenizer

    name = out_url.rstrip("/").rsplit("/", 1)[-1].lower()
    if not name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
        raise ConfigError(
            f"--write-deduplicated: {out_url!r} is not allowed: the name must end in .jsonl, "
            ".jsonl.gz or .jsonl.zst (a corpus `repeatlab prepare` reads)"
        )
    if remove == "flagged":
        if audit.get("placement") is None:
            raise ConfigError(
                "--remove flagged needs --params (which buckets are flagged depends on N); give "
                "--params or use --remove all"
            )
        flagged = audit["placement"]["flagged"]
    elif remove == "all":
        flagged = None
    else:
        raise ConfigError(f"--remove: {remove!r} is not allowed: 'flagged' or 'all'")
    plan = removal_plan(s, flagged)
    tok = load_tokenizer(tokenizer)
    _, fmt, eff = resolve_corpus(audit["corpus"]["url"], corpus_cfg)
    counts: dict[str, Any] = {
        "documents_in": 0,
        "documents_out": 0,
        "documents_dropped": 0,
        "documents_emptied": 0,
        "spans_cut": 0,
        "bytes_in": 0,
        "bytes_out": 0,
    }
    from repeatlab import corpus

    with storage.atomic_local_file(out_url) as tmp:
        with open(tmp, "wb") as raw:
            sink = _compressed(raw, name)
            d = 0
            for docs in iter_documents(fmt, eff, [dict(f) for f in audit["corpus"]["files"]]):
                for text in docs:
                    if not corpus.normalize(text):
                        continue
                    counts["documents_in"] += 1
                    counts["bytes_in"] += len(text.encode("utf-8", errors="surrogatepass"))
                    if plan["drop"][d]:
                        counts["documents_dropped"] += 1
                    else:
                        if d in plan["cuts"]:
                            counts["spans_cut"] += len(plan["cuts"][d])
                            text = _cut_text(text, plan["cuts"][d], tok)
                        if corpus.normalize(text):
                            sink.write((json.dumps({"text": text}, ensure_ascii=False) + "\n").encode("utf-8"))
                            counts["documents_out"] += 1
                            counts["bytes_out"] += len(text.encode("utf-8", errors="surrogatepass"))
                        else:
                            counts["documents_emptied"] += 1
                    d += 1
            sink.close()
        if d != len(plan["drop"]):
            raise CorpusError(
                f"{audit['corpus']['url']}: {d} documents on the second read, {len(plan['drop'])} on "
                "the first; the corpus changed during the audit; run it again"
            )
        if counts["documents_out"] == 0:
            raise CorpusError(f"{out_url}: deduplication would leave no documents; nothing written")
    counts.update(url=out_url, remove=remove, flagged=flagged)
    return counts


def _compressed(raw, name: str):
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)
    if name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdCompressor().stream_writer(raw, closefd=False)
    return _NoClose(raw)


class _NoClose(io.RawIOBase):
    def __init__(self, raw):
        self.raw = raw

    def write(self, b):
        return self.raw.write(b)

    def close(self):
        self.raw.flush()


# ----------------------------------------------------------------------------------------------------------------------
# CLI


def _number(name: str, value: str, kind=float):
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a number") from None


def settings_from_args(args: Any) -> ScanSettings:
    return ScanSettings(
        min_span=_number("--min-span", args.min_span, int),
        ngram=_number("--ngram", args.ngram, int),
        threshold=_number("--threshold", args.threshold),
        num_perm=_number("--num-perm", args.num_perm, int),
        shard_tokens=_number("--shard-tokens", args.shard_tokens, int),
        max_memory=_number("--max-memory", args.max_memory, int),
    )
