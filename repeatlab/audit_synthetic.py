"""A synthetic corpus with planted repetition of known size, for the audit's known-answer tests and its benchmark.

Documents are random words over a 26-letter alphabet (so two independent documents share no 50-byte span and no word
5-gram in practice). Planted on top, each recorded in the returned answer key:
- exact duplicates: a document copied `c` times, for each c in `exact_copies`;
- near-duplicate pairs at a known word-5-gram Jaccard similarity: one word replaced every few words, the count of
  replacements solved for the target and the realized similarity computed from the actual shingle sets;
- repeated spans: a span of `span_words` words inserted into `k` otherwise unique documents, for each k in
  `span_repeats`.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from typing import Any

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 8)))


def _doc(rng: random.Random, words: int) -> list[str]:
    return [_word(rng) for _ in range(words)]


def shingles(words: list[str], n: int = 5) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)} if len(words) >= n else {tuple(words)}


def jaccard(a: list[str], b: list[str], n: int = 5) -> float:
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / len(sa | sb)


def near_duplicate(rng: random.Random, words: list[str], target: float, n: int = 5) -> list[str]:
    """A copy of `words` with replacements spread evenly so that its n-gram Jaccard similarity is close to target."""
    s = len(words) - n + 1
    # r isolated replacements remove n shingles each and add n new ones: J = (s - n r) / (s + n r)
    r = max(1, round(s * (1 - target) / (n * (1 + target))))
    out = list(words)
    step = len(words) / r
    for i in range(r):
        pos = int(i * step + step / 2)
        out[pos] = _word(rng) + "q"  # the suffix keeps the new word distinct from every original word
    return out


def make_planted_corpus(
    path: str,
    unique_docs: int = 400,
    words_per_doc: int = 150,
    exact_copies: tuple[int, ...] = (2, 5, 20, 200),
    near_similarities: tuple[float, ...] = (0.9, 0.3),
    near_pairs_each: int = 20,
    span_repeats: tuple[int, ...] = (3, 12),
    span_words: int = 40,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a JSONL corpus (gzip when path ends with .gz) and return its answer key."""
    rng = random.Random(seed)
    docs: list[list[str]] = [_doc(rng, words_per_doc) for _ in range(unique_docs)]
    key: dict[str, Any] = {"exact": [], "near": [], "spans": []}
    base = len(docs)
    for copies in exact_copies:
        d = _doc(rng, words_per_doc)
        docs += [d] * copies
        key["exact"].append({"copies": copies, "tokens": len(" ".join(d)) + 1})
    for target in near_similarities:
        for _ in range(near_pairs_each):
            a = _doc(rng, words_per_doc)
            b = near_duplicate(rng, a, target)
            docs += [a, b]
            key["near"].append({"target": target, "jaccard": jaccard(a, b), "a": " ".join(a), "b": " ".join(b)})
    host = 0
    for k in span_repeats:
        span = _doc(rng, span_words)
        text = " ".join(span)
        if k > len(LETTERS):
            raise ValueError(f"span_repeats: {k} is not allowed: at most {len(LETTERS)} copies of one span")
        for i in range(k):  # each copy goes into the middle of a different unique document
            d = docs[host]
            # neighbours end/start with a letter unique to this copy, so every copy's maximal repeat is " span "
            before, after = _word(rng) + LETTERS[i], LETTERS[i] + _word(rng)
            docs[host] = d[: len(d) // 2] + [before] + span + [after] + d[len(d) // 2 :]
            host += 1
        # the repeated bytes: the span and the space on each side of it
        key["spans"].append({"repeats": k, "text": text, "tokens": len(text) + 2})
    if host > base:
        raise ValueError(f"{sum(span_repeats)} planted span copies need that many unique documents; got {base}")
    texts = [" ".join(d) for d in docs]
    rng.shuffle(texts)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for t in texts:
            fh.write(json.dumps({"text": t}) + "\n")
    key.update(documents=len(texts), bytes=sum(len(t) for t in texts), path=path)
    return key


def main(argv: list[str] | None = None) -> int:
    """`python -m repeatlab.audit_synthetic OUT.jsonl[.gz]`: write the planted corpus, print its answer key."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m repeatlab.audit_synthetic", description=main.__doc__)
    p.add_argument("out")
    p.add_argument("--unique-docs", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    key = make_planted_corpus(args.out, unique_docs=args.unique_docs, seed=args.seed)
    brief = {
        "documents": key["documents"],
        "bytes": key["bytes"],
        "exact": [{"copies": e["copies"], "tokens": e["tokens"]} for e in key["exact"]],
        "near": [{"target": n["target"], "jaccard": round(n["jaccard"], 4)} for n in key["near"]],
        "spans": [{"repeats": s["repeats"], "tokens": s["tokens"]} for s in key["spans"]],
    }
    json.dump(brief, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
