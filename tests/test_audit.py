"""`repeatlab audit`: known answers on planted corpora, the damage-map placement, the deduplicated corpus, bad input."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from repeatlab import audit, danger
from repeatlab.audit_hashing import shingle_hashes, window_hashes
from repeatlab.audit_scan import ScanSettings, _sliding_max, scan, suffix_array_counts
from repeatlab.audit_synthetic import _doc, jaccard, make_planted_corpus, near_duplicate
from repeatlab.cli import main
from repeatlab.errors import AnalysisError, ConfigError, CorpusError

ROOT = Path(__file__).resolve().parents[1]
PAPER_SMALL = ROOT / "docs/results/paper-small/studies/paper-small/analysis.json"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("planted") / "planted.jsonl")
    key = make_planted_corpus(
        path, unique_docs=300, exact_copies=(5, 20), near_similarities=(0.9,), near_pairs_each=10, span_repeats=(3, 12)
    )
    return path, key


@pytest.fixture(scope="module")
def planted_scan(planted):
    return scan(planted[0], ScanSettings())


# ----------------------------------------------------------------------------------------------------------------------
# Counting primitives against brute force


def _brute_window_counts(tokens: np.ndarray, k: int) -> np.ndarray:
    windows = [tokens[p : p + k].tobytes() for p in range(tokens.size - k + 1)]
    seen: dict[bytes, int] = {}
    for w in windows:
        seen[w] = seen.get(w, 0) + 1
    return np.array([seen[w] for w in windows])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_suffix_array_counts_match_a_plain_count(seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(1, 4, size=300, dtype=np.uint8)  # small alphabet: many overlapping repeats
    tokens = np.concatenate([base, base[50:120], rng.integers(1, 4, size=100, dtype=np.uint8), base[60:90]])
    for k in (1, 5, 12, 40):
        assert suffix_array_counts(tokens, k).tolist() == _brute_window_counts(tokens, k).tolist()


def test_window_hashes_do_not_depend_on_chunking_and_match_equal_windows():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=2000, dtype=np.uint8)
    tokens[1000:1100] = tokens[0:100]
    whole, chunked = window_hashes(tokens, 50), window_hashes(tokens, 50, chunk=77)
    assert whole.tolist() == chunked.tolist()
    assert whole[0] == whole[1000] and whole[50] == whole[1050] and whole[0] != whole[1]
    assert len(set(whole.tolist())) == whole.size - 51  # only the 51 planted windows repeat


def test_shingles_ignore_whitespace_layout_and_stay_inside_each_text():
    h, off = shingle_hashes(["a b c d e f", "x", "", "a  b\tc d\ne f"], 5)
    assert off.tolist() == [0, 2, 3, 3, 5]
    assert h[0:2].tolist() == h[3:5].tolist()


def test_sliding_max_covers_every_window_over_each_token():
    values = np.array([1, 1, 4, 1, 1, 1, 2, 1], dtype=np.int64)
    width = 3
    out = _sliding_max(values, width, values.size + width - 1)
    want = [
        max(values[max(0, i - width + 1) : i + 1]) if i < values.size else max(values[i - width + 1 :])
        for i in range(values.size + width - 1)
    ]
    assert out.tolist() == want


# ----------------------------------------------------------------------------------------------------------------------
# Known answers on the planted corpus


def test_exact_duplicates_and_spans_have_exact_counts(planted, planted_scan):
    _, key = planted
    hist = planted_scan.histogram
    for e in key["exact"]:  # every copy of a duplicated document, EOT included, has multiplicity = copies
        assert hist[e["copies"]] == e["copies"] * e["tokens"]
    for s in key["spans"]:  # the span and the space on each side, in every copy
        assert hist[s["repeats"]] == s["repeats"] * s["tokens"]
    assert planted_scan.exact["duplicate_documents"] == sum(e["copies"] - 1 for e in key["exact"])
    assert sum(hist.values()) == planted_scan.total_tokens
    top = {(s["max_window_count"], s["occurrences"]) for s in planted_scan.examples["spans"]}
    assert all((s["repeats"], s["repeats"]) in top for s in key["spans"])


def test_sharded_counts_equal_the_single_suffix_array(planted, planted_scan):
    sharded = scan(planted[0], ScanSettings(shard_tokens=20_000))
    assert sharded.shards > 10 and planted_scan.shards == 1
    assert sharded.histogram == planted_scan.histogram
    for name in ("doc", "start", "end", "count", "key"):
        assert sharded.segments[name].tolist() == planted_scan.segments[name].tolist()


def _detected(path: str, s, pairs: list[tuple[str, str]]) -> list[bool]:
    texts = [json.loads(line)["text"] for line in open(path)]
    index = {t: i for i, t in enumerate(texts)}
    return [bool(s.doc_cluster[index[a]] == s.doc_cluster[index[b]]) for a, b in pairs]


def test_near_duplicates_recall_above_threshold_and_no_false_positives_below_half(tmp_path):
    rng = random.Random(7)
    lines, high, low = [], [], []
    for target, bucket in ((0.95, high), (0.87, high), (0.5, low), (0.3, low)):
        for _ in range(25):
            a = _doc(rng, 150)
            b = near_duplicate(rng, a, target)
            bucket.append((" ".join(a), " ".join(b), jaccard(a, b)))
            lines += [" ".join(a), " ".join(b)]
    path = tmp_path / "near.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    assert min(j for *_, j in high) > 0.8 and max(j for *_, j in low) <= 0.5
    s = scan(str(path), ScanSettings())
    found_high = _detected(str(path), s, [(a, b) for a, b, _ in high])
    found_low = _detected(str(path), s, [(a, b) for a, b, _ in low])
    assert sum(found_high) / len(found_high) >= 0.9
    assert not any(found_low)


# ----------------------------------------------------------------------------------------------------------------------
# Profile and damage map


def test_profile_buckets_are_log2_spaced_token_shares():
    rows = audit.profile({1: 600, 2: 100, 3: 100, 500: 200}, 1000)
    assert [(r["e_low"], r["e_high"]) for r in rows] == [(1, 2), (2, 4), (256, 512)]
    assert [r["fraction"] for r in rows] == [0.6, 0.2, 0.2]
    assert rows[1]["epochs"] == pytest.approx(2.5)
    assert rows[1]["removable_tokens"] == round(100 * 0.5 + 100 * (2 / 3))


def test_paper_region_flags_buckets_inside_it_and_says_extrapolated():
    rows = audit.profile({1: 800, 500: 100, 3: 100}, 1000)
    p = audit.place(rows, 1e8, None)
    by_e = {b["e_low"]: b for b in p["buckets"]}
    # paper at N = 1e8: E from 4.2e6 N^-0.56 = 127 to 5.1e7 N^-0.5 = 5100
    assert by_e[256]["in_region"] is True and by_e[2]["in_region"] is False
    assert p["flagged"] == [[256, 512]] and p["ranked"][0]["e_low"] == 256
    assert p["extrapolated"] is True and p["source"] == "paper"
    assert by_e[256]["answer"] == danger.assess(1e8, 0.1, 500, None)["answer"]


def test_study_placement_uses_the_study_damage_and_ranks_by_damage_per_token():
    analysis = json.loads(PAPER_SMALL.read_text())
    rows = audit.profile({1: 700, 16: 100, 512: 100, 2048: 100}, 1000)
    p = audit.place(rows, 1e5, analysis)
    assert p["source"] == "study" and p["region"]["fits"]["left"]["alpha"] < 0
    for b in p["buckets"]:
        want = danger.predicted_damage(analysis, b["study_fraction"], 1e5, b["epochs"])
        assert b["damage"] == pytest.approx(want)
    per = [r["damage_per_million_removed"] for r in p["ranked"] if r["in_region"] is not True]
    assert per == sorted(per, reverse=True)


def test_predicted_damage_interpolates_the_study_points():
    analysis = json.loads(PAPER_SMALL.read_text())
    pts = [
        p
        for p in analysis["points"]
        if p["kind"] == "repeated" and p["fraction"] == 0.1 and p["n_params"] == 100096.0 and p["epochs"] == 512.0
    ]
    assert danger.predicted_damage(analysis, 0.1, 100096.0, 512.0) == pytest.approx(
        pts[0]["metrics"]["test_loss"]["damage"]
    )
    assert danger.predicted_damage({"points": []}, 0.1, 1e5, 10) is None


# ----------------------------------------------------------------------------------------------------------------------
# Deduplicated corpus


def test_write_deduplicated_removes_every_repeat_and_prepare_reads_it(planted, tmp_path):
    path, key = planted
    result, s = audit.run_audit(path, ScanSettings())
    out = str(tmp_path / "clean.jsonl.gz")
    counts = audit.write_deduplicated(result, s, out, remove="all")
    assert counts["documents_dropped"] == sum(e["copies"] - 1 for e in key["exact"]) + 10  # 10 near pairs
    assert counts["spans_cut"] >= sum(s["repeats"] - 1 for s in key["spans"])
    again = scan(out, ScanSettings())
    assert set(again.histogram) == {1}, again.histogram
    from repeatlab import corpus

    docs = corpus.parse_documents(Path(out).read_bytes(), out, corpus.detect_format(out), corpus.CorpusConfig())
    assert len(docs) == counts["documents_out"]
    for s_ in key["spans"]:  # one copy of each planted span is kept
        assert sum(s_["text"] in d for d in docs) == 1


def test_write_deduplicated_flagged_removes_only_the_flagged_buckets(planted, tmp_path):
    path, key = planted
    result, s = audit.run_audit(path, ScanSettings(), n_params=1e8)  # paper region at 1e8: E 139..5100
    assert result["placement"]["flagged"] == []
    counts = audit.write_deduplicated(result, s, str(tmp_path / "same.jsonl"), remove="flagged")
    assert counts["documents_dropped"] == 0 and counts["spans_cut"] == 0

    heavy = str(tmp_path / "heavy.jsonl")
    make_planted_corpus(heavy, unique_docs=100, exact_copies=(5, 200), near_similarities=(), span_repeats=(3,))
    result, s = audit.run_audit(heavy, ScanSettings(), n_params=1e8)
    assert result["placement"]["flagged"] == [[128, 256]]
    assert any("128-255:" in line and "is IN the poor-performance region" in line for line in audit.headline(result))
    counts = audit.write_deduplicated(result, s, str(tmp_path / "light.jsonl"), remove="flagged")
    assert counts["documents_dropped"] == 199 and counts["spans_cut"] == 0
    left = scan(str(tmp_path / "light.jsonl"), ScanSettings()).histogram
    assert 200 not in left and 5 in left and 3 in left  # only the flagged repetition went


def test_failed_deduplicated_write_leaves_nothing_at_the_url(planted, tmp_path, monkeypatch):
    path, _ = planted
    result, s = audit.run_audit(path, ScanSettings())
    out = tmp_path / "clean.jsonl"

    def boom(*a, **k):
        raise CorpusError("simulated failure while writing")

    monkeypatch.setattr(audit, "_cut_text", boom)
    with pytest.raises(CorpusError):
        audit.write_deduplicated(result, s, str(out), remove="all")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="must end in .jsonl"):
        audit.write_deduplicated(result, s, str(tmp_path / "clean.txt"), remove="all")
    with pytest.raises(ConfigError, match="needs --params"):
        audit.write_deduplicated(result, s, str(out), remove="flagged")


# ----------------------------------------------------------------------------------------------------------------------
# CLI, report and bad input


def test_cli_prints_profile_and_danger_reading_and_writes_the_report(planted, tmp_path, capsys):
    path, _ = planted
    out = tmp_path / "report"
    rc = main(["audit", "--corpus", path, "--params", "1e5", "--study", str(PAPER_SMALL), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "Repetition profile" in text and "Danger reading for N = 1e+05 (study paper-small" in text
    assert "E            20" in text or "16-31" in text
    data = json.loads((out / "audit.json").read_text())
    assert data["placement"]["source"] == "study" and data["profile"][0]["e_low"] == 1
    html = (out / "index.html").read_text()
    assert 'id="fig-profile"' in html and 'id="fig-damage_map"' in html
    report_md = (out / "report.md").read_text()
    assert report_md.startswith("# repeatlab audit")
    # paper-small's f = 0.1 right edge lies beyond its E grid: a bound, in the table and in each bucket's answer
    assert "| at least 2048 |" in report_md and "to at least 2048 at this N" in text


def test_cli_reads_gzip_and_writes_deduplicated(planted, tmp_path, capsys):
    path, _ = planted
    gz = tmp_path / "planted.jsonl.gz"
    gz.write_bytes(gzip.compress(Path(path).read_bytes()))
    clean = tmp_path / "clean.jsonl"
    rc = main(
        [
            "audit",
            "--corpus",
            str(gz),
            "--out",
            str(tmp_path / "r"),
            "--write-deduplicated",
            str(clean),
            "--remove",
            "all",
        ]
    )
    assert rc == 0 and clean.exists()
    assert "duplicates dropped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--params", "abc"], "--params: 'abc' is not a number"),
        (["--params", "-5"], "--params"),
        (["--min-span", "1"], "--min-span: 1 is not allowed"),
        (["--threshold", "1.5"], "--threshold"),
        (["--shard-tokens", str(1 << 30), "--max-memory", str(1 << 30)], "lower --shard-tokens"),
        (["--study", "/nonexistent/analysis.json", "--params", "1e6"], "no analysis.json"),
        (["--write-deduplicated", "x.jsonl"], "--remove flagged needs --params"),
    ],
)
def test_bad_options_are_one_line_errors(planted, tmp_path, capsys, args, message):
    rc = main(["audit", "--corpus", planted[0], "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_empty_and_missing_corpora_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": "   "}) + "\n")
    for corpus_url, message in ((str(empty), "no non-empty documents"), (str(tmp_path / "nope.jsonl"), "not found")):
        rc = main(["audit", "--corpus", corpus_url, "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_strict_range_refuses_an_extrapolated_reading(planted):
    with pytest.raises(AnalysisError, match="extrapolated"):
        audit.run_audit(planted[0], ScanSettings(), n_params=1e9, study=str(PAPER_SMALL), strict_range=True)


def test_too_many_documents_for_the_memory_budget_names_the_option(planted):
    with pytest.raises(CorpusError, match="raise --max-memory"):
        scan(planted[0], ScanSettings(max_memory=64 * 1024, shard_tokens=1024))


@pytest.mark.network
def test_default_corpus_audit_prints_profile_and_danger(tmp_path, capsys):
    rc = main(["audit", "--corpus", "default", "--params", "1e6", "--out", str(tmp_path / "r")])
    text = capsys.readouterr().out
    assert rc == 0 and "Repetition profile" in text and "Danger reading for N = 1e+06" in text


def test_kfp_component_runs_locally_and_logs_metrics(planted, tmp_path):
    from kfp import local

    from repeatlab.components.audit import audit_corpus

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    out = str(tmp_path / "audit")
    task = audit_corpus(
        corpus_url=planted[0],
        out_url=out,
        params="1e8",
        write_deduplicated=str(tmp_path / "clean.jsonl"),
        remove="all",
        options_json=json.dumps({"min_span": 50}),
    )
    assert task.outputs["Output"] == str(tmp_path / "clean.jsonl")
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["deduplicated"]["documents_dropped"] > 0
    metrics = task.outputs["metrics"]
    assert metrics.metadata["near_duplicate_clusters"] == 10
    assert metrics.metadata["flagged_token_share"] == 0


def test_parquet_and_corrupt_inputs(planted, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [json.loads(line)["text"] for line in open(planted[0])]
    pq.write_table(pa.table({"body": texts}), tmp_path / "c.parquet")
    result, s = audit.run_audit(
        str(tmp_path / "c.parquet"), ScanSettings(), corpus_cfg=audit.CorpusConfig(text_field="body")
    )
    assert s.histogram == scan(planted[0], ScanSettings()).histogram
    (tmp_path / "bad.jsonl.gz").write_bytes(b"\x1f\x8b" + b"not gzip at all")
    rc = main(["audit", "--corpus", str(tmp_path / "bad.jsonl.gz"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "corrupt compressed file" in err and err.count("\n") == 1


@pytest.mark.storage
def test_audit_reads_and_writes_object_storage(planted, s3_env, tmp_path):
    from repeatlab import storage

    src = storage.join(s3_env, "in", "planted.jsonl")
    storage.write_bytes(src, Path(planted[0]).read_bytes())
    out = storage.join(s3_env, "clean.jsonl.zst")
    rc = main(
        [
            "audit",
            "--corpus",
            src,
            "--out",
            storage.join(s3_env, "audit"),
            "--write-deduplicated",
            out,
            "--remove",
            "all",
        ]
    )
    assert rc == 0 and storage.exists(storage.join(s3_env, "audit", "index.html"))
    again = scan(out, ScanSettings())
    assert set(again.histogram) == {1}


def test_large_jsonl_files_are_parsed_in_chunks_with_the_same_result(planted, planted_scan, tmp_path, monkeypatch):
    from repeatlab import audit_scan

    monkeypatch.setattr(audit_scan, "CHUNK_BYTES", 10_000)
    chunked = scan(planted[0], ScanSettings())
    assert chunked.histogram == planted_scan.histogram
    assert chunked.doc_cluster.tolist() == planted_scan.doc_cluster.tolist()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(Path(planted[0]).read_text()[:30_000].rsplit("\n", 1)[0] + "\n{not json\n")
    with pytest.raises(CorpusError, match=r"bad.jsonl \(bytes \d+-\d+\): line \d+: not valid JSON"):
        scan(str(bad), ScanSettings())
