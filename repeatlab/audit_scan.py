"""The audit's measurement: how many times each token's content occurs in a corpus.

One streaming pass reads the corpus with prepare's own reader (repeatlab.corpus: fsspec URLs, text/JSONL/Parquet,
gzip/zstd), one file at a time, and keeps per document only a content hash, a MinHash signature (first copy only) and
its place in the token stream; tokens go to shards of `shard_tokens` on local disk. Then:

- exact duplicate documents: sha-256-class content hash (blake2b-128) of the whitespace-normalized text, as prepare;
- near-duplicate documents: MinHash (rensa's R-MinHash, word n-gram shingles) + LSH banding, candidate pairs kept when
  their estimated Jaccard similarity reaches the threshold, clusters by union-find;
- repeated spans: every window of `min_span` tokens inside one document is counted with a suffix array + LCP array
  (pydivsufsort) per shard: exact. With more than one shard a cross-shard pass counts each window over the whole
  corpus from 64-bit fingerprints spilled to disk partitions (exact unless two different windows share a fingerprint:
  probability about n^2 / 2^65 for n windows, 3e-4 at n = 1e8), and the suffix array's in-shard count is a lower
  bound it must match or exceed (checked).

A token's multiplicity E is the largest of: its document's cluster size (exact copies + near-duplicates), and the
count of the most repeated `min_span`-token window covering it. The histogram of E over all tokens is the corpus's
repetition profile.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from repeatlab import storage
from repeatlab.audit_hashing import (
    candidate_pairs,
    estimated_jaccard,
    iter_window_hashes,
    lsh_params,
    minhash_signatures,
    union_find,
)
from repeatlab.config import CorpusConfig
from repeatlab.errors import ConfigError, CorpusError

log = logging.getLogger(__name__)

PARTITION_BITS = 6  # cross-shard pass: 64 fingerprint partitions on disk, one in memory at a time
FILTER_BITS = 27  # cross-shard lookups: a 16 MB bitmap in front of the table of repeated fingerprints
SA_BYTES_PER_TOKEN = 24  # suffix array + LCP + counts (int32 each) + group ids + token copy: measured peak
EXAMPLES = 10
MINHASH_BATCH_CHARS = 1 << 20


@dataclasses.dataclass
class ScanSettings:
    min_span: int = 50  # Lee et al. 2021: 50 tokens
    ngram: int = 5  # word 5-gram shingles
    threshold: float = 0.8  # Jaccard threshold for near-duplicates
    num_perm: int = 128
    seed: int = 1
    shard_tokens: int = 2 << 20  # 2M tokens: ~50 MB of suffix-array state; 100 MB corpus audited in 3.2x its size
    max_memory: int = 4 << 30  # bytes the in-memory parts (signatures, one shard's suffix array) may use

    def check(self) -> None:
        rules = [
            ("min_span", self.min_span >= 2, "an integer >= 2 tokens"),
            ("ngram", self.ngram >= 1, "an integer >= 1 words"),
            ("threshold", 0 < self.threshold <= 1, "a Jaccard similarity in (0, 1]"),
            ("num_perm", 16 <= self.num_perm <= 1024, "an integer in [16, 1024]"),
            ("shard_tokens", self.shard_tokens >= 1024, "an integer >= 1024 tokens"),
            ("max_memory", self.max_memory > 0, "a positive number of bytes"),
        ]
        for name, ok, allowed in rules:
            if not ok:
                raise ConfigError(f"--{name.replace('_', '-')}: {getattr(self, name)!r} is not allowed: {allowed}")
        need = self.shard_tokens * SA_BYTES_PER_TOKEN
        if need > self.max_memory:
            raise ConfigError(
                f"--shard-tokens: {self.shard_tokens} tokens need about {need / 2**30:.2f} GiB for the "
                f"suffix array, more than --max-memory {self.max_memory / 2**30:.2f} GiB; lower "
                "--shard-tokens (the cross-shard pass keeps counts exact) or raise --max-memory"
            )


@dataclasses.dataclass
class Scan:
    """What the measurement found; every array is indexed by document (in corpus order) or by multiplicity."""

    files: list[dict]
    documents: int  # non-empty documents read
    empty: int
    total_tokens: int  # document tokens + one EOT per document, as prepare counts them
    tokenizer: dict
    histogram: dict[int, int]  # multiplicity E -> tokens whose content occurs E times
    doc_content: np.ndarray  # content id per document
    doc_cluster: np.ndarray  # near-duplicate cluster (its first document) per document
    doc_mult: np.ndarray  # cluster multiplicity per document
    doc_tokens: np.ndarray  # tokens per document (without EOT)
    exact: dict[str, Any]
    near: dict[str, Any]
    spans: dict[str, Any]
    segments: dict[str, np.ndarray]  # every repeated-span occurrence: doc, start, end (tokens), key, count
    examples: dict[str, list[dict]]
    shards: int
    timings: dict[str, float]
    settings: ScanSettings


# ----------------------------------------------------------------------------------------------------------------------
# Reading (prepare's reader)


def resolve_corpus(url: str, cfg: CorpusConfig | None = None) -> tuple[str, str, CorpusConfig]:
    """(URL to read, format, effective corpus settings); `default` is the embedded corpus, as prepare reads it."""
    from repeatlab import corpus

    cfg = dataclasses.replace(cfg or CorpusConfig(), url=url)
    return corpus._resolve(cfg)


CHUNK_BYTES = 16 << 20  # JSONL files are parsed this many bytes at a time (whole lines)


def document_chunks(raw: bytes, file_url: str, fmt: str, cfg: CorpusConfig) -> Iterator[list[str]]:
    """The documents of one file, with prepare's parser, in order; JSONL in chunks of whole lines so a large file
    never holds its lines, its parsed documents and its bytes at once (text and Parquet: the whole file)."""
    from repeatlab import corpus

    file_fmt = corpus.detect_format(file_url, fmt)
    if file_fmt != "jsonl":
        yield corpus.parse_documents(raw, file_url, file_fmt, cfg)
        return
    data = corpus.decompress(raw, file_url)
    if len(data) <= CHUNK_BYTES:
        yield corpus.parse_documents(raw, file_url, file_fmt, cfg)
        return
    del raw  # the caller's reference remains; this one is not needed past decompression
    start = 0
    while start < len(data):
        end = data.find(b"\n", min(start + CHUNK_BYTES, len(data)))
        end = len(data) if end < 0 else end + 1
        where = f"{file_url} (bytes {start}-{end})"  # parse errors name the chunk; their line numbers count from it
        yield corpus.parse_documents(data[start:end], where, file_fmt, cfg)
        start = end


def iter_documents(fmt: str, cfg: CorpusConfig, infos: list[dict]) -> Iterator[list[str]]:
    """Lists of documents in prepare's order, files read one at a time. Each info {"path"} gets the file's bytes and
    sha256 on the first read; a later read with those recorded checks that the file did not change."""
    for info in infos:
        raw = storage.read_bytes(info["path"])
        sha = hashlib.sha256(raw).hexdigest()
        if info.setdefault("sha256", sha) != sha:
            raise CorpusError(f"{info['path']}: the file changed during the audit; run the audit again")
        info.setdefault("bytes", len(raw))
        yield from document_chunks(raw, info["path"], fmt, cfg)


def load_tokenizer(spec: str):
    """'byte', or the URL of a tokenizers JSON file (a prepared corpus's tokenizer.json)."""
    from repeatlab.tokenizer import BPETokenizer, ByteTokenizer

    if spec == "byte":
        return ByteTokenizer()
    if not storage.exists(spec):
        raise ConfigError(f"--tokenizer: {spec!r} is not allowed: 'byte' or the URL of an existing tokenizer.json")
    return BPETokenizer.load(spec)


# ----------------------------------------------------------------------------------------------------------------------
# Span counts


def suffix_array_counts(tokens: np.ndarray, k: int) -> np.ndarray:
    """For each window start p (0..n-k), how often tokens[p:p+k] occurs in `tokens`: exact, from SA + LCP groups."""
    from pydivsufsort import divsufsort, kasai

    n = tokens.size
    if n < k:
        return np.zeros(0, dtype=np.int32)
    if not tokens.flags.writeable or not tokens.flags.c_contiguous:
        tokens = np.ascontiguousarray(tokens).copy()  # pydivsufsort passes a ctypes pointer: needs a writable array
    sa = divsufsort(tokens)
    lcp = kasai(tokens, sa)  # lcp[i] = common prefix of suffixes sa[i] and sa[i+1]
    group = np.empty(n, dtype=np.int32)
    group[0] = 0
    np.cumsum(lcp[:-1] < k, out=group[1:])  # a new group wherever neighbours share fewer than k tokens
    del lcp
    sizes = np.bincount(group).astype(np.int32)  # int32 throughout: the shard, not 8 bytes a token, sets memory
    counts = np.empty(n, dtype=np.int32)
    counts[sa] = sizes[group]
    return counts[: n - k + 1]


def _eot_windows(tokens: np.ndarray, k: int) -> np.ndarray:
    """True for windows that contain an EOT (id 0): they span two documents and are not counted as spans."""
    cs = np.concatenate(([0], np.cumsum(tokens == 0)))
    return (cs[k:] - cs[:-k]) > 0


def _sliding_max(values: np.ndarray, width: int, length: int) -> np.ndarray:
    """out[i] = max(values[max(0, i-width+1) .. min(i, len(values)-1)]) for i < length (1 where no window covers)."""
    if values.size == 0:
        return np.ones(length, dtype=values.dtype)
    ones = np.ones(width - 1, dtype=values.dtype)
    padded = np.concatenate((ones, values, ones))
    # sparse table: m covers 2^j consecutive entries; combine two overlapping blocks for an exact width
    m, span = padded, 1
    while span * 2 <= width:
        m[: m.size - span] = np.maximum(m[: m.size - span], m[span:])
        span *= 2
    return np.maximum(m[:length], m[width - span : width - span + length])


class _FingerprintCounter:
    """Cross-shard pass: global counts of every window's fingerprint, spilled to 2^PARTITION_BITS files on disk."""

    def __init__(self, folder: str):
        self.folder = folder
        self.parts = 1 << PARTITION_BITS
        self.table_h = np.zeros(0, dtype=np.uint64)
        self.table_c = np.zeros(0, dtype=np.int32)

    def add(self, hashes: np.ndarray) -> None:
        """Append one chunk's fingerprints to their partition files (sorted, so each partition is one slice)."""
        h = np.sort(hashes)
        cuts = np.searchsorted(h, (np.arange(1, self.parts, dtype=np.uint64) << np.uint64(64 - PARTITION_BITS)))
        for part, (lo, hi) in enumerate(zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [h.size])))):
            if hi > lo:
                with open(os.path.join(self.folder, f"h{part}"), "ab") as fh:
                    fh.write(h[lo:hi].tobytes())

    def finish(self) -> None:
        """Count each fingerprint over the corpus, one partition in memory at a time; keep those seen twice or more."""
        hs, cs = [], []
        # a bitmap over the top FILTER_BITS bits of the repeated fingerprints: most windows are unique and skip the
        # binary search (which cost more than everything else in the pass); filled one partition at a time
        self.filter = np.zeros(1 << (FILTER_BITS - 3), dtype=np.uint8)
        for part in range(self.parts):
            path = os.path.join(self.folder, f"h{part}")
            if not os.path.exists(path):
                continue
            u, c = np.unique(np.fromfile(path, dtype=np.uint64), return_counts=True)
            os.unlink(path)
            keep = c > 1
            hs.append(u[keep])
            cs.append(np.minimum(c[keep], np.iinfo(np.int32).max).astype(np.int32))
            top = hs[-1] >> np.uint64(64 - FILTER_BITS)
            np.bitwise_or.at(self.filter, top >> np.uint64(3), (1 << (top & np.uint64(7))).astype(np.uint8))
        if hs:
            self.table_h, self.table_c = np.concatenate(hs), np.concatenate(cs)

    def counts(self, hashes: np.ndarray) -> np.ndarray:
        out = np.ones(hashes.size, dtype=np.int32)
        if self.table_h.size == 0:
            return out
        top = hashes >> np.uint64(64 - FILTER_BITS)
        maybe = np.flatnonzero(self.filter[top >> np.uint64(3)] & (1 << (top & np.uint64(7))).astype(np.uint8))
        h = hashes[maybe]
        idx = np.minimum(np.searchsorted(self.table_h, h), self.table_h.size - 1)
        out[maybe] = np.where(self.table_h[idx] == h, self.table_c[idx], np.int32(1))
        return out


# ----------------------------------------------------------------------------------------------------------------------
# The scan


class _Shards:
    """Token shards on local disk: documents never straddle two shards."""

    def __init__(self, folder: str, shard_tokens: int, dtype: np.dtype):
        self.folder, self.limit, self.dtype = folder, shard_tokens, dtype
        self.parts: list[np.ndarray] = []
        self.size = 0
        self.paths: list[str] = []
        self.first_doc: list[int] = []  # index of each shard's first document
        self.docs = 0

    def add(self, ids: np.ndarray) -> None:
        if self.parts and self.size + ids.size + 1 > self.limit:
            self.flush()
        if not self.parts:
            self.first_doc.append(self.docs)
        self.parts += [ids.astype(self.dtype, copy=False), np.zeros(1, dtype=self.dtype)]  # doc + EOT
        self.size += ids.size + 1
        self.docs += 1

    def flush(self) -> None:
        if not self.parts:
            return
        path = os.path.join(self.folder, f"shard-{len(self.paths):05d}.npy")
        np.save(path, np.concatenate(self.parts))
        self.paths.append(path)
        self.parts, self.size = [], 0

    def load(self, i: int) -> np.ndarray:
        return np.load(self.paths[i])


def scan(
    url: str,
    settings: ScanSettings,
    corpus_cfg: CorpusConfig | None = None,
    tokenizer: str = "byte",
    progress: Callable[[str], None] = log.debug,  # progress lines: `repeatlab -v audit` shows them
    workdir: str | None = None,
) -> Scan:
    """Measure the corpus at `url` (anything prepare reads); see the module docstring."""
    settings.check()
    tok = load_tokenizer(tokenizer)
    dtype = np.dtype(np.uint8) if tok.vocab_size <= 256 else np.dtype(np.uint32)
    folder = tempfile.mkdtemp(prefix="repeatlab-audit-", dir=workdir)
    try:
        return _scan(url, settings, corpus_cfg, tok, dtype, folder, progress)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_signature_memory(url: str, distinct: int, settings: ScanSettings) -> None:
    """MinHash signatures of the distinct documents may use half of --max-memory."""
    if distinct * settings.num_perm * 4 > settings.max_memory // 2:
        raise CorpusError(
            f"{url}: more than {distinct:,} distinct documents: their MinHash signatures need over "
            f"{settings.max_memory / 2**31:.2f} GiB, half of --max-memory; raise --max-memory or lower "
            "--num-perm"
        )


def _read(url, infos, fmt, eff, settings, tok, shards, progress) -> dict:
    """Read the files of `infos` in order: content hash, MinHash signature (first copy) and token count per
    document, tokens into `shards`. Content ids count from 0 in first-appearance order (`content_keys`)."""
    from repeatlab import corpus

    content_ids: dict[bytes, int] = {}
    doc_content: list[int] = []
    doc_tokens: list[int] = []
    new_texts: list[str] = []
    signatures: list[np.ndarray] = []
    previews: list[str] = []  # first 300 characters of each distinct content
    empty = 0
    t_minhash = 0.0
    new_bytes = 0

    def flush_minhash() -> None:
        nonlocal t_minhash, new_bytes
        if new_texts:
            t = time.perf_counter()
            signatures.append(minhash_signatures(new_texts, settings.ngram, settings.num_perm, settings.seed))
            t_minhash += time.perf_counter() - t
            new_texts.clear()
        new_bytes = 0

    for docs in iter_documents(fmt, eff, infos):
        kept = []
        for text in docs:
            norm = corpus.normalize(text)
            if not norm:
                empty += 1
                continue
            key = hashlib.blake2b(norm.encode("utf-8", errors="surrogatepass"), digest_size=16).digest()
            cid = content_ids.setdefault(key, len(content_ids))
            if cid == len(previews):  # first copy of this content
                previews.append(text[:300])
                new_texts.append(text)
                check_signature_memory(url, len(content_ids), settings)
                new_bytes += len(text)
                if new_bytes >= MINHASH_BATCH_CHARS:  # shingle hashing holds ~30 bytes per character of the batch
                    flush_minhash()
            doc_content.append(cid)
            kept.append(text)
        del docs
        for lo in range(0, len(kept), 1024):  # batches: a whole file's token arrays at once would double its memory
            for ids in tok.encode_batch(kept[lo : lo + 1024]):
                doc_tokens.append(int(ids.size))
                shards.add(ids)
        n_docs = len(kept)
        del kept
        progress(f"read {n_docs:,} non-empty documents")
    flush_minhash()
    shards.flush()
    return {
        "content_keys": list(content_ids),
        "doc_content": doc_content,
        "doc_tokens": doc_tokens,
        "signatures": signatures,
        "previews": previews,
        "empty": empty,
        "minhash_s": t_minhash,
    }


def _scan(url, settings, corpus_cfg, tok, dtype, folder, progress) -> Scan:
    from repeatlab import corpus

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    read_url, fmt, eff = resolve_corpus(url, corpus_cfg)
    files = corpus.list_input_files(read_url)
    infos: list[dict] = [{"path": f} for f in files]
    shards = _Shards(folder, settings.shard_tokens, dtype)
    r = _read(url, infos, fmt, eff, settings, tok, shards, progress)
    doc_content, doc_tokens, signatures, previews, empty, t_minhash = (
        r["doc_content"],
        r["doc_tokens"],
        r["signatures"],
        r["previews"],
        r["empty"],
        r["minhash_s"],
    )
    if not doc_content:
        raise CorpusError(
            f"{url}: no non-empty documents ({empty} empty) in {len(files)} file(s); the audit "
            "needs at least one document with text"
        )
    timings["read_tokenize_s"] = time.perf_counter() - t0 - t_minhash
    timings["minhash_s"] = t_minhash
    return _measure(
        infos, empty, doc_content, doc_tokens, signatures, previews, shards, settings, tok, progress, timings, t0
    )


def _measure(
    infos,
    empty,
    doc_content,
    doc_tokens,
    signatures,
    previews,
    shards,
    settings,
    tok,
    progress,
    timings,
    t0,
    counter=None,
) -> Scan:
    """Everything after reading: LSH clusters, span counts, the histogram. Shared by the single-process scan and the
    fan-out's reduce step (repeatlab.audit_fanout), which passes the cross-shard counter its map steps filled."""
    doc_content_a = np.asarray(doc_content, dtype=np.int64)
    doc_tokens_a = np.asarray(doc_tokens, dtype=np.int64)
    content_count = np.bincount(doc_content_a)
    t = time.perf_counter()
    sig = np.concatenate(signatures) if signatures else np.zeros((0, settings.num_perm), dtype=np.uint32)
    near = _near_duplicates(sig, settings)
    timings["lsh_s"] = time.perf_counter() - t
    cluster_of_content = near.pop("labels")
    cluster_mult = np.bincount(cluster_of_content, weights=content_count).astype(np.int64)
    doc_cluster_content = cluster_of_content[doc_content_a]
    doc_mult = cluster_mult[doc_cluster_content]
    # a cluster's first document in corpus order is the copy that deduplication keeps
    first_doc_of_cluster = np.full(len(content_count), -1, dtype=np.int64)
    rev = np.arange(len(doc_content_a))[::-1]
    first_doc_of_cluster[doc_cluster_content[::-1]] = rev
    doc_cluster = first_doc_of_cluster[doc_cluster_content]

    histogram, segments, spans, t_sa, t_fp = _span_pass(
        shards, doc_mult, doc_tokens_a, settings, tok, progress, counter
    )
    timings["suffix_array_s"] = t_sa
    timings["cross_shard_s"] = t_fp
    timings["total_s"] = time.perf_counter() - t0

    exact = {
        "documents": int(len(doc_content_a)),
        "distinct": int(len(content_count)),
        "duplicate_documents": int(len(doc_content_a) - len(content_count)),
        "duplicate_tokens": int(
            sum((c - 1) * t for c, t in _content_tokens(doc_content_a, doc_tokens_a, content_count))
        ),
    }
    examples = {
        "documents": _doc_examples(cluster_of_content, content_count, cluster_mult, previews),
        "spans": spans.pop("examples"),
    }
    total = int(doc_tokens_a.sum() + len(doc_tokens_a))
    return Scan(
        files=infos,
        documents=int(len(doc_content_a)),
        empty=empty,
        total_tokens=total,
        tokenizer=tok.to_manifest(),
        histogram=histogram,
        doc_content=doc_content_a,
        doc_cluster=doc_cluster,
        doc_mult=doc_mult,
        doc_tokens=doc_tokens_a,
        exact=exact,
        near=near,
        spans=spans,
        segments=segments,
        examples=examples,
        shards=len(shards.paths),
        timings=timings,
        settings=settings,
    )


def _content_tokens(doc_content, doc_tokens, content_count):
    """(copies, tokens) per distinct content."""
    first = np.full(len(content_count), -1, dtype=np.int64)
    first[doc_content[::-1]] = np.arange(len(doc_content))[::-1]
    return zip(content_count.tolist(), doc_tokens[first].tolist())


def _near_duplicates(sig: np.ndarray, settings: ScanSettings) -> dict:
    bands, rows = lsh_params(settings.threshold, settings.num_perm)
    pairs = candidate_pairs(sig, bands, rows)
    jac = estimated_jaccard(sig, pairs)
    # accept within two standard errors of the threshold: a pair at exactly the threshold passes with p ~ 0.98,
    # one at J = 0.5 (threshold 0.8, 128 values) needs a 7-sigma error to pass
    margin = 2 * math.sqrt(settings.threshold * (1 - settings.threshold) / settings.num_perm)
    accepted = pairs[jac >= settings.threshold - margin]
    labels = union_find(sig.shape[0], accepted)
    clusters = np.bincount(labels)
    return {
        "labels": labels,
        "bands": bands,
        "rows": rows,
        "candidate_pairs": int(len(pairs)),
        "accepted_pairs": int(len(accepted)),
        "threshold": settings.threshold,
        "accept_at": settings.threshold - margin,
        "ngram": settings.ngram,
        "num_perm": settings.num_perm,
        "clusters": int((clusters > 1).sum()),
        "distinct_in_clusters": int(clusters[clusters > 1].sum()),
    }


def _doc_examples(labels, content_count, cluster_mult, previews) -> list[dict]:
    """The most repeated documents: one per near-duplicate cluster, by cluster size, then exact copies."""
    mult = cluster_mult[labels]
    out, seen = [], set()
    for cid in np.lexsort((-content_count, -mult)).tolist():
        if mult[cid] < 2:
            break
        if labels[cid] in seen:
            continue
        seen.add(labels[cid])
        out.append(
            {
                "exact_copies": int(content_count[cid]),
                "cluster_copies": int(mult[cid]),
                "preview": " ".join(previews[cid].split())[:200],
            }
        )
        if len(out) >= EXAMPLES:
            break
    return out


def spill_fingerprints(counter: _FingerprintCounter, toks: np.ndarray, k: int) -> None:
    """Add every within-document window of one shard to the cross-shard spill (EOT windows span two documents)."""
    eot = _eot_windows(toks, k)
    for lo, h in iter_window_hashes(toks, k):
        counter.add(h[~eot[lo : lo + h.size]])


def _span_pass(shards: _Shards, doc_mult, doc_tokens, settings, tok, progress, counter=None):
    """Window counts per shard (SA; + fingerprints across shards), the E histogram and the repeated segments.
    counter: a finished cross-shard counter (the fan-out's map steps spilled it); None counts here."""
    k = settings.min_span
    multi = len(shards.paths) > 1
    t_sa = t_fp = 0.0
    if multi and counter is None:
        counter = _FingerprintCounter(shards.folder)
        t = time.perf_counter()
        for i in range(len(shards.paths)):
            spill_fingerprints(counter, shards.load(i), k)
        counter.finish()
        t_fp += time.perf_counter() - t
    hist: dict[int, int] = {}
    seg_parts: dict[str, list[np.ndarray]] = {name: [] for name in ("doc", "start", "end", "count", "key")}
    span_info: dict[bytes, dict] = {}
    below = 0
    for i in range(len(shards.paths)):
        toks = shards.load(i)
        t = time.perf_counter()
        counts = suffix_array_counts(toks, k)
        t_sa += time.perf_counter() - t
        eot = _eot_windows(toks, k) if counts.size else np.zeros(0, dtype=bool)
        counts[eot] = 1
        if multi:
            t = time.perf_counter()
            global_counts = np.empty(counts.size, dtype=np.int32)
            for lo, h in iter_window_hashes(toks, k):
                global_counts[lo : lo + h.size] = counter.counts(h)
            global_counts[eot] = 1
            below += int((global_counts < counts).sum())  # the fingerprint total can never be below the SA count
            counts = np.maximum(counts, global_counts)
            t_fp += time.perf_counter() - t
        first, last = shards.first_doc[i], (shards.first_doc[i + 1] if i + 1 < len(shards.first_doc) else len(doc_mult))
        lengths = doc_tokens[first:last] + 1
        mult = _sliding_max(counts, k, toks.size)
        np.maximum(mult, np.repeat(doc_mult[first:last].astype(np.int32), lengths), out=mult)
        found = np.bincount(mult)
        for e in np.flatnonzero(found).tolist():
            hist[e] = hist.get(e, 0) + int(found[e])
        del mult
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        _segments(toks, counts, k, starts, first, seg_parts, span_info, tok)
        progress(f"shard {i + 1}/{len(shards.paths)}: {toks.size:,} tokens counted")
    if below:
        raise CorpusError(
            f"cross-shard pass: {below} windows counted fewer times over the corpus than inside one "
            "shard; the fingerprint spill is inconsistent (disk full?); run the audit again"
        )
    segments = {name: (np.concatenate(v) if v else np.zeros(0, dtype=np.int64)) for name, v in seg_parts.items()}
    repeated = [v for v in span_info.values() if v["occurrences"] > 1 or v["max_window_count"] > 1]
    repeated.sort(key=lambda v: (-v["max_window_count"], -v["tokens"]))
    spans = {
        "min_span": k,
        "shards": len(shards.paths),
        "distinct_repeated_spans": len(repeated),
        "span_occurrences": int(segments["doc"].size),
        "method": (
            "suffix array per shard + 64-bit fingerprints across shards"
            if multi
            else "suffix array over the whole corpus (one shard): exact"
        ),
        "examples": [
            {k2: v[k2] for k2 in ("occurrences", "max_window_count", "tokens", "preview")} for v in repeated[:EXAMPLES]
        ],
    }
    return hist, segments, spans, t_sa, t_fp


def _segments(toks, counts, k, doc_starts, first_doc, parts, span_info, tok) -> None:
    """Maximal runs of window starts with count >= 2 become repeated segments [run start, run end + k)."""
    rep = counts >= 2
    if not rep.any():
        return
    edges = np.flatnonzero(np.diff(np.concatenate(([0], rep.view(np.int8), [0]))))
    run_start, run_end = edges[0::2], edges[1::2]  # run_end exclusive over window starts
    seg_start, seg_end = run_start, run_end - 1 + k
    doc_local = np.searchsorted(doc_starts, seg_start, side="right") - 1
    keys = np.empty(run_start.size, dtype=np.uint64)
    run_max = np.maximum.reduceat(counts, run_start) if run_start.size else np.zeros(0, dtype=np.int64)
    for j, (s, e) in enumerate(zip(seg_start.tolist(), seg_end.tolist())):
        piece = toks[s:e]
        digest = hashlib.blake2b(piece.tobytes(), digest_size=8).digest()
        keys[j] = int.from_bytes(digest, "little")
        info = span_info.get(digest)
        if info is None:
            if len(span_info) < 1_000_000 or run_max[j] > 2:  # bound the example table; keep every heavy span
                span_info[digest] = {
                    "occurrences": 1,
                    "max_window_count": int(run_max[j]),
                    "tokens": int(e - s),
                    "preview": " ".join(tok.decode(piece[:300]).split())[:200],
                }
        else:
            info["occurrences"] += 1
            info["max_window_count"] = max(info["max_window_count"], int(run_max[j]))
    parts["doc"].append(doc_local + first_doc)
    parts["start"].append(seg_start - doc_starts[doc_local])
    parts["end"].append(seg_end - doc_starts[doc_local])
    parts["count"].append(run_max.astype(np.int64))
    parts["key"].append(keys)
