"""Prepare throughput (MB/s of input text) for the byte and BPE tokenizers, each beside a baseline from the same run.

    python -m benchmarks.bench_prepare [--byte-mb 32] [--bpe-mb 4]    # prints one JSON line

byte: prepare_corpus end to end (read JSONL, hash, dedup, split, tokenize, write shards + manifest) versus
      the bare copy `np.frombuffer(text.encode())` and Python's `list(text.encode())`, over the same documents.
bpe:  prepare_corpus end to end (including training the tokenizer on the train split) versus the `tokenizers`
      library's `encode_batch` alone with the same trained tokenizer, over the same documents.
Documents are generated (Zipf-distributed words, ~8 KB each), so the run needs no download.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

import numpy as np


def _documents(total_bytes: int, seed: int, doc_bytes: int = 8192) -> list[str]:
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    vocab = sorted({"".join(rng.choices(letters, k=rng.randint(1, 9))) for _ in range(20_000)})
    weights = [1.0 / (r + 1) for r in range(len(vocab))]
    words_per_doc = doc_bytes // 6
    docs, size = [], 0
    while size < total_bytes:
        words = rng.choices(vocab, weights=weights, k=words_per_doc)
        for i in range(0, len(words), 12):  # sentences and line breaks
            words[i] = words[i].capitalize()
        doc = " ".join(words).replace(" Q", ".\nQ").replace(" E", ". E")
        docs.append(doc)
        size += len(doc)
    return docs


def _write_jsonl(path: str, docs: list[str]) -> int:
    data = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    with open(path, "wb") as fh:
        fh.write(data)
    return len(data)


def _best(fn, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _bench_byte(tmp: str, mb: float) -> dict:
    from repeatlab.config import CorpusConfig
    from repeatlab.corpus import prepare_corpus
    from repeatlab.tokenizer import ByteTokenizer

    docs = _documents(int(mb * 1e6), seed=0)
    text_bytes = sum(len(d.encode()) for d in docs)
    src = os.path.join(tmp, "byte.jsonl")
    file_bytes = _write_jsonl(src, docs)
    cfg = CorpusConfig(url=src)

    def prepare():
        root = tempfile.mkdtemp(dir=tmp)
        prepare_corpus(cfg, root)
        shutil.rmtree(root)

    t_prepare = _best(prepare)
    t_frombuffer = _best(lambda: [np.frombuffer(d.encode(), dtype=np.uint8).copy() for d in docs], 3)
    tok = ByteTokenizer()
    t_encode = _best(lambda: tok.encode_batch(docs), 3)
    sub = docs[: max(1, len(docs) // 8)]  # list() is slow: time an eighth and scale
    sub_bytes = sum(len(d.encode()) for d in sub)
    t_list = _best(lambda: [list(d.encode()) for d in sub], 1)
    return {
        "documents": len(docs),
        "text_mb": text_bytes / 1e6,
        "jsonl_mb": file_bytes / 1e6,
        "prepare_s": t_prepare,
        "prepare_mb_s": text_bytes / t_prepare / 1e6,
        "encode_batch_mb_s": text_bytes / t_encode / 1e6,
        "baseline_frombuffer_mb_s": text_bytes / t_frombuffer / 1e6,
        "baseline_list_mb_s": sub_bytes / t_list / 1e6,
    }


def _bench_bpe(tmp: str, mb: float, vocab_size: int) -> dict:
    from repeatlab.config import CorpusConfig
    from repeatlab.corpus import prepare_corpus
    from repeatlab.tokenizer import BPETokenizer

    docs = _documents(int(mb * 1e6), seed=1)
    text_bytes = sum(len(d.encode()) for d in docs)
    src = os.path.join(tmp, "bpe.jsonl")
    _write_jsonl(src, docs)
    cfg = CorpusConfig(url=src, tokenizer="bpe", vocab_size=vocab_size)
    root = tempfile.mkdtemp(dir=tmp)
    t = time.perf_counter()
    manifest = prepare_corpus(cfg, root)
    t_prepare = time.perf_counter() - t
    t = time.perf_counter()
    tok = BPETokenizer.train(docs, vocab_size)
    t_train = time.perf_counter() - t
    raw = tok._tok  # the tokenizers.Tokenizer itself: the baseline is the library alone
    t_encode_lib = _best(lambda: raw.encode_batch_fast(docs, add_special_tokens=False), 2)
    t_encode_ours = _best(lambda: tok.encode_batch(docs), 2)
    tokens = sum(manifest["splits"][s]["tokens"] for s in ("train", "test", "probe"))
    shutil.rmtree(root)
    return {
        "documents": len(docs),
        "text_mb": text_bytes / 1e6,
        "vocab_size": manifest["tokenizer"]["vocab_size"],
        "bytes_per_token": text_bytes / tokens,
        "prepare_s": t_prepare,
        "prepare_mb_s": text_bytes / t_prepare / 1e6,
        "train_tokenizer_s": t_train,
        "encode_batch_mb_s": text_bytes / t_encode_ours / 1e6,
        "baseline_tokenizers_encode_batch_mb_s": text_bytes / t_encode_lib / 1e6,
    }


def run(byte_mb: float = 32.0, bpe_mb: float = 4.0, vocab_size: int = 4096) -> dict:
    """Measure both tokenizers' prepare throughput; returns a JSON-able dict (also the printed line)."""
    tmp = tempfile.mkdtemp(prefix="repeatlab-bench-prepare-")
    old_cache = os.environ.get("REPEATLAB_CACHE")
    try:
        result = {
            "benchmark": "prepare",
            "cpus": os.cpu_count(),
            "byte": _bench_byte(tmp, byte_mb),
            "bpe": _bench_bpe(tmp, bpe_mb, vocab_size),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old_cache is not None:
            os.environ["REPEATLAB_CACHE"] = old_cache
    for section in ("byte", "bpe"):
        result[section] = {k: round(v, 3) if isinstance(v, float) else v for k, v in result[section].items()}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--byte-mb", type=float, default=32.0)
    p.add_argument("--bpe-mb", type=float, default=4.0)
    p.add_argument("--vocab-size", type=int, default=4096)
    args = p.parse_args(argv)
    print(json.dumps(run(args.byte_mb, args.bpe_mb, args.vocab_size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
