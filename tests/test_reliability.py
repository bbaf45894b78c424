"""Reliability (issue 15): leases, integrity checks, bounded KFP calls, secrets, anonymous access, small input checks.

Process lifetime and the kill/corruption loops are in test_faults.py. Every test here fails on c819fb5's behaviour.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from repeatlab import config, storage
from repeatlab.errors import ConfigError, RepeatlabError, StorageError

REPO = Path(__file__).resolve().parents[1]


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message and message
    return message


# ----------------------------------------------------------------------------------------------------------------------
# Secrets (4)

SECRET_OPTIONS = [
    {"s3": {"client_kwargs": {"aws_secret_access_key": "planted-secret-1"}}},
    {"s3": {"key": "AKIAPLANTED000000001"}},
    {"s3": {"config_kwargs": {"s3": {"proxy": "http://user:planted-pass@proxy:3128"}}}},
    {"gs": {"token": {"private_key": "planted"}}},
    {"gs": {"credentials": "planted"}},
    {"s3": {"client_kwargs": {"headers": ["x", "Authorization: token=planted"]}}},
]
SECRET_ENV = [
    {"DB_PASSWD": "x"},
    {"MY_APIKEY": "x"},
    {"HF_TOKEN": "x"},
    {"dbPassword": "x"},
    {"AWS_ACCESS_KEY_ID": "x"},
    {"GOOGLE_APPLICATION_CREDENTIALS": "/x.json"},
    {"PRIVATE_KEY": "x"},
    {"PLAIN": "-----BEGIN RSA PRIVATE KEY-----"},
    {"URL": "https://u:planted@host/x"},
    {"HEADER": "password=planted"},
]


@pytest.mark.parametrize("options", SECRET_OPTIONS)
def test_secret_looking_storage_options_are_rejected_at_any_depth(options):
    with pytest.raises(ConfigError) as info:
        config.from_dict({"storage": {"options": options}})
    message = one_line(info.value)
    assert message.startswith("storage.options.") and "planted" not in message and "Secret" in message


@pytest.mark.parametrize("env", SECRET_ENV)
def test_secret_looking_cluster_env_is_rejected(env):
    with pytest.raises(ConfigError) as info:
        config.from_dict({"cluster": {"env": env}})
    message = one_line(info.value)
    assert message.startswith("cluster.env.") and "planted" not in message


def test_legitimate_names_pass():
    cfg = config.from_dict(
        {
            "storage": {
                "options": {
                    "gs": {"token": "google_default", "project": "p"},
                    "s3": {"client_kwargs": {"region_name": "eu"}, "s3_additional_kwargs": {"SSEKMSKeyId": "alias/k"}},
                }
            },
            "cluster": {
                "env": {
                    "TOKENIZERS_PARALLELISM": "false",
                    "KEYCLOAK_URL": "https://kc",
                    "MONKEY": "1",
                    "REPEATLAB_S3_ENDPOINT_URL": "http://minio:9000",
                    "AWS_REGION": "eu-west-1",
                }
            },
        }
    )
    assert cfg.cluster.env["TOKENIZERS_PARALLELISM"] == "false"


def test_planted_secrets_never_reach_the_compiled_yaml_or_the_logs(tmp_path):
    """Each planted secret is refused before anything is written, compiled or logged: the compiled pipeline and the
    CLI's output hold none of them."""
    pytest.importorskip("kfp")
    from repeatlab.kfp_pipeline import compile_pipeline

    base = yaml_load((REPO / "pipelines/configs/demo.yaml").read_text())
    planted = []
    for i, env in enumerate(SECRET_ENV[:4]):
        name = next(iter(env))
        secret = f"planted-{i}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
        planted.append(secret)
        study = dict(
            base,
            storage={
                **base.get("storage", {}),
                "root": str(tmp_path / "root"),
                "options": {"s3": {"client_kwargs": {f"secret_{i}": secret}}},
            },
            cluster={**base.get("cluster", {}), "env": {name: secret}},
        )
        path = tmp_path / f"study-{i}.yaml"
        path.write_text(json.dumps(study))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "repeatlab",
                "compile",
                "--config",
                str(path),
                "--output",
                str(tmp_path / f"p{i}.yaml"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        assert proc.returncode == 2, proc.stderr
        assert secret not in proc.stdout + proc.stderr
        assert not (tmp_path / f"p{i}.yaml").exists()
    # a clean config compiles; its YAML holds none of the planted values
    out = tmp_path / "clean.yaml"
    compile_pipeline(str(out), config.from_dict(dict(base, storage={"root": str(tmp_path / "root")})))
    text = out.read_text()
    assert not any(secret in text for secret in planted)
    assert not list((tmp_path / "root").glob("**/config.yaml"))  # nothing saved for a refused study


def yaml_load(text: str):
    import yaml

    return yaml.safe_load(text)


# ----------------------------------------------------------------------------------------------------------------------
# Config input checks (6)


def test_duplicate_yaml_keys_are_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\nbudget:\n  context: 64\n  context: 128\n")
    with pytest.raises(ConfigError, match="key 'context' is given twice") as info:
        config.load(str(path))
    assert "line 4" in one_line(info.value)
    with pytest.raises(ConfigError, match="given twice"):
        config.loads("name: a\nname: b\n")


def test_null_section_is_an_error():
    with pytest.raises(ConfigError, match="grid: null is not allowed"):
        config.loads("name: a\ngrid:\n")
    with pytest.raises(ConfigError, match="train: null is not allowed"):
        config.from_dict({"train": None})


def test_non_utf8_config_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    proc = subprocess.run(
        [sys.executable, "-m", "repeatlab", "grid", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not UTF-8" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------------------------------------
# archive: point ids are path components


@pytest.mark.parametrize("bad", ["../../escape", "/abs", "a/b", "", None, "ABCDEF0123456789"])
def test_archive_refuses_point_ids_that_are_not_hashes(tmp_path, bad):
    from repeatlab.archive import archive_study

    root = "file://" + str(tmp_path / "root")
    storage.write_json(storage.join(root, "studies", "s", "points.json"), [{"point_id": bad}])
    storage.write_json(storage.join(root, "runs", "escape", "eval.json"), {"x": 1})
    out = tmp_path / "out" / "inner"
    with pytest.raises(StorageError, match="point_id") as info:
        archive_study(root, "s", str(out))
    one_line(info.value)
    assert not (tmp_path / "out" / "escape").exists() and not (tmp_path / "escape").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Atomic create and the lease (1)


def test_create_exclusive_on_file(tmp_path):
    url = "file://" + str(tmp_path / "x" / "lease.json")
    assert storage.create_exclusive(url, b"first")
    assert not storage.create_exclusive(url, b"second")
    assert storage.read_bytes(url) == b"first"
    assert not [p for p in (tmp_path / "x").iterdir() if p.name.startswith(".tmp-")]


def test_create_exclusive_on_s3(s3_env):
    url = s3_env + "/runs/p/lease.json"
    assert storage.create_exclusive(url, b"first")
    assert not storage.create_exclusive(url, b"second")
    assert storage.read_bytes(url) == b"first"


def test_create_exclusive_on_gcs(gcs_env):
    url = gcs_env + "/runs/p/lease.json"
    assert storage.create_exclusive(url, b"first")
    assert not storage.create_exclusive(url, b"second")
    assert storage.read_bytes(url) == b"first"


def _lease_env(monkeypatch, ttl="2", poll="0.1"):
    monkeypatch.setenv("REPEATLAB_LEASE_TTL_S", ttl)
    monkeypatch.setenv("REPEATLAB_LEASE_POLL_S", poll)


def test_second_lease_waits_then_names_the_owner(tmp_path, monkeypatch):
    from repeatlab.lease import Lease, LeaseError

    _lease_env(monkeypatch)
    run = "file://" + str(tmp_path / "run")
    first = Lease(run, owner="first trainer")
    first.acquire(wait_s=0)
    try:
        second = Lease(run, owner="second trainer")
        started = time.monotonic()
        with pytest.raises(LeaseError) as info:
            second.acquire(wait_s=1.0)  # the first heartbeats (every ttl/4): never stale
        assert time.monotonic() - started >= 1.0
        message = one_line(info.value)
        assert "first trainer" in message and f"pid {os.getpid()}" in message
    finally:
        first.release()
    second = Lease(run, owner="second trainer")
    second.acquire(wait_s=0)  # released: free at once
    second.release()
    assert not storage.exists(storage.join(run, "lease.json"))


def test_waiting_trainer_gets_the_lease_when_the_owner_finishes(tmp_path, monkeypatch):
    from repeatlab.lease import Lease

    _lease_env(monkeypatch)
    run = "file://" + str(tmp_path / "run")
    first = Lease(run)
    first.acquire(wait_s=0)
    threading.Timer(0.5, first.release).start()
    second = Lease(run)
    second.acquire(wait_s=10)
    second.release()


def test_stale_lease_of_a_dead_process_is_taken_over(tmp_path, monkeypatch):
    from repeatlab.lease import Lease

    _lease_env(monkeypatch, ttl="600")
    run = "file://" + str(tmp_path / "run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = Lease(run)._record()
    record.update(pid=int(dead.stdout), owner="killed trainer")
    storage.write_json(storage.join(run, "lease.json"), record)
    lease = Lease(run)
    lease.acquire(wait_s=0)  # no 600 s wait: its process is gone
    assert storage.read_json(storage.join(run, "lease.json"))["token"] == lease.token
    lease.release()


def test_expired_lease_of_another_host_is_taken_over_and_the_loser_stops(tmp_path, monkeypatch):
    from repeatlab.lease import Lease, LeaseError

    _lease_env(monkeypatch, ttl="0.4", poll="0.05")
    run = "file://" + str(tmp_path / "run")
    old = Lease(run)
    record = old._record()
    record.update(host="elsewhere", expires=time.time() - 1)
    storage.write_json(storage.join(run, "lease.json"), record)
    new = Lease(run)
    new.acquire(wait_s=0)
    old._start_heartbeat()  # the old owner wakes up: its next heartbeat finds a foreign token
    time.sleep(0.5)
    with pytest.raises(LeaseError, match="lease lost"):
        old.check()
    new.check()
    old.release()
    assert storage.exists(storage.join(run, "lease.json"))  # the loser does not remove the winner's lease
    new.release()


def test_contenders_for_a_stale_lease_get_exactly_one_owner(tmp_path, monkeypatch):
    from repeatlab.lease import Lease

    _lease_env(monkeypatch, ttl="30")
    run = "file://" + str(tmp_path / "run")
    record = Lease(run)._record()
    record.update(host="elsewhere", expires=time.time() - 1)
    storage.write_json(storage.join(run, "lease.json"), record)
    leases = [Lease(run) for _ in range(8)]
    results: list = ["did not finish"] * 8  # a contender that raises must not count as a winner
    barrier = threading.Barrier(8)

    def contend(i):
        barrier.wait()
        results[i] = leases[i].try_acquire()

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "did not finish" not in results  # every contender ends with a verdict, none with an error
    holder = storage.read_json(storage.join(run, "lease.json"))["token"]
    winners = [lease for lease, r in zip(leases, results, strict=True) if r is None]
    # whoever won last holds the file; every other "winner" sees a foreign token at its first heartbeat
    for lease in winners:
        lease.renew()
    assert sum(1 for lease in winners if not lease.lost) == 1
    assert next(lease for lease in winners if not lease.lost).token == holder


@pytest.mark.parametrize("store", ["s3_env", "gcs_env"])
def test_lease_on_object_stores(store, request, monkeypatch):
    from repeatlab.lease import Lease, LeaseError

    _lease_env(monkeypatch, ttl="30")  # object-store round trips under load take a while
    run = request.getfixturevalue(store) + "/runs/p"
    first = Lease(run, owner="first")
    first.acquire(wait_s=0)
    try:
        with pytest.raises(LeaseError, match="first"):
            Lease(run).acquire(wait_s=0.3)
    finally:
        first.release()
    second = Lease(run)
    second.acquire(wait_s=0)
    second.release()
    assert not storage.exists(storage.join(run, "lease.json"))


# ----------------------------------------------------------------------------------------------------------------------
# Integrity (2)


def test_sealed_record_detects_a_changed_value(tmp_path):
    from repeatlab import integrity
    from repeatlab.errors import IntegrityError

    record = integrity.seal_record({"test_loss": np.float32(2.5), "nested": {"a": [1, 2]}})
    url = "file://" + str(tmp_path / "eval.json")
    storage.write_json(url, record)
    loaded = storage.read_json(url)
    assert integrity.check_record(url, loaded) == loaded
    loaded["test_loss"] = 2.4
    with pytest.raises(IntegrityError, match="eval.json"):
        integrity.check_record(url, loaded)
    integrity.check_record(url, {"test_loss": 1.0})  # records written before sealing pass


def test_shard_is_verified_once_per_process(tmp_path, monkeypatch):
    from repeatlab import integrity
    from repeatlab.errors import IntegrityError

    path = tmp_path / "train.bin"
    path.write_bytes(b"\x01\x00" * 1000)
    info = {"file": "train.bin", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    corpus = "file://" + str(tmp_path)
    calls = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p: calls.append(p) or real(p))
    integrity.verify_shard(corpus, info, str(path))
    integrity.verify_shard(corpus, info, str(path))
    assert len(calls) == 1
    data = bytearray(path.read_bytes())
    data[7] ^= 0x10
    path.write_bytes(bytes(data))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a rewrite: a new version of the file
    with pytest.raises(IntegrityError, match="train.bin") as info_:
        integrity.verify_shard(corpus, info, str(path))
    assert "manifest.json" in one_line(info_.value)


# ----------------------------------------------------------------------------------------------------------------------
# Bounded KFP calls (3)


class _StallingKfp(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _StallHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/apis/v2beta1/healthz"):
            body = json.dumps({"multi_user": False}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.server.stall.wait(120)  # answers nothing

    do_POST = do_GET


@pytest.fixture
def stalling_kfp():
    server = _StallingKfp(("127.0.0.1", 0), _StallHandler)
    server.stall = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.stall.set()
    server.shutdown()
    server.server_close()


def _cluster_study() -> config.StudyConfig:
    """The demo study with an object-store root, as a cluster run needs (a file:// root is refused for submit)."""
    import dataclasses

    cfg = config.load(str(REPO / "pipelines/configs/demo.yaml"))
    return dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root="s3://mlpipeline/repeatlab"))


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_kfp_commands_end_when_the_server_stalls(tmp_path, stalling_kfp, command):
    pytest.importorskip("kfp")
    env = dict(
        os.environ,
        REPEATLAB_KFP_READ_TIMEOUT_S="2",
        REPEATLAB_KFP_CONNECT_TIMEOUT_S="1",
        REPEATLAB_KFP_BACKOFF_S="0.1",
        KF_PIPELINES_SA_TOKEN_PATH=str(tmp_path / "none"),
    )
    study = tmp_path / "study.yaml"
    study.write_text(json.dumps(_cluster_study().to_dict()))
    args = [
        sys.executable,
        "-m",
        "repeatlab",
        command,
        "--host",
        stalling_kfp,
        "--config",
        str(study),
        "--package",
        str(REPO / "pipelines/repetition_grid.yaml"),
    ]
    if command == "schedule":
        args += ["--cron", "0 0 3 * * *"]
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=90, env=env, cwd=REPO)
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "experiment" in last and "stalled" in last, proc.stderr
    assert took < 60


def test_kfp_command_deadline(tmp_path, stalling_kfp, monkeypatch):
    pytest.importorskip("kfp")
    from repeatlab import kfp_client

    monkeypatch.setattr(kfp_client, "READ_TIMEOUT_S", 30.0)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "none"))
    cfg = _cluster_study()
    started = time.monotonic()
    # The health check runs first and spends part of the deadline, so the stalled call's own limit is what remains.
    with pytest.raises(
        kfp_client.KfpError, match=r"stalled: no answer within [0-3] s, the rest of the command's 3 s deadline"
    ):
        kfp_client.submit(cfg, stalling_kfp, package_path=str(REPO / "pipelines/repetition_grid.yaml"), deadline_s=3)
    assert time.monotonic() - started < 20


def test_retryable_errors_are_retried_with_backoff(monkeypatch):
    pytest.importorskip("kfp")
    import urllib3

    from repeatlab import kfp_client

    monkeypatch.setattr(kfp_client, "BACKOFF_S", 0.01)
    kfp_client._start_deadline(30)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise urllib3.exceptions.NewConnectionError(None, "refused")
        return "ok"

    assert kfp_client._bounded("http://h", "listing", flaky) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(kfp_client.KfpError, match="listing failed"):
        kfp_client._bounded(
            "http://h",
            "listing",
            lambda: calls.append(1) or (_ for _ in ()).throw(urllib3.exceptions.NewConnectionError(None, "refused")),
        )
    assert len(calls) == kfp_client.CALL_ATTEMPTS


# ----------------------------------------------------------------------------------------------------------------------
# No silent anonymous access (5)


def test_gs_without_credentials_fails_fast(monkeypatch, tmp_path):
    pytest.importorskip("gcsfs")
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "REPEATLAB_GCS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud application-default credentials
    monkeypatch.setenv("HOME", str(tmp_path))
    storage.configure(None)
    started = time.monotonic()
    with pytest.raises(StorageError, match="no gs:// credentials") as info:
        storage.exists("gs://some-public-bucket/x")
    assert time.monotonic() - started < 10
    assert "GOOGLE_APPLICATION_CREDENTIALS" in one_line(info.value) and "storage.anonymous" in str(info.value)
    storage.configure(None, anonymous=True)  # opted in: anonymous, no error before the request
    fs, _ = storage.filesystem("gs://some-public-bucket/x")
    assert fs.credentials.method == "anon"
    storage.configure(None)


def test_s3_without_credentials_fails_fast(monkeypatch, tmp_path):
    pytest.importorskip("s3fs")
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"  # conftest: the chain never probes 169.254.169.254
    storage.configure(None)
    started = time.monotonic()
    with pytest.raises(StorageError, match="no s3:// credentials") as info:
        storage.exists("s3://bucket/x")
    assert time.monotonic() - started < 10
    assert "AWS_ACCESS_KEY_ID" in one_line(info.value)
    storage.configure(None, anonymous=True)
    fs, _ = storage.filesystem("s3://bucket/x")
    assert fs.anon
    storage.configure(None)


def test_study_config_accepts_storage_anonymous():
    assert config.from_dict({"storage": {"anonymous": True}}).storage.anonymous is True
    assert config.from_dict({}).storage.anonymous is False


# ----------------------------------------------------------------------------------------------------------------------
# Smaller items (6)


def test_disk_full_while_checkpointing_is_one_line(tmp_path):
    """A file-size limit makes the kernel refuse writes the way a full disk does (EFBIG instead of ENOSPC); torch's
    writer then fails with its C++ "unexpected pos" error, which must arrive as one line naming the file."""
    script = (
        "import resource, signal, sys, torch\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))\n"
        "from repeatlab.train import _write_torch\n"
        "from repeatlab.errors import RepeatlabError\n"
        "try:\n"
        f"    _write_torch('file://{tmp_path}/model.pt', {{'w': torch.zeros(1 << 16)}})\n"
        "except RepeatlabError as exc:\n"
        "    print(exc); sys.exit(2)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    line = proc.stdout.strip()
    assert line.count("\n") == 0 and "model.pt: write failed" in line and "MiB free" in line
    assert not (tmp_path / "model.pt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_killed_writer_temporaries_are_swept(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    mine = storage._temporary_prefix("train.bin") + "abc"
    theirs = mine.replace(f"~{os.getpid()}~", f"~{int(dead.stdout)}~")
    old = ".tmp-test.bin-legacy"
    for name in (mine, theirs, old, "train.bin"):
        (folder / name).write_bytes(b"x")
    os.utime(folder / old, (time.time() - 2 * 86400,) * 2)
    removed = storage.sweep_stale_temporaries("file://" + str(folder))
    assert sorted(removed) == sorted([theirs, old])
    assert (folder / mine).exists() and (folder / "train.bin").exists()


def test_model_too_large_for_memory_is_refused_before_allocating():
    import torch

    from repeatlab.model import GPTConfig
    from repeatlab.train import DistEnv, TrainError, check_memory

    huge = GPTConfig(vocab_size=256, context=64, n_layer=999, n_head=999, n_embd=999 * 32, name="d999")
    with pytest.raises(TrainError, match="d999") as info:
        check_memory(huge, torch.device("cpu"), DistEnv(0, 0, 1, 1, False), "ddp")
    assert "GiB" in one_line(info.value)
    check_memory(
        GPTConfig(vocab_size=256, context=64, n_layer=2, n_head=2, n_embd=32),
        torch.device("cpu"),
        DistEnv(0, 0, 1, 1, False),
        "ddp",
    )


def test_short_test_split_is_warned_about():
    from repeatlab.evaluate import short_split_warnings

    notes = short_split_warnings(np.zeros(82, dtype=np.uint16), None, 2048)
    assert len(notes) == 1 and "82 tokens" in notes[0] and "2048" in notes[0]
    assert short_split_warnings(np.zeros(4096, dtype=np.uint16), None, 2048) == []


def test_rerun_advice_depends_on_the_failed_step():
    from repeatlab.runner import _rerun_advice

    assert "fails the same way" in _rerun_advice("mix", "file:///r")
    assert "fails the same way" in _rerun_advice("prepare-corpus", "file:///r")
    assert "resumes" in _rerun_advice("train", "file:///r")


def test_integrity_errors_are_repeatlab_errors():
    from repeatlab.errors import IntegrityError

    assert issubclass(IntegrityError, RepeatlabError)
