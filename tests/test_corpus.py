"""prepare_corpus: readers, dedup, splits, shards, manifest, reuse, CLI and every bad input (small generated text)."""

import dataclasses
import gzip
import json
import logging
import os
import random

import numpy as np
import pytest

from repeatlab import corpus, storage
from repeatlab.config import CorpusConfig
from repeatlab.corpus import corpus_url, load_manifest, open_split, prepare_corpus
from repeatlab.errors import ConfigError, CorpusError, StorageError
from repeatlab.tokenizer import load_tokenizer

WORDS = [
    "thou",
    "art",
    "the",
    "king",
    "of",
    "denmark",
    "and",
    "god",
    "said",
    "let",
    "there",
    "be",
    "light",
    "wherefore",
    "romeo",
    "héllo",
    "wörld",
]
FRACTIONS = {"test_fraction": 0.2, "probe_fraction": 0.2}  # small corpora still fill every split


def docs_(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"Doc {seed}-{i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))) for i in range(n)]


def write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return str(path)


def cfg_(url, **kw) -> CorpusConfig:
    return CorpusConfig(url=str(url), **{**FRACTIONS, **kw})


def shard_docs(url, split, manifest) -> list[str]:
    tok = load_tokenizer(url, manifest)
    arr = np.asarray(open_split(url, split, manifest))
    assert arr.size == 0 or arr[-1] == 0  # every document ends with EOT
    ends = np.flatnonzero(arr == 0)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tok.decode(arr[s:e]) for s, e in zip(starts, ends)]


def no_manifest_under(root) -> bool:
    return not any("manifest.json" in files for _, _, files in os.walk(root))


# ----------------------------------------------------------------------------------------------------------------------


def test_jsonl_dedup_split_manifest_and_shards(tmp_path):
    texts = docs_(60)
    dupes = [texts[0], "  " + texts[1].replace(" ", "\n  ") + "\n", texts[2]]  # exact and whitespace-only variants
    src = write_jsonl(tmp_path / "in.jsonl", texts + dupes + ["", "   \n\t"])
    root = tmp_path / "root"
    m = prepare_corpus(cfg_(src), str(root))

    assert m["documents_read"] == 65 and m["duplicates_dropped"] == 3 and m["empty_dropped"] == 2
    assert set(m) == {
        "corpus_id",
        "format_version",
        "source",
        "tokenizer",
        "dtype",
        "documents_read",
        "duplicates_dropped",
        "empty_dropped",
        "splits",
        "config",
        "created_by",
        "chunks",
        "chunk_tokens",
        "composition",
        "warnings",
    }
    assert m["format_version"] == 1 and m["created_by"].startswith("repeatlab ")
    assert m["source"]["url"] == src and m["source"]["format"] == "jsonl"
    (f,) = m["source"]["files"]
    assert f["bytes"] == os.path.getsize(src) and f["sha256"] == storage.sha256_of(src)
    assert m["tokenizer"] == {"kind": "byte", "vocab_size": 256, "eot_id": 0, "file": None}
    assert m["dtype"] == "uint16" and m["config"] == dataclasses.asdict(cfg_(src))

    url = corpus_url(str(root), m["corpus_id"])
    assert storage.read_json(storage.join(url, "config.json")) == m["config"]
    assert load_manifest(url) == m
    seen = {}
    for split in ("train", "test", "probe"):
        info = m["splits"][split]
        assert set(info) == {"documents", "tokens", "bytes", "file", "sha256", "largest_document_tokens"}
        assert info["file"] == f"{split}.bin"
        path = os.path.join(storage.local_path(url), info["file"])
        assert os.path.getsize(path) == info["bytes"] == 2 * info["tokens"]
        assert storage.sha256_of(path) == info["sha256"]
        got = shard_docs(url, split, m)
        assert len(got) == info["documents"] > 0
        seen[split] = set(got)
    # disjoint, complete, byte-exact
    assert not (seen["train"] & seen["test"]) and not (seen["train"] & seen["probe"])
    assert not (seen["test"] & seen["probe"])
    assert seen["train"] | seen["test"] | seen["probe"] == set(texts)
    assert sum(m["splits"][s]["documents"] for s in ("train", "test", "probe")) == 60


def test_split_is_deterministic_and_salted(tmp_path):
    texts = docs_(80, seed=3)
    src = write_jsonl(tmp_path / "a.jsonl", texts)
    m1 = prepare_corpus(cfg_(src), str(tmp_path / "r1"))
    # same documents, another order and another file name: same split membership
    src2 = write_jsonl(tmp_path / "b.jsonl", list(reversed(texts)))
    m2 = prepare_corpus(cfg_(src2), str(tmp_path / "r2"))
    for s in ("train", "test", "probe"):
        assert m1["splits"][s]["documents"] == m2["splits"][s]["documents"]
        assert set(shard_docs(corpus_url(str(tmp_path / "r1"), m1["corpus_id"]), s, m1)) == set(
            shard_docs(corpus_url(str(tmp_path / "r2"), m2["corpus_id"]), s, m2)
        )
    # exactly what split_of says
    for t in texts[:10]:
        assert corpus.split_of(corpus.normalize(t), "repeatlab", 0.2, 0.2) in ("train", "test", "probe")
    m3 = prepare_corpus(cfg_(src, split_salt="other"), str(tmp_path / "r1"))
    assert m3["corpus_id"] != m1["corpus_id"]
    assert m3["splits"]["test"]["sha256"] != m1["splits"]["test"]["sha256"]
    # a fresh prepare of the same input in another root gives the same id and identical shards
    m4 = prepare_corpus(cfg_(src), str(tmp_path / "r4"))
    assert m4["corpus_id"] == m1["corpus_id"] and m4["splits"] == m1["splits"]


def test_second_prepare_reuses_without_rewriting(tmp_path, monkeypatch, caplog):
    src = write_jsonl(tmp_path / "in.jsonl", docs_(40))
    root = str(tmp_path / "root")
    m1 = prepare_corpus(cfg_(src), root)
    folder = storage.local_path(corpus_url(root, m1["corpus_id"]))
    mtimes = {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)}
    calls = []
    monkeypatch.setattr(corpus, "tokens_of", lambda *a, **k: calls.append(1))
    caplog.set_level(logging.INFO, logger="repeatlab")
    m2 = prepare_corpus(cfg_(src), root)
    assert m2 == m1 and not calls
    assert any("reusing" in r.getMessage() for r in caplog.records if r.name == corpus.__name__)
    assert {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)} == mtimes


def test_text_files_glob_folder_and_blank_line_split(tmp_path):
    texts = docs_(30, seed=7)
    d = tmp_path / "texts"
    d.mkdir()
    for i, t in enumerate(texts):
        (d / f"doc{i:03d}.txt").write_text(t + "\n")
    (d / "notes.md.skip").write_text("not matched by the glob")
    m = prepare_corpus(cfg_(str(d / "*.txt")), str(tmp_path / "r"))
    assert m["documents_read"] == 30 and len(m["source"]["files"]) == 30 and m["source"]["format"] == "text"
    assert [f["path"] for f in m["source"]["files"]] == sorted(str(p) for p in d.glob("*.txt"))
    url = corpus_url(str(tmp_path / "r"), m["corpus_id"])
    got = set().union(*(shard_docs(url, s, m) for s in ("train", "test", "probe")))
    assert got == {t + "\n" for t in texts}

    one = tmp_path / "one.txt"
    one.write_text("\n\n".join(texts) + "\n \n\n" + texts[0])  # a whitespace-only separator and a duplicate paragraph
    m2 = prepare_corpus(cfg_(one, split_on_blank_lines=True), str(tmp_path / "r"))
    assert m2["documents_read"] == 31 and m2["duplicates_dropped"] == 1
    with pytest.raises(CorpusError, match="split is empty"):  # the same file as one document: too few
        prepare_corpus(cfg_(one), str(tmp_path / "r"))


def test_gzip_zstd_parquet_give_the_same_shards(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    texts = docs_(50, seed=11)
    plain = write_jsonl(tmp_path / "c.jsonl", texts)
    raw = (tmp_path / "c.jsonl").read_bytes()
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    pq.write_table(pa.table({"body": texts, "n": list(range(50))}), tmp_path / "c.parquet")
    ref = prepare_corpus(cfg_(plain), str(tmp_path / "r"))
    for url, extra in [
        (tmp_path / "c.jsonl.gz", {}),
        (tmp_path / "c.jsonl.zst", {}),
        (tmp_path / "c.parquet", {"text_field": "body"}),
    ]:
        m = prepare_corpus(cfg_(url, **extra), str(tmp_path / "r"))
        assert m["corpus_id"] != ref["corpus_id"]
        assert {s: v["sha256"] for s, v in m["splits"].items()} == {s: v["sha256"] for s, v in ref["splits"].items()}
    # zstd text file, explicit format on an unknown extension
    (tmp_path / "t.txt.zst").write_bytes(zstandard.ZstdCompressor().compress("\n\n".join(texts).encode()))
    m = prepare_corpus(cfg_(tmp_path / "t.txt.zst", split_on_blank_lines=True), str(tmp_path / "r"))
    assert m["documents_read"] == 50 and m["source"]["format"] == "text"
    (tmp_path / "data.dat").write_bytes(raw)
    m = prepare_corpus(cfg_(tmp_path / "data.dat", format="jsonl"), str(tmp_path / "r"))
    assert m["splits"]["train"]["sha256"] == ref["splits"]["train"]["sha256"]


def test_bpe_corpus_ood_and_memory_root(tmp_path, monkeypatch):
    monkeypatch.setenv("REPEATLAB_CACHE", str(tmp_path / "cache"))  # local copies of the memory:// shards
    texts = docs_(60, seed=5)
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    ood = tmp_path / "ood.txt"
    ood.write_text("def f(x):\n    return x + 1\n\nclass A:\n    pass\n")
    root = "memory://rl-test-root"
    m = prepare_corpus(cfg_(src, tokenizer="bpe", vocab_size=512, ood_url=str(ood), split_on_blank_lines=True), root)
    assert m["tokenizer"]["kind"] == "bpe" and m["tokenizer"]["file"] == "tokenizer.json"
    assert m["tokenizer"]["vocab_size"] <= 512 and m["dtype"] == "uint16"
    assert m["splits"]["ood"]["documents"] == 2 and m["source"]["ood_files"][0]["path"] == str(ood)
    url = corpus_url(root, m["corpus_id"])
    assert url.startswith("memory://")
    assert set(storage.listdir(url)) == {
        "manifest.json",
        "config.json",
        "tokenizer.json",
        "train.bin",
        "test.bin",
        "probe.bin",
        "ood.bin",
    }
    got = set().union(*(shard_docs(url, s, m) for s in ("train", "test", "probe")))
    assert got == set(texts)
    assert shard_docs(url, "ood", m) == ["def f(x):\n    return x + 1", "class A:\n    pass\n"]
    arr = open_split(url, "train", m)
    assert arr.dtype == np.uint16 and not arr.flags.writeable
    with pytest.raises(CorpusError, match="no split 'valid'"):
        open_split(url, "valid", m)
    storage.remove(root, recursive=True)


def test_cli_flags_json_and_config(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", docs_(40, seed=2))
    root = str(tmp_path / "root")
    # default fractions (0.05 / 0.02) need more documents: use a config file for the fractions
    study = tmp_path / "study.yaml"
    study.write_text(
        f"name: t\ncorpus:\n  url: {src}\n  test_fraction: 0.2\n  probe_fraction: 0.2\nstorage:\n  root: {root}\n"
    )
    from repeatlab.cli import main

    assert main(["prepare", "--config", str(study)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "40 documents read" in out[-2] and out[-1].startswith("file://") and "/corpora/" in out[-1]
    assert main(["prepare", "--config", str(study), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert out[-1].endswith(m["corpus_id"]) and m["documents_read"] == 40

    many = write_jsonl(tmp_path / "many.jsonl", docs_(200, seed=4), field="body")
    assert main(["prepare", "--url", many, "--text-field", "body", "--root", root, "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["config"]["text_field"] == "body" and m["splits"]["probe"]["documents"] > 0
    assert main(["prepare", "--url", str(tmp_path / "missing-*.jsonl"), "--root", root]) == 2
    assert "no files match the glob" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs: one-line errors naming the file/field, and nothing written


def _fails(tmp_path, cfg, exc, match, root=None):
    root = root or str(tmp_path / "root")
    with pytest.raises(exc, match=match) as info:
        prepare_corpus(cfg, root)
    assert "\n" not in str(info.value)
    assert no_manifest_under(tmp_path)
    return str(info.value)


def test_bad_inputs(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  ", "\n"])
    _fails(tmp_path, cfg_(empty), CorpusError, r"empty.jsonl: no documents left \(3 read, 0 duplicates, 3 empty\)")
    _fails(tmp_path, cfg_(tmp_path / "nothing-*.txt"), CorpusError, "no files match the glob")
    _fails(tmp_path, cfg_(tmp_path / "absent.jsonl"), CorpusError, "absent.jsonl: not found")
    (tmp_path / "emptydir").mkdir()
    _fails(tmp_path, cfg_(tmp_path / "emptydir"), CorpusError, "the folder holds no files")
    (tmp_path / "data.csv").write_text("a,b\n")
    msg = _fails(tmp_path, cfg_(tmp_path / "data.csv"), CorpusError, r"data.csv: cannot tell the format")
    assert ".jsonl" in msg and "corpus.format" in msg
    lines = [json.dumps({"text": t}) for t in docs_(5)]
    lines.insert(3, json.dumps({"content": "x", "meta": 1}))
    (tmp_path / "nofield.jsonl").write_text("\n".join(lines) + "\n")
    msg = _fails(tmp_path, cfg_(tmp_path / "nofield.jsonl"), CorpusError, r"nofield.jsonl: line 4: no field 'text'")
    assert "content, meta" in msg and "corpus.text_field" in msg
    (tmp_path / "broken.jsonl").write_text(lines[0] + "\n{oops\n")
    _fails(tmp_path, cfg_(tmp_path / "broken.jsonl"), CorpusError, r"broken.jsonl: line 2: not valid JSON")
    (tmp_path / "num.jsonl").write_text(json.dumps({"text": 5}) + "\n")
    _fails(tmp_path, cfg_(tmp_path / "num.jsonl"), CorpusError, r"num.jsonl: line 1: field 'text' is a int")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": docs_(5)}), tmp_path / "p.parquet")
    _fails(tmp_path, cfg_(tmp_path / "p.parquet"), CorpusError, r"p.parquet: no column 'text' \(columns: body\)")
    (tmp_path / "fake.parquet").write_bytes(b"not parquet at all")
    _fails(tmp_path, cfg_(tmp_path / "fake.parquet"), CorpusError, "fake.parquet: not a readable Parquet file")
    (tmp_path / "bad.txt.gz").write_bytes(b"\x1f\x8b garbage")
    _fails(tmp_path, cfg_(tmp_path / "bad.txt.gz"), CorpusError, "bad.txt.gz: corrupt compressed file")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    _fails(tmp_path, cfg_(tmp_path / "latin1.txt"), CorpusError, "latin1.txt: byte 3: not UTF-8")
    few = write_jsonl(tmp_path / "few.jsonl", docs_(3))
    msg = _fails(tmp_path, CorpusConfig(url=few), CorpusError, r"split is empty: 3 unique documents")
    assert "test_fraction=0.05" in msg and "probe_fraction=0.02" in msg
    _fails(tmp_path, cfg_("http://127.0.0.1:9/corpus.jsonl"), StorageError, "127.0.0.1:9/corpus.jsonl")
    good = write_jsonl(tmp_path / "good.jsonl", docs_(30))
    (tmp_path / "afile").write_text("x")
    _fails(tmp_path, cfg_(good), StorageError, "afile/root", root=str(tmp_path / "afile" / "root"))
    with pytest.raises(ConfigError, match="corpus.vocab_size: 300 is not allowed"):
        prepare_corpus(cfg_(good, vocab_size=300), str(tmp_path / "root"))
    with pytest.raises(CorpusError, match="manifest.json: not found"):
        load_manifest(corpus_url(str(tmp_path / "root"), "0123456789abcdef"))


def test_interrupted_prepare_leaves_no_manifest_and_reruns(tmp_path, monkeypatch, caplog):
    src = write_jsonl(tmp_path / "in.jsonl", docs_(40))
    root = str(tmp_path / "root")
    real = storage.write_json

    def boom(url, obj):
        if url.endswith("config.json"):
            raise StorageError(f"{url}: simulated crash")
        real(url, obj)

    monkeypatch.setattr(storage, "write_json", boom)
    with pytest.raises(StorageError, match="simulated crash"):
        prepare_corpus(cfg_(src), root)
    assert no_manifest_under(root)
    assert not [n for _, _, files in os.walk(root) for n in files if n.startswith(".tmp")]
    monkeypatch.setattr(storage, "write_json", real)
    caplog.set_level(logging.INFO, logger="repeatlab")
    m = prepare_corpus(cfg_(src), root)
    assert any("prepared at" in r.getMessage() for r in caplog.records if r.name == corpus.__name__)
    assert not any("reusing" in r.getMessage() for r in caplog.records)
    assert load_manifest(corpus_url(root, m["corpus_id"])) == m
