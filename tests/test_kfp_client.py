"""repeatlab submit / schedule against a fake KFP v2beta1 REST API on 127.0.0.1 (a thread; records every request)."""

import email.parser
import json
import logging
import pathlib
import re
import socket
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from repeatlab import config
from repeatlab.cli import main as cli_main
from repeatlab.errors import ConfigError

kfp_client = pytest.importorskip("repeatlab.kfp_client")

TOKEN = "s3cr3t-t0ken-value-0123456789"


class FakeKfp:
    """Answers like the KFP v2beta1 API: healthz, experiments list/create, runs create, recurring runs list/create."""

    def __init__(self, status_override: dict[str, int] | None = None, tag_name: str = "2.14.0"):
        self.tag_name = tag_name  # the release the real API server's HTTP healthz reports (apiserver/main.go)
        self.requests: list[dict] = []
        self.experiments: list[dict] = []
        self.recurring: list[dict] = []
        self.pipelines: list[dict] = []
        self.versions: list[dict] = []
        self.status_override = status_override or {}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
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
                content_type = self.headers.get("Content-Type") or ""
                if content_type.startswith("multipart/form-data"):
                    body = {"form": _form_fields(content_type, raw)}
                else:
                    body = json.loads(raw) if raw else None
                with fake.lock:
                    fake.requests.append(
                        {
                            "method": method,
                            "path": url.path,
                            "query": parse_qs(url.query),
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                    code, obj = fake.route(method, url.path, parse_qs(url.query), body)
                self._answer(code, obj)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def route(self, method: str, path: str, query: dict, body):
        if path in self.status_override:
            return self.status_override[path], {"error": "denied", "code": 16, "message": "no access"}
        if method == "GET" and path == "/apis/v2beta1/healthz":
            # the real server hand-writes this JSON (backend/src/apiserver/main.go): tag_name is in it, though the
            # v2beta1 swagger's GetHealthzResponse lists only multi_user and pipeline_store
            return 200, {"commit_sha": "0" * 40, "tag_name": self.tag_name, "multi_user": False, "pipeline_store": "db"}
        if path == "/apis/v2beta1/experiments":
            if method == "GET":
                flt = json.loads(query.get("filter", ["{}"])[0])
                name = flt["predicates"][0]["stringValue"]
                found = [e for e in self.experiments if e["display_name"] == name]
                return 200, ({"experiments": found, "total_size": len(found)} if found else {})
            exp = {
                "experiment_id": f"exp-{len(self.experiments) + 1}",
                "display_name": body["display_name"],
                "description": body.get("description"),
            }
            self.experiments.append(exp)
            return 200, exp
        if path.startswith("/apis/v2beta1/pipelines"):
            return self.route_pipelines(method, path, query, body)
        if method == "POST" and path == "/apis/v2beta1/runs":
            return 200, {
                "run_id": "run-123",
                "display_name": body["display_name"],
                "experiment_id": body["experiment_id"],
                "state": "PENDING",
            }
        if path == "/apis/v2beta1/recurringruns":
            if method == "GET":
                return 200, {
                    "recurringRuns": self.recurring,
                    "total_size": len(self.recurring),
                } if self.recurring else {}
            rr = {
                "recurring_run_id": f"rr-{len(self.recurring) + 1}",
                "display_name": body["display_name"],
                "experiment_id": body["experiment_id"],
                "mode": "ENABLE",
            }
            self.recurring.append(rr)
            return 200, rr
        return 404, {"error": f"no route {method} {path}", "code": 5, "message": "not found"}

    def route_pipelines(self, method: str, path: str, query: dict, body):
        def named(items):
            flt = json.loads(query.get("filter", ["{}"])[0])
            name = flt["predicates"][0]["stringValue"]
            return [i for i in items if i["display_name"] == name]

        if path == "/apis/v2beta1/pipelines":
            if method == "GET":
                found = named(self.pipelines)
                return 200, ({"pipelines": found, "total_size": len(found)} if found else {})
            pipeline = {
                "pipeline_id": f"pl-{len(self.pipelines) + 1}",
                "display_name": body["display_name"],
                "description": body.get("description"),
                "namespace": body.get("namespace"),
            }
            self.pipelines.append(pipeline)
            return 200, pipeline
        if path == "/apis/v2beta1/pipelines/upload_version" and method == "POST":
            version = {
                "pipeline_version_id": f"pv-{len(self.versions) + 1}",
                "pipeline_id": query["pipelineid"][0],
                "display_name": query["name"][0],
                "name": query["name"][0],
                "spec": body["form"]["uploadfile"],
            }
            self.versions.append(version)
            return 200, {k: v for k, v in version.items() if k != "spec"}
        listed = re.fullmatch(r"/apis/v2beta1/pipelines/([^/]+)/versions", path)
        if listed and method == "GET":
            found = [
                {k: v for k, v in version.items() if k != "spec"}
                for version in named(self.versions)
                if version["pipeline_id"] == listed.group(1)
            ]
            return 200, ({"pipeline_versions": found, "total_size": len(found)} if found else {})
        return 404, {"error": f"no route {method} {path}", "code": 5, "message": "not found"}

    def of(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _form_fields(content_type: str, raw: bytes) -> dict:
    message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.get_payload()
    }


API_DIR = pathlib.Path(__file__).parent / "data" / "kfp_v2beta1"


def _api_definitions() -> tuple[list[tuple[str, re.Pattern, dict]], dict]:
    """(method, path pattern, operation) of every v2beta1 call, and every schema definition, from the upstream swagger
    files (tests/data/kfp_v2beta1/README.md). Objects with declared properties get additionalProperties: false, so an
    undeclared field in a request fails."""
    operations, definitions = [], {}
    for path in sorted(API_DIR.glob("*.swagger.json")):
        doc = json.loads(path.read_text())
        definitions.update(doc.get("definitions") or {})
        for template, methods in doc["paths"].items():
            pattern = re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")
            operations += [(method.upper(), pattern, op) for method, op in methods.items()]
    for schema in definitions.values():
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for prop in (schema.get("properties") or {}).values():
            if prop.get("format") in ("int64", "uint64"):  # proto3 JSON: a 64-bit integer is a number or a string
                prop["type"] = ["string", "integer"]
    return operations, definitions


def check_against_api(request: dict) -> None:
    """The request is one the v2beta1 API defines: path and method, query names, form fields, JSON body schema."""
    import jsonschema

    operations, definitions = _api_definitions()
    matching = [
        op for method, pattern, op in operations if method == request["method"] and pattern.match(request["path"])
    ]
    assert matching, f"{request['method']} {request['path']} is not a v2beta1 API call"
    params = matching[0].get("parameters") or []
    declared = {p["name"] for p in params if p["in"] == "query"}
    assert set(request["query"]) <= declared, f"{request['path']}: undeclared query {set(request['query']) - declared}"
    body = request["body"]
    if isinstance(body, dict) and "form" in body:
        fields = {p["name"] for p in params if p["in"] == "formData"}
        assert set(body["form"]) <= fields, f"{request['path']}: undeclared form fields {set(body['form']) - fields}"
    elif body is not None:
        schema = next(p["schema"] for p in params if p["in"] == "body")
        jsonschema.validate(body, {**schema, "definitions": definitions})


@pytest.fixture
def fake_kfp():
    with FakeKfp() as server:
        yield server
    for request in server.requests:  # every request any test sent is one the real API defines
        check_against_api(request)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """A trivial pipeline stands in for repeatlab.kfp_pipeline; no KFP context file, token or env from the machine."""
    from kfp import compiler, dsl

    @dsl.component(base_image="python:3.11-slim")
    def echo(study_config: str) -> str:
        return study_config

    @dsl.pipeline(name="repeatlab-study")
    def pipeline(study_config: str):
        echo(study_config=study_config)

    def compile_pipeline(path, cfg=None, fan_in="collected"):
        compiled.append(cfg.name)
        # the study is the parameter's default, as in the real pipeline: another study, another spec
        compiler.Compiler().compile(
            pipeline_func=pipeline, package_path=str(path), pipeline_parameters={"study_config": cfg.to_json()}
        )
        return str(path)

    compiled: list = []
    fake_module = types.ModuleType("repeatlab.kfp_pipeline")
    fake_module.compile_pipeline = compile_pipeline
    fake_module.compiled = compiled
    monkeypatch.setitem(sys.modules, "repeatlab.kfp_pipeline", fake_module)
    import kfp

    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    monkeypatch.setattr(kfp_client, "SA_TOKEN_PATH", str(tmp_path / "no-such-token"))
    for var in (
        "KFP_HOST",
        "KFP_NAMESPACE",
        "KF_PIPELINES_SA_TOKEN_PATH",
        "KF_PIPELINES_UI_ENDPOINT",
        "KF_PIPELINES_ENDPOINT",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def study(tmp_path):
    cfg = config.from_dict(
        {
            "name": "upweight-10x",
            "description": "is 10x in the danger zone?",
            "grid": {"fractions": [0.0, 0.25], "epochs": [4, 16]},
            "storage": {"root": "s3://mlpipeline/repeatlab"},
        }
    )
    path = tmp_path / "study.yaml"
    path.write_text(cfg.to_yaml())
    return cfg, str(path)


def _run_parameters(body: dict) -> dict:
    return body["runtime_config"]["parameters"]


def test_submit_creates_experiment_once_and_run_with_study_config(fake_kfp, study):
    cfg, _ = study
    first = kfp_client.submit(cfg, fake_kfp.host, token=None, experiment=None, run_name=None, package_path=None)
    second = kfp_client.submit(cfg, fake_kfp.host, token=None, experiment=None, run_name="again", package_path=None)

    assert sys.modules["repeatlab.kfp_pipeline"].compiled == ["upweight-10x"] * 2  # compiled for this study
    assert len(fake_kfp.of("POST", "/apis/v2beta1/experiments")) == 1  # created once, then reused
    assert fake_kfp.of("POST", "/apis/v2beta1/experiments")[0]["body"]["display_name"] == "upweight-10x"
    assert first["experiment_id"] == second["experiment_id"] == "exp-1"
    lookups = fake_kfp.of("GET", "/apis/v2beta1/experiments")
    assert len(lookups) == 2
    assert json.loads(lookups[0]["query"]["filter"][0])["predicates"][0] == {
        "operation": 1,
        "key": "display_name",
        "stringValue": "upweight-10x",
    }  # 1: EQUALS

    runs = fake_kfp.of("POST", "/apis/v2beta1/runs")
    assert len(runs) == 2
    body = runs[0]["body"]
    assert body["experiment_id"] == "exp-1"
    assert body["display_name"].startswith("upweight-10x-") and len(body["display_name"]) == len("upweight-10x-") + 15
    assert runs[1]["body"]["display_name"] == "again"
    # the run references the study's pipeline version (no inline spec); the parameter's value is the study
    assert "pipeline_spec" not in body
    assert all(
        r["body"]["pipeline_version_reference"] == {"pipeline_id": "pl-1", "pipeline_version_id": "pv-1"} for r in runs
    )
    value = _run_parameters(body)["study_config"]
    assert config.loads(value) == cfg
    assert first == {
        "run_id": "run-123",
        "experiment_id": "exp-1",
        "experiment": "upweight-10x",
        "run_name": body["display_name"],
        "url": f"{fake_kfp.host}/#/runs/details/run-123",
        "pipeline": "upweight-10x",
        "pipeline_id": "pl-1",
        "version": fake_kfp.versions[0]["name"],
        "version_id": "pv-1",
        "reused": False,
    }
    assert second["reused"] is True
    # no token given, none sent
    assert all("authorization" not in r["headers"] for r in fake_kfp.requests)


@pytest.mark.parametrize("root", ["file://./.repeatlab", "/data/repeatlab"])
def test_submit_refuses_a_local_root_and_sends_nothing(fake_kfp, tmp_path, capsys, root):
    """A file:// root is a different folder in every pod: refused before compiling or calling the API."""
    cfg = config.from_dict({"name": "local", "storage": {"root": root}})
    path = tmp_path / "local.yaml"
    path.write_text(cfg.to_yaml())
    for command in (["submit"], ["schedule", "--cron", "0 0 3 * * *"]):
        assert cli_main([*command, "--host", fake_kfp.host, "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"storage.root: {root!r} is not allowed: a cluster run needs" in err
    assert fake_kfp.requests == [] and sys.modules["repeatlab.kfp_pipeline"].compiled == []


def test_run_parameters_carry_the_storage_root_where_the_package_has_it(tmp_path, study):
    from kfp import compiler, dsl

    cfg, _ = study

    @dsl.component(base_image="python:3.11-slim")
    def echo(study_config: str, storage_root: str) -> str:
        return study_config + storage_root

    @dsl.pipeline(name="p")
    def with_root(study_config: str, storage_root: str = "s3://x"):
        echo(study_config=study_config, storage_root=storage_root)

    path = str(tmp_path / "p.yaml")
    compiler.Compiler().compile(with_root, package_path=path)
    params = kfp_client.run_parameters(cfg, path)
    assert params == {"study_config": kfp_client.study_parameter(cfg), "storage_root": "s3://mlpipeline/repeatlab"}
    old = str(tmp_path / "old.tar.gz")  # not a YAML package: only the study, whose root travels inside it
    assert kfp_client.run_parameters(cfg, old) == {"study_config": kfp_client.study_parameter(cfg)}


def test_submit_with_token_sends_bearer_and_never_shows_it(fake_kfp, study, tmp_path, capsys, caplog):
    _, cfg_path = study
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    caplog.set_level(logging.DEBUG)
    rc = cli_main(
        [
            "submit",
            "--host",
            fake_kfp.host,
            "--config",
            cfg_path,
            "--token-file",
            str(token_file),
            "--experiment",
            "nightly",
            "--run-name",
            "by-hand",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "run_id: run-123" in out and f"url: {fake_kfp.host}/#/runs/details/run-123" in out
    assert fake_kfp.requests
    for r in fake_kfp.requests:  # every call, the health check included, carries the token
        assert r["headers"].get("authorization") == f"Bearer {TOKEN}", r["path"]
    assert fake_kfp.of("POST", "/apis/v2beta1/experiments")[0]["body"]["display_name"] == "nightly"
    assert fake_kfp.of("POST", "/apis/v2beta1/runs")[0]["body"]["display_name"] == "by-hand"
    logged = "\n".join(rec.getMessage() + str(rec.args) for rec in caplog.records)
    assert TOKEN not in out and TOKEN not in err and TOKEN not in logged


def test_projected_service_account_token_is_used(fake_kfp, study, tmp_path, monkeypatch):
    cfg, _ = study
    sa = tmp_path / "sa-token"
    sa.write_text(TOKEN)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(sa))
    token = kfp_client.read_token(None)
    kfp_client.submit(cfg, fake_kfp.host, token=token, experiment=None, run_name="x", package_path=None)
    assert fake_kfp.of("POST", "/apis/v2beta1/runs")[0]["headers"]["authorization"] == f"Bearer {TOKEN}"
    monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH")
    assert kfp_client.read_token(None) is None  # no projected token outside a cluster: no header


def test_rejected_token_is_one_line_without_the_token(study, tmp_path, capsys, caplog):
    _, cfg_path = study
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    caplog.set_level(logging.DEBUG)
    with FakeKfp(status_override={"/apis/v2beta1/healthz": 401}) as server:
        rc = cli_main(["submit", "--host", server.host, "--config", cfg_path, "--token-file", str(token_file)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert err.count("\n") == 1 and "401" in err and "Traceback" not in err
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert TOKEN not in out + err + logged


@pytest.mark.parametrize(
    ("tag", "fan_in", "refused"),
    [
        ("2.5.0", "collected", "runs KFP 2.5.0: --fan-in collected needs KFP >= 2.14.0; submit with --fan-in storage"),
        ("v2.13.9", "collected", "needs KFP >= 2.14.0"),
        ("2.4.0", "storage", "runs KFP 2.4.0: --fan-in storage needs KFP >= 2.4.1"),
        ("2.4.0", "collected", "needs KFP >= 2.14.0"),
        ("2.5.0", "storage", None),
        ("2.15.0-rc.1", "collected", None),
    ],
)
def test_a_backend_too_old_for_the_fan_in_is_refused_before_anything_is_created(study, capsys, tag, fan_in, refused):
    _, cfg_path = study
    with FakeKfp(tag_name=tag) as server:
        rc = cli_main(["submit", "--host", server.host, "--config", cfg_path, "--fan-in", fan_in])
    out, err = capsys.readouterr()
    created = [r for r in server.requests if r["method"] == "POST"]
    if refused:
        assert rc == 2 and err.count("\n") == 1 and refused in err, err
        assert created == []  # only the health check was sent
        if fan_in == "storage" or tag == "2.4.0":
            assert "submit with --fan-in storage" not in err  # no advice that would not work either
    else:
        assert rc == 0, err
        assert any(r["path"] == "/apis/v2beta1/runs" for r in created)


def test_a_backend_without_a_release_tag_is_warned_about_and_used(study, capsys, caplog):
    _, cfg_path = study
    with FakeKfp(tag_name="unknown") as server, caplog.at_level(logging.WARNING, logger="repeatlab.kfp_client"):
        rc = cli_main(["submit", "--host", server.host, "--config", cfg_path])
    assert rc == 0
    assert any("does not report its release" in r.getMessage() for r in caplog.records)


def test_server_error_on_run_create_is_one_line(study, capsys):
    _, cfg_path = study
    with FakeKfp(status_override={"/apis/v2beta1/runs": 500}) as server:
        rc = cli_main(["submit", "--host", server.host, "--config", cfg_path])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "HTTP 500" in err and "creating run" in err


def test_schedule_creates_recurring_run(fake_kfp, study, capsys):
    _, cfg_path = study
    rc = cli_main(["schedule", "--host", fake_kfp.host, "--config", cfg_path, "--cron", "0 0 3 * * *"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    created = fake_kfp.of("POST", "/apis/v2beta1/recurringruns")
    assert len(created) == 1
    body = created[0]["body"]
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert int(body["max_concurrency"]) == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["display_name"] == "upweight-10x-scheduled"
    assert body["experiment_id"] == "exp-1"
    assert config.loads(_run_parameters(body)["study_config"]).name == "upweight-10x"
    assert body["pipeline_version_reference"] == {"pipeline_id": "pl-1", "pipeline_version_id": "pv-1"}
    assert "pipeline_spec" not in body
    assert f"pipeline: upweight-10x (pl-1), version {fake_kfp.versions[0]['name']} (pv-1, uploaded)" in out
    assert "recurring_run_id: rr-1" in out and f"{fake_kfp.host}/#/recurringrun/details/rr-1" in out

    # the same name again is refused (a retried Job must not schedule the study twice)
    rc = cli_main(["schedule", "--host", fake_kfp.host, "--config", cfg_path, "--cron", "0 0 3 * * *"])
    err = capsys.readouterr().err
    assert rc == 2 and "exists already" in err and "rr-1" in err
    assert len(fake_kfp.of("POST", "/apis/v2beta1/recurringruns")) == 1


def test_schedule_api_options(fake_kfp, study):
    cfg, _ = study
    out = kfp_client.schedule(
        cfg,
        fake_kfp.host,
        "0 30 */6 * * MON-FRI",
        token=None,
        experiment="weekly",
        job_name="every-6h",
        max_concurrency=2,
        no_catchup=False,
    )
    body = fake_kfp.of("POST", "/apis/v2beta1/recurringruns")[0]["body"]
    assert int(body["max_concurrency"]) == 2 and body["no_catchup"] is False
    assert body["trigger"]["cron_schedule"]["cron"] == "0 30 */6 * * MON-FRI"
    assert out["job_name"] == "every-6h" and out["experiment"] == "weekly"


@pytest.mark.parametrize(
    "cron",
    [
        "0 0 3 * * *",
        "*/30 * * * * ?",
        "0 0 0 1 JAN,jul *",
        "0 15 10 ? * 1-5",
        "@daily",
        "@every 1h30m",
        "  0  0 3 * * *  ",
    ],
)
def test_valid_crons(cron):
    assert kfp_client.validate_cron(cron) == " ".join(cron.split())


@pytest.mark.parametrize(
    "cron,words",
    [
        ("0 3 * * *", ["5 fields", "prepend the seconds", "'0 0 3 * * *'"]),
        ("30 2 * * 1", ["5 fields", "'0 30 2 * * 1'"]),
        ("0 0 3 * * * 2030", ["7 fields", "exactly 6"]),
        ("0 0", ["2 fields"]),
        ("", ["empty"]),
        ("0 0 3 * * * ;rm", ["7 fields"]),
        ("0 0 3 * * $", ["day of week", "characters"]),
        ("60 0 3 * * *", ["seconds", "out of range"]),
        ("0 0 24 * * *", ["hours", "out of range"]),
        ("0 0 3 0 * *", ["day of month", "out of range"]),
        ("0 0 3 * 13 *", ["month", "out of range"]),
        ("0 0 3 * * 7", ["day of week", "out of range"]),
        ("0 0 3 * FOO *", ["month", "not a number"]),
        ("0 0 5-3 * * *", ["ends before it starts"]),
        ("0 */0 * * * *", ["step"]),
        ("? 0 3 * * *", ["only allowed"]),
        ("@sometimes", ["unknown descriptor"]),
    ],
)
def test_bad_crons(cron, words):
    with pytest.raises(ConfigError) as info:
        kfp_client.validate_cron(cron)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_bad_cron_from_cli_is_one_line_and_contacts_nothing(fake_kfp, study, capsys):
    _, cfg_path = study
    rc = cli_main(["schedule", "--host", fake_kfp.host, "--config", cfg_path, "--cron", "0 3 * * *"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "prepend the seconds" in err and "'0 0 3 * * *'" in err
    assert fake_kfp.requests == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_host_is_one_line(study, capsys):
    _, cfg_path = study
    host = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.monotonic()
    rc = cli_main(["submit", "--host", host, "--config", cfg_path])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "cannot be reached" in err and host in err and "Traceback" not in err
    assert time.monotonic() - start < 15
    with pytest.raises(kfp_client.KfpError):
        kfp_client.schedule(config.load(cfg_path), host, "0 0 3 * * *", token=None, experiment=None, job_name=None)


def test_host_from_env_and_missing_host(fake_kfp, study, monkeypatch, capsys):
    _, cfg_path = study
    rc = cli_main(["submit", "--config", cfg_path])
    err = capsys.readouterr().err
    assert rc == 2 and "KFP_HOST" in err
    monkeypatch.setenv("KFP_HOST", fake_kfp.host)
    assert cli_main(["submit", "--config", cfg_path]) == 0
    assert len(fake_kfp.of("POST", "/apis/v2beta1/runs")) == 1


def test_package_without_study_parameter_is_refused(fake_kfp, study, tmp_path):
    cfg, _ = study
    package = tmp_path / "other.yaml"
    package.write_text(
        yaml.safe_dump(
            {
                "pipelineInfo": {"name": "x"},
                "root": {"inputDefinitions": {"parameters": {"n": {"parameterType": "NUMBER_INTEGER"}}}},
            }
        )
    )
    with pytest.raises(ConfigError, match="no 'study_config' parameter"):
        kfp_client.submit(cfg, fake_kfp.host, token=None, experiment=None, run_name=None, package_path=str(package))
    assert fake_kfp.requests == []


def test_submit_the_real_pipeline(fake_kfp, study, monkeypatch):
    """The lead's compiled DAG travels inline; its study_config parameter gets this study."""
    import importlib

    monkeypatch.delitem(sys.modules, "repeatlab.kfp_pipeline")
    try:
        importlib.import_module("repeatlab.kfp_pipeline")
    except ImportError as exc:  # pragma: no cover - before the pipeline lands
        pytest.skip(f"repeatlab.kfp_pipeline not importable: {exc}")
    cfg, _ = study
    kfp_client.submit(cfg, fake_kfp.host, token=None, experiment=None, run_name="real", package_path=None)
    body = fake_kfp.of("POST", "/apis/v2beta1/runs")[0]["body"]
    # the uploaded version is the compiled YAML: pipeline spec, then the kfp-kubernetes platform spec
    spec, platform = yaml.safe_load_all(fake_kfp.versions[0]["spec"])
    assert "kubernetes" in platform["platforms"]
    assert spec["root"]["inputDefinitions"]["parameters"]["study_config"]["parameterType"] == "STRING"
    assert config.loads(_run_parameters(body)["study_config"]) == cfg
    assert spec["root"]["dag"]["tasks"]  # the whole DAG, not a stub


def test_pipeline_version_is_the_spec_hash_reused_until_the_study_changes(fake_kfp, study, capsys):
    """pipeline = the study's name, created once (empty); version = the compiled spec's content hash: an unchanged
    study reuses it, a changed one adds a version to the same pipeline; every run references its version."""
    import hashlib

    cfg, cfg_path = study
    assert cli_main(["submit", "--host", fake_kfp.host, "--config", cfg_path]) == 0
    assert cli_main(["submit", "--host", fake_kfp.host, "--config", cfg_path]) == 0
    out = capsys.readouterr().out
    assert out.count("(pv-1, uploaded)") == 1 and out.count("(pv-1, reused)") == 1
    created = fake_kfp.of("POST", "/apis/v2beta1/pipelines")
    assert [c["body"] for c in created] == [{"display_name": "upweight-10x", "description": cfg.description}]
    uploads = fake_kfp.of("POST", "/apis/v2beta1/pipelines/upload_version")
    assert len(uploads) == 1 and uploads[0]["query"]["pipelineid"] == ["pl-1"]
    docs = list(yaml.safe_load_all(uploads[0]["body"]["form"]["uploadfile"]))
    digest = hashlib.sha256(json.dumps(docs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert uploads[0]["query"]["name"] == [f"sha256-{digest[:16]}"]

    changed = config.from_dict({**cfg.to_dict(), "grid": {"fractions": [0.0, 0.5], "epochs": [4, 16]}})
    third = kfp_client.submit(changed, fake_kfp.host, package_path=None)
    assert (third["pipeline_id"], third["version_id"], third["reused"]) == ("pl-1", "pv-2", False)
    assert len(fake_kfp.of("POST", "/apis/v2beta1/pipelines")) == 1
    references = [
        r["body"]["pipeline_version_reference"]["pipeline_version_id"]
        for r in fake_kfp.of("POST", "/apis/v2beta1/runs")
    ]
    assert references == ["pv-1", "pv-1", "pv-2"]


def test_version_name_ignores_formatting(tmp_path):
    one, two = tmp_path / "a.yaml", tmp_path / "b.yaml"
    one.write_text("# comment\nb: 1\na: [1, 2]\n---\nx: y\n")
    two.write_text("a:\n- 1\n- 2\nb: 1\n---\n{x: y}\n")
    assert kfp_client.version_name(str(one)) == kfp_client.version_name(str(two))
    two.write_text("a: [1, 3]\nb: 1\n---\nx: y\n")
    assert kfp_client.version_name(str(one)) != kfp_client.version_name(str(two))
    assert re.fullmatch(r"sha256-[0-9a-f]{16}", kfp_client.version_name(str(one)))


def test_an_undeclared_field_fails_the_api_check():
    """The API check itself can fail: a run body with a field the v2beta1 Run does not have."""
    import jsonschema

    good = {
        "method": "POST",
        "path": "/apis/v2beta1/runs",
        "query": {},
        "body": {"display_name": "x", "pipeline_version_reference": {"pipeline_id": "p", "pipeline_version_id": "v"}},
    }
    check_against_api(good)
    with pytest.raises(jsonschema.ValidationError, match="pipeline_version"):
        check_against_api({**good, "body": {**good["body"], "pipeline_version": "v"}})
    with pytest.raises(AssertionError, match="undeclared query"):
        check_against_api({**good, "query": {"version": ["v"]}})
    with pytest.raises(AssertionError, match="not a v2beta1 API call"):
        check_against_api({**good, "path": "/apis/v2beta1/pipeline_versions"})


def test_empty_token_file(study, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        kfp_client.read_token(str(empty))
    with pytest.raises(ConfigError, match="cannot be read"):
        kfp_client.read_token(str(tmp_path / "missing"))
