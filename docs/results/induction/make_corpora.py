"""Build the two extra corpora of the induction-head attempts (docs/results.md) under .repeatlab/induction-corpora/.

    python docs/results/induction/make_corpora.py

python-stdlib.jsonl   this interpreter's standard library source (no tests, files of 2000+ characters), one file
                      per document: text where identifiers come back within a few lines. It depends on the Python
                      version (the recorded runs used CPython 3.11.7: 562 files, 12.0M characters).
letter-repeats.jsonl  a positive control: documents of random lowercase strings (10-40 letters), each repeated 2-6
                      times, so the only thing to learn beyond letter frequencies is to copy the earlier copy
                      (3000 documents, 6.3M characters).
letter-repeats-large.jsonl  the same with 12000 documents (25M characters; its first 3000 are the ones above), for a
                      run long enough to grow an induction head.
copy-task.jsonl       copy_task.py's data as a corpus: each document one random string of 10-29 letters repeated to
                      fill 2000 characters (10000 documents, 20M characters).
copy-task-large.jsonl the same with 20000 documents (40M characters; its first 10000 are the ones above).
"""

from __future__ import annotations

import json
import pathlib
import random
import string
import sysconfig
from collections.abc import Iterable, Iterator

OUT = pathlib.Path(".repeatlab/induction-corpora")
DOCUMENT_CHARS = 2000


def python_stdlib() -> Iterator[str]:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    for source in sorted(root.rglob("*.py")):
        if set(source.relative_to(root).parts) & {"site-packages", "test", "tests", "idle_test"}:
            continue
        try:
            text = source.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) >= DOCUMENT_CHARS:
            yield text


def random_word(rng: random.Random, shortest: int, longest: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(shortest, longest)))


def letter_repeats(documents: int, seed: int = 0) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(documents):
        parts: list[str] = []
        while sum(map(len, parts)) < DOCUMENT_CHARS:
            parts.append((random_word(rng, 10, 40) + " ") * rng.randint(2, 6))
        yield "\n".join(parts)


def copy_task(documents: int, seed: int = 0) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(documents):
        word = random_word(rng, 10, 29)
        yield (word * (DOCUMENT_CHARS // len(word) + 1))[:DOCUMENT_CHARS]


def write_jsonl(path: pathlib.Path, texts: Iterable[str]) -> int:
    count = 0
    with path.open("w") as out:
        for text in texts:
            out.write(json.dumps({"text": text}) + "\n")
            count += 1
    return count


CORPORA = {
    "python-stdlib.jsonl": python_stdlib,
    "letter-repeats.jsonl": lambda: letter_repeats(3000),
    "letter-repeats-large.jsonl": lambda: letter_repeats(12000),
    "copy-task.jsonl": lambda: copy_task(10000),
    "copy-task-large.jsonl": lambda: copy_task(20000),
}

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, texts in CORPORA.items():
        print(f"{name}: {write_jsonl(OUT / name, texts())} documents")
