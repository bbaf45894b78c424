"""Checks of manifests/ (kustomize): builds, Kubernetes schemas, the TrainJob schema, Pod Security, RBAC, no secrets,
and that the Job/CronJob call `repeatlab submit` with flags the CLI accepts. No cluster needed; kubectl must be on PATH
for the build (the tests that need it skip with the reason otherwise)."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ["gke", "minio", "dev", "profile"]
# Every kustomization a user builds: the long-lived part (kubectl apply -k) and the one-shot parts (kubectl create -k).
TARGETS = [f"overlays/{o}{sub}" for o in OVERLAYS for sub in ("", "/submit", "/trainjob")]
# Kubernetes versions the core resources are validated against (kubernetes-validate's bundled schemas, strict mode).
K8S_VERSIONS = ["1.31.0", "1.37.0"]
TRAINER_API_VERSION = "2.3.0"
TRAINJOB_SCHEMA = MANIFESTS / "schemas" / f"trainjob-{TRAINER_API_VERSION}.json"
KFP_TOKEN_FILE = "/var/run/secrets/kubeflow/pipelines/token"
STUDY_FILE = "/etc/repeatlab/study.yaml"
# the lead's `repeatlab submit`
SUBMIT_FLAGS = {
    "--host",
    "--config",
    "--token-file",
    "--experiment",
    "--run-name",
    "--namespace",
    "--service-account",
    "--fan-in",
}
HOME = "/home/repeatlab"

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not on PATH")


@functools.cache
def build(target: str) -> tuple[dict, ...]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS / target)], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode == 0, f"kubectl kustomize {target} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def all_resources() -> list[tuple[str, dict]]:
    return [(t, r) for t in TARGETS for r in build(t)]


def pod_specs(resource: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod template a resource carries; a TrainJob's are its runtime patches."""
    kind, spec = resource["kind"], resource.get("spec", {})
    if kind == "Job":
        return [("spec.template.spec", spec["template"]["spec"])]
    if kind == "CronJob":
        return [("spec.jobTemplate.spec.template.spec", spec["jobTemplate"]["spec"]["template"]["spec"])]
    if kind == "TrainJob":
        found = []
        for i, patch in enumerate(spec.get("runtimePatches", [])):
            for job in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
                found.append((f"runtimePatches[{i}].{job['name']}", job["template"]["spec"]["template"]["spec"]))
        return found
    return []


# ---------------------------------------------------------------------------------------------------------------------
# Build and schemas


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_kustomize_builds(target):
    kinds = sorted({r["kind"] for r in build(target)})
    expected = {
        "": ["ConfigMap", "CronJob", "Namespace", "Role", "RoleBinding", "ServiceAccount"],
        "submit": ["Job"],
        "trainjob": ["TrainJob"],
    }[target.split("/")[2] if target.count("/") == 2 else ""]
    if target == "overlays/profile":  # the Profile controller owns the namespace
        expected = sorted(set(expected) - {"Namespace"})
    assert kinds == expected
    namespace = "kubeflow-user-example-com" if target.startswith("overlays/profile") else "repeatlab"
    for r in build(target):
        if r["kind"] != "Namespace":
            assert r["metadata"].get("namespace") == namespace, f"{r['kind']}/{r['metadata']['name']}"


@needs_kubectl
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_resources_validate_against_kubernetes_schemas(version):
    import kubernetes_validate

    checked = 0
    for target, r in all_resources():
        if r["apiVersion"].startswith("trainer.kubeflow.org/"):
            continue  # custom resource: checked against its own schema below
        where = f"{target}: {r['kind']}/{r['metadata']['name']}"
        try:
            kubernetes_validate.validate(r, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where} is invalid for Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
            # kubernetes-validate only warns for these; here an unknown kind is a failure.
            pytest.fail(f"{where}: no Kubernetes {version} schema: {e.message}")
        checked += 1
    assert checked >= 3 * 7


def _trainjob_validator():
    import jsonschema

    schema = json.loads(TRAINJOB_SCHEMA.read_text())
    assert f"kubeflow_trainer_api=={TRAINER_API_VERSION}" in schema["$comment"]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _leaf_errors(error):
    if not error.context:
        yield error
    for sub in error.context:
        yield from _leaf_errors(sub)


def _explain(errors) -> str:
    lines = []
    for e in errors:
        for leaf in _leaf_errors(e):
            if "is not of type 'null'" not in leaf.message:
                lines.append(f"{'.'.join(map(str, leaf.absolute_path))}: {leaf.message[:200]}")
    return "\n".join(lines)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainjob_validates_against_trainer_schema(overlay):
    validator = _trainjob_validator()
    (trainjob,) = build(f"overlays/{overlay}/trainjob")
    errors = list(validator.iter_errors(trainjob))
    assert not errors, _explain(errors)
    # The typed models agree (they convert the Quantity / IntOrString scalars in from_dict).
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    model = TrainerV1alpha1TrainJob.from_dict(trainjob)
    assert model.spec.runtime_ref.name == "torch-distributed"
    trainer = trainjob["spec"]["trainer"]
    # the venv's python runs torchrun (a bare `torchrun` is the CUDA base image's conda one, without repeatlab)
    assert trainer["command"][:3] == ["python", "-m", "torch.distributed.run"]
    assert "repeatlab.train" in trainer["command"]
    assert trainer["args"][0] == "--run-url" and isinstance(trainer["numNodes"], int)
    assert trainer["image"].startswith("ghcr.io/repeatlab/")


def test_trainjob_schema_is_strict():
    validator = _trainjob_validator()
    trainjob = yaml.safe_load((MANIFESTS / "jobs/trainjob/trainjob.yaml").read_text())
    assert not list(validator.iter_errors(trainjob))
    typo = json.loads(json.dumps(trainjob))
    typo["spec"]["trainer"]["numNode"] = 2
    assert list(validator.iter_errors(typo)), "a misspelt TrainJob field must fail"
    bad_quantity = json.loads(json.dumps(trainjob))
    bad_quantity["spec"]["trainer"]["resourcesPerNode"]["limits"]["memory"] = "16 GB"
    assert list(validator.iter_errors(bad_quantity)), "a malformed quantity must fail"


def test_trainjob_schema_file_matches_installed_trainer_api():
    installed = importlib.metadata.version("kubeflow_trainer_api")
    if installed != TRAINER_API_VERSION:
        pytest.skip(f"kubeflow_trainer_api {installed} installed; the schema file is for {TRAINER_API_VERSION}")
    out = subprocess.run(
        [sys.executable, str(MANIFESTS / "schemas/generate_trainjob_schema.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------------------------------------------------------------
# Pod Security (restricted), secrets, RBAC


def _check_restricted(where: str, spec: dict, trainjob: bool) -> None:
    psc = spec.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 1000, where
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(flag), f"{where}: {flag}"
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    allowed = {
        "configMap",
        "emptyDir",
        "projected",
        "secret",
        "downwardAPI",
        "persistentVolumeClaim",
        "ephemeral",
        "csi",
    }
    for v in volumes.values():
        assert set(v) - {"name"} <= allowed, f"{where}: volume {v['name']} has a type the restricted PSS forbids"
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    assert containers, where
    for c in containers:
        cw = f"{where}.containers[{c['name']}]"
        sc = c.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, cw
        assert sc.get("privileged") in (None, False), cw
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], cw
        assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, cw
        assert sc.get("readOnlyRootFilesystem") is True, cw
        assert sc.get("runAsNonRoot", True) is True and sc.get("runAsUser", 1000) == 1000, cw
        assert sc.get("seccompProfile", {"type": "RuntimeDefault"})["type"] == "RuntimeDefault", cw
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        for path in ("/tmp", HOME):
            assert path in mounts and "emptyDir" in volumes[mounts[path]], f"{cw}: {path} must be an emptyDir"
        if not trainjob:  # the TrainJob's container env is set through spec.trainer.env
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("HOME") == HOME, cw


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_template_meets_restricted_pss(target):
    found = 0
    for r in build(target):
        for where, spec in pod_specs(r):
            _check_restricted(f"{target}: {r['kind']}/{r['metadata']['name']} {where}", spec, r["kind"] == "TrainJob")
            found += 1
        if r["kind"] == "TrainJob":
            env = {e["name"]: e.get("value") for e in r["spec"]["trainer"].get("env", [])}
            assert env.get("HOME") == HOME
        if r["kind"] == "Namespace":
            assert r["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    if not target.endswith(("/submit", "/trainjob")):
        assert found == 1  # the CronJob
    else:
        assert found == 1


SECRET_NAME = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE|API_KEY)", re.IGNORECASE)
SECRET_VALUE = re.compile(
    r"(AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY|\"private_key\"|minio123|"
    r"(?<![A-Za-z0-9+/])(?!/)(?=[A-Za-z0-9+/]{40})(?=[A-Za-z0-9+/]*[0-9])(?=[A-Za-z0-9+/]*[A-Z])"
    r"(?=[A-Za-z0-9+/]*[a-z])[A-Za-z0-9+/]{40,}={0,2})"
)  # AWS key id, PEM, default MinIO, base64


def _envs(obj):
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "env" and isinstance(value, list):
                yield from value
            else:
                yield from _envs(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _envs(value)


@needs_kubectl
def test_no_secret_values_in_manifests():
    for target, r in all_resources():
        where = f"{target}: {r['kind']}/{r['metadata']['name']}"
        assert r["kind"] != "Secret", f"{where}: no Secret objects in the manifests"
        for env in _envs(r):
            if SECRET_NAME.search(env["name"]) and not env["name"].endswith(("_PATH", "_FILE")):
                assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), (
                    f"{where}: env {env['name']} must come from a secretKeyRef, not a literal"
                )
        text = yaml.safe_dump(r)
        match = SECRET_VALUE.search(text)
        assert match is None, f"{where}: looks like a credential: {match.group(0)[:12]}..."
    for path in MANIFESTS.rglob("*.yaml"):
        assert SECRET_VALUE.search(path.read_text()) is None, path


@needs_kubectl
def test_role_is_least_privilege():
    expected = {
        ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
        ("", "events"): {"get", "list"},
    }
    for overlay in OVERLAYS:
        resources = build(f"overlays/{overlay}")
        assert not [r for r in resources if r["kind"] in ("ClusterRole", "ClusterRoleBinding")]
        (role,) = [r for r in resources if r["kind"] == "Role"]
        granted: dict[tuple[str, str], set[str]] = {}
        for rule in role["rules"]:
            assert not rule.get("resourceNames") and not rule.get("nonResourceURLs")
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    granted.setdefault((group, res), set()).update(rule["verbs"])
        assert granted == expected
        (binding,) = [r for r in resources if r["kind"] == "RoleBinding" and r["roleRef"]["kind"] == "Role"]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "repeatlab"}
        namespace = binding["metadata"]["namespace"]
        subjects = [{"kind": "ServiceAccount", "name": "repeatlab", "namespace": namespace}]
        if overlay == "profile":  # the account KFP runs the profile's pipeline pods as (the multi-node launcher too)
            subjects.append({"kind": "ServiceAccount", "name": "default-editor", "namespace": namespace})
        assert binding["subjects"] == subjects
        others = [r for r in resources if r["kind"] == "RoleBinding" and r is not binding]
        assert [(r["roleRef"]["kind"], r["roleRef"]["name"]) for r in others] == (
            [("ClusterRole", "kubeflow-pipelines-edit")] if overlay == "profile" else []
        )


# ---------------------------------------------------------------------------------------------------------------------
# What the pods run


def _submit_pods() -> list[tuple[str, dict]]:
    found = []
    for target, r in all_resources():
        if r["kind"] in ("Job", "CronJob"):
            (spec,) = [s for _, s in pod_specs(r)]
            found.append((f"{target}: {r['kind']}", spec))
    return found


@needs_kubectl
def test_submit_pods_run_repeatlab_submit_with_cli_flags():
    pods = _submit_pods()
    assert len(pods) == 2 * len(OVERLAYS)
    for where, spec in pods:
        assert spec["serviceAccountName"] == "repeatlab" and spec["automountServiceAccountToken"] is False, where
        (c,) = spec["containers"]
        assert c["command"] == ["repeatlab", "submit"], where
        args = c["args"]
        flags = args[0::2]
        assert all(f.startswith("--") for f in flags) and len(args) % 2 == 0, f"{where}: flag/value pairs: {args}"
        assert set(flags) <= SUBMIT_FLAGS, f"{where}: unknown flags {set(flags) - SUBMIT_FLAGS}"
        opts = dict(zip(args[0::2], args[1::2]))
        assert opts["--host"] == "$(KFP_HOST)" and opts["--config"] == STUDY_FILE, where
        assert opts["--token-file"] == KFP_TOKEN_FILE, where
        env = {e["name"]: e for e in c["env"]}
        for ref in re.findall(r"\$\((\w+)\)", " ".join(args)):
            assert ref in env, f"{where}: $({ref}) is not defined in env, Kubernetes would pass it literally"
        assert env["KFP_HOST"]["valueFrom"]["configMapKeyRef"] == {"name": "repeatlab-kfp", "key": "KFP_HOST"}
        # the fan-in follows the backend's version, which KFP's API does not report: the ConfigMap says it
        assert opts["--fan-in"] == "$(KFP_FAN_IN)", where
        assert env["KFP_FAN_IN"]["valueFrom"]["configMapKeyRef"] == {"name": "repeatlab-kfp", "key": "KFP_FAN_IN"}
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert volumes[mounts["/etc/repeatlab"]]["configMap"]["name"] == "repeatlab-study", where
        (source,) = volumes[mounts[str(Path(KFP_TOKEN_FILE).parent)]]["projected"]["sources"]
        token = source["serviceAccountToken"]
        assert token["audience"] == "pipelines.kubeflow.org" and token["path"] == Path(KFP_TOKEN_FILE).name, where


@needs_kubectl
def test_submit_flags_are_known_to_the_cli():
    """When the lead's `repeatlab submit` exists, its --help must list every flag the manifests use."""
    try:
        import repeatlab.kfp_client  # noqa: F401
    except ImportError:
        pytest.skip("repeatlab.kfp_client (repeatlab submit) is not written yet")
    out = subprocess.run(
        [sys.executable, "-m", "repeatlab", "submit", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    used = {f for _, spec in _submit_pods() for f in spec["containers"][0]["args"][0::2]}
    missing = {f for f in used if f not in out.stdout}
    assert not missing, f"repeatlab submit --help does not list {missing}"


@needs_kubectl
def test_job_and_cronjob_share_one_pod_spec():
    for overlay in OVERLAYS:
        (cron,) = [r for r in build(f"overlays/{overlay}") if r["kind"] == "CronJob"]
        (job,) = build(f"overlays/{overlay}/submit")
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        assert cron["spec"]["jobTemplate"]["spec"]["template"] == job["spec"]["template"], overlay


@needs_kubectl
def test_overlay_specifics():
    def trainjob_pod(overlay):
        (tj,) = build(f"overlays/{overlay}/trainjob")
        return tj, pod_specs(tj)[0][1]

    def cron_env(overlay):
        (cron,) = [r for r in build(f"overlays/{overlay}") if r["kind"] == "CronJob"]
        return {e["name"]: e for e in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]}

    (sa,) = [r for r in build("overlays/gke") if r["kind"] == "ServiceAccount"]
    assert "iam.gke.io/gcp-service-account" in sa["metadata"]["annotations"]
    tj, pod = trainjob_pod("gke")
    assert "cloud.google.com/gke-accelerator" in pod["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert tj["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    assert "AWS_ACCESS_KEY_ID" not in cron_env("gke")

    for overlay in ("minio", "dev", "profile"):
        # submit only compiles and submits: no storage credentials in its pods (they were there, unused, before)
        env = cron_env(overlay)
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env), overlay
        (job,) = build(f"overlays/{overlay}/submit")
        assert "secretKeyRef" not in json.dumps(job), overlay
        tj, _ = trainjob_pod(overlay)
        env = {e["name"]: e for e in tj["spec"]["trainer"]["env"]}
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
            "name": "mlpipeline-minio-artifact",
            "key": "accesskey",
        }
        assert env["REPEATLAB_S3_ENDPOINT_URL"]["value"] == "http://minio-service.kubeflow:9000"

    tj, pod = trainjob_pod("dev")
    assert "nvidia.com/gpu" not in json.dumps(tj) and "nodeSelector" not in pod
    assert tj["spec"]["trainer"]["image"] == "ghcr.io/repeatlab/repeatlab:0.1.0"  # CPU image


def test_profile_overlay_for_multi_user_kubeflow():
    """Multi-user Kubeflow: everything in the profile namespace, which the Profile controller owns (no Namespace
    here); submit pods take the namespace from the downward API and name the service account pipeline pods run as;
    that account (default-editor) may create TrainJobs; the submit account may edit pipelines (KFP's SAR)."""
    resources = build("overlays/profile")
    namespace = "kubeflow-user-example-com"
    assert not [r for r in resources if r["kind"] == "Namespace"]
    assert {r["metadata"]["namespace"] for r in resources} == {namespace}
    bindings = {r["metadata"]["name"]: r for r in resources if r["kind"] == "RoleBinding"}
    assert {(s["name"], s["namespace"]) for s in bindings["repeatlab"]["subjects"]} >= {("default-editor", namespace)}
    assert bindings["repeatlab-kfp-edit"]["roleRef"]["name"] == "kubeflow-pipelines-edit"
    assert bindings["repeatlab-kfp-edit"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "repeatlab", "namespace": namespace}
    ]
    for where, pod in _submit_pods():
        if not where.startswith("overlays/profile"):
            continue
        (container,) = pod["containers"]
        args, env = container["args"], {e["name"]: e for e in container["env"]}
        assert args[args.index("--namespace") + 1] == "$(POD_NAMESPACE)", where
        assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace", where
        assert args[args.index("--service-account") + 1] == "default-editor", where
    (tj,) = build("overlays/profile/trainjob")
    assert tj["metadata"]["namespace"] == namespace
    assert pod_specs(tj)[0][1]["serviceAccountName"] == "default-editor"


# ---------------------------------------------------------------------------------------------------------------------
# Study configs


STUDY_FILES = [MANIFESTS / "base/study.yaml"] + [MANIFESTS / f"overlays/{o}/study.yaml" for o in OVERLAYS]
ROOTS = {"base": "file://", "dev": "s3://", "minio": "s3://", "gke": "gs://", "profile": "s3://"}


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.parent.name)
def test_study_configs_load(path):
    from repeatlab.config import loads

    cfg = loads(path.read_text())
    assert cfg.storage.root.startswith(ROOTS[path.parent.name])


def test_base_study_is_the_demo_config():
    demo = ROOT / "pipelines/configs/demo.yaml"
    if not demo.exists():
        pytest.skip("pipelines/configs/demo.yaml does not exist yet; manifests/base/study.yaml is a placeholder")
    assert (MANIFESTS / "base/study.yaml").read_text() == demo.read_text(), (
        "copy pipelines/configs/demo.yaml to manifests/base/study.yaml"
    )


def test_shipped_study_configs_are_in_sync_with_pipelines_configs():
    """base/study.yaml is pipelines/configs/demo.yaml; overlays/<o>/study.yaml is its source + study-overrides.yaml."""
    if not (ROOT / "pipelines/configs/demo.yaml").exists():
        pytest.skip("pipelines/configs/demo.yaml does not exist yet")
    out = subprocess.run(
        [sys.executable, str(MANIFESTS / "sync_studies.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_configmap_carries_the_overlay_study(overlay):
    (cm,) = [
        r
        for r in build(f"overlays/{overlay}")
        if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "repeatlab-study"
    ]
    assert cm["data"]["study.yaml"] == (MANIFESTS / f"overlays/{overlay}/study.yaml").read_text()
    (kfp,) = [r for r in build(f"overlays/{overlay}") if r["metadata"]["name"] == "repeatlab-kfp"]
    assert kfp["data"]["KFP_HOST"] == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    from repeatlab.cli import build_parser

    argv = ["submit", "--host", "http://kfp", "--config", STUDY_FILE, "--fan-in", kfp["data"]["KFP_FAN_IN"]]
    assert build_parser().parse_args(argv).fan_in == "collected"  # a choice `repeatlab submit --fan-in` accepts
