"""Submit a study to a Kubeflow Pipelines API, once (`repeatlab submit`) or on a schedule (`repeatlab schedule`).

Runs and recurring runs are KFP API objects, not Kubernetes resources: a kubectl-triggered study is a Job (or CronJob)
running `repeatlab submit` with the pod's projected service-account token. The pipeline takes one parameter,
`study_config`: the resolved study as one line of JSON, validated again inside the pipeline.

    repeatlab submit   --host URL --config study.yaml [--token-file F] [--experiment NAME] [--run-name NAME]
    repeatlab schedule --host URL --config study.yaml --cron '0 0 3 * * *' [--token-file F] [--job-name NAME]

Pipelines and versions: the compiled pipeline is uploaded as a version of the pipeline named after the study (created
empty the first time through the v2beta1 CreatePipeline call, so every version is named the same way); the version's
name is the content hash of the compiled spec (`sha256-<16 hex>`), so an unchanged study reuses its version and a
changed one (config, cluster settings, repeatlab or kfp version) adds one. Runs and recurring runs reference that
version (`pipeline_version_reference`) inside the experiment named after the study: the Pipelines page lists the study
with its versions to compare, and the CronJob (which runs `repeatlab submit`) reuses the same version.

Tokens: `--token-file`, else the projected KFP service-account token (KF_PIPELINES_SA_TOKEN_PATH, default
/var/run/secrets/kubeflow/pipelines/token) when it exists, else none. A token is sent as `Authorization: Bearer ...`
and is never printed or logged.

Every API call is bounded: socket connect/read timeouts, a wall-clock limit per attempt, bounded retries with backoff
(never a second create after a stall), and a deadline for the whole command (--deadline); the error names the call
that stalled (docs/reliability.md).

KFP cron expressions have 6 fields, seconds first (robfig/cron): '0 0 3 * * *' is 03:00:00 every day. A 5-field Unix
cron would be read shifted by one field, so it is rejected with the 6-field spelling.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from typing import Any

from repeatlab.config import StudyConfig, check_for_cluster
from repeatlab.errors import ConfigError, RepeatlabError

log = logging.getLogger(__name__)

PIPELINE_PARAMETER = "study_config"
ROOT_PARAMETER = "storage_root"  # the run's storage root, its own field in the UI's run form
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"  # KFP's projected service-account token
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
HOST_ENV = "KFP_HOST"
NAMESPACE_ENV = "KFP_NAMESPACE"
UI_HOST_ENV = "KF_PIPELINES_UI_ENDPOINT"
PREFLIGHT_TIMEOUT_S = 10.0
# Every KFP API call is bounded (docs/deploy.md): a connect and a read timeout on its socket, a wall-clock limit on
# the call (covering kfp.Client's own loops), bounded retries with exponential backoff (calls that create something
# are retried only when the request cannot have arrived), and a deadline for the whole submit/schedule.
CONNECT_TIMEOUT_S = float(os.environ.get("REPEATLAB_KFP_CONNECT_TIMEOUT_S", "10"))
READ_TIMEOUT_S = float(os.environ.get("REPEATLAB_KFP_READ_TIMEOUT_S", "60"))
CALL_ATTEMPTS = int(os.environ.get("REPEATLAB_KFP_ATTEMPTS", "3"))
BACKOFF_S = float(os.environ.get("REPEATLAB_KFP_BACKOFF_S", "2"))
DEADLINE_S = float(os.environ.get("REPEATLAB_KFP_DEADLINE_S", "600"))


class KfpError(RepeatlabError):
    """The Kubeflow Pipelines API could not be reached, refused the request, or answered unexpectedly."""


# ----------------------------------------------------------------------------------------------------------------------
# Cron (robfig/cron with seconds, as the KFP backend parses it)

_CRON_FIELDS = (  # name, low, high, names
    ("seconds", 0, 59, None),
    ("minutes", 0, 59, None),
    ("hours", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]),
    ("day of week", 0, 6, ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]),
)
_CRON_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_GO_DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")
_EXAMPLE = "'0 0 3 * * *' (03:00:00 every day)"


def _cron_value(text: str, low: int, high: int, names: list[str] | None, where: str, cron: str) -> int:
    if names and text.lower() in names:
        return names.index(text.lower()) + low
    if not text.isdigit():
        raise ConfigError(
            f"--cron {cron!r}: {where}: {text!r} is not a number"
            + (f" or a name ({', '.join(n.upper() for n in names)})" if names else "")
        )
    value = int(text)
    if not low <= value <= high:
        raise ConfigError(f"--cron {cron!r}: {where}: {value} is out of range [{low}, {high}]")
    return value


def _check_cron_part(part: str, where: str, low: int, high: int, names: list[str] | None, cron: str) -> None:
    """One comma-separated part of a cron field: '?', '*', a value or a range, each with an optional '/step'."""
    if part == "?":
        if where not in ("day of month", "day of week"):
            raise ConfigError(f"--cron {cron!r}: {where}: '?' is only allowed for day of month or day of week")
        return
    base, slash, step = part.partition("/")
    if slash and (not step.isdigit() or int(step) < 1):
        raise ConfigError(f"--cron {cron!r}: {where}: step {step!r} in {part!r} must be a positive integer")
    if base in ("*", "?"):
        return
    lo_text, dash, hi_text = base.partition("-")
    lo = _cron_value(lo_text, low, high, names, where, cron)
    if dash:
        hi = _cron_value(hi_text, low, high, names, where, cron)
        if hi < lo:
            raise ConfigError(f"--cron {cron!r}: {where}: range {base!r} ends before it starts")


def validate_cron(cron: str) -> str:
    """Check a KFP (robfig/cron, 6 fields with seconds) cron expression; returns it normalized (single spaces)."""
    if not isinstance(cron, str) or not cron.strip():
        raise ConfigError(f"--cron {cron!r}: empty; KFP cron has 6 fields with seconds first, e.g. {_EXAMPLE}")
    text = " ".join(cron.split())
    if text.startswith("@"):
        if text in _CRON_DESCRIPTORS:
            return text
        if text.startswith("@every ") and _GO_DURATION.fullmatch(text[len("@every ") :]):
            return text
        raise ConfigError(
            f"--cron {cron!r}: unknown descriptor; allowed: {', '.join(sorted(_CRON_DESCRIPTORS))}, "
            "'@every <duration>' (e.g. '@every 6h'), or 6 fields e.g. " + _EXAMPLE
        )
    fields = text.split(" ")
    if len(fields) == 5:
        raise ConfigError(
            f"--cron {cron!r} has 5 fields, but KFP cron has 6 with seconds first: prepend the seconds, "
            f"here '0 {text}' (03:00 every day is '0 0 3 * * *')"
        )
    if len(fields) != 6:
        raise ConfigError(
            f"--cron {cron!r} has {len(fields)} fields; KFP cron has exactly 6 (seconds minutes hours "
            f"day-of-month month day-of-week), e.g. {_EXAMPLE}"
        )
    for field_text, (where, low, high, names) in zip(fields, _CRON_FIELDS):
        if not re.fullmatch(r"[0-9A-Za-z*?,/\-]+", field_text):
            raise ConfigError(
                f"--cron {cron!r}: {where} field {field_text!r} has characters other than digits, "
                "names, '*', '?', ',', '-', '/'"
            )
        for part in field_text.split(","):
            _check_cron_part(part, where, low, high, names, cron)
    return text


# ----------------------------------------------------------------------------------------------------------------------
# Connection


def read_token(token_file: str | None) -> str | None:
    """The bearer token: from token_file, else the projected KFP service-account token if present, else None.

    Error messages name the file, never its content.
    """
    path = token_file
    if path is None:
        default = os.environ.get(SA_TOKEN_PATH_ENV, SA_TOKEN_PATH)
        if not os.path.isfile(default):
            return None
        path = default
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"--token-file {path}: cannot be read: {exc.strerror or type(exc).__name__}") from None
    if not token:
        raise ConfigError(f"--token-file {path}: the file is empty")
    if any(c.isspace() for c in token):
        raise ConfigError(f"--token-file {path}: a token must be one line without spaces")
    return token


def normalize_host(host: str | None) -> str:
    host = (host or "").strip()
    if not host:
        raise ConfigError(f"--host: no KFP API address given; pass --host URL or set {HOST_ENV}")
    if not re.match(r"^https?://", host):
        raise ConfigError(
            f"--host {host!r}: expected an http:// or https:// URL, e.g. http://ml-pipeline.kubeflow:8888"
        )
    return host.rstrip("/")


def _ui_prefix(host: str) -> str:
    return (os.environ.get(UI_HOST_ENV) or host).rstrip("/")


def _preflight(host: str, token: str | None) -> dict:
    """One bounded GET of /apis/v2beta1/healthz, so an unreachable host fails in seconds with one line; returns its
    JSON ({} when it is not JSON).

    (kfp.Client's own health check retries 5 times with 5 s sleeps, and urllib3 has no default timeout.)
    """
    request = urllib.request.Request(f"{host}/apis/v2beta1/healthz", headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=PREFLIGHT_TIMEOUT_S) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        hint = " (check --token-file / the service account's RBAC)" if exc.code in (401, 403) else ""
        raise KfpError(f"KFP API {host}: health check answered HTTP {exc.code} {exc.reason}{hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise KfpError(f"KFP API {host} cannot be reached: {reason}") from None
    try:
        health = json.loads(body)
    except ValueError:
        return {}
    return health if isinstance(health, dict) else {}


# The oldest KFP backend each fan-in runs on (docs/deploy.md, the support matrix): the 2.14 driver is the first to
# resolve dsl.Collected over a ParallelFor (kubeflow/pipelines #11725); before 2.4.1 the Argo compiler names a loop's
# task "<name>-loop", so the storage fan-in's `.after(loop)` fails validation (#11627).
MIN_BACKEND = {"collected": (2, 14, 0), "storage": (2, 4, 1)}


def _backend_version(tag: object) -> tuple[int, int, int] | None:
    """KFP's release tag ("2.5.0", "v2.14.3", "2.15.0-rc.1") as numbers; None for "unknown" or a dev build."""
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", str(tag or ""))
    return (int(match[1]), int(match[2]), int(match[3] or 0)) if match else None


def check_backend(host: str, health: dict, fan_in: str) -> None:
    """Refuse a fan-in the backend cannot run, before anything is created. The API server's HTTP healthz reports
    its release as `tag_name` (backend/src/apiserver/main.go, from the image's TAG_NAME; "unknown" when unset)."""
    version, need = _backend_version(health.get("tag_name")), MIN_BACKEND[fan_in]
    wanted = ".".join(map(str, need))
    if version is None:
        log.warning(
            "KFP API %s does not report its release (tag_name %r): the %s fan-in needs KFP >= %s",
            host,
            health.get("tag_name"),
            fan_in,
            wanted,
        )
        return
    if version < need:
        hint = (
            "; submit with --fan-in storage (KFP_FAN_IN=storage in the repeatlab-kfp ConfigMap), which runs on >= 2.4.1"
            if fan_in == "collected" and version >= MIN_BACKEND["storage"]
            else ""
        )
        raise KfpError(
            f"KFP API {host} runs KFP {health.get('tag_name')}: --fan-in {fan_in} needs KFP >= {wanted}" + hint
        )


def _api_error(host: str, what: str, exc: BaseException) -> KfpError:
    """One line for a failed KFP call; never includes request headers (the token)."""
    try:
        from kfp_server_api.exceptions import ApiException
    except ImportError:  # pragma: no cover
        ApiException = ()
    if isinstance(exc, ApiException):
        detail = ""
        try:
            body = json.loads(exc.body or "{}")
            detail = body.get("message") or body.get("error") or ""
        except (ValueError, AttributeError):
            detail = str(exc.body or "")[:200]
        hint = " (check --token-file / the service account's RBAC)" if exc.status in (401, 403) else ""
        return KfpError(
            f"KFP API {host}: {what} failed: HTTP {exc.status} {exc.reason}{hint}" + (f": {detail}" if detail else "")
        )
    reason = getattr(exc, "reason", None) or exc
    return KfpError(f"KFP API {host}: {what} failed: {type(exc).__name__}: {reason}")


class _Deadline:
    """The whole command's time budget; every call gets at most what is left of it."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.end = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()


_deadline = _Deadline(DEADLINE_S)


def _retryable(exc: BaseException, created: bool) -> bool:
    """Worth another attempt? For calls that create something, only when the request cannot have arrived."""
    import urllib3

    try:
        from kfp_server_api.exceptions import ApiException
    except ImportError:  # pragma: no cover
        ApiException = ()
    if isinstance(
        exc, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError, ConnectionRefusedError)
    ):
        return True
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        return _retryable(exc.reason, created) if exc.reason is not None else not created
    if created:
        return isinstance(exc, ApiException) and exc.status in (429, 503)  # refused before being applied
    if isinstance(exc, ApiException):
        return exc.status in (0, 429, 500, 502, 503, 504)
    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError, TimeoutError))


def _attempt(host: str, what: str, fn, outcome: dict) -> None:
    try:
        with _kfp_call(host, what):
            outcome["value"] = fn()
    except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
        outcome["error"] = exc


def _bounded(host: str, what: str, fn, *, creates: bool = False):
    """fn() with a wall-clock limit (READ_TIMEOUT_S + CONNECT_TIMEOUT_S, capped by the command's deadline) and up
    to CALL_ATTEMPTS attempts with exponential backoff; one-line KfpError naming `what` on failure or stall.

    A stalled attempt is abandoned in a daemon thread (the socket timeouts set by _bound_sockets end it too)."""
    import threading

    attempts = max(1, CALL_ATTEMPTS)
    for attempt in range(1, attempts + 1):
        remaining = _deadline.remaining()
        if remaining <= 0:
            raise KfpError(
                f"KFP API {host}: {what}: the command's deadline of {_deadline.seconds:.0f} s has passed "
                "(REPEATLAB_KFP_DEADLINE_S / --deadline)"
            )
        limit = min(READ_TIMEOUT_S + CONNECT_TIMEOUT_S, remaining)
        # Name the deadline when it, not the per-call timeout, set the limit: the number alone reads as arbitrary.
        capped = f", the rest of the command's {_deadline.seconds:.0f} s deadline" if limit == remaining else ""
        outcome: dict[str, Any] = {}
        worker = threading.Thread(target=_attempt, args=(host, what, fn, outcome), name=f"kfp-{what}", daemon=True)
        worker.start()
        worker.join(limit)
        tries = f" (attempt {attempt} of {attempts})" if attempts > 1 else ""
        if worker.is_alive():
            error = KfpError(
                f"KFP API {host}: {what} stalled: no answer within {limit:.0f} s{capped}{tries}; check the API "
                "server and the network (REPEATLAB_KFP_READ_TIMEOUT_S sets the limit)"
            )
            if creates:  # the request may have arrived: never create twice
                raise error
        elif "error" in outcome:
            error = outcome["error"]
            cause = getattr(error, "__context__", None) or error
            if not isinstance(error, KfpError) or not _retryable(cause, creates):
                raise error
        else:
            return outcome["value"]
        if attempt == attempts:
            raise error
        time.sleep(max(0.0, min(BACKOFF_S * 2 ** (attempt - 1), _deadline.remaining())))
    raise AssertionError("unreachable")  # pragma: no cover


def _bound_sockets(client) -> None:
    """Give every request of this kfp.Client a connect and a read timeout (kfp_server_api passes none, and urllib3
    then waits forever)."""
    import urllib3

    try:
        pool_manager = client._run_api.api_client.rest_client.pool_manager
    except AttributeError:  # another kfp version: the wall-clock limit in _bounded still applies
        return
    request = pool_manager.request

    def bounded_request(method, url, *args, timeout=None, **kwargs):
        if timeout is None:
            timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
        return request(method, url, *args, timeout=timeout, **kwargs)

    pool_manager.request = bounded_request


@contextlib.contextmanager
def _kfp_call(host: str, what: str):
    """Turn kfp / urllib3 failures into one-line KfpErrors; kfp's own prints ("Run details: ...") are dropped:
    the command prints the ids and URLs itself."""
    import urllib3

    try:
        from kfp_server_api.exceptions import OpenApiException
    except ImportError:  # pragma: no cover
        OpenApiException = ()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    except RepeatlabError:
        raise
    except (OpenApiException, urllib3.exceptions.HTTPError, OSError, ValueError, TimeoutError) as exc:
        raise _api_error(host, what, exc) from None


def _client(host: str, token: str | None, namespace: str | None, fan_in: str = "collected"):
    import kfp

    check_backend(host, _preflight(host, token), fan_in)
    kwargs: dict[str, Any] = {"host": host, "existing_token": token}
    if namespace:
        kwargs["namespace"] = namespace

    def connect():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "This client only works with KFP v2.0.0-beta.2 ..."
            return kfp.Client(**kwargs)

    client = _bounded(host, "connecting", connect)
    _bound_sockets(client)
    return client


def _experiment_id(client, host: str, name: str, description: str, namespace: str | None) -> str:
    """Get the experiment by name, or create it (kfp's create_experiment looks it up first)."""
    return _bounded(
        host,
        f"getting or creating experiment {name!r}",
        lambda: client.create_experiment(name=name, description=description or None, namespace=namespace).experiment_id,
        creates=True,
    )


def _by_name(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def spec_hash(path: str) -> str:
    """Content hash of a compiled pipeline: sha256 of its YAML documents as canonical JSON (so formatting and
    comments do not count), or of the file's bytes for an archive."""
    import yaml

    if path.endswith((".yaml", ".yml")):
        with open(path, encoding="utf-8") as f:
            docs = list(yaml.safe_load_all(f))
        data = json.dumps(docs, sort_keys=True, separators=(",", ":")).encode()
    else:
        with open(path, "rb") as f:
            data = f.read()
    return hashlib.sha256(data).hexdigest()


def version_name(path: str) -> str:
    """The pipeline version's name: the content hash of the compiled spec (a valid Kubernetes name, too)."""
    return "sha256-" + spec_hash(path)[:16]


def _pipeline_id(client, host: str, name: str, description: str, namespace: str | None) -> str:
    """The id of the pipeline named `name`, created empty (no version) when missing."""
    import kfp_server_api
    from kfp_server_api.exceptions import ApiException

    def lookup() -> str | None:
        found = client.list_pipelines(filter=_by_name(name), page_size=2, namespace=namespace).pipelines or []
        return found[0].pipeline_id if found else None

    pipeline_id = _bounded(host, f"looking up pipeline {name!r}", lookup)
    if pipeline_id:
        return pipeline_id
    body = kfp_server_api.V2beta1Pipeline(display_name=name, description=description or None, namespace=namespace)

    def create() -> str:
        try:
            return client._pipelines_api.pipeline_service_create_pipeline(pipeline=body).pipeline_id
        except ApiException as exc:
            if exc.status != 409:  # 409: created meanwhile by another submit: use that one
                raise
            return lookup() or ""

    return _bounded(host, f"creating pipeline {name!r}", create, creates=True)


def ensure_pipeline_version(
    client, host: str, pipeline: str, description: str, path: str, namespace: str | None
) -> dict:
    """The pipeline version of this compiled spec: reused when a version of that name exists, else uploaded.
    Returns {pipeline_id, version_id, version, pipeline, reused}."""
    pipeline_id = _pipeline_id(client, host, pipeline, description, namespace)
    name = version_name(path)
    existing = _bounded(
        host,
        f"looking up version {name!r} of pipeline {pipeline!r}",
        lambda: client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=2, filter=_by_name(name)),
    )
    versions = existing.pipeline_versions or []
    if versions:
        version_id, reused = versions[0].pipeline_version_id, True
    else:
        version_id = _bounded(
            host,
            f"uploading version {name!r} of pipeline {pipeline!r}",
            lambda: (
                client.upload_pipeline_version(
                    path, name, pipeline_id=pipeline_id, description=description or None
                ).pipeline_version_id
            ),
            creates=True,
        )
        reused = False
    return {
        "pipeline": pipeline,
        "pipeline_id": pipeline_id,
        "version": name,
        "version_id": version_id,
        "reused": reused,
    }


# ----------------------------------------------------------------------------------------------------------------------
# The pipeline package and its parameter


def study_parameter(cfg: StudyConfig) -> str:
    """The value of the pipeline's one parameter: the resolved study as one line of JSON (valid YAML too), as the
    pipeline's own default is written."""
    to_json = getattr(cfg, "to_json", None)
    return to_json() if to_json else json.dumps(cfg.to_dict(), separators=(",", ":"))


def _compile_package(directory: str, cfg: StudyConfig, fan_in: str = "collected") -> str:
    """Compile the study's pipeline (its cluster settings shape the DAG: images, accelerators, parallelism)."""
    from repeatlab.kfp_pipeline import compile_pipeline

    path = os.path.join(directory, "pipeline.yaml")
    return compile_pipeline(path, cfg, fan_in=fan_in) or path


def run_parameters(cfg: StudyConfig, path: str) -> dict:
    """The run's parameters: the study, and its storage root where the package has that parameter (a YAML package
    compiled by this version; the root also travels inside the study)."""
    params = {PIPELINE_PARAMETER: study_parameter(cfg)}
    if path.endswith((".yaml", ".yml")) and ROOT_PARAMETER in _package_parameters(path):
        params[ROOT_PARAMETER] = cfg.storage.root
    return params


def _package_parameters(path: str) -> dict:
    import yaml

    with open(path, encoding="utf-8") as f:
        spec = next(iter(yaml.safe_load_all(f)), None) or {}
    return ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}


def _check_package(path: str) -> None:
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"--package {path}: no such file")
    if not path.endswith((".yaml", ".yml", ".tar.gz", ".tgz", ".zip")):
        raise ConfigError(f"--package {path}: expected a compiled pipeline (.yaml, .yml, .tar.gz, .tgz or .zip)")
    if path.endswith((".yaml", ".yml")):
        try:
            with open(path, encoding="utf-8") as f:
                spec = next(iter(yaml.safe_load_all(f)), None) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"--package {path}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        params = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}
        if PIPELINE_PARAMETER not in params:
            raise ConfigError(
                f"--package {path}: the pipeline has no {PIPELINE_PARAMETER!r} parameter "
                f"(parameters: {', '.join(params) or 'none'}); compile it with `repeatlab compile`"
            )


@contextlib.contextmanager
def _package(package_path: str | None, cfg: StudyConfig, fan_in: str = "collected"):
    if package_path:
        _check_package(package_path)
        yield package_path
        return
    with tempfile.TemporaryDirectory(prefix="repeatlab-kfp-") as tmp:
        path = _compile_package(tmp, cfg, fan_in)
        _check_package(path)
        yield path


def _start_deadline(seconds: float | None) -> None:
    global _deadline
    seconds = DEADLINE_S if seconds is None else float(seconds)
    if not seconds > 0:
        raise ConfigError(f"--deadline {seconds!r}: a number of seconds > 0")
    _deadline = _Deadline(seconds)


def _utc_stamp() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")


# ----------------------------------------------------------------------------------------------------------------------
# Public API


def submit(
    cfg: StudyConfig,
    host: str | None,
    *,
    token: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    package_path: str | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
    deadline_s: float | None = None,
    fan_in: str = "collected",
) -> dict:
    """Start one run of the study pipeline from its pipeline version (uploaded when new); returns {run_id,
    experiment_id, experiment, run_name, url, pipeline, pipeline_id, version, version_id, reused}."""
    check_for_cluster(cfg)  # before anything is compiled or sent
    _start_deadline(deadline_s)
    host = normalize_host(host)
    experiment = experiment or cfg.name
    run_name = run_name or f"{cfg.name}-{_utc_stamp()}"
    with _package(package_path, cfg, fan_in) as path:
        client = _client(host, token, namespace, fan_in)
        experiment_id = _experiment_id(client, host, experiment, cfg.description, namespace)
        version = ensure_pipeline_version(client, host, cfg.name, cfg.description, path, namespace)
        run = _bounded(
            host,
            f"creating run {run_name!r}",
            lambda: client.run_pipeline(
                experiment_id=experiment_id,
                job_name=run_name,
                pipeline_id=version["pipeline_id"],
                version_id=version["version_id"],
                params=run_parameters(cfg, path),
                service_account=service_account,
            ),
            creates=True,
        )
    return {
        "run_id": run.run_id,
        "experiment_id": experiment_id,
        "experiment": experiment,
        "run_name": run_name,
        "url": f"{_ui_prefix(host)}/#/runs/details/{run.run_id}",
        **version,
    }


def schedule(
    cfg: StudyConfig,
    host: str | None,
    cron: str,
    *,
    token: str | None = None,
    experiment: str | None = None,
    job_name: str | None = None,
    max_concurrency: int = 1,
    no_catchup: bool = True,
    package_path: str | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
    deadline_s: float | None = None,
    fan_in: str = "collected",
) -> dict:
    """Create a recurring run of the study's pipeline version (uploaded when new); returns {recurring_run_id,
    experiment_id, job_name, cron, url, pipeline, pipeline_id, version, version_id, reused}.

    Refuses to create a second recurring run with the same name in the experiment (a retried Job would otherwise
    schedule the study twice).
    """
    _start_deadline(deadline_s)
    cron = validate_cron(cron)
    check_for_cluster(cfg)
    if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or not 1 <= max_concurrency <= 10:
        raise ConfigError(f"--max-concurrency {max_concurrency!r}: an integer in [1, 10] (KFP's limit)")
    host = normalize_host(host)
    experiment = experiment or cfg.name
    job_name = job_name or f"{cfg.name}-scheduled"
    with _package(package_path, cfg, fan_in) as path:
        client = _client(host, token, namespace, fan_in)
        experiment_id = _experiment_id(client, host, experiment, cfg.description, namespace)
        existing = _bounded(
            host,
            f"listing recurring runs of experiment {experiment!r}",
            lambda: client.list_recurring_runs(
                experiment_id=experiment_id,
                page_size=10,
                filter=json.dumps(
                    {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": job_name}]}
                ),
            ),
        )
        for rr in existing.recurring_runs or []:
            if rr.display_name == job_name:
                raise KfpError(
                    f"recurring run {job_name!r} exists already in experiment {experiment!r} "
                    f"(id {rr.recurring_run_id}); pass another --job-name or delete it first"
                )
        version = ensure_pipeline_version(client, host, cfg.name, cfg.description, path, namespace)
        rr = _bounded(
            host,
            f"creating recurring run {job_name!r}",
            lambda: client.create_recurring_run(
                experiment_id=experiment_id,
                job_name=job_name,
                description=cfg.description or None,
                cron_expression=cron,
                max_concurrency=max_concurrency,
                no_catchup=no_catchup,
                params=run_parameters(cfg, path),
                pipeline_id=version["pipeline_id"],
                version_id=version["version_id"],
                enabled=True,
                service_account=service_account,
            ),
            creates=True,
        )
    return {
        "recurring_run_id": rr.recurring_run_id,
        "experiment_id": experiment_id,
        "experiment": experiment,
        "job_name": job_name,
        "cron": cron,
        "url": f"{_ui_prefix(host)}/#/recurringrun/details/{rr.recurring_run_id}",
        **version,
    }
