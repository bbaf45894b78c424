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
import sysconfig

OUT = pathlib.Path(".repeatlab/induction-corpora")


def python_stdlib(path: pathlib.Path) -> int:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    count = 0
    with path.open("w") as out:
        for source in sorted(root.rglob("*.py")):
            parts = set(source.relative_to(root).parts)
            if parts & {"site-packages", "test", "tests", "idle_test"}:
                continue
            try:
                text = source.read_text("utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if len(text) >= 2000:
                out.write(json.dumps({"text": text}) + "\n")
                count += 1
    return count


def letter_repeats(path: pathlib.Path, documents: int = 3000, seed: int = 0) -> int:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    with path.open("w") as out:
        for _ in range(documents):
            parts: list[str] = []
            while sum(map(len, parts)) < 2000:
                word = "".join(rng.choice(letters) for _ in range(rng.randint(10, 40)))
                parts.append((word + " ") * rng.randint(2, 6))
            out.write(json.dumps({"text": "\n".join(parts)}) + "\n")
    return documents


def copy_task(path: pathlib.Path, documents: int = 10000, seed: int = 0) -> int:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    with path.open("w") as out:
        for _ in range(documents):
            word = "".join(rng.choice(letters) for _ in range(rng.randint(10, 29)))
            out.write(json.dumps({"text": (word * (2000 // len(word) + 1))[:2000]}) + "\n")
    return documents


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    print("python-stdlib.jsonl:", python_stdlib(OUT / "python-stdlib.jsonl"), "documents")
    print("letter-repeats.jsonl:", letter_repeats(OUT / "letter-repeats.jsonl"), "documents")
    print("letter-repeats-large.jsonl:", letter_repeats(OUT / "letter-repeats-large.jsonl", 12000), "documents")
    print("copy-task.jsonl:", copy_task(OUT / "copy-task.jsonl"), "documents")
    print("copy-task-large.jsonl:", copy_task(OUT / "copy-task-large.jsonl", 20000), "documents")
