"""run_trainjob against a fake Kubernetes API on 127.0.0.1 (a thread that records requests and scripts TrainJob
states)."""

import contextlib
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from repeatlab.errors import TrainError

kubernetes = pytest.importorskip("kubernetes")
runner = pytest.importorskip("repeatlab.trainjob_runner")

NS = "studies"
NAME = "pt-0123456789abcdef"
BASE = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"


def trainjob(name: str = NAME) -> dict:
    """A TrainJob as repeatlab.launch.build_trainjob makes it (the runner only needs the dict)."""
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "repeatlab"}},
        "spec": {
            "runtimeRef": {"name": "torch-distributed"},
            "trainer": {
                "image": "ghcr.io/repeatlab/repeatlab-cuda:0.1.0",
                "numNodes": 2,
                "numProcPerNode": 4,
                "command": ["python", "-m", "repeatlab.train"],
                "args": ["--run-url", "file:///tmp/runs/x"],
            },
        },
    }


def state(kind: str | None, reason: str = "", message: str = "", active: int = 0) -> dict:
    status: dict = {
        "jobsStatus": [
            {
                "name": "node",
                "active": active,
                "ready": active,
                "succeeded": 0,
                "failed": 1 if kind == "Failed" else 0,
                "suspended": 0,
            }
        ]
    }
    if kind:
        status["conditions"] = [
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ]
    return status


class FakeKube:
    """The few Kubernetes API paths the runner uses. `states` is served in order on GET, the last one repeated."""

    def __init__(self, states: list[dict | None], *, create_code: int = 201, existing: dict | None = None):
        self.states = list(states)
        self.create_code = create_code
        self.requests: list[dict] = []
        self.stored: dict | None = None
        self.existing = existing  # status of a TrainJob that exists before create (409)
        self.gets = 0
        self.deleted = False
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, code: int, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                with fake.lock:
                    fake.requests.append(
                        {"method": method, "path": url.path, "query": parse_qs(url.query), "body": body}
                    )
                    code, obj = fake.route(method, url.path, parse_qs(url.query), body)
                self._answer(code, obj)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_DELETE(self):
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def status(code: int, reason: str, message: str) -> tuple[int, dict]:
        return code, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }

    def route(self, method, path, query, body):
        if method == "POST" and path == BASE:
            if self.existing is not None and not self.deleted:
                self.stored = {**trainjob(), "status": self.existing}
                return self.status(409, "AlreadyExists", f'trainjobs.trainer.kubeflow.org "{NAME}" already exists')
            if self.create_code != 201:
                return self.status(self.create_code, "Forbidden", "trainjobs is forbidden: no RBAC")
            self.stored = {**body, "metadata": {**body["metadata"], "uid": "u-1", "resourceVersion": "1"}}
            self.deleted = False
            self.existing = None
            return 201, self.stored
        if path == f"{BASE}/{NAME}":
            if method == "DELETE":
                if self.stored is None:
                    return self.status(404, "NotFound", "not found")
                self.stored, self.deleted = None, True
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}
            if self.stored is None:
                return self.status(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{NAME}" not found')
            if self.existing is not None:
                return 200, self.stored
            self.gets += 1
            current = self.states[min(self.gets, len(self.states)) - 1]
            if current == "500":
                return self.status(500, "InternalError", "etcd is sad")
            return 200, {**self.stored, **({"status": current} if current else {})}
        if method == "GET" and path == f"/api/v1/namespaces/{NS}/events":
            selector = query.get("fieldSelector", [""])[0]
            obj_name = selector.split("=", 1)[1]
            kind = "Pod" if obj_name.startswith(f"{NAME}-node") else "TrainJob"
            items = [
                {
                    "metadata": {"name": f"{obj_name}.1", "namespace": NS},
                    "involvedObject": {"kind": kind, "name": obj_name, "namespace": NS},
                    "type": "Warning" if kind == "Pod" else "Normal",
                    "reason": "OOMKilling" if kind == "Pod" else "JobsCreationSucceeded",
                    "message": "Memory cgroup out of memory" if kind == "Pod" else "Succeeded to create Jobs",
                    "count": 2 if kind == "Pod" else 1,
                    "lastTimestamp": "2026-01-01T00:00:05Z" if kind == "Pod" else "2026-01-01T00:00:01Z",
                }
            ]
            return 200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": items}
        if method == "GET" and path == f"/api/v1/namespaces/{NS}/pods":
            pod = {
                "metadata": {"name": f"{NAME}-node-0-0-abcde", "namespace": NS},
                "spec": {"containers": [{"name": "node", "image": "x"}]},
                "status": {
                    "phase": "Failed",
                    "containerStatuses": [
                        {
                            "name": "node",
                            "image": "x",
                            "imageID": "",
                            "ready": False,
                            "restartCount": 0,
                            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                        }
                    ],
                },
            }
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod]}
        return self.status(404, "NotFound", f"no route {method} {path}")

    def of(self, method: str, path: str | None = None) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and (path is None or r["path"] == path)]

    def api_client(self):
        configuration = kubernetes.client.Configuration()
        configuration.host = self.host
        return kubernetes.client.ApiClient(configuration)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


FAST = {"poll_s": 0.01, "backoff": 2.0, "max_poll_s": 0.05}


@contextlib.contextmanager
def runner_log(on_line: Callable[[str], object] | None = None) -> Iterator[list[str]]:
    """The runner's log lines, as it logs them; on_line sees each line as it is logged (and may raise there)."""
    lines: list[str] = []

    class Tap(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())
            if on_line is not None:
                on_line(record.getMessage())

    logger = logging.getLogger(runner.__name__)
    tap, level = Tap(), logger.level
    logger.addHandler(tap)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(tap)
        logger.setLevel(level)


def test_create_poll_running_complete():
    states = [
        None,
        state("Created", "JobsCreationSucceeded"),
        state(None, active=2),
        state(None, active=2),
        state("Complete", "JobsCompleted", "jobset completed successfully"),
    ]
    with FakeKube(states) as kube, runner_log() as logs:
        out = runner.run_trainjob(trainjob(), NS, api_client=kube.api_client(), timeout_s=10, **FAST)
    assert out["status"] == "Complete"
    assert out["conditions"][0]["type"] == "Complete"
    assert out["name"] == NAME and out["namespace"] == NS
    assert any(e["reason"] == "JobsCreationSucceeded" for e in out["events"])
    # the request shapes
    creates = kube.of("POST", BASE)
    assert len(creates) == 1
    body = creates[0]["body"]
    assert body["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and body["kind"] == "TrainJob"
    assert body["metadata"]["name"] == NAME and body["metadata"]["namespace"] == NS
    assert body["spec"] == trainjob()["spec"]
    assert len(kube.of("GET", f"{BASE}/{NAME}")) == 5
    assert kube.of("DELETE") == []  # a finished job stays for inspection
    events = kube.of("GET", f"/api/v1/namespaces/{NS}/events")
    assert events[0]["query"]["fieldSelector"] == [f"involvedObject.name={NAME}"]
    pods = kube.of("GET", f"/api/v1/namespaces/{NS}/pods")
    assert pods[0]["query"]["labelSelector"] == [f"jobset.sigs.k8s.io/jobset-name={NAME}"]
    # status changes are logged once each
    text = "\n".join(logs)
    assert "created" in text and "Pending" in text and "Created (JobsCreationSucceeded)" in text
    assert sum("Running" in line for line in logs) == 1
    assert "Complete (JobsCompleted: jobset completed successfully)" in text


def test_failed_reports_events_deletes_and_raises_one_line():
    states = [state(None, active=2), state("Failed", "JobsFailed", "jobset failed: node-0 backoff limit")]
    with FakeKube(states) as kube, runner_log() as logs, pytest.raises(TrainError) as info:
        runner.run_trainjob(trainjob(), NS, api_client=kube.api_client(), timeout_s=10, **FAST)
    message = str(info.value)
    assert "\n" not in message
    assert f"TrainJob {NS}/{NAME} failed: JobsFailed: jobset failed" in message
    assert "exited 137 (OOMKilled)" in message and "OOMKilling" in message
    deletes = kube.of("DELETE", f"{BASE}/{NAME}")
    assert len(deletes) == 1 and deletes[0]["body"]["propagationPolicy"] == "Foreground"
    pod_events = [
        r
        for r in kube.of("GET", f"/api/v1/namespaces/{NS}/events")
        if r["query"]["fieldSelector"] == [f"involvedObject.name={NAME}-node-0-0-abcde"]
    ]
    assert len(pod_events) == 1
    assert any("event" in line and "OOMKilling x2" in line for line in logs)
    assert any("deleted" in line for line in logs)


def test_timeout_deletes():
    with (
        FakeKube([state(None, active=1)]) as kube,
        pytest.raises(TrainError, match=r"did not finish within 0.3s \(last status: Running"),
    ):
        runner.run_trainjob(trainjob(), NS, api_client=kube.api_client(), timeout_s=0.3, **FAST)
    assert len(kube.of("DELETE", f"{BASE}/{NAME}")) == 1
    gets = kube.of("GET", f"{BASE}/{NAME}")
    assert 3 <= len(gets) <= 30  # backoff capped at max_poll_s, bounded by the timeout


def test_backoff_intervals(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(runner.time, "sleep", lambda s: sleeps.append(round(s, 6)))
    states = [state(None, active=1)] * 6 + [state("Complete", "JobsCompleted")]
    with FakeKube(states) as kube:
        runner.run_trainjob(
            trainjob(),
            NS,
            api_client=kube.api_client(),
            timeout_s=100,
            poll_s=1,
            backoff=2,
            max_poll_s=5,
        )
    assert sleeps == [1, 2, 4, 5, 5, 5]


def test_keyboard_interrupt_deletes_and_reraises():
    def log(line):
        if "Running" in line:
            raise KeyboardInterrupt

    with FakeKube([state(None, active=1)]) as kube, runner_log(log), pytest.raises(KeyboardInterrupt):
        runner.run_trainjob(trainjob(), NS, api_client=kube.api_client(), timeout_s=10, **FAST)
    assert len(kube.of("DELETE", f"{BASE}/{NAME}")) == 1


def test_sigterm_deletes_and_raises_train_error():
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def log(line):
        if "Running" in line:
            handler = signal.getsignal(signal.SIGTERM)
            assert handler not in (signal.SIG_DFL, signal.SIG_IGN, None, before)  # ours, so this cannot kill pytest
            seen.append(handler)
            signal.raise_signal(signal.SIGTERM)

    with (
        FakeKube([state(None, active=1)]) as kube,
        runner_log(log),
        pytest.raises(TrainError, match="cancelled by SIGTERM"),
    ):
        runner.run_trainjob(trainjob(), NS, api_client=kube.api_client(), timeout_s=10, **FAST)
    assert seen and len(kube.of("DELETE", f"{BASE}/{NAME}")) == 1
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_create_forbidden_is_one_line_and_nothing_deleted():
    with (
        FakeKube([None], create_code=403) as kube,
        pytest.raises(TrainError, match=r"cannot be created: HTTP 403 .*no RBAC"),
    ):
        runner.run_trainjob(trainjob(), NS, api_client=kube.api_client(), timeout_s=10, **FAST)
    assert kube.of("DELETE") == [] and kube.of("GET") == []


def test_transient_api_errors_are_tolerated():
    states = [state(None, active=1), "500", "500", state("Complete", "JobsCompleted")]
    with FakeKube(states) as kube, runner_log() as logs:
        out = runner.run_trainjob(trainjob(), NS, api_client=kube.api_client(), timeout_s=10, max_api_errors=3, **FAST)
    assert out["status"] == "Complete"
    assert sum("status read failed" in line for line in logs) == 2


def test_persistent_api_errors_fail_and_try_to_delete():
    with FakeKube(["500"]) as kube, pytest.raises(TrainError, match="failed 3 times in a row"):
        runner.run_trainjob(trainjob(), NS, api_client=kube.api_client(), timeout_s=10, max_api_errors=3, **FAST)
    assert len(kube.of("DELETE", f"{BASE}/{NAME}")) == 1


def test_existing_running_job_is_adopted():
    with FakeKube([state("Complete", "JobsCompleted")], existing=state(None, active=2)) as kube:
        kube_existing = kube.existing

        def log(line):
            if "waiting on it" in line:
                kube.existing = None  # from now on the scripted states are served

        with runner_log(log) as logs:
            out = runner.run_trainjob(trainjob(), NS, api_client=kube.api_client(), timeout_s=10, **FAST)
    assert kube_existing is not None and out["status"] == "Complete"
    assert len(kube.of("POST", BASE)) == 1 and kube.of("DELETE") == []
    assert any("exists already (Running)" in line for line in logs)


def test_existing_failed_job_is_replaced():
    with FakeKube([state("Complete", "JobsCompleted")], existing=state("Failed", "JobsFailed")) as kube:
        out = runner.run_trainjob(trainjob(), NS, api_client=kube.api_client(), timeout_s=10, **FAST)
    assert out["status"] == "Complete"
    assert [r["method"] for r in kube.requests if r["path"].startswith(BASE)][:4] == ["POST", "GET", "DELETE", "GET"]
    assert len(kube.of("POST", BASE)) == 2


def test_kubeconfig_fallback(tmp_path, monkeypatch):
    with FakeKube([state("Complete", "JobsCompleted")]) as kube:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": kube.host}}],
                    "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": NS}}],
                }
            )
        )
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        out = runner.run_trainjob(trainjob(), NS, timeout_s=10, **FAST)
    assert out["status"] == "Complete"


def test_no_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(TrainError, match="no Kubernetes credentials"):
        runner.load_api_client()


@pytest.mark.parametrize(
    "obj,expected",
    [
        ({}, "Pending"),
        ({"status": state("Created")}, "Created"),
        ({"status": state(None, active=1)}, "Running"),
        ({"status": state("Suspended", "Suspended")}, "Suspended"),
        ({"status": state("Complete")}, "Complete"),
        ({"status": state("Failed")}, "Failed"),
        ({"status": {"conditions": [{"type": "Complete", "status": "False"}]}}, "Pending"),
    ],
)
def test_trainjob_status(obj, expected):
    assert runner.trainjob_status(obj)[0] == expected


def test_runs_a_trainjob_built_by_launch():
    """The launcher's path: repeatlab.launch.build_trainjob -> run_trainjob; the dict is sent as built."""
    try:
        from repeatlab.launch import build_trainjob
    except ImportError as exc:  # pragma: no cover - before launch.py lands
        pytest.skip(f"repeatlab.launch not importable: {exc}")
    built = build_trainjob(
        NAME,
        NS,
        "gs://bucket/runs/p1",
        "ghcr.io/repeatlab/repeatlab-cuda:0.1.0",
        2,
        4,
        {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 4},
        {"OMP_NUM_THREADS": "1"},
    )
    with FakeKube([state(None, active=2), state("Complete", "JobsCompleted")]) as kube:
        out = runner.run_trainjob(built, NS, api_client=kube.api_client(), timeout_s=10, **FAST)
    assert out["status"] == "Complete"
    sent = kube.of("POST", BASE)[0]["body"]
    assert sent["spec"] == json.loads(json.dumps(built["spec"]))
    assert sent["metadata"]["name"] == NAME and sent["metadata"]["namespace"] == NS
