"""The pod spec KFP's v2 driver builds for each task of a compiled pipeline, rendered from the IR without a cluster.

Follows kubeflow/pipelines backend/src/v2/driver (commit 7b70c7b95f, 2026-08-21), for the fields this pipeline uses:
- driver.go, initPodSpecPatch: one container "main", command = the launcher (/kfp-launcher/launch ...), args = the
  component's command + args; env = the container's env; resources from getPodResource (the string field
  resourceCpuLimit/resourceMemoryLimit when set, else the float cpuLimit "%v" / memoryLimit "%vG"); the accelerator
  only when both its type and count are set: `res.Limits[k8score.ResourceName(acceleratorType)] = q`.
- k8s.go, extendPodSpecPatch: nodeSelector.labels; tolerations; secretAsEnv -> env valueFrom.secretKeyRef;
  fieldPathAsEnv -> env valueFrom.fieldRef; activeDeadlineSeconds; emptyDirMounts -> an emptyDir volume + mount.
The driver's patch is merged by Argo into its own pod (init/wait containers, which KFP owns); what is rendered here is
the part that comes from this project's IR, wrapped in a minimal Pod so the Kubernetes schema can check it.
"""

from __future__ import annotations

import re

LAUNCHER = "/kfp-launcher/launch"  # backend/src/v2/component/constants.go: KFPLauncherPath


def _go_float(value: float) -> str:
    """Go's %v of a float64 (what the driver formats the SDK's float cpuLimit/memoryLimit with)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _quantity(new: str | None, old: float | None, fmt: str) -> str | None:
    if new:
        return str(new)
    if old:
        return fmt % _go_float(old)
    return None


def _resources(resources: dict) -> dict:
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    for field, target, fmt in (("Memory", limits, "%sG"), ("Cpu", limits, "%s")):
        q = _quantity(resources.get(f"resource{field}Limit"), resources.get(f"{field.lower()}Limit"), fmt)
        if q is not None:
            target["memory" if field == "Memory" else "cpu"] = q
        q = _quantity(resources.get(f"resource{field}Request"), resources.get(f"{field.lower()}Request"), fmt)
        if q is not None:
            requests["memory" if field == "Memory" else "cpu"] = q
    accelerator = resources.get("accelerator")
    if accelerator:
        kind = accelerator.get("resourceType") or accelerator.get("type") or ""
        count = accelerator.get("resourceCount") or (
            str(accelerator["count"]) if int(accelerator.get("count") or 0) > 0 else ""
        )
        if kind and count:  # the driver's `acceleratorType != "" && acceleratorCount != ""`
            limits[kind] = str(count)
    out = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def render_pod(task: str, executor: dict, k8s: dict | None) -> dict:
    """The Pod for one task: `executor` from deploymentSpec.executors, `k8s` its kubernetes platform config."""
    container = executor["container"]
    main: dict = {
        "name": "main",
        "image": container["image"],
        "command": [LAUNCHER, "--executor_type", "container", "--"],
        "args": list(container.get("command") or []) + list(container.get("args") or []),
    }
    env = [{"name": e["name"], "value": e.get("value", "")} for e in container.get("env") or []]
    resources = _resources(container.get("resources") or {})
    if resources:
        main["resources"] = resources
    spec: dict = {"containers": [main]}
    k8s = k8s or {}
    if (k8s.get("nodeSelector") or {}).get("labels"):
        spec["nodeSelector"] = dict(k8s["nodeSelector"]["labels"])
    tolerations = []
    for t in k8s.get("tolerations") or []:
        tolerations.append({k: t[k] for k in ("key", "operator", "value", "effect", "tolerationSeconds") if k in t})
    if tolerations:
        spec["tolerations"] = tolerations
    for secret in k8s.get("secretAsEnv") or []:
        for key in secret.get("keyToEnv") or []:
            ref = {"name": secret["secretName"], "key": key["secretKey"]}
            if "optional" in secret:
                ref["optional"] = secret["optional"]
            env.append({"name": key["envVar"], "valueFrom": {"secretKeyRef": ref}})
    for field in k8s.get("fieldPathAsEnv") or []:
        env.append({"name": field["name"], "valueFrom": {"fieldRef": {"fieldPath": field["fieldPath"]}}})
    if env:
        main["env"] = env
    if int(k8s.get("activeDeadlineSeconds") or 0) > 0:
        spec["activeDeadlineSeconds"] = int(k8s["activeDeadlineSeconds"])
    for empty in k8s.get("emptyDirMounts") or []:
        source = {}
        if empty.get("medium"):
            source["medium"] = empty["medium"]
        if empty.get("sizeLimit"):
            source["sizeLimit"] = empty["sizeLimit"]
        spec.setdefault("volumes", []).append({"name": empty["volumeName"], "emptyDir": source})
        main.setdefault("volumeMounts", []).append({"name": empty["volumeName"], "mountPath": empty["mountPath"]})
    name = re.sub(r"[^a-z0-9-]", "-", task.lower()).strip("-")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-pod"}, "spec": spec}


def task_executors(spec: dict) -> dict[str, str]:
    """task name -> executor label, over the root DAG and every sub-DAG (the ParallelFor body)."""
    out = {}
    components = spec["components"]
    dags = [spec["root"]["dag"]] + [c["dag"] for c in components.values() if "dag" in c]
    for dag in dags:
        for task, body in dag["tasks"].items():
            component = components[body["componentRef"]["name"]]
            if "executorLabel" in component:
                out[task] = component["executorLabel"]
    return out


def render_pods(spec: dict, platform: dict | None) -> dict[str, dict]:
    """task name -> the Pod the driver would create for it."""
    executors = spec["deploymentSpec"]["executors"]
    k8s = (
        (((platform or {}).get("platforms") or {}).get("kubernetes") or {})
        .get("deploymentSpec", {})
        .get("executors", {})
    )
    return {task: render_pod(task, executors[label], k8s.get(label)) for task, label in task_executors(spec).items()}
