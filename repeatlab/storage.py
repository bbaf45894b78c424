"""One storage helper for local paths and fsspec URLs (file://, memory://, gs://, s3://).

Every write is atomic: local files are written to a temporary name in the same folder and renamed; remote objects are
staged in a local temporary file and uploaded in one operation (a single PUT, or a multipart/resumable upload that
the object store only makes visible when complete). A reader never sees a partial file, and a failed write leaves
what was there before.

Remote filesystems are imported lazily. Endpoints and credentials come from the environment or from
`configure(options)` (the study config's `storage.options`):
  s3://  REPEATLAB_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
  gs://  STORAGE_EMULATOR_HOST (emulators; token "anon"), GOOGLE_APPLICATION_CREDENTIALS, REPEATLAB_GCS_TOKEN
Without credentials, gs:// and s3:// fail before the first request (require_credentials) unless the study sets
`storage.anonymous: true`: no silent anonymous access (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from repeatlab.errors import StorageError

_extra_options: dict[str, dict[str, Any]] = {}
_anonymous = False  # storage.anonymous: the study opted in to unauthenticated access to gs:// and s3://
_credentials_checked: dict[tuple, bool] = {}
REMOTE_PROTOCOLS = ("s3", "gs", "gcs", "memory", "az", "abfs", "http", "https")


def configure(options: dict[str, dict[str, Any]] | None, anonymous: bool = False) -> None:
    """Set per-protocol fsspec options (e.g. {"s3": {"endpoint_url": ...}}) for the rest of the process.

    anonymous: gs:// and s3:// without credentials read and write unauthenticated (storage.anonymous); otherwise
    missing credentials are an error before the first request (see require_credentials).

    Filesystem instances made under the previous options (fsspec caches them, with their credentials, sessions and
    directory listings) are dropped, so the next call connects with the new options.
    """
    global _anonymous
    _anonymous = bool(anonymous)
    _credentials_checked.clear()
    _extra_options.clear()
    for protocol, opts in (options or {}).items():
        _extra_options[protocol] = dict(opts)
    clear_instance_caches()


def clear_instance_caches() -> None:
    """Forget every cached fsspec filesystem instance (endpoints, credentials, directory listings).

    Call after changing storage environment variables in a running process; `configure` calls it.
    """
    import sys

    if "fsspec" not in sys.modules:
        return
    from fsspec.registry import _registry

    for cls in list(_registry.values()):
        clear = getattr(cls, "clear_instance_cache", None)
        if clear is not None:
            clear()


def protocol_of(url: str) -> str:
    url = str(url)
    return url.split("://", 1)[0] if "://" in url else "file"


def is_local(url: str) -> bool:
    return protocol_of(url) == "file"


def local_path(url: str) -> str:
    """The filesystem path of a local URL (plain path or file://)."""
    if not is_local(url):
        raise StorageError(f"{url}: not a local path (expected a plain path or file://)")
    url = str(url)
    return os.path.abspath(url[len("file://") :] if url.startswith("file://") else url)


def join(base: str, *parts: str) -> str:
    out = str(base).rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def normalize_root(url: str) -> str:
    """Make a storage root absolute and canonical: a relative local path becomes file:///abs/path."""
    if is_local(url):
        return "file://" + local_path(url)
    return str(url).rstrip("/")


def _options_for(protocol: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if protocol == "s3":
        endpoint = os.environ.get("REPEATLAB_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            # region_name must not be passed against a local server: bucket creation then fails (s3fs).
            opts["client_kwargs"] = {"endpoint_url": endpoint}
        # Several processes (ranks, steps) write the same tree: a cached listing would hide their files.
        opts["use_listings_cache"] = False
    elif protocol in ("gs", "gcs"):
        # gcsfs probes the bucket type over gRPC and never caches the failure: 15 s+ per call on emulators.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
        token = os.environ.get("REPEATLAB_GCS_TOKEN")
        if token:
            opts["token"] = token
        elif emulator and emulator != "default":
            opts["token"] = "anon"
        if emulator and emulator != "default":
            # Named explicitly so that a cached instance never outlives a change of emulator.
            opts["endpoint_url"] = emulator if "://" in emulator else f"http://{emulator}"
        opts["use_listings_cache"] = False
    opts.update(_extra_options.get(protocol, {}))
    if protocol == "gcs":
        opts.update(_extra_options.get("gs", {}))
    if _anonymous:
        opts.setdefault("anon" if protocol == "s3" else "token", True if protocol == "s3" else "anon")
    return opts


CREDENTIALS_HELP = {
    "s3": (
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / a shared credentials file, or an "
        "instance or pod role), or set storage.anonymous: true to read a public bucket without credentials"
    ),
    "gs": (
        "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, run `gcloud auth application-default "
        "login`, use workload identity on GKE, or set storage.anonymous: true to read a public bucket without "
        "credentials"
    ),
}


def require_credentials(url: str, protocol: str, opts: dict[str, Any]) -> None:
    """Fail in seconds, with how to configure them, when gs:// or s3:// would run without credentials.

    Left alone, gcsfs falls back to anonymous access (a public bucket of the same name would be read) and an s3
    request without credentials fails only after botocore's whole chain. Checked once per process and settings.
    Emulators (STORAGE_EMULATOR_HOST) and explicit options (anon, token, key, profile) are the user's choice.
    """
    if protocol == "s3":
        if opts.get("anon") or opts.get("key") or opts.get("profile") or opts.get("session"):
            return
        cache_key = (
            "s3",
            *(
                os.environ.get(k)
                for k in (
                    "AWS_ACCESS_KEY_ID",
                    "AWS_PROFILE",
                    "AWS_SHARED_CREDENTIALS_FILE",
                    "AWS_CONFIG_FILE",
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                    "AWS_WEB_IDENTITY_TOKEN_FILE",
                    "AWS_EC2_METADATA_DISABLED",
                )
            ),
        )
        if cache_key not in _credentials_checked:
            import botocore.session

            _credentials_checked[cache_key] = botocore.session.get_session().get_credentials() is not None
    elif protocol in ("gs", "gcs"):
        if opts.get("token") not in (None, "google_default"):
            return
        cache_key = ("gs", os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"), os.environ.get("NO_GCE_CHECK"))
        if cache_key not in _credentials_checked:
            import google.auth
            import google.auth.exceptions

            try:
                google.auth.default()
                _credentials_checked[cache_key] = True
            except google.auth.exceptions.GoogleAuthError:
                _credentials_checked[cache_key] = False
        opts["token"] = "google_default"  # never gcsfs's silent fallback to anonymous access
    else:
        return
    if not _credentials_checked[cache_key]:
        kind = "s3" if protocol == "s3" else "gs"
        raise StorageError(
            f"{url}: no {kind}:// credentials found (and storage.anonymous is not set): {CREDENTIALS_HELP[kind]}"
        )


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a URL, with endpoint and credential options applied."""
    protocol = protocol_of(url)
    if protocol == "file":
        import fsspec

        return fsspec.filesystem("file"), local_path(url)
    try:
        import fsspec
        from fsspec.core import url_to_fs

        opts = _options_for(protocol)
        require_credentials(url, protocol, opts)
        fs, path = url_to_fs(str(url), **opts)
    except ImportError as exc:
        extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}.get(protocol, protocol)
        raise StorageError(
            f"{url}: support for {protocol}:// is not installed (pip install 'repeatlab[{extra}]')"
        ) from exc
    except ValueError as exc:
        raise StorageError(f"{url}: unknown storage protocol {protocol!r} ({exc})") from exc
    del fsspec
    return fs, path


@contextlib.contextmanager
def _translate(url: str, action: str) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise StorageError(f"{url}: not found ({action})") from exc
    except PermissionError as exc:
        raise StorageError(f"{url}: permission denied ({action})") from exc
    except OSError as exc:
        raise StorageError(f"{url}: {action} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # botocore / aiohttp / google-auth errors have no common base class
        raise StorageError(f"{url}: {action} failed: {type(exc).__name__}: {exc}") from exc


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    with _translate(url, "exists"):
        return bool(fs.exists(path))


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with _translate(url, "read"):
        return fs.cat_file(path)


def read_text(url: str) -> str:
    data = read_bytes(url)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StorageError(
            f"{url}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"
        ) from None


def read_json(url: str) -> Any:
    data = read_bytes(url)
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise StorageError(f"{url}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def read_range(url: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a file; remote stores serve this as one ranged GET."""
    if start < 0 or end < start:
        raise StorageError(f"{url}: invalid byte range {start}-{end} (need 0 <= start <= end)")
    if end == start:
        return b""
    fs, path = filesystem(url)
    with _translate(url, f"read bytes {start}-{end}"):
        return fs.cat_file(path, start=start, end=end)


def size(url: str) -> int:
    fs, path = filesystem(url)
    with _translate(url, "stat"):
        return int(fs.size(path))


def listdir(url: str) -> list[str]:
    """Names (not paths) directly under a folder URL, sorted; empty when the folder does not exist."""
    fs, path = filesystem(url)
    own = path.rstrip("/")
    with _translate(url, "list"):
        try:
            entries = fs.ls(own, detail=False)
        except FileNotFoundError:
            return []
    # Object stores list a folder's own marker object ("prefix/") and list a file as itself: neither is a child.
    names = {str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries if str(e).rstrip("/") != own}
    return sorted(n for n in names if n)


def remove(url: str, recursive: bool = False) -> None:
    """Remove url. What is not there is not an error, including what another process removes between our check and
    our call (contenders taking over one stale lease all remove it)."""
    fs, path = filesystem(url)
    with _translate(url, "remove"):
        try:
            if fs.exists(path):
                fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass


@contextlib.contextmanager
def atomic_local_file(url: str, suffix: str = "") -> Iterator[str]:
    """Yield a local temporary path to fill; on success it becomes `url` in one step, on error it is discarded."""
    protocol = protocol_of(url)
    if protocol == "file":
        final = local_path(url)
        folder = os.path.dirname(final)
        with _translate(url, "create folder"):
            os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(os.path.basename(final)), suffix=suffix, dir=folder)
    else:
        fd, tmp = tempfile.mkstemp(prefix="repeatlab-upload-", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        if protocol == "file":
            with _translate(url, "rename"):
                # mkstemp creates 0600; give the file the mode a plain open() would have.
                os.chmod(tmp, 0o666 & ~_umask())
                os.replace(tmp, final)
        else:
            fs, path = filesystem(url)
            with _translate(url, "upload"):
                fs.put_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


STALE_TEMPORARY_AGE_S = 24 * 3600


def _host_tag() -> str:
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temporary_prefix(name: str) -> str:
    """`.tmp-NAME~PID~HOST~`: a temporary file that says which process on which host is filling it."""
    return f".tmp-{name}~{os.getpid()}~{_host_tag()}~"


def sweep_stale_temporaries(folder_url: str, max_age_s: float = STALE_TEMPORARY_AGE_S) -> list[str]:
    """Remove `.tmp-*` files that a killed writer left in a local folder; returns their names.

    A temporary file is stale when its process is gone (same host: the pid in its name no longer exists) or when it
    is older than max_age_s (another host, or a name without pid). Remote stores have no partial objects to sweep.
    """
    import re
    import time

    if not is_local(folder_url):
        return []
    folder = local_path(folder_url)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed, here, now = [], _host_tag(), time.time()
    for name in names:
        if not name.startswith(".tmp-"):
            continue
        path = os.path.join(folder, name)
        owner = re.search(r"~(\d+)~([0-9a-f]{8})~", name)
        try:
            stale = now - os.path.getmtime(path) > max_age_s
            if owner and owner.group(2) == here and os.path.isdir("/proc"):
                stale = stale or not os.path.exists(f"/proc/{owner.group(1)}")
            if stale:
                os.unlink(path)
                removed.append(name)
        except OSError:
            continue
    return removed


_UMASK: int | None = None


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask(0) races other threads)."""
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status") as fh:
                _UMASK = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
        except (OSError, StopIteration, ValueError, IndexError):
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return _UMASK


def write_failed(url: str, exc: BaseException, local_file: str) -> StorageError:
    """One line for a write that failed below Python's OSError (torch's C++ writer), with the free space left."""
    import shutil

    folder = os.path.dirname(os.path.abspath(local_file))
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.0f} MiB free in {folder}"
    except OSError:
        free = f"free space in {folder} unknown"
    return StorageError(
        f"{url}: write failed ({first}); {free}: the disk is probably full (or a file-size limit "
        "was reached); free space or point storage.root elsewhere, then rerun"
    )


def write_bytes(url: str, data: bytes) -> None:
    protocol = protocol_of(url)
    if protocol not in ("file",):
        fs, path = filesystem(url)
        with _translate(url, "write"):
            fs.pipe_file(path, bytes(data))  # one PUT: visible whole or not at all
        return
    with atomic_local_file(url) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def create_exclusive(url: str, data: bytes) -> bool:
    """Create `url` with `data` only if it does not exist, atomically; False when it exists already.

    file://: a complete temporary file is hard-linked to the name (link(2) fails if the name exists). s3://: a PUT with
    `If-None-Match: *` (s3fs mode="create"; AWS S3, SeaweedFS and MinIO answer 412 when the key exists). gs://: an
    upload with `ifGenerationMatch=0` (gcsfs mode="create"). Other protocols are refused rather than faked.
    """
    protocol = protocol_of(url)
    if protocol == "file":
        final = local_path(url)
        with _translate(url, "create folder"):
            os.makedirs(os.path.dirname(final), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(os.path.basename(final)), dir=os.path.dirname(final))
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o666 & ~_umask())
            with _translate(url, "create"):
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    return False
            return True
        finally:
            os.unlink(tmp)
    if protocol not in ("s3", "gs", "gcs"):
        raise StorageError(f"{url}: atomic create-if-absent is not supported on {protocol}:// (file, s3, gs are)")
    fs, path = filesystem(url)
    with _translate(url, "create"):
        try:
            fs.pipe_file(path, bytes(data), mode="create")
        except FileExistsError:
            return False
        except OSError as exc:  # s3fs maps a 412 without a Condition field (SeaweedFS, MinIO) to EINVAL
            if _precondition_failed(exc):
                return False
            raise
    return True


def _precondition_failed(exc: BaseException) -> bool:
    """An S3 412 PreconditionFailed anywhere in the exception's chain (botocore's ClientError carries the code)."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if error.get("Code") == "PreconditionFailed" or status == 412:
                return True
        seen = seen.__cause__ or seen.__context__
    return False


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def write_json(url: str, obj: Any) -> None:
    write_text(url, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def sha256_of(url: str, chunk_bytes: int = 1 << 22) -> str:
    fs, path = filesystem(url)
    digest = hashlib.sha256()
    with _translate(url, "read"):
        with fs.open(path, "rb") as fh:
            while chunk := fh.read(chunk_bytes):
                digest.update(chunk)
    return digest.hexdigest()


def cached_local_copy(url: str, cache_dir: str | None = None) -> str:
    """A local path holding the file at `url` (the file itself when local), for np.memmap / torch.load(mmap=True).

    Remote files are downloaded once into the cache, keyed by URL, size and the store's version of the object (ETag,
    generation or modification time, where it reports one), through a temporary name so a concurrent reader (another
    rank) never sees a partial copy. An object rewritten in place therefore gets a fresh copy.
    """
    if is_local(url):
        return local_path(url)
    cache_dir = (
        cache_dir
        or os.environ.get("REPEATLAB_CACHE")
        or os.path.join(os.path.expanduser("~"), ".cache", "repeatlab", "storage")
    )
    fs, path = filesystem(url)
    with _translate(url, "stat"):
        info = fs.info(path)
    if info.get("type") == "directory":
        raise StorageError(f"{url}: is a folder, expected a file (cached copy)")
    nbytes = int(info.get("size") or 0)
    version = next(
        (
            str(info[k])
            for k in ("ETag", "etag", "generation", "md5Hash", "crc32c", "LastModified", "mtime", "updated", "created")
            if info.get(k) is not None
        ),
        "",
    )
    key = hashlib.sha256(f"{url}|{nbytes}|{version}".encode()).hexdigest()[:24]
    target = os.path.join(cache_dir, key + "-" + str(url).rstrip("/").rsplit("/", 1)[-1])
    if os.path.exists(target) and os.path.getsize(target) == nbytes:
        return target
    with _translate(cache_dir, "create cache folder"):
        os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=cache_dir)
    os.close(fd)
    try:
        with _translate(url, "download"):
            fs.get_file(path, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
