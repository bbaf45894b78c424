"""The compiled pipeline: golden file, loads back, cluster settings compiled in."""

import dataclasses
import json
import pathlib

import yaml

from repeatlab import config
from repeatlab.kfp_pipeline import DEFAULT_CONFIG, GOLDEN, compile_pipeline

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_checked_in_pipeline_matches_a_fresh_compile(tmp_path):
    fresh = compile_pipeline(str(tmp_path / "pipeline.yaml"))
    assert pathlib.Path(GOLDEN).read_text() == pathlib.Path(fresh).read_text(), (
        "pipelines/repetition_grid.yaml is stale: run `make compile` and review the diff"
    )


def test_compiled_pipeline_loads_back_as_a_component():
    from kfp import components

    loaded = components.load_component_from_file(GOLDEN)
    assert loaded.name == "repeatlab-repetition-grid"
    assert sorted(loaded.component_spec.inputs) == ["storage_root", "study_config"]
    default = loaded.component_spec.inputs["study_config"].default
    assert config.loads(default) == config.load(DEFAULT_CONFIG)
    assert loaded.component_spec.inputs["storage_root"].default == config.load(DEFAULT_CONFIG).storage.root


def _docs(path):
    return list(yaml.safe_load_all(pathlib.Path(path).read_text()))


def test_dag_shape():
    spec = _docs(GOLDEN)[0]
    root_tasks = spec["root"]["dag"]["tasks"]
    assert set(root_tasks) == {
        "resolve-study",
        "prepare-corpus",
        "plan-grid",
        "for-loop-1",
        "plan-packs",
        "for-loop-2",
        "analyze",
        "report",
    }
    # The fan-ins: plan_packs consumes every point's plan and analyze every pack's evaluation through dsl.Collected
    # (the lineage connects; KFP backends >= 2.14) and read the records from storage; `--fan-in storage` compiles
    # the older backends' shape (tests/test_lineage.py, docs/deploy.md "Fan-in").
    assert "for-loop-1" in root_tasks["plan-packs"]["dependentTasks"]
    plans = root_tasks["plan-packs"]["inputs"]["artifacts"]["plans"]["taskOutputArtifact"]
    assert plans["producerTask"] == "for-loop-1"
    assert "plan-packs" in root_tasks["for-loop-2"]["dependentTasks"]
    assert "for-loop-2" in root_tasks["analyze"]["dependentTasks"]
    assert set(root_tasks["analyze"]["inputs"]["parameters"]) == {"study_config"}
    evaluations = root_tasks["analyze"]["inputs"]["artifacts"]["evaluations"]["taskOutputArtifact"]
    assert evaluations["producerTask"] == "for-loop-2"
    for name in ("prepare-corpus", "plan-grid", "plan-packs", "analyze", "report"):
        source = root_tasks[name]["inputs"]["parameters"]["study_config"]["taskOutputParameter"]
        assert source["producerTask"] == "resolve-study"
    # mix every point, then train and evaluate each pack: two loops in that order
    parallelism = config.load(DEFAULT_CONFIG).cluster.parallelism
    for n in (1, 2):
        assert root_tasks[f"for-loop-{n}"]["iteratorPolicy"]["parallelismLimit"] == parallelism
    assert set(spec["components"]["comp-for-loop-1"]["dag"]["tasks"]) == {"mix"}
    pack_tasks = spec["components"]["comp-for-loop-2"]["dag"]["tasks"]
    assert set(pack_tasks) == {"train", "evaluate"}
    assert pack_tasks["evaluate"]["dependentTasks"] == ["train"]


def test_cluster_settings_are_compiled_in(tmp_path):
    cfg = config.load(DEFAULT_CONFIG)
    cluster = dataclasses.replace(
        cfg.cluster,
        storage_secret="mlpipeline-minio-artifact",
        node_selector={"pool": "gpu"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        env={"REPEATLAB_S3_ENDPOINT_URL": "http://minio-service.kubeflow:9000"},
        retries=2,
    )
    path = compile_pipeline(str(tmp_path / "p.yaml"), dataclasses.replace(cfg, cluster=cluster))
    spec, platform = _docs(path)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = executors["exec-train"]
    assert train["emptyDirMounts"][0]["mountPath"] == "/dev/shm" and train["emptyDirMounts"][0]["medium"] == "Memory"
    assert train["nodeSelector"]["labels"] == {"pool": "gpu"}
    assert train["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert train["activeDeadlineSeconds"] == str(cfg.cluster.timeout_s)
    for name in ("exec-prepare-corpus", "exec-mix", "exec-train", "exec-evaluate", "exec-analyze", "exec-report"):
        secret = executors[name]["secretAsEnv"][0]
        assert secret["secretName"] == "mlpipeline-minio-artifact"
        assert {m["envVar"] for m in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    container = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert container["image"] == cfg.cluster.train_image
    assert container["resources"]["accelerator"]["resourceCount"] == "1"
    assert container["resources"]["accelerator"]["resourceType"] == cfg.cluster.accelerator_type == "nvidia.com/gpu"
    # evaluate only publishes the eval.json the training processes wrote: no GPU, the CPU image, no GPU nodes
    evaluate = spec["deploymentSpec"]["executors"]["exec-evaluate"]["container"]
    assert "accelerator" not in evaluate.get("resources", {}) and evaluate["image"] == cfg.cluster.image
    assert "nodeSelector" not in executors["exec-evaluate"] and "tolerations" not in executors["exec-evaluate"]
    assert {"name": "REPEATLAB_S3_ENDPOINT_URL", "value": "http://minio-service.kubeflow:9000"} in container["env"]
    assert spec["root"]["dag"]["tasks"]["for-loop-1"]["componentRef"]
    retry = spec["components"]["comp-for-loop-2"]["dag"]["tasks"]["train"]["retryPolicy"]  # the loop over packs
    assert retry["maxRetryCount"] == 2
    # every component uses the preinstalled kfp: no pip install in the container command
    for executor in spec["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(executor["container"]["command"])


def test_multinode_training_goes_through_a_trainjob(tmp_path):
    cfg = config.load(DEFAULT_CONFIG)
    cfg = dataclasses.replace(
        cfg, cluster=dataclasses.replace(cfg.cluster, multinode=True), train=dataclasses.replace(cfg.train, nnodes=2)
    )
    spec, platform = _docs(compile_pipeline(str(tmp_path / "p.yaml"), cfg))
    loop_tasks = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    assert "train-multinode" in loop_tasks and "train" not in loop_tasks
    params = loop_tasks["train-multinode"]["inputs"]["parameters"]
    assert params["num_nodes"]["runtimeValue"]["constant"] == 2
    env = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-multinode"]["fieldPathAsEnv"]
    # the TrainJob goes to the launcher's namespace and runs as its service account (the one KFP runs pipelines as)
    assert env == [
        {"fieldPath": "metadata.namespace", "name": "POD_NAMESPACE"},
        {"fieldPath": "spec.serviceAccountName", "name": "POD_SERVICE_ACCOUNT"},
    ]
    placement = json.loads(params["placement_json"]["runtimeValue"]["constant"])
    assert placement["storage_secret"] == cfg.cluster.storage_secret and placement["shm_size"] == cfg.cluster.shm_size


def test_kubernetes_native_resources(tmp_path):
    docs = _docs(compile_pipeline(str(tmp_path / "k.yaml"), kubernetes_manifest=True))
    kinds = [(d["apiVersion"], d["kind"]) for d in docs]
    api = "pipelines.kubeflow.org/v2beta1"
    assert kinds == [(api, "Pipeline"), (api, "PipelineVersion")]
    version = docs[1]
    assert version["spec"]["pipelineName"] == docs[0]["metadata"]["name"]
    assert version["spec"]["pipelineSpec"]["pipelineInfo"]["name"] == "repeatlab-repetition-grid"


def test_the_compiled_default_runs_on_a_cluster():
    """The study the Kubeflow UI shows by default: a bucket root every pod reaches, the corpus bundled in the image
    (corpus.url: default reads the image's copy), GPUs as a Kubernetes resource, and its storage root as a parameter."""
    spec = _docs(GOLDEN)[0]
    params = spec["root"]["inputDefinitions"]["parameters"]
    cfg = config.loads(params["study_config"]["defaultValue"])
    config.check_for_cluster(cfg)
    assert cfg.storage.root.startswith("s3://") and params["storage_root"]["defaultValue"] == cfg.storage.root
    assert cfg.corpus.url == "default" and cfg.cluster.storage_secret
    assert cfg.cluster.accelerator_type == "nvidia.com/gpu"


def test_compile_cli_rejects_a_bad_config(tmp_path, capsys):
    from repeatlab.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {fractions: [0, 1]}\n")
    assert main(["compile", "--config", str(bad), "--output", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert "grid.fractions[1]: 1.0 is not allowed" in err and err.count("\n") == 1
    assert not (tmp_path / "p.yaml").exists()
