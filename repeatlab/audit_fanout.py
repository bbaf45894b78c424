"""The audit as map/reduce over groups of input files, for the fan-out pipeline (pipelines/audit_corpus.py).

plan_groups: the corpus's input files (prepare's order) cut into contiguous groups.
map_group: one group read as the single-process scan reads it (content hashes, MinHash signatures of the group's
    first copies, token shards) plus the cross-shard fingerprint spill of its shards; all written under
    `<work_url>/group-NNNNN/` in storage.
reduce_groups: reads every group's partial results FROM STORAGE (never through KFP outputs: dsl.Collected over a
    ParallelFor is not resolved by the Kubeflow 1.10 backends, docs/deploy.md), merges content ids in corpus order
    (so clusters, first copies and examples are those of the single-process scan), sums the fingerprint partitions
    and runs the same measurement (repeatlab.audit_scan._measure). The result equals `repeatlab audit` on the whole
    corpus, except the shard count: group boundaries also cut shards.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from repeatlab import layout, storage
from repeatlab.audit_scan import (
    PARTITION_BITS,
    Scan,
    ScanSettings,
    _FingerprintCounter,
    _measure,
    _read,
    _Shards,
    check_signature_memory,
    load_tokenizer,
    resolve_corpus,
    spill_fingerprints,
)
from repeatlab.config import CorpusConfig
from repeatlab.errors import ConfigError, CorpusError

log = logging.getLogger(__name__)


def work_url_for(out_url: str, work_url: str = "") -> str:
    """Where the partial results go: work_url, or <out_url>/work."""
    return work_url or storage.join(out_url, "work")


def _group_url(work_url: str, index: int) -> str:
    return storage.join(work_url, f"group-{index:05d}")


def plan_groups(url: str, groups: int, corpus_cfg: CorpusConfig | None = None) -> list[list[str]]:
    """The input files in prepare's order, cut into at most `groups` contiguous non-empty groups."""
    from repeatlab import corpus

    if not (isinstance(groups, int) and groups >= 1):
        raise ConfigError(f"--groups: {groups!r} is not allowed: an integer >= 1 (map steps, one per file group)")
    read_url, _, _ = resolve_corpus(url, corpus_cfg)
    files = corpus.list_input_files(read_url)
    n = min(groups, len(files))
    bounds = np.linspace(0, len(files), n + 1).round().astype(int)
    return [files[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def write_plan(url: str, groups: int, work_url: str, corpus_cfg: CorpusConfig | None = None) -> list[int]:
    """Plan the groups and store them at `<work_url>/plan.json` (the map and reduce steps read it); returns the
    group indexes the pipeline's ParallelFor iterates over."""
    plan = plan_groups(url, groups, corpus_cfg)
    storage.write_json(storage.join(work_url, layout.AUDIT_PLAN), {"corpus_url": url, "groups": plan})
    return list(range(len(plan)))


def read_plan(work_url: str) -> list[list[str]]:
    plan_url = storage.join(work_url, layout.AUDIT_PLAN)
    if not storage.exists(plan_url):
        raise CorpusError(f"{plan_url}: no plan; the audit's plan step did not run or work_url changed")
    return storage.read_json(plan_url)["groups"]


def map_group(
    url: str,
    files: list[str],
    index: int,
    work_url: str,
    settings: ScanSettings,
    corpus_cfg: CorpusConfig | None = None,
    tokenizer: str = "byte",
) -> str:
    """Read one group of files and write its partial results to `<work_url>/group-<index>/`; returns that URL."""
    settings.check()
    tok = load_tokenizer(tokenizer)
    _, fmt, eff = resolve_corpus(url, corpus_cfg)
    dtype = np.dtype(np.uint8) if tok.vocab_size <= 256 else np.dtype(np.uint32)
    out = _group_url(work_url, index)
    storage.remove(out, recursive=True)  # a rerun or retry: no file of an earlier run may survive into the reduce
    folder = tempfile.mkdtemp(prefix="repeatlab-audit-map-")
    try:
        t0 = time.perf_counter()
        infos = [{"path": f} for f in files]
        shards = _Shards(folder, settings.shard_tokens, dtype)
        r = _read(url, infos, fmt, eff, settings, tok, shards, log.info)
        spill = os.path.join(folder, "spill")
        os.makedirs(spill)
        counter = _FingerprintCounter(spill)
        for i in range(len(shards.paths)):
            spill_fingerprints(counter, shards.load(i), settings.min_span)
        for i, path in enumerate(shards.paths):
            storage.write_bytes(storage.join(out, f"shard-{i:05d}.npy"), open(path, "rb").read())
        for part in range(1 << PARTITION_BITS):
            path = os.path.join(spill, f"h{part}")
            if os.path.exists(path):
                storage.write_bytes(storage.join(out, f"h{part}"), open(path, "rb").read())
        sig = np.concatenate(r["signatures"]) if r["signatures"] else np.zeros((0, settings.num_perm), dtype=np.uint32)
        arrays: dict[str, np.ndarray] = {
            "keys": np.frombuffer(b"".join(r["content_keys"]), dtype=np.uint8).reshape(-1, 16),
            "doc_content": np.asarray(r["doc_content"], dtype=np.int64),
            "doc_tokens": np.asarray(r["doc_tokens"], dtype=np.int64),
            "signatures": sig,
            "shard_first_doc": np.asarray(shards.first_doc, dtype=np.int64),
        }
        for name, arr in arrays.items():
            storage.write_bytes(storage.join(out, f"{name}.npy"), _npy(arr))
        meta = {
            "index": index,
            "files": infos,
            "empty": r["empty"],
            "previews": r["previews"],
            "shards": len(shards.paths),
            "settings": dataclasses.asdict(settings),
            "tokenizer": tokenizer,
            "read_s": time.perf_counter() - t0,
            "minhash_s": r["minhash_s"],
        }
        storage.write_json(storage.join(out, "group.json"), meta)  # written last: its presence means complete
        log.info("audit map: group %d, %d files, %d documents -> %s", index, len(files), len(r["doc_content"]), out)
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _npy(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _load(url: str) -> np.ndarray:
    import io

    return np.load(io.BytesIO(storage.read_bytes(url)))


def reduce_groups(
    url: str,
    groups: int,
    work_url: str,
    settings: ScanSettings,
    corpus_cfg: CorpusConfig | None = None,
    tokenizer: str = "byte",
) -> Scan:
    """Merge the map steps' partial results (read from storage) into the scan of the whole corpus."""
    settings.check()
    tok = load_tokenizer(tokenizer)
    dtype = np.dtype(np.uint8) if tok.vocab_size <= 256 else np.dtype(np.uint32)
    folder = tempfile.mkdtemp(prefix="repeatlab-audit-reduce-")
    try:
        return _reduce(url, groups, work_url, settings, tokenizer, tok, dtype, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _group_meta(work_url: str, index: int, groups: int, settings: Any, tokenizer: str) -> tuple[str, dict]:
    """(URL, group.json) of one map step's group, checked to be complete and made with these settings."""
    gurl = _group_url(work_url, index)
    meta_url = storage.join(gurl, "group.json")
    if not storage.exists(meta_url):
        raise CorpusError(f"{gurl}: no group.json: map step {index} of {groups} did not finish; run it again")
    meta = storage.read_json(meta_url)
    if meta["settings"] != dataclasses.asdict(settings) or meta["tokenizer"] != tokenizer:
        raise CorpusError(
            f"{gurl}: written with other settings ({json.dumps(meta['settings'])}, tokenizer "
            f"{meta['tokenizer']!r}); clear {work_url} and run the audit again"
        )
    return gurl, meta


def _copy_group_shards(gurl: str, n_shards: int, folder: str, shards: Any, docs_before: int) -> None:
    """A group's token shards into the reduce's folder (renumbered), and its fingerprint spill appended to the
    reduce's partitions."""
    first_doc = _load(storage.join(gurl, "shard_first_doc.npy"))
    for i in range(n_shards):
        path = os.path.join(folder, f"shard-{len(shards.paths):05d}.npy")
        with open(path, "wb") as fh:
            fh.write(storage.read_bytes(storage.join(gurl, f"shard-{i:05d}.npy")))
        shards.paths.append(path)
        shards.first_doc.append(int(first_doc[i]) + docs_before)
    for part in range(1 << PARTITION_BITS):
        h_url = storage.join(gurl, f"h{part}")
        if storage.exists(h_url):
            with open(os.path.join(folder, f"h{part}"), "ab") as fh:
                fh.write(storage.read_bytes(h_url))


def _reduce(url, groups, work_url, settings, tokenizer, tok, dtype, folder) -> Scan:
    t0 = time.perf_counter()
    shards = _Shards(folder, settings.shard_tokens, dtype)
    counter = _FingerprintCounter(folder)
    content_ids: dict[bytes, int] = {}
    doc_content: list[np.ndarray] = []
    doc_tokens: list[np.ndarray] = []
    signatures: list[np.ndarray] = []
    previews: list[str] = []
    infos: list[dict] = []
    empty = 0
    read_s = minhash_s = 0.0
    for index in range(groups):
        gurl, meta = _group_meta(work_url, index, groups, settings, tokenizer)
        keys = _load(storage.join(gurl, "keys.npy"))
        sig = _load(storage.join(gurl, "signatures.npy"))
        local_to_global = np.empty(len(keys), dtype=np.int64)
        for j, key in enumerate(keys):  # groups in corpus order, keys in first-appearance order: ids as one scan
            gid = content_ids.setdefault(key.tobytes(), len(content_ids))
            local_to_global[j] = gid
            if gid == len(previews):
                previews.append(meta["previews"][j])
                signatures.append(sig[j : j + 1])
        check_signature_memory(url, len(content_ids), settings)
        _copy_group_shards(gurl, meta["shards"], folder, shards, sum(a.size for a in doc_content))
        doc_content.append(local_to_global[_load(storage.join(gurl, "doc_content.npy"))])
        doc_tokens.append(_load(storage.join(gurl, "doc_tokens.npy")))
        infos += meta["files"]
        empty += meta["empty"]
        read_s += meta["read_s"] - meta["minhash_s"]
        minhash_s += meta["minhash_s"]
    all_content = np.concatenate(doc_content) if doc_content else np.zeros(0, dtype=np.int64)
    if not all_content.size:
        raise CorpusError(
            f"{url}: no non-empty documents ({empty} empty) in {len(infos)} file(s); the audit "
            "needs at least one document with text"
        )
    t = time.perf_counter()
    exact_counter: _FingerprintCounter | None = counter
    if len(shards.paths) > 1:
        counter.finish()  # sum each fingerprint partition over all groups
    else:
        exact_counter = None  # one shard in all: the suffix array alone is exact
    timings = {
        "read_tokenize_s": read_s,
        "minhash_s": minhash_s,
        "fingerprint_merge_s": time.perf_counter() - t,
        "merge_s": time.perf_counter() - t0,
    }
    return _measure(
        infos,
        empty,
        all_content.tolist(),
        np.concatenate(doc_tokens).tolist(),
        signatures,
        previews,
        shards,
        settings,
        tok,
        log.info,
        timings,
        t0,
        exact_counter,
    )


def publish_kfp_outputs(result: dict, out_url: str, audit_json, html, markdown, metrics) -> None:
    """Write the report under out_url, copy it into the KFP artifacts and log the headline numbers as metrics."""
    from repeatlab.audit_report import write_audit_report

    paths = write_audit_report(result, out_url)
    for artifact, name in ((audit_json, "audit.json"), (html, "index.html"), (markdown, "report.md")):
        artifact.metadata["uri"] = paths[name]
        os.makedirs(os.path.dirname(artifact.path), exist_ok=True)
        with open(artifact.path, "wb") as fh:
            fh.write(storage.read_bytes(paths[name]))
    repeated = sum(r["fraction"] for r in result["profile"] if r["e_low"] >= 2)
    metrics.log_metric("repeated_token_share", repeated)
    metrics.log_metric("exact_duplicate_documents", result["exact"]["duplicate_documents"])
    metrics.log_metric("near_duplicate_clusters", result["near"]["clusters"])
    if result["placement"] is not None:
        flagged = [b for b in result["placement"]["buckets"] if b["in_region"]]
        metrics.log_metric("flagged_token_share", sum(b["fraction"] for b in flagged))
