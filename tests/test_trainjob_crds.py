"""TrainJobs against the TrainJob CRDs of every Trainer version in the support matrix (manifests/schemas/crds/): the
manifests' overlays and what the multi-node launcher creates (repeatlab.launch.build_trainjob)."""

from __future__ import annotations

import copy
import functools
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from repeatlab import config
from repeatlab.launch import build_trainjob

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "manifests" / "schemas" / "crds"
VERSIONS = ["v2.2.0", "v2.3.0"]
OVERLAYS = ["gke", "minio", "dev"]


def strict(node):
    """The CRD's structural schema as strict JSON Schema: objects with declared properties refuse unknown fields
    (kubectl's default field validation is Strict), int-or-string accepts both."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: strict(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if node.pop("x-kubernetes-int-or-string", False):
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    return node


@functools.cache
def validator(version: str) -> jsonschema.Draft7Validator:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRDS / f"trainer.kubeflow.org_trainjobs-{version}.yaml").read_text(), Loader=loader)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = strict(served["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def errors(version: str, trainjob: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(version).iter_errors(trainjob)]


def launcher_trainjob(overlay: str) -> dict:
    """The TrainJob the train_multinode component creates for the overlay's study (its placement, as compiled)."""
    c = config.load(str(ROOT / "manifests" / "overlays" / overlay / "study.yaml")).cluster
    resources = {"cpu": c.cpu, "memory": c.memory}
    if c.accelerator_limit:
        resources[c.accelerator_type] = str(c.accelerator_limit)
    return build_trainjob(
        name="repeatlab-0123456789ab",
        namespace="kubeflow-user",
        run_url="s3://b/runs/p",
        image=c.train_image,
        num_nodes=2,
        nproc_per_node=4,
        resources=resources,
        env=c.env,
        evaluate=True,
        node_selector=c.node_selector,
        tolerations=c.tolerations,
        storage_secret=c.storage_secret,
        storage_secret_keys=c.storage_secret_keys,
        service_account="default-editor",
        shm_size=c.shm_size,
    )


def test_crd_files_are_the_upstream_ones():
    table = (CRDS / "README.md").read_text()
    for version in VERSIONS:
        path = CRDS / f"trainer.kubeflow.org_trainjobs-{version}.yaml"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert re.search(rf"\| {re.escape(path.name)} \| {version} \| [0-9a-f]{{40}} \| {digest} \|", table), path.name


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_launcher_trainjob_validates(overlay, version):
    trainjob = launcher_trainjob(overlay)
    assert errors(version, trainjob) == []
    pod = trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"
    ]["spec"]["template"]["spec"]
    c = config.load(str(ROOT / "manifests" / "overlays" / overlay / "study.yaml")).cluster
    assert pod["serviceAccountName"] == "default-editor"
    assert pod.get("nodeSelector", {}) == c.node_selector and pod.get("tolerations", []) == c.tolerations
    assert pod["securityContext"]["runAsNonRoot"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": c.shm_size}} in pod["volumes"]
    env = {e["name"]: e for e in trainjob["spec"]["trainer"]["env"]}
    for key, var in c.storage_secret_keys.items() if c.storage_secret else ():
        assert env[var] == {"name": var, "valueFrom": {"secretKeyRef": {"name": c.storage_secret, "key": key}}}
    assert all("value" not in e or "KEY" not in e["name"] for e in env.values()), "a secret value in the TrainJob"
    assert trainjob["spec"]["trainer"]["command"][:3] == ["python", "-m", "torch.distributed.run"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifest_trainjob_validates(overlay, version):
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "manifests" / "overlays" / overlay / "trainjob")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    (trainjob,) = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert errors(version, trainjob) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_the_crd_check_has_teeth(version):
    good = launcher_trainjob("gke")
    old_api = copy.deepcopy(good)
    old_api["spec"]["podTemplateOverrides"] = old_api["spec"].pop("runtimePatches")  # the Trainer 2.0/2.1 field
    assert any("podTemplateOverrides" in e for e in errors(version, old_api))
    typo = copy.deepcopy(good)
    typo["spec"]["trainer"]["numNode"] = 2
    assert any("numNode" in e for e in errors(version, typo))
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["trainer"]["numNodes"] = "two"
    assert errors(version, wrong_type)
