"""Run one Kubeflow Trainer v2 TrainJob to its end: create, wait, report, clean up.

KFP v2 cannot create custom resources itself, so multi-node training is a launcher step that calls `run_trainjob`:
it creates the TrainJob (trainer.kubeflow.org/v1alpha1, built by `repeatlab.launch.build_trainjob`), polls its
status conditions with exponential backoff, logs every status change, and reports the job's recent events (the
TrainJob's and its JobSet's, which share its name, and its pods') with the pods' container exit reasons.

Trainer v2 condition types (pkg/apis/trainer/v1alpha1): `Complete` and `Failed` are terminal, `Suspended` is set
while the job is suspended (e.g. queued by Kueue), older releases also set `Created`. Running is not a condition:
it is read from `status.jobsStatus` (child Jobs with active pods).

The TrainJob is deleted (foreground: its JobSet and pods go with it) when it fails, when the wait times out, and when
the launcher is interrupted (Ctrl-C, or SIGTERM when KFP terminates the run). Failures raise TrainError with one line
naming the job, the condition's reason and message, the last warning event and the pods' exit reasons.

If a TrainJob of the same name exists already (a retried launcher step), it is adopted: a running one is waited on,
a complete one is reported as complete, a failed one is deleted and created again.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from repeatlab.errors import TrainError

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"

COMPLETE = "Complete"
FAILED = "Failed"
SUSPENDED = "Suspended"
CREATED = "Created"
RUNNING = "Running"
PENDING = "Pending"

JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"  # on every pod of the TrainJob's JobSet (same name as the job)
MAX_EVENTS = 20
MAX_POD_EVENT_LOOKUPS = 8


class _Terminated(BaseException):
    """Raised in the main thread by the SIGTERM handler while a TrainJob is being waited on."""


# ----------------------------------------------------------------------------------------------------------------------
# Kubernetes client


def load_api_client(kubeconfig: str | None = None):
    """An ApiClient from the pod's service account, else from a kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    import os

    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        try:
            config.load_kube_config(config_file=path, client_configuration=configuration)
        except (config.ConfigException, OSError, TypeError, ValueError) as exc:
            raise TrainError(
                f"no Kubernetes credentials: not running in a cluster and the kubeconfig {path} cannot be used ({exc})"
            ) from None
    return client.ApiClient(configuration)


def _api_reason(exc: BaseException) -> str:
    """One short line for a failed Kubernetes call (never includes request headers)."""
    import json

    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        message = ""
        try:
            message = json.loads(exc.body or "{}").get("message", "")
        except (ValueError, AttributeError):
            message = str(exc.body or "")[:200]
        return f"HTTP {exc.status} {exc.reason}" + (f": {message}" if message else "")
    return f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"


def _api_errors() -> tuple[type[BaseException], ...]:
    import urllib3
    from kubernetes.client.exceptions import OpenApiException

    return (OpenApiException, urllib3.exceptions.HTTPError, OSError)


# ----------------------------------------------------------------------------------------------------------------------
# Status


def _conditions(obj: dict) -> list[dict]:
    return list(((obj or {}).get("status") or {}).get("conditions") or [])


def _true(conditions: list[dict], kind: str) -> dict | None:
    for c in conditions:
        if c.get("type") == kind and str(c.get("status")) == "True":
            return c
    return None


def trainjob_status(obj: dict) -> tuple[str, dict | None]:
    """(status, the condition that decided it): Failed, Complete, Suspended, Running, Created or Pending."""
    conditions = _conditions(obj)
    for kind in (FAILED, COMPLETE, SUSPENDED):
        c = _true(conditions, kind)
        if c:
            return kind, c
    jobs = ((obj or {}).get("status") or {}).get("jobsStatus") or []
    if any(int(j.get("active") or 0) > 0 for j in jobs):
        return RUNNING, None
    c = _true(conditions, CREATED)
    return (CREATED, c) if c else (PENDING, None)


def _describe(status: str, condition: dict | None, obj: dict) -> str:
    text = status
    if condition and (condition.get("reason") or condition.get("message")):
        text += (
            f" ({condition.get('reason') or ''}{': ' if condition.get('message') else ''}"
            f"{condition.get('message') or ''})"
        )
    jobs = ((obj or {}).get("status") or {}).get("jobsStatus") or []
    if jobs:
        text += "; jobs: " + ", ".join(
            f"{j.get('name')} active={j.get('active', 0)} ready={j.get('ready', 0)} "
            f"succeeded={j.get('succeeded', 0)} failed={j.get('failed', 0)}"
            for j in jobs
        )
    return text


# ----------------------------------------------------------------------------------------------------------------------
# Events and pods


def _iso(value: Any) -> str:
    if value is None:
        return ""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _event_dict(e) -> dict:
    when = e.last_timestamp or e.event_time or e.first_timestamp or (e.metadata and e.metadata.creation_timestamp)
    return {
        "kind": e.involved_object.kind if e.involved_object else None,
        "name": e.involved_object.name if e.involved_object else None,
        "type": e.type,
        "reason": e.reason,
        "message": (e.message or "").strip(),
        "count": e.count,
        "time": _iso(when),
    }


def collect_events(core, namespace: str, name: str, request_timeout: float = 30) -> tuple[list[dict], list[str]]:
    """(recent events of the TrainJob, its JobSet and its pods, oldest first; the pods' container exit reasons).

    Best effort: a failing lookup is skipped, never raised (this runs on the way out of a failure).
    """
    events: list[dict] = []
    exits: list[str] = []
    errors = _api_errors()
    try:
        listing = core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name}", _request_timeout=request_timeout
        )
        events += [_event_dict(e) for e in listing.items or []]
    except errors:
        pass
    try:
        pods = (
            core.list_namespaced_pod(
                namespace, label_selector=f"{JOBSET_NAME_LABEL}={name}", _request_timeout=request_timeout
            ).items
            or []
        )
    except errors:
        pods = []
    for i, pod in enumerate(pods):
        pod_name = pod.metadata.name if pod.metadata else None
        if not pod_name:
            continue
        for cs in (pod.status.container_statuses or []) if pod.status else []:
            state = cs.state.terminated if cs.state else None
            if state is None and cs.last_state is not None:
                state = cs.last_state.terminated
            if state is not None and (state.exit_code or 0) != 0:
                exits.append(
                    f"pod {pod_name} container {cs.name} exited {state.exit_code}"
                    + (f" ({state.reason})" if state.reason else "")
                )
        if i < MAX_POD_EVENT_LOOKUPS:
            try:
                listing = core.list_namespaced_event(
                    namespace, field_selector=f"involvedObject.name={pod_name}", _request_timeout=request_timeout
                )
                events += [_event_dict(e) for e in listing.items or []]
            except errors:
                pass
    events.sort(key=lambda e: e["time"] or "")
    return events[-MAX_EVENTS:], exits


def _format_event(e: dict) -> str:
    count = f" x{e['count']}" if e.get("count") and e["count"] > 1 else ""
    return (
        f"{e.get('time') or '-'} {e.get('type') or ''} {e.get('kind')}/{e.get('name')} "
        f"{e.get('reason') or ''}{count}: {e.get('message') or ''}"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Cancellation


@contextlib.contextmanager
def _sigterm_raises():
    """While waiting, SIGTERM (KFP terminating the run, a pod eviction) raises _Terminated so the job is deleted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------------------------------------------------
# The runner


def run_trainjob(
    trainjob: dict,
    namespace: str,
    *,
    api_client=None,
    timeout_s: float,
    poll_s: float = 5,
    backoff: float = 1.5,
    max_poll_s: float = 60,
    log: Callable[[str], Any] = print,
    delete_on_success: bool = False,
    request_timeout_s: float = 30,
    max_api_errors: int = 5,
) -> dict:
    """Create the TrainJob, wait until Complete, and return {status, conditions, events, name, namespace, exits}.

    Raises TrainError (one line) when the job fails or does not finish within timeout_s; the job is then deleted, as
    it is on KeyboardInterrupt (re-raised) and SIGTERM (TrainError). Polls every poll_s seconds, growing by `backoff`
    up to max_poll_s. Up to max_api_errors consecutive failed status reads are tolerated (API server restarts).
    """
    from kubernetes import client as k8s

    if timeout_s <= 0:
        raise TrainError(f"timeout_s {timeout_s!r}: must be > 0 seconds")
    if poll_s <= 0 or backoff < 1 or max_poll_s < poll_s:
        raise TrainError(
            f"poll_s={poll_s!r}, backoff={backoff!r}, max_poll_s={max_poll_s!r}: "
            "need poll_s > 0, backoff >= 1 and max_poll_s >= poll_s"
        )
    body = copy.deepcopy(trainjob)
    metadata = body.setdefault("metadata", {})
    name = metadata.get("name")
    if not name:
        raise TrainError("the TrainJob has no metadata.name")
    if metadata.get("namespace") not in (None, namespace):
        raise TrainError(
            f"TrainJob {name}: metadata.namespace {metadata['namespace']!r} differs from the namespace "
            f"{namespace!r} it is created in"
        )
    metadata["namespace"] = namespace
    body.setdefault("apiVersion", f"{GROUP}/{VERSION}")
    body.setdefault("kind", KIND)
    where = f"{KIND} {namespace}/{name}"

    api_client = api_client or load_api_client()
    custom = k8s.CustomObjectsApi(api_client)
    core = k8s.CoreV1Api(api_client)
    errors = _api_errors()
    from kubernetes.client.exceptions import ApiException

    def get() -> dict:
        return custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=request_timeout_s
        )

    def delete(why: str) -> None:
        try:
            custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                body=k8s.V1DeleteOptions(propagation_policy="Foreground"),
                _request_timeout=request_timeout_s,
            )
            log(f"{where}: deleted ({why})")
        except ApiException as exc:
            if exc.status != 404:
                log(f"{where}: could not be deleted ({why}): {_api_reason(exc)}; delete it by hand")
        except errors as exc:
            log(f"{where}: could not be deleted ({why}): {_api_reason(exc)}; delete it by hand")

    def report(status: str, conditions: list[dict]) -> tuple[list[dict], list[str]]:
        events, exits = collect_events(core, namespace, name, request_timeout_s)
        for e in events:
            log(f"{where}: event {_format_event(e)}")
        for line in exits:
            log(f"{where}: {line}")
        return events, exits

    def result(status: str, obj: dict, events: list[dict], exits: list[str]) -> dict:
        return {
            "status": status,
            "conditions": _conditions(obj),
            "events": events,
            "exits": exits,
            "name": name,
            "namespace": namespace,
        }

    created = False  # we own a TrainJob that must go when we stop early
    finished = False
    start = time.monotonic()
    deadline = start + timeout_s
    try:
        with _sigterm_raises():
            # ---- create (or adopt)
            try:
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, body, _request_timeout=request_timeout_s
                )
                created = True
                log(f"{where}: created")
            except ApiException as exc:
                if exc.status != 409:
                    raise TrainError(f"{where} cannot be created: {_api_reason(exc)}") from None
                existing = get()
                status, _ = trainjob_status(existing)
                if status == FAILED:
                    log(f"{where}: exists already and failed; deleting it and creating it again")
                    delete("replacing a failed attempt")
                    _wait_gone(get, ApiException, deadline, poll_s, where)
                    custom.create_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, body, _request_timeout=request_timeout_s
                    )
                    log(f"{where}: created")
                else:
                    log(f"{where}: exists already ({status}); waiting on it")
                created = True
            except errors as exc:
                raise TrainError(f"{where} cannot be created: {_api_reason(exc)}") from None

            # ---- wait
            interval = poll_s
            last = None
            api_failures = 0
            while True:
                obj = None
                try:
                    obj = get()
                    api_failures = 0
                except ApiException as exc:
                    if exc.status == 404:
                        created = False
                        raise TrainError(f"{where} disappeared while running (deleted by someone else?)") from None
                    api_failures += 1
                    failure = _api_reason(exc)
                except errors as exc:
                    api_failures += 1
                    failure = _api_reason(exc)
                if obj is None:
                    log(f"{where}: status read failed ({failure}); attempt {api_failures} of {max_api_errors}")
                    if api_failures >= max_api_errors:
                        raise TrainError(
                            f"{where}: the Kubernetes API failed {api_failures} times in a row "
                            f"({failure}); the TrainJob is being deleted"
                        )
                else:
                    status, condition = trainjob_status(obj)
                    text = _describe(status, condition, obj)
                    if text != last:
                        log(f"{where}: {text} after {time.monotonic() - start:.0f}s")
                        last = text
                    if status == COMPLETE:
                        events, exits = report(status, _conditions(obj))
                        finished = True
                        if delete_on_success:
                            delete("complete")
                        return result(status, obj, events, exits)
                    if status == FAILED:
                        events, exits = report(status, _conditions(obj))
                        raise TrainError(_failure_line(where, condition, events, exits))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    events, exits = report(last or PENDING, _conditions(obj or {}))
                    warning = _last_warning(events)
                    raise TrainError(
                        f"{where} did not finish within {timeout_s:g}s (last status: {last or 'unknown'})"
                        + (f"; last warning: {warning}" if warning else "")
                        + "; the TrainJob is being deleted"
                    )
                time.sleep(min(interval, remaining))
                interval = min(interval * backoff, max_poll_s)
    except KeyboardInterrupt:
        if created and not finished:
            log(f"{where}: interrupted; deleting it")
            delete("interrupted")
            created = False
        raise
    except _Terminated:
        if created and not finished:
            log(f"{where}: SIGTERM; deleting it")
            delete("terminated")
            created = False
        raise TrainError(f"{where}: cancelled by SIGTERM; the TrainJob was deleted") from None
    finally:
        if created and not finished:
            delete("failed or timed out")


def _wait_gone(get, api_exception, deadline: float, poll_s: float, where: str) -> None:
    """Wait (bounded) until a deleted TrainJob is gone, so one of the same name can be created again."""
    limit = min(deadline, time.monotonic() + 120)
    while time.monotonic() < limit:
        try:
            get()
        except api_exception as exc:
            if exc.status == 404:
                return
            raise TrainError(f"{where}: {_api_reason(exc)} while waiting for the failed attempt to go") from None
        time.sleep(poll_s)
    raise TrainError(f"{where}: the failed attempt was not deleted in time; delete it by hand and retry")


def _last_warning(events: list[dict]) -> str:
    for e in reversed(events):
        if e.get("type") == "Warning":
            return f"{e.get('kind')}/{e.get('name')} {e.get('reason')}: {e.get('message')}"[:300]
    return ""


def _failure_line(where: str, condition: dict | None, events: list[dict], exits: list[str]) -> str:
    condition = condition or {}
    text = f"{where} failed"
    if condition.get("reason") or condition.get("message"):
        text += (
            f": {condition.get('reason') or ''}{': ' if condition.get('message') else ''}"
            f"{(condition.get('message') or '')[:300]}"
        )
    if exits:
        text += "; " + "; ".join(exits[:3])
    warning = _last_warning(events)
    if warning:
        text += f"; last warning: {warning}"
    return text + "; the TrainJob is being deleted"
