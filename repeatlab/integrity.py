"""Checks that what a step reads is what an earlier step wrote: sha256 against the hash recorded at write time.

- plan.npy / repeated.npy against plan.json's plan_sha256 / repeated_sha256 (train, before anything is trained).
- A checkpoint's model.pt against its state.json (evaluate; train's resume checks every file of a checkpoint).
- Corpus shards against manifest.json, once per process and file (the check reads the whole shard; a process that
  opens train.bin ten times pays once).
- Eval records: eval.json carries `record_sha256` of its own content (without that field); readers check it.

A mismatch is an IntegrityError, one line naming the file, the expected and found hash and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Any

from repeatlab import layout, storage
from repeatlab.errors import IntegrityError

RECORD_HASH_FIELD = "record_sha256"
_verified: set[tuple] = set()  # (local path, size, mtime_ns, expected sha256) checked in this process
_lock = threading.Lock()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def check_bytes(url: str, data: bytes, expected: str | None, recorded_in: str, remedy: str) -> None:
    """Raise IntegrityError when data's sha256 differs from `expected` (no check when nothing was recorded)."""
    if not expected:
        return
    found = sha256_bytes(data)
    if found != expected:
        raise IntegrityError(
            f"{url}: sha256 {found[:12]}... does not match {expected[:12]}... recorded in "
            f"{recorded_in} (the file is corrupt or was changed); {remedy}"
        )


def verify_local_file(url: str, path: str, expected: str | None, recorded_in: str, remedy: str) -> None:
    """Check a local file (or the local cached copy of `url`) once per process and file version."""
    if not expected:
        return
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, expected)
    with _lock:
        if key in _verified:
            return
    found = sha256_file(path)
    if found != expected:
        raise IntegrityError(
            f"{url}: sha256 {found[:12]}... does not match {expected[:12]}... recorded in "
            f"{recorded_in} (the file is corrupt or was changed); {remedy}"
        )
    with _lock:
        _verified.add(key)


def verify_shard(corpus_url: str, split_info: dict, path: str) -> None:
    """A corpus shard (already local: the file itself, or its cached copy) against manifest.json's sha256."""
    verify_local_file(
        storage.join(corpus_url, split_info["file"]),
        path,
        split_info.get("sha256"),
        layout.Corpus(corpus_url).manifest,
        "prepare the corpus again (repeatlab prepare) after removing its folder",
    )


def verify_plan(run_url: str, plan_info: dict) -> None:
    """plan.npy and repeated.npy against the hashes mix wrote into plan.json."""
    run = layout.Run(run_url)
    for url, field in ((run.plan_npy, "plan_sha256"), (run.repeated_npy, "repeated_sha256")):
        verify_local_file(
            url,
            storage.cached_local_copy(url),
            plan_info.get(field),
            run.plan_json,
            "remove plan.json, plan.npy and repeated.npy and build the plan again (repeatlab mix)",
        )


def seal_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record with `record_sha256`: the sha256 of its canonical JSON without that field."""
    # through JSON first, so the digest is of exactly what a reader will load (numpy scalars, tuples)
    body = json.loads(
        json.dumps({k: v for k, v in record.items() if k != RECORD_HASH_FIELD}, default=storage._json_default)
    )
    return {**body, RECORD_HASH_FIELD: _record_digest(body)}


def check_record(url: str, record: Any) -> Any:
    """Raise IntegrityError when a sealed record's content no longer matches its record_sha256; returns it.
    Records written before sealing existed (no field) pass unchecked."""
    if not isinstance(record, dict) or RECORD_HASH_FIELD not in record:
        return record
    body = {k: v for k, v in record.items() if k != RECORD_HASH_FIELD}
    if _record_digest(body) != record[RECORD_HASH_FIELD]:
        raise IntegrityError(
            f"{url}: content does not match its {RECORD_HASH_FIELD} (the record is corrupt or was "
            "edited); remove it and evaluate the run again (repeatlab evaluate)"
        )
    return record


def _record_digest(body: dict) -> str:
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode())
