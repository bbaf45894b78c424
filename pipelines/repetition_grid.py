"""The repetition-grid pipeline: prepare once, fan out over the grid points, then analyse and report.

    resolve -> prepare_corpus -> plan_grid -> ParallelFor(point): mix
            -> (dsl.Collected plans) plan_packs -> ParallelFor(pack): train -> evaluate
            -> (dsl.Collected evaluations) analyze -> report
    (cluster.multinode: no packs, one loop over points: mix -> train_multinode -> evaluate)

Packs (repeatlab.packs): points of one shape and schedule train together as one batched program; a pack's Model and
evaluation pointers list every point of the pack (a pack of one is one point, as before).

Steps hand each other typed artifacts (repeatlab/lineage.py): the corpus, each plan and the packs are Datasets, each
trained pack a Model, each evaluation an Artifact beside its Metrics, the analysis an Artifact with the study's
Metrics, the report HTML and Markdown. Each (except the report's HTML and Markdown) is a small pointer to the real
object in the study's storage, so the Kubeflow UI's lineage connects corpus -> plan -> packs -> model -> evaluation
-> analysis -> report.

The pipeline's runtime parameters are the study config (YAML/JSON text) and the storage root (empty: the study's own),
so a run from the Kubeflow UI can change the study and where it writes. Cluster settings (images, GPUs, CPU and memory,
/dev/shm, storage secret, node selector, tolerations, timeouts, retries, fan-out parallelism, multi-node training) are
compile-time: `build_pipeline(cfg)` bakes the study's `cluster` section into the compiled YAML, and the local runner
ignores them.

Fan-in: `plan_packs` takes the mix loop's plans and `analyze` the pack loop's evaluations through `dsl.Collected`
(fan_in="collected", the default; KFP backends >= 2.14) and read the records from storage; fan_in="storage" compiles
the shape older backends run, which do not resolve dsl.Collected: `plan_packs_after_loop` and `analyze_after_loop`
ordered `.after()` their loops (docs/deploy.md, "Fan-in").
Resources: only the training task asks for accelerators (`cluster.accelerator_type`, a Kubernetes resource name, x
`cluster.accelerator_limit`) and goes to the nodes of `cluster.node_selector`/`tolerations`; evaluate only publishes
the eval.json the training processes wrote, so it runs on the CPU image without a GPU.
"""

import json

from kfp import dsl, kubernetes

from repeatlab.components.analyze import analyze, analyze_after_loop
from repeatlab.components.evaluate import evaluate
from repeatlab.components.mix import mix
from repeatlab.components.plan_grid import plan_grid
from repeatlab.components.prepare_corpus import prepare_corpus
from repeatlab.components.report import report
from repeatlab.components.resolve_study import resolve_study
from repeatlab.components.train import plan_packs, plan_packs_after_loop, train
from repeatlab.components.train_multinode import train_multinode
from repeatlab.config import StudyConfig

PIPELINE_NAME = "repeatlab-repetition-grid"
FAN_INS = ("collected", "storage")


def on_cluster(task, cfg: StudyConfig, image: str, heavy: bool = False, accelerators: bool = False):
    """Apply the study's cluster settings to one task (no-ops under the local runner).

    heavy: CPU/memory limits, /dev/shm, the timeout and retries of a compute step.
    accelerators: also the GPUs and the node placement (node selector, tolerations) of a training step.
    """
    c = cfg.cluster
    task.set_container_image(image)
    task.set_caching_options(False)  # content addressing in storage decides what is reused, not KFP's cache
    for name, value in sorted(c.env.items()):
        task.set_env_variable(name, value)
    if c.storage_secret:
        kubernetes.use_secret_as_env(task, secret_name=c.storage_secret, secret_key_to_env=dict(c.storage_secret_keys))
    if heavy or accelerators:
        task.set_cpu_limit(c.cpu)
        task.set_memory_limit(c.memory)
        # torch's shared-memory tensors and NCCL need more than the container runtime's 64 MB /dev/shm
        kubernetes.empty_dir_mount(
            task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=c.shm_size
        )
        kubernetes.set_timeout(task, c.timeout_s)
        if c.retries:
            task.set_retry(num_retries=c.retries, backoff_duration="60s", backoff_factor=2.0)
    if accelerators:
        if c.accelerator_limit:
            # KFP's driver (backend/src/v2/driver/driver.go, initPodSpecPatch) writes
            # Limits[ResourceName(accelerator type)] = count, and only when both are set: the type must be the
            # Kubernetes resource name (config validation checks it), and the SDK's set_accelerator_limit alone
            # (sdk/python/kfp/dsl/pipeline_task.py) compiles to no GPU at all.
            task.set_accelerator_type(c.accelerator_type)
            task.set_accelerator_limit(c.accelerator_limit)
        for key, value in sorted(c.node_selector.items()):
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for toleration in c.tolerations:
            kubernetes.add_toleration(task, **toleration)
    return task


def train_packs(cfg: StudyConfig, study, planned, points, fan_in: str):
    """After every point is mixed: group them into packs, then train and evaluate each pack (a ParallelFor over
    packs); returns the evaluate task, whose evaluations analyze collects."""
    c = cfg.cluster
    if fan_in == "collected":
        packed = plan_packs(study_config=study, plans=dsl.Collected(planned.outputs["plan"]))
    else:
        packed = plan_packs_after_loop(study_config=study, points=points).after(planned)
    on_cluster(packed, cfg, c.image).set_display_name("plan packs")
    with dsl.ParallelFor(packed.outputs["Output"], parallelism=c.parallelism, name="pack") as pack:
        trained = on_cluster(
            train(packs=packed.outputs["packs"], run_urls=pack, nproc_per_node=cfg.train.nproc_per_node),
            cfg,
            c.train_image,
            accelerators=True,
        )
        evaluated = on_cluster(evaluate(model=trained.outputs["model"]), cfg, c.image, heavy=True)
    return evaluated


def build_pipeline(cfg: StudyConfig, fan_in: str = "collected"):
    """The pipeline function for a study: its config is the default of the `study_config` parameter.

    fan_in: "collected" (analyze consumes every evaluation: the lineage connects; KFP backends >= 2.14) or "storage"
    (analyze runs after the loop and reads storage only; for KFP backends 2.4.1 to 2.13)."""
    if fan_in not in FAN_INS:
        from repeatlab.errors import ConfigError

        raise ConfigError(f"--fan-in {fan_in!r}: allowed: {', '.join(FAN_INS)}")
    default_config = cfg.to_json()
    c = cfg.cluster

    @dsl.pipeline(name=PIPELINE_NAME, description=__doc__.split("\n\n")[0])
    def repetition_grid(study_config: str = default_config, storage_root: str = cfg.storage.root):
        resolved = on_cluster(resolve_study(study_config=study_config, storage_root=storage_root), cfg, c.image)
        resolved.set_display_name("resolve study")
        study = resolved.output
        prepared = on_cluster(prepare_corpus(study_config=study), cfg, c.image)
        prepared.set_display_name("prepare corpus")
        corpus = prepared.outputs["corpus"]
        grid = on_cluster(plan_grid(study_config=study, corpus=corpus), cfg, c.image)
        grid.set_display_name("plan grid")
        with dsl.ParallelFor(grid.outputs["Output"], parallelism=c.parallelism, name="grid-point") as run_url:
            planned = on_cluster(mix(run_url=run_url, corpus=corpus), cfg, c.image)
            if c.multinode:
                resources = {"cpu": c.cpu, "memory": c.memory}
                if c.accelerator_limit:
                    resources[c.accelerator_type] = str(c.accelerator_limit)
                trained = train_multinode(
                    plan=planned.outputs["plan"],
                    image=c.train_image,
                    num_nodes=cfg.train.nnodes,
                    nproc_per_node=cfg.train.nproc_per_node,
                    resources_json=json.dumps(resources, sort_keys=True),
                    env_json=json.dumps(c.env, sort_keys=True),
                    runtime=c.trainer_runtime,
                    timeout_s=c.timeout_s,
                    placement_json=json.dumps(
                        {
                            "node_selector": c.node_selector,
                            "tolerations": c.tolerations,
                            "shm_size": c.shm_size,
                            "storage_secret": c.storage_secret,
                            "storage_secret_keys": c.storage_secret_keys,
                        },
                        sort_keys=True,
                    ),
                )
                on_cluster(trained, cfg, c.image)
                # The TrainJob goes to this pod's namespace and its pods run as this pod's service account (the one
                # KFP runs the pipeline as, which the RBAC in manifests/base/rbac.yaml lets create TrainJobs).
                kubernetes.use_field_path_as_env(trained, env_name="POD_NAMESPACE", field_path="metadata.namespace")
                kubernetes.use_field_path_as_env(
                    trained, env_name="POD_SERVICE_ACCOUNT", field_path="spec.serviceAccountName"
                )
                kubernetes.set_timeout(trained, c.timeout_s + 600)
                evaluated = on_cluster(evaluate(model=trained.outputs["model"]), cfg, c.image, heavy=True)
        points = grid.outputs["points"]
        if not c.multinode:
            evaluated = train_packs(cfg, study, planned, points, fan_in)
        if fan_in == "collected":
            analyzed = analyze(
                study_config=study, points=points, evaluations=dsl.Collected(evaluated.outputs["evaluation"])
            )
        else:
            analyzed = analyze_after_loop(study_config=study, points=points).after(evaluated)
            analyzed.set_display_name("analyze")
        on_cluster(analyzed, cfg, c.image)
        on_cluster(report(study_config=study, analysis=analyzed.outputs["analysis"]), cfg, c.image)

    return repetition_grid
