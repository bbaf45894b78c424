"""Representative splits: documents cut into chunks before the hash split, the split composition in the manifest,
and warnings for splits that are a few documents (small generated corpora; the default corpus where it is cached)."""

import json
import logging
import os
import random

import pytest

from repeatlab.config import CorpusConfig
from repeatlab.corpus import chunk_text, prepare_corpus
from repeatlab.errors import ConfigError

SOURCES = {"epic": 3, "letters": 2, "plays": 5}  # few, large documents per source


def _big_doc(rng: random.Random, n_lines: int, tag: str) -> str:
    words = ["sing", "goddess", "wrath", "ships", "dear", "friend", "yours", "exit", "enter", "king", "queen", tag]
    return "\n".join(
        " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + f" {tag}{i}" for i in range(n_lines)
    )


def _corpus(tmp_path) -> str:
    rng = random.Random(7)
    rows = [
        {"text": _big_doc(rng, 4000, f"{src}{k}"), "collection": src} for src, n in SOURCES.items() for k in range(n)
    ]
    path = tmp_path / "works.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _shares(manifest: dict, split: str) -> dict[str, float]:
    return {src: row["share"] for src, row in manifest["composition"][split].items()}


def test_chunked_split_samples_every_source_like_train(tmp_path):
    url = _corpus(tmp_path)
    m = prepare_corpus(
        CorpusConfig(url=url, source_field="collection", chunk_tokens=1024, test_fraction=0.1),
        str(tmp_path / "root"),
    )
    assert m["chunk_tokens"] == 1024 and m["documents_read"] == 10 and m["chunks"] > 1000
    assert m["splits"]["test"]["documents"] >= 50 and m["splits"]["test"]["largest_document_tokens"] <= 1025
    train, test = _shares(m, "train"), _shares(m, "test")
    assert set(train) == set(test) == set(SOURCES)
    for src in SOURCES:  # every source's share of test within a few points of its share of train
        assert abs(test[src] - train[src]) < 0.04, (src, test[src], train[src])
    counted = {name: sum(r["tokens"] for r in per.values()) for name, per in m["composition"].items()}
    assert counted == {name: m["splits"][name]["tokens"] for name in counted}
    assert not [w for w in m["warnings"] if "test" in w]


def test_few_large_documents_warn_and_name_chunk_tokens(tmp_path, caplog):
    url = _corpus(tmp_path)
    caplog.set_level(logging.INFO, logger="repeatlab")
    m = prepare_corpus(
        CorpusConfig(url=url, source_field="collection", test_fraction=0.3, probe_fraction=0.1),
        str(tmp_path / "root"),
    )
    assert m["chunk_tokens"] == 0 and m["chunks"] == 10
    assert any("train split has only" in w for w in m["warnings"])
    assert any("% of the train split's tokens" in w for w in m["warnings"]) or m["splits"]["train"]["documents"] > 5
    assert all("corpus.chunk_tokens" in w for w in m["warnings"])
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == m["warnings"]


def test_source_defaults_to_the_input_file(tmp_path):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(_big_doc(random.Random(name), 2000, name[0]))
    m = prepare_corpus(
        CorpusConfig(url=str(tmp_path / "*.txt"), chunk_tokens=512, test_fraction=0.2),
        str(tmp_path / "root"),
    )
    assert set(m["composition"]["train"]) == {"a.txt", "b.txt"}


def test_chunk_text_cuts_at_line_ends_and_keeps_the_text():
    text = "\n".join(f"line {i} " + "x" * (i % 50) for i in range(500))
    pieces = chunk_text(text, 600)
    assert "".join(pieces) == text and all(len(p.encode()) <= 600 for p in pieces)
    assert all(p.endswith("\n") for p in pieces[:-1])
    long_line = "word " * 1000
    assert "".join(chunk_text(long_line, 300)) == long_line
    assert all(len(p.encode()) <= 300 for p in chunk_text(long_line, 300))
    assert chunk_text("short", 300) == ["short"] and chunk_text(text, 0) == [text]


@pytest.mark.parametrize("value", [100, -1, 1.5, True])
def test_bad_chunk_tokens(tmp_path, value):
    with pytest.raises(ConfigError, match="corpus.chunk_tokens"):
        prepare_corpus(CorpusConfig(url=_corpus(tmp_path), chunk_tokens=value), str(tmp_path / "root"))


@pytest.mark.network
def test_default_corpus_test_split_represents_every_collection(tmp_path, monkeypatch):
    cache = os.environ.get("REPEATLAB_TEST_CACHE")
    if cache:
        monkeypatch.setenv("REPEATLAB_CACHE", cache)
    m = prepare_corpus(CorpusConfig(), str(tmp_path / "root"))
    assert m["splits"]["test"]["documents"] >= 50 and not m["warnings"]
    train, test = _shares(m, "train"), _shares(m, "test")
    assert set(test) == set(train) == {"Shakespeare", "Milton", "King James Bible"}
    for src in train:
        assert abs(test[src] - train[src]) < 0.03, (src, test[src], train[src])
