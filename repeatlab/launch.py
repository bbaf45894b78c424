"""Starting the trainer: a torchrun command line, a TorchX component, and a Kubeflow Trainer v2 TrainJob.

All three run the same entry point, `python -m repeatlab.train --run-url URL`, under torchrun with an explicit
process count per node (never "auto": on a CPU node "auto" means one process per core).

- `torchrun_command(...)` / `repeatlab train --run-url URL [--nproc-per-node N]`: torchrun as a subprocess of this
  Python (`python -m torch.distributed.run`, so the same environment), `--standalone` on one node, c10d rendezvous
  (endpoint and id from arguments or MASTER_ADDR/MASTER_PORT, REPEATLAB_RDZV_ID) on several.
- `repeatlab.torchx_component.trainer_component(...)`: a TorchX component built on `torchx.components.dist.torchrun`
  (its own module: TorchX reads the annotations at run time, so that file cannot postpone them).
- `build_trainjob(...)`: a Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1), validated with the typed
  `kubeflow_trainer_api` models. With the `torch-distributed` runtime the controller does NOT wrap the command in
  torchrun: it injects PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT into every
  node's trainer container, which torchrun reads as the defaults of its own options (the Kubeflow SDK's own Torch
  command is `torchrun <script>`). So the trainer command here is `python -m torch.distributed.run
  --nproc-per-node=N -m repeatlab.train --run-url URL`, with numProcPerNode = N set as well (the runtime's default is
  "auto"). `python -m torch.distributed.run`, never a bare `torchrun`: torchrun starts its workers with its own
  sys.executable, and in the CUDA image the `torchrun` on the PATH is the base image's (conda's Python, without
  repeatlab); `python` is the image venv's, first on the PATH.
"""

from __future__ import annotations

import os
import sys
from typing import Any

TRAIN_MODULE = "repeatlab.train"
DEFAULT_IMAGE = "ghcr.io/repeatlab/repeatlab:0.1.0"


# ----------------------------------------------------------------------------------------------------------------------
# torchrun


def torchrun_command(
    run_url: str | list[str],
    nproc_per_node: int,
    nnodes: int = 1,
    *,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    rdzv_id: str | None = None,
    rdzv_backend: str = "c10d",
    max_restarts: int = 0,
    max_steps: int | None = None,
    evaluate: bool = False,
    python: str | None = None,
) -> list[str]:
    """The torchrun command line that trains `run_url` (several: one pack) with `nproc_per_node` processes on each of
    `nnodes` nodes.

    evaluate: the workers also evaluate the final checkpoint (eval.json) before they exit, in the same processes.
    """
    nproc_per_node, nnodes = int(nproc_per_node), int(nnodes)
    if nproc_per_node < 1 or nnodes < 1:
        from repeatlab.errors import TrainError

        raise TrainError(f"nproc_per_node {nproc_per_node} / nnodes {nnodes}: both must be integers >= 1")
    cmd = [python or sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc_per_node)]
    if nnodes == 1:
        cmd += ["--standalone", "--nnodes", "1"]
    else:
        endpoint = rdzv_endpoint or os.environ.get("PET_RDZV_ENDPOINT")
        if not endpoint and os.environ.get("MASTER_ADDR"):
            endpoint = f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '29400')}"
        if not endpoint:
            from repeatlab.errors import TrainError

            raise TrainError(
                f"nnodes {nnodes}: multi-node training needs a rendezvous endpoint "
                "(rdzv_endpoint, or MASTER_ADDR/MASTER_PORT in the environment)"
            )
        cmd += [
            "--nnodes",
            str(nnodes),
            "--rdzv-backend",
            rdzv_backend,
            "--rdzv-endpoint",
            endpoint,
            "--rdzv-id",
            rdzv_id or os.environ.get("REPEATLAB_RDZV_ID") or os.environ.get("PET_RDZV_ID") or "repeatlab",
        ]
        rank = node_rank if node_rank is not None else os.environ.get("NODE_RANK", os.environ.get("PET_NODE_RANK"))
        if rank is not None:
            cmd += ["--node-rank", str(rank)]
    cmd += ["--max-restarts", str(int(max_restarts)), "-m", TRAIN_MODULE]
    if max_steps is not None:
        cmd += ["--max-steps", str(int(max_steps))]
    if evaluate:
        cmd += ["--evaluate"]
    cmd += ["--run-url", *([run_url] if isinstance(run_url, str) else run_url)]
    return cmd


ERROR_FILE_ENV = "REPEATLAB_ERROR_FILE"


def run_trainer(command: list[str], env: dict[str, str] | None = None, **popen_kwargs) -> int:
    """Run a trainer command (torchrun) tied to this process (repeatlab.proc.run_tied: it dies with us).

    A trainer that fails with a RepeatlabError writes it to $REPEATLAB_ERROR_FILE (repeatlab.train.main); that
    error is raised here again, so the user gets the trainer's one-line message and exit code 2, not only torchrun's
    ChildFailedError. Other failures return the exit code.
    """
    import json
    import tempfile

    from repeatlab.errors import TrainError
    from repeatlab.proc import run_tied

    env = dict(os.environ if env is None else env)
    fd, error_file = tempfile.mkstemp(prefix="repeatlab-train-error-", suffix=".json")
    os.close(fd)
    os.unlink(error_file)  # the trainer creates it only on failure
    env[ERROR_FILE_ENV] = error_file
    try:
        rc = run_tied(command, env=env, **popen_kwargs)
        if rc != 0 and os.path.exists(error_file):
            with open(error_file, encoding="utf-8") as fh:
                raise TrainError(json.load(fh)["message"])
        return rc
    finally:
        if os.path.exists(error_file):
            os.unlink(error_file)


# ----------------------------------------------------------------------------------------------------------------------
# Kubeflow Trainer v2


HOME = "/home/repeatlab"
UID = 1000


def restricted_pod_patch(shm_size: str | None) -> tuple[dict, dict]:
    """(pod spec fields, container fields) that make a training pod meet the restricted Pod Security Standard, with
    writable emptyDirs for /tmp and $HOME (the root filesystem is read-only) and /dev/shm in memory (NCCL, torch's
    shared-memory tensors): the same as the manifests' TrainJob (manifests/jobs/trainjob/trainjob.yaml)."""
    seccomp = {"type": "RuntimeDefault"}
    pod = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": seccomp,
        },
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}},
            {"name": "home", "emptyDir": {"sizeLimit": "1Gi"}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", **({"sizeLimit": shm_size} if shm_size else {})}},
        ],
    }
    container = {
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": UID,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": seccomp,
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "home", "mountPath": HOME},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    return pod, container


def build_trainjob(
    name: str,
    namespace: str,
    run_url: str,
    image: str,
    num_nodes: int,
    nproc_per_node: int,
    resources: dict[str, Any],
    env: dict[str, str] | None = None,
    runtime: str = "torch-distributed",
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    runtime_kind: str = "ClusterTrainingRuntime",
    evaluate: bool = False,
    storage_secret: str | None = None,
    storage_secret_keys: dict[str, str] | None = None,
    service_account: str | None = None,
    shm_size: str | None = "1Gi",
) -> dict:
    """A TrainJob that trains `run_url` on num_nodes x nproc_per_node processes, as a plain dict for the Kubernetes API.

    evaluate: the job's workers also evaluate the final checkpoint on their GPUs (eval.json) before they exit.
    resources: per node, e.g. {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 4}; used as both requests and limits.
    storage_secret / storage_secret_keys: the secret whose keys become env vars (secret key -> env var), by reference
      (valueFrom), as in the KFP step pods.
    node_selector, tolerations, service_account, /dev/shm (shm_size) and the restricted security context go into a
    runtime patch of the runtime's "node" replicated job's pod template (`spec.runtimePatches`, Trainer >= 2.2;
    checked against the TrainJob CRDs of Trainer 2.2.0 and 2.3.0 under manifests/schemas/crds/).
    """
    from kubeflow_trainer_api import models

    trainer = models.TrainerV1alpha1Trainer(
        image=image,
        command=_train_command(run_url, nproc_per_node, evaluate),
        numNodes=int(num_nodes),
        numProcPerNode=int(nproc_per_node),
        env=[models.IoK8sApiCoreV1EnvVar.from_dict(e) for e in _env_vars(env, storage_secret, storage_secret_keys)],
        resourcesPerNode=_resources_per_node(resources),
    )
    pod = _node_pod_spec(shm_size, service_account, node_selector, tolerations)
    job = models.TrainerV1alpha1TrainJob(
        apiVersion="trainer.kubeflow.org/v1alpha1",
        kind="TrainJob",
        metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name, namespace=namespace, labels={"app.kubernetes.io/name": "repeatlab", **(labels or {})}
        ),
        spec=models.TrainerV1alpha1TrainJobSpec(
            runtimeRef=models.TrainerV1alpha1RuntimeRef(
                name=runtime, kind=runtime_kind, apiGroup="trainer.kubeflow.org"
            ),
            trainer=trainer,
            runtimePatches=[_node_runtime_patch(pod)],
        ),
    )
    return job.to_dict()


def _train_command(run_url: str, nproc_per_node: int, evaluate: bool) -> list[str]:
    return [
        "python",
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={int(nproc_per_node)}",
        "-m",
        TRAIN_MODULE,
        *(["--evaluate"] if evaluate else []),
        "--run-url",
        run_url,
    ]


def _env_vars(
    env: dict[str, str] | None, storage_secret: str | None, storage_secret_keys: dict[str, str] | None
) -> list[dict[str, Any]]:
    """HOME, then `env` by name, then the storage secret's keys by reference (valueFrom)."""
    env_vars: list[dict[str, Any]] = [{"name": "HOME", "value": HOME}]
    env_vars += [{"name": str(k), "value": str(v)} for k, v in sorted((env or {}).items()) if k != "HOME"]
    if storage_secret:
        env_vars += [
            {"name": var, "valueFrom": {"secretKeyRef": {"name": storage_secret, "key": key}}}
            for key, var in sorted((storage_secret_keys or {}).items())
        ]
    return env_vars


def _resources_per_node(resources: dict[str, Any]) -> Any:
    """The same quantities as requests and limits; None when there are none."""
    from kubeflow_trainer_api import models

    quantities = {str(k): models.IoK8sApimachineryPkgApiResourceQuantity(str(v)) for k, v in (resources or {}).items()}
    if not quantities:
        return None
    return models.IoK8sApiCoreV1ResourceRequirements(limits=quantities, requests=quantities)


def _node_pod_spec(
    shm_size: str | None,
    service_account: str | None,
    node_selector: dict[str, str] | None,
    tolerations: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """The pod spec patched into the runtime's "node" replicated job: restricted, with the placement asked for."""
    pod, container = restricted_pod_patch(shm_size)
    if service_account:
        pod["serviceAccountName"] = service_account
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod["tolerations"] = [dict(t) for t in tolerations]
    pod["containers"] = [{"name": "node", **container}]  # the torch runtime's trainer container
    return pod


def _node_runtime_patch(pod: dict[str, Any]) -> Any:
    """A runtime patch (spec.runtimePatches) that sets the pod spec of the "node" replicated job's pods."""
    from kubeflow_trainer_api import models

    return models.TrainerV1alpha1RuntimePatch(
        manager="repeatlab.io/launcher",
        trainingRuntimeSpec=models.TrainerV1alpha1TrainingRuntimeSpecPatch(
            template=models.TrainerV1alpha1JobSetTemplatePatch(
                spec=models.TrainerV1alpha1JobSetSpecPatch(
                    replicatedJobs=[
                        models.TrainerV1alpha1ReplicatedJobPatch(
                            name="node",
                            template=models.TrainerV1alpha1JobTemplatePatch(
                                spec=models.TrainerV1alpha1JobSpecPatch(
                                    template=models.TrainerV1alpha1PodTemplatePatch(
                                        spec=models.TrainerV1alpha1PodSpecPatch.from_dict(pod)
                                    )
                                )
                            ),
                        )
                    ]
                )
            )
        ),
    )
