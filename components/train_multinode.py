from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_multinode(
    plan: Input[Dataset],
    image: str,
    num_nodes: int,
    nproc_per_node: int,
    resources_json: str,
    env_json: str,
    runtime: str,
    timeout_s: int,
    placement_json: str,
    model: Output[Model],
):
    """Train one point on several nodes: create a Kubeflow Trainer TrainJob, wait for it, clean it up.

    placement_json: the TrainJob pods' node selector, tolerations, storage secret (by reference), /dev/shm size. They
    run as this pod's service account (POD_SERVICE_ACCOUNT, from the downward API), in this pod's namespace.
    plan: the mix step's pointer to the point's plan; model: a pointer to the point's checkpoints."""
    import hashlib
    import json
    import os

    from repeatlab import layout, lineage, records, steps
    from repeatlab.launch import build_trainjob
    from repeatlab.trainjob_runner import run_trainjob

    run_url = lineage.run_url_of(plan)
    run = layout.Run(run_url)
    if steps.is_trained(run_url):
        done = {"skipped": True, **records.Done.read(run.done).to_json()}
    else:
        namespace = os.environ.get("POD_NAMESPACE") or "default"
        name = "repeatlab-" + hashlib.sha256(run_url.encode()).hexdigest()[:12]
        placement = json.loads(placement_json)
        trainjob = build_trainjob(
            name=name,
            namespace=namespace,
            run_url=run_url,
            image=image,
            num_nodes=int(num_nodes),
            nproc_per_node=int(nproc_per_node),
            resources=json.loads(resources_json),
            env=json.loads(env_json),
            runtime=runtime,
            evaluate=True,  # the job's GPUs write eval.json; the evaluate step publishes it
            node_selector=placement.get("node_selector"),
            tolerations=placement.get("tolerations"),
            storage_secret=placement.get("storage_secret"),
            storage_secret_keys=placement.get("storage_secret_keys"),
            shm_size=placement.get("shm_size"),
            service_account=os.environ.get("POD_SERVICE_ACCOUNT") or None,
        )
        status = run_trainjob(trainjob, namespace, timeout_s=float(timeout_s))
        done = {
            "skipped": False,
            "trainjob": name,
            "status": status.get("status"),
            **records.Done.read(run.done).to_json(),
        }
    lineage.publish_model(model, run_url, done)
