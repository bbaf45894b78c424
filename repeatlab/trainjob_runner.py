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
import dataclasses
import logging
import signal
import threading
import time
from typing import Any, NoReturn

from repeatlab import logs
from repeatlab.errors import TrainError

log = logging.getLogger(__name__)

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
    api_client: Any = None,
    timeout_s: float,
    poll_s: float = 5,
    backoff: float = 1.5,
    max_poll_s: float = 60,
    delete_on_success: bool = False,
    request_timeout_s: float = 30,
    max_api_errors: int = 5,
) -> dict:
    """Create the TrainJob, wait until Complete, and return {status, conditions, events, name, namespace, exits}.

    Raises TrainError (one line) when the job fails or does not finish within timeout_s; the job is then deleted, as
    it is on KeyboardInterrupt (re-raised) and SIGTERM (TrainError). Polls every poll_s seconds, growing by `backoff`
    up to max_poll_s. Up to max_api_errors consecutive failed status reads are tolerated (API server restarts).
    """
    logs.ensure_configured()  # the launcher step's pod log shows every status change
    polling = _Polling(timeout_s, poll_s, backoff, max_poll_s, max_api_errors)
    polling.check()
    body = _trainjob_body(trainjob, namespace)
    job = _TrainJobRun(body, api_client or load_api_client(), request_timeout_s)
    return job.run(polling, delete_on_success)


@dataclasses.dataclass(frozen=True)
class _Polling:
    """How long and how often a TrainJob is waited on."""

    timeout_s: float
    poll_s: float
    backoff: float
    max_poll_s: float
    max_api_errors: int

    def check(self) -> None:
        if self.timeout_s <= 0:
            raise TrainError(f"timeout_s {self.timeout_s!r}: must be > 0 seconds")
        if self.poll_s <= 0 or self.backoff < 1 or self.max_poll_s < self.poll_s:
            raise TrainError(
                f"poll_s={self.poll_s!r}, backoff={self.backoff!r}, max_poll_s={self.max_poll_s!r}: "
                "need poll_s > 0, backoff >= 1 and max_poll_s >= poll_s"
            )


def _trainjob_body(trainjob: dict, namespace: str) -> dict:
    """A copy of the TrainJob with its namespace, apiVersion and kind filled in (a namespace of its own must agree)."""
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
    return body


class _TrainJobRun:
    """One TrainJob's life: create (or adopt) it, wait on it, report it, and delete it when we stop early."""

    def __init__(self, body: dict, api_client: Any, request_timeout_s: float) -> None:
        from kubernetes import client as k8s
        from kubernetes.client.exceptions import ApiException

        self.body = body
        self.name: str = body["metadata"]["name"]
        self.namespace: str = body["metadata"]["namespace"]
        self.where = f"{KIND} {self.namespace}/{self.name}"
        self.custom = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.delete_options = k8s.V1DeleteOptions(propagation_policy="Foreground")
        self.api_exception = ApiException
        self.errors = _api_errors()
        self.request_timeout_s = request_timeout_s
        self.owned = False  # we created or adopted a TrainJob that has not finished: it must go when we stop early

    def run(self, polling: _Polling, delete_on_success: bool) -> dict:
        start = time.monotonic()
        deadline = start + polling.timeout_s
        try:
            with _sigterm_raises():
                self._create_or_adopt(deadline, polling.poll_s)
                return self._wait(polling, start, deadline, delete_on_success)
        except KeyboardInterrupt:
            self._abandon("interrupted; deleting it", "interrupted")
            raise
        except _Terminated:
            self._abandon("SIGTERM; deleting it", "terminated")
            raise TrainError(f"{self.where}: cancelled by SIGTERM; the TrainJob was deleted") from None
        finally:
            if self.owned:
                self._delete("failed or timed out")

    # ---- Kubernetes calls

    def _get(self) -> dict:
        return self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=self.request_timeout_s
        )

    def _create(self) -> None:
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.body, _request_timeout=self.request_timeout_s
        )

    def _delete(self, why: str) -> None:
        """Delete the TrainJob (foreground: its JobSet and pods go with it); a failure is logged, never raised."""
        try:
            self.custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.name,
                body=self.delete_options,
                _request_timeout=self.request_timeout_s,
            )
            log.info(f"{self.where}: deleted ({why})")
        except self.api_exception as exc:
            if exc.status != 404:
                log.warning(f"{self.where}: could not be deleted ({why}): {_api_reason(exc)}; delete it by hand")
        except self.errors as exc:
            log.warning(f"{self.where}: could not be deleted ({why}): {_api_reason(exc)}; delete it by hand")

    def _abandon(self, message: str, why: str) -> None:
        if self.owned:
            log.info(f"{self.where}: {message}")
            self._delete(why)
            self.owned = False

    def _report(self) -> tuple[list[dict], list[str]]:
        """Log and return the job's recent events and its pods' container exit reasons."""
        events, exits = collect_events(self.core, self.namespace, self.name, self.request_timeout_s)
        for e in events:
            log.info(f"{self.where}: event {_format_event(e)}")
        for line in exits:
            log.info(f"{self.where}: {line}")
        return events, exits

    # ---- create (or adopt)

    def _create_or_adopt(self, deadline: float, poll_s: float) -> None:
        try:
            self._create()
            self.owned = True
            log.info(f"{self.where}: created")
        except self.api_exception as exc:
            if exc.status != 409:
                raise TrainError(f"{self.where} cannot be created: {_api_reason(exc)}") from None
            self._adopt(deadline, poll_s)
        except self.errors as exc:
            raise TrainError(f"{self.where} cannot be created: {_api_reason(exc)}") from None

    def _adopt(self, deadline: float, poll_s: float) -> None:
        """A TrainJob of this name exists (a retried launcher step): wait on it, or replace it if it failed."""
        status, _ = trainjob_status(self._get())
        if status == FAILED:
            log.info(f"{self.where}: exists already and failed; deleting it and creating it again")
            self._delete("replacing a failed attempt")
            _wait_gone(self._get, self.api_exception, deadline, poll_s, self.where)
            self._create()
            log.info(f"{self.where}: created")
        else:
            log.info(f"{self.where}: exists already ({status}); waiting on it")
        self.owned = True

    # ---- wait

    def _wait(self, polling: _Polling, start: float, deadline: float, delete_on_success: bool) -> dict:
        interval = polling.poll_s
        last: str | None = None  # the status line logged last
        api_failures = 0
        while True:
            obj, failure = self._read()
            if obj is None:
                api_failures += 1
                self._tolerate(failure, api_failures, polling.max_api_errors)
            else:
                api_failures = 0
                last, outcome = self._observe(obj, last, start, delete_on_success)
                if outcome is not None:
                    return outcome
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._time_out(polling.timeout_s, last)
            time.sleep(min(interval, remaining))
            interval = min(interval * polling.backoff, polling.max_poll_s)

    def _read(self) -> tuple[dict | None, str]:
        """(the TrainJob, "") or (None, why its read failed); a TrainJob deleted under us raises TrainError."""
        try:
            return self._get(), ""
        except self.api_exception as exc:
            if exc.status == 404:
                self.owned = False
                raise TrainError(f"{self.where} disappeared while running (deleted by someone else?)") from None
            return None, _api_reason(exc)
        except self.errors as exc:
            return None, _api_reason(exc)

    def _tolerate(self, failure: str, api_failures: int, max_api_errors: int) -> None:
        log.warning(f"{self.where}: status read failed ({failure}); attempt {api_failures} of {max_api_errors}")
        if api_failures >= max_api_errors:
            raise TrainError(
                f"{self.where}: the Kubernetes API failed {api_failures} times in a row "
                f"({failure}); the TrainJob is being deleted"
            )

    def _observe(self, obj: dict, last: str | None, start: float, delete_on_success: bool) -> tuple[str, dict | None]:
        """Log a status change; (the status line, the result once Complete); raise TrainError once Failed."""
        status, condition = trainjob_status(obj)
        text = _describe(status, condition, obj)
        if text != last:
            log.info(f"{self.where}: {text} after {time.monotonic() - start:.0f}s")
        if status == COMPLETE:
            events, exits = self._report()
            self.owned = False  # finished: it stays for inspection unless delete_on_success
            if delete_on_success:
                self._delete("complete")
            return text, self._result(status, obj, events, exits)
        if status == FAILED:
            events, exits = self._report()
            raise TrainError(_failure_line(self.where, condition, events, exits))
        return text, None

    def _time_out(self, timeout_s: float, last: str | None) -> NoReturn:
        events, _ = self._report()
        warning = _last_warning(events)
        raise TrainError(
            f"{self.where} did not finish within {timeout_s:g}s (last status: {last or 'unknown'})"
            + (f"; last warning: {warning}" if warning else "")
            + "; the TrainJob is being deleted"
        )

    def _result(self, status: str, obj: dict, events: list[dict], exits: list[str]) -> dict:
        return {
            "status": status,
            "conditions": _conditions(obj),
            "events": events,
            "exits": exits,
            "name": self.name,
            "namespace": self.namespace,
        }


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
