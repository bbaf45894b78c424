"""Child processes that die with their launcher.

torchrun starts its workers in new sessions (torch.distributed.elastic's SubprocessHandler uses
start_new_session=True), so killing the launcher's process group does not reach them, and a worker whose launcher
died keeps training and writing into the run folder. Three layers tie them together:

- `run_tied(command)`: the child (torchrun) gets its own process group and PR_SET_PDEATHSIG=SIGTERM (the kernel
  sends it SIGTERM when the launcher dies, even by SIGKILL); SIGTERM/SIGINT/SIGHUP received by the launcher are
  forwarded to it; when the launcher returns or raises, whatever is left of the child's tree (its descendants, found
  through /proc, since the workers are in other sessions) gets SIGTERM, then SIGKILL after a grace period.
- `die_with_parent()`: called by every trainer process at start (the backstop): PR_SET_PDEATHSIG=SIGTERM, so a worker
  dies when torchrun dies, however torchrun died.
- torchrun itself forwards SIGTERM to its workers and waits for them.

Linux only for the kernel parts (prctl); elsewhere the forwarding and the tree kill still apply.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
KILL_GRACE_S = float(os.environ.get("REPEATLAB_KILL_GRACE_S", "20"))


def die_with_parent(sig: int = signal.SIGTERM, expected_parent: int | None = None) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies; True when set.

    If the parent died before the call (this process was re-parented), exit at once: the request would never fire.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), sig)
    return True


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children first), read from /proc; empty where /proc is absent."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_tree(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the child, its process group and all its descendants; SIGKILL whatever is left after grace_s."""
    tree = descendants(proc.pid)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    _signal_all([proc.pid, *tree], signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        alive = [p for p in [proc.pid, *tree] if _alive(p, proc)]
        if not alive:
            break
        time.sleep(0.1)
    tree = sorted(set(tree) | set(descendants(proc.pid)))
    _signal_all([proc.pid, *tree], signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)


def _alive(pid: int, proc: subprocess.Popen) -> bool:
    if pid == proc.pid:
        return proc.poll() is None
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b")")[-1].split()[0] != b"Z"  # a zombie has exited
    except OSError:
        return False


def run_tied(command: list[str], env: dict[str, str] | None = None, **popen_kwargs) -> int:
    """Run `command` as a child that cannot outlive this process; returns its exit code.

    Signals this process receives (SIGTERM, SIGINT, SIGHUP) are forwarded to the child, which then has KILL_GRACE_S
    to exit (torchrun stops its workers); on any exit from here, the remaining tree is killed.
    """
    launcher = os.getpid()
    proc = subprocess.Popen(
        command, env=env, process_group=0, preexec_fn=lambda: die_with_parent(signal.SIGTERM, launcher), **popen_kwargs
    )
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in FORWARDED_SIGNALS:
            previous[sig] = signal.signal(sig, forward)
    try:
        while True:
            try:
                rc = proc.wait(timeout=KILL_GRACE_S if received else None)
                break
            except subprocess.TimeoutExpired:
                log.warning(
                    "child %d did not exit within %.0f s of signal %s; killing it", proc.pid, KILL_GRACE_S, received[-1]
                )
                kill_tree(proc, grace_s=1.0)
        if received:
            return 128 + int(received[0])
        return rc
    finally:
        kill_tree(proc, grace_s=KILL_GRACE_S if proc.poll() is None else 2.0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
