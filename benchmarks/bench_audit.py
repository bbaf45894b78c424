"""`repeatlab audit` throughput: MinHash and the suffix-array pass against same-run baselines, and a 100 MB corpus
audited end to end (goal: <= 5 minutes on 2 cores, peak memory <= 4x the corpus size).

    python -m benchmarks.bench_audit [--mb 100] [--sample-mb 8]      # prints one JSON line

minhash:      repeatlab's path (numpy word-5-gram hashing + rensa's R-MinHash digest matrix) versus datasketch's own
              MinHash path (`MinHash(num_perm=128).update_batch` of the same 5-gram strings), over the same documents.
suffix array: window counts of every 50-token window from pydivsufsort's suffix array + LCP groups, and the
              cross-shard fingerprint pass, versus a plain-Python exact count (a dict over every window's bytes).
end to end:   `repeatlab audit --corpus FILE --params 1e8` in a subprocess on a generated JSONL corpus of `--mb` MB
              (Zipf words, ~2 KB documents, plus planted exact duplicates, near-duplicates and repeated spans), its
              wall time and peak RSS (ru_maxrss of the child) against the corpus file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.bench_prepare import _documents, _write_jsonl


def _planted_corpus(total_bytes: int, seed: int = 0) -> list[str]:
    """Unique Zipf-word documents, then ~2% of tokens as exact copies, ~1% near-duplicates, ~1% repeated spans."""
    from repeatlab.audit_synthetic import near_duplicate

    rng = random.Random(seed)
    docs = _documents(int(total_bytes * 0.96), seed, doc_bytes=2048)
    n = len(docs)
    dup = [docs[i] for i in rng.sample(range(n), max(1, n // 500)) for _ in range(10)]  # 0.2% of docs x 10
    near = [" ".join(near_duplicate(rng, docs[i].split(), 0.9)) for i in rng.sample(range(n), max(1, n // 100))]
    span = " ".join(docs[0].split()[:40])
    hosts = rng.sample(range(n), max(2, n // 100))
    for i in hosts:  # a 40-word span repeated in 1% of the documents
        words = docs[i].split()
        docs[i] = " ".join(words[: len(words) // 2]) + " " + span + " " + " ".join(words[len(words) // 2 :])
    out = docs + dup + near
    rng.shuffle(out)
    return out


def _bench_minhash(docs: list[str], sample_mb: float) -> dict:
    from datasketch import MinHash

    from repeatlab.audit_hashing import minhash_signatures

    sub, size = [], 0
    for d in docs:
        if size >= sample_mb * 1e6:
            break
        sub.append(d)
        size += len(d.encode())
    t = time.perf_counter()
    minhash_signatures(sub, 5, 128, 1)
    t_ours = time.perf_counter() - t
    small = sub[: max(1, len(sub) // 8)]  # datasketch is slow: an eighth, scaled
    small_bytes = sum(len(d.encode()) for d in small)
    t = time.perf_counter()
    for d in small:
        words = d.split()
        grams = [" ".join(words[i : i + 5]).encode() for i in range(max(1, len(words) - 4))]
        m = MinHash(num_perm=128, seed=1)
        m.update_batch(grams)
    t_ds = time.perf_counter() - t
    ours, base = size / 1e6 / t_ours, small_bytes / 1e6 / t_ds
    return {"sample_mb": size / 1e6, "repeatlab_mb_s": ours, "datasketch_mb_s": base, "ratio": ours / base}


def _bench_suffix_array(docs: list[str], sample_mb: float) -> dict:
    from repeatlab.audit_hashing import window_hashes
    from repeatlab.audit_scan import suffix_array_counts

    text = "\x00".join(docs).encode()[: int(sample_mb * 1e6)]
    tokens = np.frombuffer(text, dtype=np.uint8)
    t = time.perf_counter()
    suffix_array_counts(tokens, 50)
    t_sa = time.perf_counter() - t
    t = time.perf_counter()
    window_hashes(tokens, 50)
    t_fp = time.perf_counter() - t
    small = text[: len(text) // 16]  # plain Python is slow: a sixteenth, scaled
    t = time.perf_counter()
    counts: dict[bytes, int] = {}
    for p in range(len(small) - 49):
        w = small[p : p + 50]
        counts[w] = counts.get(w, 0) + 1
    t_py = time.perf_counter() - t
    sa, fp, py = len(text) / 1e6 / t_sa, len(text) / 1e6 / t_fp, len(small) / 1e6 / t_py
    return {
        "sample_mb": len(text) / 1e6,
        "suffix_array_mb_s": sa,
        "fingerprints_mb_s": fp,
        "plain_python_count_mb_s": py,
        "ratio_suffix_array": sa / py,
    }


_CHILD = (
    "import resource, sys\nfrom repeatlab.cli import main\nrc = main(sys.argv[1:])\n"
    "r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print('MAXRSS', r.ru_maxrss, 'CPU', r.ru_utime + r.ru_stime, file=sys.stderr)\nsys.exit(rc)"
)


def _audit_child(path: str, out: str) -> tuple[float, float, int, dict]:
    """(wall seconds, CPU seconds, peak RSS bytes, audit.json) of `repeatlab audit` in a fresh process."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, "audit", "--corpus", path, "--params", "1e8", "--out", out, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"audit failed: {proc.stderr.strip()[-2000:]}")
    fields = proc.stderr.rsplit("MAXRSS", 1)[1].split()
    peak, cpu = int(fields[0]) * 1024, float(fields[2])  # ru_maxrss is KiB on Linux
    return wall, cpu, peak, json.loads(proc.stdout)


def _bench_end_to_end(path: str, file_bytes: int, tmp: str) -> dict:
    tiny = os.path.join(tmp, "tiny.jsonl")
    _write_jsonl(tiny, ["one small document " * 20])
    _, _, fixed, _ = _audit_child(tiny, os.path.join(tmp, "audit-tiny"))  # interpreter, numpy, matplotlib, ...
    wall, cpu, peak, result = _audit_child(path, os.path.join(tmp, "audit"))
    repeated = sum(r["fraction"] for r in result["profile"] if r["e_low"] >= 2)
    # on a shared machine CPU seconds are the steadier measure: the audit runs on one core (numpy, rensa,
    # libdivsufsort single-threaded), so CPU time is what its wall time would be on an idle core
    return {
        "corpus_mb": file_bytes / 1e6,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": peak / 1e6,
        "fixed_rss_mb_tiny_corpus": fixed / 1e6,
        "peak_rss_over_corpus": peak / file_bytes,
        "peak_above_fixed_over_corpus": (peak - fixed) / file_bytes,
        "stages_s": result["timings"],
        "shards": result["spans"]["shards"],
        "repeated_token_share": repeated,
        "goal_met": wall <= 300 and peak <= 4 * file_bytes,
    }


def run(mb: float = 100, sample_mb: float = 8) -> dict:
    tmp = tempfile.mkdtemp(prefix="bench-audit-")
    path = os.path.join(tmp, "corpus.jsonl")
    # generated in a child process: a forked child's ru_maxrss starts at its parent's RSS, so this process stays
    # small until the audit children have run
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from benchmarks.bench_audit import _planted_corpus; "
            "from benchmarks.bench_prepare import _write_jsonl; "
            "_write_jsonl(sys.argv[1], _planted_corpus(int(float(sys.argv[2]))))",
            path,
            str(mb * 1e6),
        ],
        check=True,
    )
    file_bytes = os.path.getsize(path)
    out = {"end_to_end": _bench_end_to_end(path, file_bytes, tmp)}
    with open(path) as fh:
        docs = [json.loads(line)["text"] for line in fh]
    out["minhash"] = _bench_minhash(docs, sample_mb)
    out["suffix_array"] = _bench_suffix_array(docs, sample_mb)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=100)
    p.add_argument("--sample-mb", type=float, default=8)
    args = p.parse_args()
    print(json.dumps(run(args.mb, args.sample_mb)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
