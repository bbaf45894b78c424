"""Pod-spec check: the pod KFP's driver would create for every task of the compiled pipeline, per overlay and for the
multi-node variant, validated against the Kubernetes OpenAPI schema (strict) and the container-resource-name rules,
and checked for the GPUs the study asks for. The rendering follows the driver's code (tests/kfp_driver_pods.py)."""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
from pathlib import Path

import pytest
import yaml

from repeatlab import config
from repeatlab.kfp_pipeline import compile_pipeline

sys.path.insert(0, os.path.dirname(__file__))
from kfp_driver_pods import render_pods  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ["gke", "minio", "dev"]
K8S_VERSIONS = ["1.31.0", "1.37.0"]
VARIANTS = OVERLAYS + ["gke-multinode"]


def study(variant: str) -> config.StudyConfig:
    overlay, _, multinode = variant.partition("-")
    cfg = config.load(str(ROOT / "manifests" / "overlays" / overlay / "study.yaml"))
    if multinode:
        cfg = dataclasses.replace(
            cfg,
            cluster=dataclasses.replace(cfg.cluster, multinode=True),
            train=dataclasses.replace(cfg.train, nnodes=2),
        )
    return cfg


def compiled(cfg: config.StudyConfig, tmp_path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all((Path(compile_pipeline(str(tmp_path / "p.yaml"), cfg))).read_text())
    return spec, platform


def pod_problems(pods: dict[str, dict], cfg: config.StudyConfig, versions=K8S_VERSIONS) -> list[str]:
    """Everything a cluster would refuse or silently get wrong in these pods, one line each."""
    import kubernetes_validate

    problems = []
    c = cfg.cluster
    for task, pod in sorted(pods.items()):
        for version in versions:
            try:
                kubernetes_validate.validate(pod, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(
                    f"{task}: invalid Pod for Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}"
                )
        container = pod["spec"]["containers"][0]
        resources = container.get("resources") or {}
        for kind in ("limits", "requests"):
            for name, value in (resources.get(kind) or {}).items():
                problem = config.container_resource_name_problem(name)
                if problem:
                    problems.append(f"{task}: resources.{kind}[{name!r}]: Kubernetes refuses it: {problem}")
                elif name not in config.STANDARD_CONTAINER_RESOURCES and not str(value).isdigit():
                    problems.append(f"{task}: resources.{kind}[{name!r}] = {value!r}: an extended resource is whole")
        accelerators = {
            k: v for k, v in (resources.get("limits") or {}).items() if k not in config.STANDARD_CONTAINER_RESOURCES
        }
        trains_here = task == "train"
        wanted = {c.accelerator_type: str(c.accelerator_limit)} if trains_here and c.accelerator_limit else {}
        if accelerators != wanted:
            problems.append(
                f"{task}: accelerator limits {accelerators or 'none'}, the study asks for "
                f"{wanted or 'none'} (cluster.accelerator_type x cluster.accelerator_limit)"
            )
        if not trains_here and pod["spec"].get("nodeSelector") and c.accelerator_limit:
            problems.append(f"{task}: sent to the GPU nodes ({pod['spec']['nodeSelector']}) without asking for a GPU")
    return problems


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_task_pod_is_valid_and_gets_what_the_study_asks_for(variant, tmp_path):
    cfg = study(variant)
    spec, platform = compiled(cfg, tmp_path)
    pods = render_pods(spec, platform)
    expected = {
        "resolve-study",
        "prepare-corpus",
        "plan-grid",
        "mix",
        "evaluate",
        "analyze",
        "report",
        "train-multinode" if cfg.cluster.multinode else "train",
    }
    if not cfg.cluster.multinode:
        expected.add("plan-packs")  # the pack fan-out's items
    assert set(pods) == expected
    assert pod_problems(pods, cfg) == []
    c = cfg.cluster
    for task, pod in pods.items():
        container = pod["spec"]["containers"][0]
        assert container["image"] == (c.train_image if task == "train" else c.image)
        assert container["command"][0] == "/kfp-launcher/launch"
        env = {e["name"]: e for e in container.get("env", [])}
        for name, value in c.env.items():
            assert env[name]["value"] == value
        if c.storage_secret:
            refs = {
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in env.values()
                if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
            }
            assert refs == {c.storage_secret}, task
    if not c.multinode:
        train = pods["train"]["spec"]
        assert train["activeDeadlineSeconds"] == c.timeout_s
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": c.shm_size}} in train["volumes"]
        assert train.get("nodeSelector", {}) == c.node_selector
        assert pods["train"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == c.memory
    else:
        env = {e["name"]: e for e in pods["train-multinode"]["spec"]["containers"][0]["env"]}
        assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_the_gke_and_minio_studies_ask_for_gpus():
    """The check above is only meaningful if the GPU overlays do ask for GPUs."""
    for overlay in ("gke", "minio"):
        c = study(overlay).cluster
        assert c.accelerator_limit == 1 and c.accelerator_type == "nvidia.com/gpu"
    assert study("gke").cluster.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}


def test_the_check_fails_on_the_old_gke_limit(tmp_path):
    """Before: `accelerator_type: nvidia-l4` (a GPU model), which the driver makes the limit's name verbatim.
    (Validation now refuses it, so it is forced in past the loader, as the old code accepted it.)"""
    cfg = study("gke")
    old = copy.deepcopy(cfg)  # an assignment is not validated (dataclasses.replace is): forced past the loader
    old.cluster.accelerator_type = "nvidia-l4"
    pods = render_pods(*compiled(old, tmp_path))
    assert pods["train"]["spec"]["containers"][0]["resources"]["limits"]["nvidia-l4"] == "1"
    problems = pod_problems(pods, old, versions=[])
    assert any(
        p.startswith("train: resources.limits['nvidia-l4']: Kubernetes refuses it: not a standard container resource")
        for p in problems
    ), problems
    with pytest.raises(config.ConfigError, match=r"^cluster.accelerator_type: 'nvidia-l4' is not allowed"):
        config.validate(old)


def test_the_check_fails_on_the_old_minio_missing_gpu(tmp_path):
    """Before: the minio overlay set accelerator_limit without a type; the SDK compiled only the count
    (sdk/python/kfp/dsl/pipeline_task.py set_accelerator_limit) and the driver, needing both, set no GPU."""
    cfg = study("minio")
    spec, platform = compiled(cfg, tmp_path)
    old = copy.deepcopy(spec)
    accelerator = old["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]["accelerator"]
    for key in ("type", "resourceType"):
        accelerator.pop(key)
    pods = render_pods(old, platform)
    assert set(pods["train"]["spec"]["containers"][0]["resources"]["limits"]) == {"cpu", "memory"}
    problems = pod_problems(pods, cfg, versions=[])
    assert problems == [
        "train: accelerator limits none, the study asks for {'nvidia.com/gpu': '1'} "
        "(cluster.accelerator_type x cluster.accelerator_limit)"
    ]


def test_the_schema_check_has_teeth(tmp_path):
    """A field Kubernetes does not know, or a wrong type, fails the strict schema validation."""
    cfg = study("dev")
    pods = render_pods(*compiled(cfg, tmp_path))
    pod = copy.deepcopy(pods["train"])
    pod["spec"]["containers"][0]["gpus"] = 1
    pod["spec"]["activeDeadlineSeconds"] = "soon"
    problems = pod_problems({"train": pod}, cfg, versions=["1.37.0"])
    assert len(problems) == 1 and problems[0].startswith("train: invalid Pod for Kubernetes 1.37.0")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_audit_task_pod_is_valid_and_gets_the_storage_secret(overlay, tmp_path):
    """The audit fan-out pipeline compiled with an overlay's study: every pod valid, the study's image and storage
    secret on every task, CPU/memory limits and the deadline on map and reduce, and no GPU anywhere."""
    from repeatlab.pipelines.audit_corpus import compile_audit_pipeline

    cfg = study(overlay)
    path = compile_audit_pipeline(str(tmp_path / "audit.yaml"), cfg)
    spec, platform = yaml.safe_load_all(Path(path).read_text())
    pods = render_pods(spec, platform)
    assert set(pods) == {"audit-plan", "audit-map", "audit-reduce"}
    assert pod_problems(pods, cfg) == []
    c = cfg.cluster
    for task, pod in pods.items():
        container = pod["spec"]["containers"][0]
        assert container["image"] == c.image
        refs = {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert refs == ({c.storage_secret} if c.storage_secret else set()), task
        if task != "audit-plan":
            assert container["resources"]["limits"]["memory"] == c.memory
            assert pod["spec"]["activeDeadlineSeconds"] == c.timeout_s
