"""repeatlab.storage against every backend: a local folder, memory://, s3:// (SeaweedFS) and gs:// (fake-gcs-server).

The s3:// and gs:// cases run against real servers on loopback (tests/fixtures_storage.py) and carry the `storage`
marker; `pytest -m "not storage"` runs the rest without them.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
import uuid

import pytest
from fixtures_storage import free_ports

from repeatlab import storage
from repeatlab.errors import StorageError

BACKENDS = [
    pytest.param("file", id="file"),
    pytest.param("memory", id="memory"),
    pytest.param("s3", id="s3", marks=pytest.mark.storage),
    pytest.param("gs", id="gs", marks=pytest.mark.storage),
]


@pytest.fixture(autouse=True)
def _reset_storage_options():
    storage.configure(None)
    yield
    storage.configure(None)


@pytest.fixture(params=BACKENDS)
def root(request, tmp_path) -> str:
    """A fresh, empty storage root on one backend."""
    kind = request.param
    if kind == "file":
        return storage.normalize_root(str(tmp_path / "root"))
    if kind == "memory":
        return f"memory://repeatlab-test-{uuid.uuid4().hex[:12]}"
    if kind == "s3":
        return request.getfixturevalue("s3_env") + "/root"
    return request.getfixturevalue("gcs_env") + "/root"


# --------------------------------------------------------------------------------------------- every backend


def test_bytes_text_json_roundtrip(root):
    data = bytes(range(256)) * 3 + b"\r"  # a trailing \r: some emulators drop it
    storage.write_bytes(storage.join(root, "a", "blob.bin"), data)
    assert storage.read_bytes(storage.join(root, "a", "blob.bin")) == data

    storage.write_text(storage.join(root, "a", "note.txt"), "héllo\n")
    assert storage.read_text(storage.join(root, "a", "note.txt")) == "héllo\n"

    obj = {"f": 0.5, "E": 32, "nested": {"list": [1, 2, 3]}, "s": "x"}
    storage.write_json(storage.join(root, "run", "plan.json"), obj)
    assert storage.read_json(storage.join(root, "run", "plan.json")) == obj
    text = storage.read_text(storage.join(root, "run", "plan.json"))
    assert text.endswith("\n") and text == json.dumps(obj, indent=2, sort_keys=True) + "\n"

    storage.write_bytes(storage.join(root, "empty"), b"")
    assert storage.read_bytes(storage.join(root, "empty")) == b""


def test_overwrite_replaces_content(root):
    url = storage.join(root, "x.txt")
    storage.write_text(url, "first version, longer")
    storage.write_text(url, "second")
    assert storage.read_text(url) == "second"
    assert storage.size(url) == 6


def test_read_range(root):
    url = storage.join(root, "shard.bin")
    data = os.urandom(10_000)
    storage.write_bytes(url, data)
    assert storage.read_range(url, 0, 10) == data[:10]
    assert storage.read_range(url, 4_000, 4_321) == data[4_000:4_321]
    assert storage.read_range(url, 9_990, 10_000) == data[9_990:]
    assert storage.read_range(url, 123, 123) == b""
    with pytest.raises(StorageError, match="invalid byte range"):
        storage.read_range(url, 10, 5)


def test_exists_size_remove(root, monkeypatch):
    url = storage.join(root, "d", "f.bin")
    assert not storage.exists(url)
    storage.write_bytes(url, b"12345")
    assert storage.exists(url)
    assert storage.exists(storage.join(root, "d"))  # a "folder" (prefix) exists once it holds a file
    assert storage.size(url) == 5
    storage.remove(url)
    assert not storage.exists(url)
    storage.remove(url)  # removing what is not there is not an error
    storage.write_bytes(url, b"12345")
    fs, path = storage.filesystem(url)
    fs.rm(path)  # ... nor what another process removed after our exists() said it was there:
    real_exists = type(fs).exists
    monkeypatch.setattr(type(fs), "exists", lambda self, p, **kw: p == path or real_exists(self, p, **kw))
    storage.remove(url)

    storage.write_bytes(storage.join(root, "tree", "a"), b"a")
    storage.write_bytes(storage.join(root, "tree", "sub", "b"), b"b")
    storage.remove(storage.join(root, "tree"), recursive=True)
    assert not storage.exists(storage.join(root, "tree", "sub", "b"))
    # No file is left. (SeaweedFS removes emptied folders asynchronously, so a folder name may linger a moment.)
    fs, path = storage.filesystem(storage.join(root, "tree"))
    assert [found for found in fs.find(path) if found.rstrip("/") != path.rstrip("/")] == []


def test_listdir(root):
    for name in ("b.json", "a.txt", "sub/c.bin", "sub/deeper/d.bin"):
        storage.write_bytes(storage.join(root, "dir", name), b"x")
    assert storage.listdir(storage.join(root, "dir")) == ["a.txt", "b.json", "sub"]
    assert storage.listdir(storage.join(root, "dir") + "/") == ["a.txt", "b.json", "sub"]
    assert storage.listdir(storage.join(root, "dir", "sub")) == ["c.bin", "deeper"]
    assert storage.listdir(storage.join(root, "missing")) == []
    assert storage.listdir(storage.join(root, "dir", "a.txt")) == []  # a file has no children
    assert "dir" in storage.listdir(root)


def test_sha256_of(root):
    url = storage.join(root, "h.bin")
    data = os.urandom(300_000)
    storage.write_bytes(url, data)
    assert storage.sha256_of(url) == hashlib.sha256(data).hexdigest()
    assert storage.sha256_of(url, chunk_bytes=4096) == hashlib.sha256(data).hexdigest()


def test_missing_file_is_a_storage_error(root, tmp_path):
    url = storage.join(root, "nope.json")
    with pytest.raises(StorageError, match="not found"):
        storage.read_bytes(url)
    with pytest.raises(StorageError):
        storage.size(url)
    if not storage.is_local(url):
        with pytest.raises(StorageError, match="not found"):
            storage.cached_local_copy(url, cache_dir=str(tmp_path / "cache"))


def test_invalid_json_is_a_storage_error(root):
    url = storage.join(root, "bad.json")
    storage.write_text(url, "{not json")
    with pytest.raises(StorageError, match="not valid JSON"):
        storage.read_json(url)


def test_cached_local_copy(root, tmp_path):
    url = storage.join(root, "corpus", "train.bin")
    data = os.urandom(50_000)
    storage.write_bytes(url, data)
    cache = tmp_path / "cache"
    path = storage.cached_local_copy(url, cache_dir=str(cache))
    assert os.path.isfile(path)
    with open(path, "rb") as fh:
        assert fh.read() == data
    if storage.is_local(url):
        assert path == storage.local_path(url)  # a local file is used in place
        return
    assert path.startswith(str(cache))
    mtime = os.stat(path).st_mtime_ns
    again = storage.cached_local_copy(url, cache_dir=str(cache))
    assert again == path and os.stat(again).st_mtime_ns == mtime  # reused, not downloaded again
    assert not [n for n in os.listdir(cache) if n.startswith(".tmp-")]

    # The same object rewritten in place with other content of the same size gets a fresh copy.
    time.sleep(0.01)
    new = os.urandom(50_000)
    storage.write_bytes(url, new)
    fresh = storage.cached_local_copy(url, cache_dir=str(cache))
    with open(fresh, "rb") as fh:
        assert fh.read() == new


def test_atomic_local_file_success(root):
    url = storage.join(root, "ckpt", "model.pt")
    with storage.atomic_local_file(url, suffix=".pt") as tmp:
        assert tmp.endswith(".pt")
        with open(tmp, "wb") as fh:
            fh.write(b"weights")
        assert not storage.exists(url)  # nothing visible before the block ends
    assert storage.read_bytes(url) == b"weights"
    assert not os.path.exists(tmp)


def test_atomic_local_file_failure_leaves_previous_content(root):
    url = storage.join(root, "state.json")
    storage.write_text(url, "previous")
    with pytest.raises(RuntimeError, match="crash"), storage.atomic_local_file(url) as tmp:
        with open(tmp, "w") as fh:
            fh.write("partial new content")
        raise RuntimeError("crash while writing")
    assert storage.read_text(url) == "previous"
    assert not os.path.exists(tmp)

    fresh = storage.join(root, "never.json")
    with pytest.raises(RuntimeError), storage.atomic_local_file(fresh) as tmp:
        with open(tmp, "w") as fh:
            fh.write("partial")
        raise RuntimeError("crash")
    assert not storage.exists(fresh)
    # No temporary leftovers next to the target either.
    assert storage.listdir(root) == ["state.json"]


# ------------------------------------------------------------------------------------------------- object stores


@pytest.mark.storage
def test_s3_write_bytes_is_one_put(s3_env, monkeypatch):
    import s3fs

    calls: list[str] = []
    original = s3fs.S3FileSystem._call_s3

    async def recording(self, method, *args, **kwargs):
        calls.append(method)
        return await original(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", recording)
    storage.write_bytes(s3_env + "/one/put.bin", os.urandom(100_000))
    assert calls == ["put_object"]


@pytest.mark.storage
@pytest.mark.parametrize("env", ["s3_env", "gcs_env"])
def test_listing_sees_other_writers(env, request):
    """Another process's writes show up: no stale fsspec listing cache."""
    root = request.getfixturevalue(env)
    folder = storage.join(root, "checkpoints")
    storage.write_bytes(storage.join(folder, "step-1"), b"1")
    assert storage.listdir(folder) == ["step-1"]
    fs, _ = storage.filesystem(folder)
    other = type(fs)(**{**fs.storage_options, "skip_instance_cache": True})
    other.pipe_file(storage.filesystem(folder)[1] + "/step-2", b"2")
    assert storage.listdir(folder) == ["step-1", "step-2"]
    assert storage.exists(storage.join(folder, "step-2"))


@pytest.mark.storage
def test_s3_requests_are_signed(s3_server, s3_env, monkeypatch):
    """The server checks signatures: a wrong secret is refused with a one-line StorageError."""
    storage.write_text(s3_env + "/secret.txt", "s")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    storage.clear_instance_caches()
    with pytest.raises(StorageError) as info:
        storage.read_text(s3_env + "/secret.txt")
    assert "\n" not in str(info.value)


@pytest.mark.storage
def test_gcs_uses_anonymous_token_against_the_emulator(gcs_server, gcs_env):
    fs, _ = storage.filesystem(gcs_env + "/x")
    assert fs.storage_options.get("token") == "anon"
    assert fs.storage_options.get("endpoint_url") == gcs_server.endpoint_url


@pytest.mark.storage
def test_server_startup_time(s3_server, gcs_server, record_property):
    record_property("seaweedfs_startup_s", round(s3_server.startup_s, 2))
    record_property("fake_gcs_startup_s", round(gcs_server.startup_s, 2))
    print(f"\nstartup: seaweedfs {s3_server.startup_s:.2f} s, fake-gcs-server {gcs_server.startup_s:.2f} s")
    assert s3_server.startup_s < 30 and gcs_server.startup_s < 30


# ---------------------------------------------------------------------------------------------- no server needed


def test_unreachable_s3_endpoint_fails_fast_with_one_line(monkeypatch):
    (port,) = free_ports(1)  # closed: nothing listens there
    monkeypatch.setenv("REPEATLAB_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    storage.configure(
        {"s3": {"config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}}}}
    )
    for action in (
        lambda u: storage.read_bytes(u),
        lambda u: storage.write_bytes(u, b"x"),
        lambda u: storage.listdir(u),
        lambda u: storage.exists(u),
    ):
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            action("s3://bucket/runs/x/plan.json")
        assert time.monotonic() - started < 5
        message = str(info.value)
        assert "\n" not in message and message.startswith("s3://bucket/runs/x")


def test_configure_drops_cached_filesystems(monkeypatch):
    pytest.importorskip("s3fs")
    monkeypatch.setenv("REPEATLAB_S3_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")  # without credentials the storage helper refuses (no anonymous)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    first, _ = storage.filesystem("s3://bucket/a")
    assert storage.filesystem("s3://bucket/b")[0] is first  # fsspec reuses instances...
    storage.configure({"s3": {"key": "k", "secret": "s"}})
    second, _ = storage.filesystem("s3://bucket/a")
    assert second is not first  # ...until the options change
    assert second.storage_options["key"] == "k"


def test_unknown_protocol():
    with pytest.raises(StorageError, match="nosuchproto"):
        storage.read_bytes("nosuchproto://bucket/x")


def test_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.normalize_root("data/root/") == f"file://{tmp_path}/data/root"
    assert storage.normalize_root(f"file://{tmp_path}/x") == f"file://{tmp_path}/x"
    assert storage.normalize_root("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert storage.local_path("rel/f.txt") == f"{tmp_path}/rel/f.txt"
    assert storage.protocol_of("gs://b/x") == "gs" and storage.protocol_of("/abs") == "file"
    assert storage.join("s3://b/", "/runs/", "p1", "", "plan.json") == "s3://b/runs/p1/plan.json"
    with pytest.raises(StorageError, match="not a local path"):
        storage.local_path("s3://b/x")
    # A relative root works end to end.
    storage.write_text("data/root/f.txt", "x")
    assert storage.read_text(storage.join(storage.normalize_root("data/root"), "f.txt")) == "x"


def test_local_writes_get_normal_file_mode(tmp_path):
    url = storage.normalize_root(str(tmp_path / "m.txt"))
    storage.write_text(url, "x")
    mode = stat.S_IMODE(os.stat(tmp_path / "m.txt").st_mode)
    assert mode == 0o666 & ~storage._umask()
    assert [p.name for p in tmp_path.iterdir()] == ["m.txt"]
