"""One writer per run folder: a lease object `{run}/lease.json` in the run's own storage.

The trainer (rank 0) holds the lease while it trains and evaluates a run:
- Acquire: create lease.json atomically (storage.create_exclusive: link(2) on file://, `If-None-Match: *` on S3,
  `ifGenerationMatch=0` on GCS) with owner, host, pid, the pid's start time, a random token, heartbeat and expiry.
- Held by someone else and alive: wait (polling) up to `wait_s`, then fail with one line naming the owner.
- Stale: expired (no heartbeat for ttl_s), or held by a dead process on this host (pid gone, or reused: the start
  time differs). The stale record is removed only if it is still the same record (same token), then the lease is
  created atomically again: of several contenders, exactly one create succeeds.
- Heartbeat: a daemon thread rewrites the record every ttl_s / 4 after checking the token is still ours. Object
  stores have no compare-and-swap on overwrite that all three backends share, so between our read and our write
  another process that judged the lease stale could take it: the next heartbeat then sees a foreign token, marks
  the lease lost, and the trainer stops at its next step (`check()`) before writing anything more. A lease is only
  judged stale after ttl_s without a heartbeat (60 s by default, 15 heartbeats' worth of margin at the default rate)
  or after its process is seen dead, so this needs a trainer stalled for longer than the TTL.
- Release: remove lease.json if it is still ours.

Settings (environment): REPEATLAB_LEASE_TTL_S (60), REPEATLAB_LEASE_WAIT_S (how long a second trainer waits;
default 86400), REPEATLAB_LEASE_POLL_S (5).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from repeatlab import layout, storage
from repeatlab.errors import StorageError, TrainError

log = logging.getLogger(__name__)
LEASE_NAME = layout.LEASE


class LeaseError(TrainError):
    """Another process holds the run's lease, or this process lost it."""


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise TrainError(f"{name}: {os.environ[name]!r} is not allowed: a number of seconds") from None


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _describe(record: dict) -> str:
    age = time.time() - float(record.get("heartbeat", 0))
    return (
        f"{record.get('owner', '?')} (host {record.get('host', '?')}, pid {record.get('pid', '?')}, "
        f"last heartbeat {age:.0f} s ago)"
    )


def stale_reason(record: dict, now: float | None = None) -> str | None:
    """Why a lease record no longer protects anything (None while its owner is alive)."""
    now = time.time() if now is None else now
    if now > float(record.get("expires", 0)):
        return f"expired {now - float(record.get('expires', 0)):.0f} s ago"
    if record.get("host") == socket.gethostname():
        pid = int(record.get("pid", -1))
        started = _process_start(pid) if pid > 0 else None
        if started is None:
            return f"its process {pid} on this host is gone"
        if record.get("pid_start") and started != record.get("pid_start"):
            return f"its process {pid} on this host is gone (the pid was reused)"
    return None


class Lease:
    """The lease on one run folder, held by this process (see the module docstring)."""

    def __init__(
        self, run_url: str, owner: str = "repeatlab.train", ttl_s: float | None = None, job: str | None = None
    ):
        self.url = storage.join(run_url, LEASE_NAME)
        self.owner = owner
        self.job = job  # the torchrun job whose rank 0 holds the lease: its other ranks wait for this
        self.ttl_s = ttl_s if ttl_s is not None else _env_float("REPEATLAB_LEASE_TTL_S", 60.0)
        self.token = uuid.uuid4().hex
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        now = time.time()
        return {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "token": self.token,
            "heartbeat": now,
            "expires": now + self.ttl_s,
            "ttl_s": self.ttl_s,
            "job": self.job,
        }

    def _read(self) -> dict | None:
        try:
            record = storage.read_json(self.url)
        except StorageError:
            return None if not storage.exists(self.url) else {}  # an unreadable record: judged by its age below
        return record if isinstance(record, dict) else {}

    def try_acquire(self) -> dict | None:
        """Take the lease if it is free or stale; None on success, else the live holder's record."""
        for _ in range(5):
            if storage.create_exclusive(self.url, json.dumps(self._record()).encode()):
                return None
            current = self._read()
            if current is None:
                continue  # released between our create and our read: try again
            reason = stale_reason(current)
            if reason is None:
                return current
            again = self._read()
            if again is not None and again.get("token") == current.get("token"):
                log.warning("lease %s: taking over a stale lease of %s: %s", self.url, _describe(current), reason)
                storage.remove(self.url)
        return self._read() or {}

    def acquire(self, wait_s: float | None = None, poll_s: float | None = None, on_wait=None) -> None:
        """Take the lease, waiting while a live owner holds it; LeaseError naming the owner after wait_s."""
        wait_s = wait_s if wait_s is not None else _env_float("REPEATLAB_LEASE_WAIT_S", 86_400.0)
        poll_s = poll_s if poll_s is not None else _env_float("REPEATLAB_LEASE_POLL_S", 5.0)
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            holder = self.try_acquire()
            if holder is None:
                self._start_heartbeat()
                return
            if time.monotonic() >= deadline:
                raise LeaseError(
                    f"{self.url}: this run is being trained by {_describe(holder)}; waited {wait_s:.0f} s "
                    "(REPEATLAB_LEASE_WAIT_S); stop that trainer, or wait for it to finish"
                )
            if not told and on_wait is not None:
                on_wait(f"waiting for {self.url}: the run is being trained by {_describe(holder)}")
                told = True
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="repeatlab-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except StorageError as exc:  # a storage hiccup: the lease holds until it expires; try again
                log.warning("lease %s: heartbeat failed: %s", self.url, exc)
            if self.lost:
                return

    def renew(self) -> None:
        current = self._read()
        if not current or current.get("token") != self.token:
            self.lost = (
                f"{self.url}: lease lost to {_describe(current)}"
                if current
                else f"{self.url}: lease removed by another process"
            )
            return
        storage.write_text(self.url, json.dumps(self._record()))

    def check(self) -> None:
        """Raise LeaseError once the lease was lost (another trainer took over this run folder)."""
        if self.lost:
            raise LeaseError(f"{self.lost}; stopping so that only one trainer writes this run")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            current = self._read()
            if current and current.get("token") == self.token:
                storage.remove(self.url)
        except StorageError as exc:
            log.warning("lease %s: could not release: %s (it expires after %.0f s)", self.url, exc, self.ttl_s)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def wait_for_job(
    run_url: str, job: str, done_name: str = layout.DONE, wait_s: float | None = None, poll_s: float | None = None
) -> None:
    """Ranks other than 0: wait until rank 0 of the same torchrun job holds the lease (or the run is done), so they
    do not time out in the process group's rendezvous while rank 0 waits for another trainer."""
    wait_s = wait_s if wait_s is not None else _env_float("REPEATLAB_LEASE_WAIT_S", 86_400.0)
    poll_s = poll_s if poll_s is not None else _env_float("REPEATLAB_LEASE_POLL_S", 5.0)
    url, done = storage.join(run_url, LEASE_NAME), storage.join(run_url, done_name)
    deadline = time.monotonic() + wait_s + 2 * poll_s
    while time.monotonic() < deadline:
        if storage.exists(done):
            return
        try:
            record = storage.read_json(url)
        except StorageError:
            record = None
        if isinstance(record, dict) and record.get("job") == job:
            return
        time.sleep(min(poll_s, 0.25))
    raise LeaseError(f"{url}: rank 0 of this job did not get the run's lease within {wait_s:.0f} s")
