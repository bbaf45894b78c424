"""Vectorized hashing for the audit: polynomial hashes of token windows and word shingles, MinHash and LSH banding.

Every hash here is deterministic across processes and machines (no Python `hash()`, which is salted per process), so
an audit's fingerprints, clusters and removal decisions reproduce bit for bit.

Window hashes are polynomial hashes mod 2^64 (sum t_j * B^j over the window, B odd so it is invertible mod 2^64),
finished with a 64-bit mixer (splitmix64's finalizer). Two different windows share a fingerprint with probability about
2^-64 per pair; the audit states this where it relies on fingerprints (the cross-shard pass).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: invertible mod 2^64
_BASE_INV = np.uint64(pow(int(_BASE), -1, 1 << 64))
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads structured inputs (small ids, polynomial sums) over all 64 bits."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _powers(base: np.uint64, count: int) -> np.ndarray:
    out = np.empty(count, dtype=np.uint64)
    if count:
        out[0] = 1
        with np.errstate(over="ignore"):
            np.cumprod(np.full(count - 1, base, dtype=np.uint64), out=out[1:])
    return out


def _prefix(values: np.ndarray) -> np.ndarray:
    """pref[i] = sum_{j<i} (v_j + 1) * B^j mod 2^64 (+1 so a zero token still counts)."""
    pref = np.zeros(values.size + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        np.cumsum((values.astype(np.uint64) + np.uint64(1)) * _powers(_BASE, values.size), out=pref[1:])
    return pref


def iter_window_hashes(tokens: np.ndarray, k: int, chunk: int = 1 << 20) -> Iterator[tuple[int, np.ndarray]]:
    """(p0, fingerprints of the windows tokens[p:p+k] for p = p0, p0+1, ...) in chunks: memory follows the chunk."""
    n = tokens.size - k + 1
    for lo in range(0, max(n, 0), chunk):
        hi = min(lo + chunk, n)
        pref = _prefix(tokens[lo : hi + k - 1])
        with np.errstate(over="ignore"):
            # (pref[p+k] - pref[p]) / B^p: the window's hash independent of where the chunk starts
            yield lo, mix64((pref[k:] - pref[:-k]) * _powers(_BASE_INV, hi - lo))


def window_hashes(tokens: np.ndarray, k: int, chunk: int = 1 << 20) -> np.ndarray:
    """64-bit fingerprint of every window tokens[p:p+k], p = 0..n-k (empty when n < k)."""
    out = np.empty(max(tokens.size - k + 1, 0), dtype=np.uint64)
    for lo, h in iter_window_hashes(tokens, k, chunk):
        out[lo : lo + h.size] = h
    return out


def shingle_hashes(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the word n-grams of each text (words split on ASCII whitespace), flat, with row offsets.

    A text with fewer than n words gets one shingle (all its words); an empty text gets none. Word hashes are
    polynomial hashes of the word's UTF-8 bytes; an n-gram's hash combines its words' hashes by position.
    """
    data = np.frombuffer("\n".join(texts).encode("utf-8", errors="surrogatepass"), dtype=np.uint8)
    ws = _WHITESPACE[data]
    # word starts/ends: transitions between whitespace and non-whitespace
    edges = np.flatnonzero(np.diff(np.concatenate(([1], ws.view(np.int8), [1]))))
    starts, ends = edges[0::2], edges[1::2]
    pref = _prefix(data)
    with np.errstate(over="ignore"):
        words = mix64((pref[ends] - pref[starts]) * _powers(_BASE_INV, data.size)[starts])
    # which text each word belongs to: texts are joined by "\n" (whitespace), so words never straddle two texts
    text_ends = np.cumsum([len(t.encode("utf-8", errors="surrogatepass")) + 1 for t in texts])
    word_text = np.searchsorted(text_ends, starts, side="right")
    counts = np.bincount(word_text, minlength=len(texts))
    word_off = np.concatenate(([0], np.cumsum(counts)))
    shingle_counts = np.where(counts >= n, counts - n + 1, np.minimum(counts, 1))
    row_off = np.concatenate(([0], np.cumsum(shingle_counts))).astype(np.uint64)
    out = np.empty(int(row_off[-1]), dtype=np.uint64)
    full = counts >= n
    if full.any():
        # n-gram hash over the whole word stream, then keep the n-grams that lie inside one text
        grams = np.zeros(max(words.size - n + 1, 0), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(n):
                grams += mix64(words[j : j + grams.size] + np.uint64(j + 1))
        keep = np.zeros(grams.size, dtype=bool)
        for t in np.flatnonzero(full):  # vectorizing this mask costs more than the loop for realistic doc counts
            keep[word_off[t] : word_off[t + 1] - n + 1] = True
        out[np.repeat(full, shingle_counts)] = mix64(grams[keep])
    short = (counts > 0) & ~full
    if short.any():
        with np.errstate(over="ignore"):
            whole = np.add.reduceat(mix64(words + np.uint64(1)), word_off[:-1][counts > 0])
        out[np.repeat(short, shingle_counts)] = mix64(whole[short[counts > 0]])
    return out, row_off


def minhash_signatures(texts: list[str], ngram: int, num_perm: int, seed: int) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures of the texts' word n-gram sets (rensa's R-MinHash)."""
    from rensa import RMinHash

    hashes, offsets = shingle_hashes(texts, ngram)
    if not texts:
        return np.zeros((0, num_perm), dtype=np.uint32)
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, num_perm, seed)
    return np.asarray(matrix.to_rows(), dtype=np.uint32).reshape(len(texts), num_perm)


def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.1) -> tuple[int, int]:
    """(bands, rows) minimizing the weighted false-positive plus false-negative probability mass at the threshold.

    datasketch's MinHashLSH criterion: integrate P(candidate | s) = 1 - (1 - s^r)^b below the threshold (false
    positives) and its complement above it (false negatives). The audit verifies every candidate pair with its
    MinHash estimate afterwards, so false positives only cost time: it weights them 0.1 (datasketch: 0.5) to keep
    recall high just above the threshold.
    """
    best, best_err = (1, num_perm), math.inf
    lo, hi = np.linspace(0, threshold, 200), np.linspace(threshold, 1, 200)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - lo**r) ** b, lo)
            fn = np.trapezoid((1 - hi**r) ** b, hi)
            err = float(fp_weight * fp + (1 - fp_weight) * fn)
            if err < best_err:
                best, best_err = (b, r), err
    return best


def candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(m, 2) pairs (leader, member) of rows that agree on every value of at least one band, leader < member.

    Each band's bucket is linked as a star around its first row: with union-find over verified pairs this finds the
    same clusters as all pairs in the bucket while comparing len(bucket) - 1 pairs instead of len^2 / 2.
    """
    n = signatures.shape[0]
    pairs = []
    rng = np.random.default_rng(0x5EED)
    for b in range(bands):
        block = signatures[:, b * rows : (b + 1) * rows].astype(np.uint64)
        mult = rng.integers(1, 1 << 63, size=rows, dtype=np.uint64) | np.uint64(1)
        with np.errstate(over="ignore"):
            keys = mix64((block * mult).sum(axis=1, dtype=np.uint64))
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        new = np.concatenate(([True], sk[1:] != sk[:-1]))
        group_start = np.maximum.accumulate(np.where(new, np.arange(n), 0))
        member = ~new
        if member.any():
            pairs.append(np.stack([order[group_start[member]], order[member]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    allp = np.concatenate(pairs)
    allp.sort(axis=1)
    return np.unique(allp, axis=0)


def estimated_jaccard(signatures: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Share of equal MinHash values per pair: an unbiased estimate of the pair's Jaccard similarity."""
    if pairs.size == 0:
        return np.zeros(0)
    out = np.empty(len(pairs))
    for lo in range(0, len(pairs), 1 << 16):
        p = pairs[lo : lo + (1 << 16)]
        out[lo : lo + len(p)] = (signatures[p[:, 0]] == signatures[p[:, 1]]).mean(axis=1)
    return out


def union_find(n: int, pairs: np.ndarray) -> np.ndarray:
    """Cluster label (the smallest member's index) of each of n items joined by the pairs."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs.tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(n)], dtype=np.int64)
