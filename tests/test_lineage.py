"""The compiled pipeline's artifact edges connect corpus -> plan -> packs -> model -> evaluation -> analysis -> report
(multinode: no packs), and the pointer artifacts behave (repeatlab/lineage.py)."""

import collections
import json
import pathlib

import pytest
import yaml

from repeatlab import lineage
from repeatlab.kfp_pipeline import GOLDEN, compile_pipeline

# The chain the Kubeflow UI's lineage view must show, as (task, output) pairs, and each output's type.
CHAIN = [
    ("prepare-corpus", "corpus", "system.Dataset"),
    ("mix", "plan", "system.Dataset"),
    ("plan-packs", "packs", "system.Dataset"),
    ("train", "model", "system.Model"),
    ("evaluate", "evaluation", "system.Artifact"),
    ("analyze", "analysis", "system.Artifact"),
    ("report", "html", "system.HTML"),
]


def _spec(path) -> dict:
    return next(yaml.safe_load_all(pathlib.Path(path).read_text()))


class ArtifactGraph:
    """The IR's artifact edges between leaf tasks, resolved across the loop's DAG boundary (inputs that come from the
    parent DAG, outputs that the loop's DAG re-exports to dsl.Collected)."""

    def __init__(self, spec: dict):
        self.components = spec["components"]
        nested = {name: c["dag"] for name, c in self.components.items() if "dag" in c}
        self.dags = {"root": spec["root"]["dag"], **nested}
        self.parent = {}  # DAG component -> (parent DAG, task in it that runs the DAG)
        self.leaves = {}  # leaf task -> (its DAG, its task spec)
        for dag_name, dag in self.dags.items():
            for task_name, task in dag["tasks"].items():
                ref = task["componentRef"]["name"]
                if ref in self.dags:
                    self.parent[ref] = (dag_name, task_name)
                else:
                    self.leaves[task_name] = (dag_name, task)

    def _producers(self, dag_name: str, source: dict) -> list[tuple[str, str]]:
        if "taskOutputArtifact" in source:
            producer = source["taskOutputArtifact"]["producerTask"]
            key = source["taskOutputArtifact"]["outputArtifactKey"]
            ref = self.dags[dag_name]["tasks"][producer]["componentRef"]["name"]
            if ref in self.dags:  # a DAG (the loop): follow its output selectors inside
                selectors = self.dags[ref]["outputs"]["artifacts"][key]["artifactSelectors"]
                return [
                    p
                    for s in selectors
                    for p in self._producers(
                        ref,
                        {
                            "taskOutputArtifact": {
                                "producerTask": s["producerSubtask"],
                                "outputArtifactKey": s["outputArtifactKey"],
                            }
                        },
                    )
                ]
            return [(producer, key)]
        if "componentInputArtifact" in source:  # from the enclosing DAG's task inputs
            parent_dag, task_name = self.parent[self._component_of(dag_name)]
            task = self.dags[parent_dag]["tasks"][task_name]
            return self._producers(parent_dag, task["inputs"]["artifacts"][source["componentInputArtifact"]])
        raise AssertionError(f"unexpected artifact source {source}")

    def _component_of(self, dag_name: str) -> str:
        return dag_name

    def edges(self) -> dict[tuple[str, str], set[str]]:
        """(producer task, output) -> consumer tasks."""
        out = collections.defaultdict(set)
        for task_name, (dag_name, task) in self.leaves.items():
            for source in (task.get("inputs") or {}).get("artifacts", {}).values():
                for producer in self._producers(dag_name, source):
                    out[producer].add(task_name)
        return out

    def output_type(self, task_name: str, key: str) -> str:
        ref = self.leaves[task_name][1]["componentRef"]["name"]
        outputs = self.components[ref]["outputDefinitions"]["artifacts"]
        return outputs[key]["artifactType"]["schemaTitle"]

    def outputs_of(self, task_name: str) -> list[str]:
        ref = self.leaves[task_name][1]["componentRef"]["name"]
        return sorted((self.components[ref].get("outputDefinitions") or {}).get("artifacts", {}))


def _reachable_chain(graph: ArtifactGraph, start: tuple[str, str]) -> dict[tuple[str, str], tuple[str, str] | None]:
    """Breadth-first over artifact -> consumer -> its output artifacts; returns each reached artifact's predecessor."""
    edges, seen, queue = graph.edges(), {start: None}, collections.deque([start])
    while queue:
        artifact = queue.popleft()
        for consumer in edges.get(artifact, ()):
            for key in graph.outputs_of(consumer):
                if (consumer, key) not in seen:
                    seen[(consumer, key)] = artifact
                    queue.append((consumer, key))
    return seen


@pytest.mark.parametrize("source", ["golden", "multinode"])
def test_artifact_edges_connect_the_corpus_to_the_report(source, tmp_path):
    path = GOLDEN
    if source == "multinode":
        import dataclasses

        from repeatlab import config
        from repeatlab.kfp_pipeline import DEFAULT_CONFIG

        cfg = config.load(DEFAULT_CONFIG)
        cfg = dataclasses.replace(
            cfg,
            cluster=dataclasses.replace(cfg.cluster, multinode=True),
            train=dataclasses.replace(cfg.train, nnodes=2),
        )
        path = compile_pipeline(str(tmp_path / "multinode.yaml"), cfg)
    graph = ArtifactGraph(_spec(path))
    seen = _reachable_chain(graph, ("prepare-corpus", "corpus"))
    for end in (("report", "html"), ("report", "markdown"), ("analyze", "metrics")):
        assert end in seen, f"{end} is not reachable from the corpus along artifact edges"
    train_task = "train" if source == "golden" else "train-multinode"
    chain = [
        (train_task if t == "train" else t, k, ty) for t, k, ty in CHAIN if source == "golden" or t != "plan-packs"
    ]  # multinode trains each point: no packs
    edges = graph.edges()
    for (task, key, _), (consumer, _, _) in zip(chain, chain[1:]):
        assert consumer in edges[(task, key)], f"{task}.{key} does not reach {consumer} as an artifact input"
    for task, key, schema in chain:
        assert graph.output_type(task, key) == schema
    assert graph.output_type("evaluate", "metrics") == "system.Metrics"
    assert graph.output_type("report", "markdown") == "system.Markdown"
    # every leaf task but the first takes an artifact: no step is cut off from the lineage
    consumers = set().union(*edges.values())
    assert set(graph.leaves) - consumers == {"resolve-study", "prepare-corpus"}


def test_storage_fan_in_compiles_without_collected(tmp_path):
    """Backends before 2.14: analyze after the loop, no dsl.Collected; the lineage then restarts at the points."""
    path = compile_pipeline(str(tmp_path / "storage.yaml"), fan_in="storage")
    spec = _spec(path)
    tasks = spec["root"]["dag"]["tasks"]
    packs = tasks["plan-packs-after-loop"]
    assert "for-loop-1" in packs["dependentTasks"] and set(packs["inputs"]["artifacts"]) == {"points"}
    analyze = tasks["analyze-after-loop"]
    assert "for-loop-2" in analyze["dependentTasks"]
    assert set(analyze["inputs"]["artifacts"]) == {"points"}
    assert "parameterExpressionSelector" not in str(spec) and "artifactSelectors" not in str(spec["root"])
    seen = _reachable_chain(ArtifactGraph(spec), ("prepare-corpus", "corpus"))
    assert ("report", "html") in seen and ("evaluate", "evaluation") in seen and ("train", "model") in seen


def test_unknown_fan_in_is_a_one_line_error(tmp_path):
    from repeatlab.errors import ConfigError

    with pytest.raises(ConfigError, match="--fan-in 'gather': allowed: collected, storage"):
        compile_pipeline(str(tmp_path / "x.yaml"), fan_in="gather")


class FakeArtifact:
    def __init__(self, path):
        self.path, self.name, self.metadata = str(path), "plan", {}


def test_pointer_round_trip_and_metadata(tmp_path):
    artifact = FakeArtifact(tmp_path / "out" / "plan")
    lineage.write_pointer(
        artifact,
        "s3://b/runs/abc/plan.npy",
        run_url="s3://b/runs/abc",
        epochs=32.0,
        point={"nested": [1]},
        skipped=None,
    )
    assert artifact.metadata == {
        "storage_url": "s3://b/runs/abc/plan.npy",
        "run_url": "s3://b/runs/abc",
        "epochs": 32.0,
        "point": '{"nested":[1]}',
    }
    assert lineage.storage_url_of(artifact) == "s3://b/runs/abc/plan.npy"
    assert lineage.run_url_of(artifact) == "s3://b/runs/abc"
    assert json.loads(pathlib.Path(artifact.path).read_text())["kind"] == lineage.POINTER_KIND


@pytest.mark.parametrize(
    "content", [None, "not json", '{"kind": "other", "storage_url": "x"}', '{"kind": "repeatlab.pointer"}']
)
def test_an_input_that_is_not_a_pointer_is_a_clear_error(tmp_path, content):
    artifact = FakeArtifact(tmp_path / "plan")
    if content is not None:
        pathlib.Path(artifact.path).write_text(content)
    with pytest.raises(lineage.PointerError, match="'plan' at .*pointer"):
        lineage.read_pointer(artifact)


def test_point_and_study_metrics():
    record = {
        "point": {
            "model": {"name": "L1-E16-H2", "n_params_nonembed": 3072},
            "fraction": 0.5,
            "epochs": 32.0,
            "seed": 0,
        },
        "test_loss": 2.5,
        "repeated_loss": 0.4,
        "copying": {"mean_copies_2_to_last": 1.0},
        "aggregates": {"prefix_matching_max": 0.3, "previous_token_max": 0.7},
    }
    metrics = lineage.point_metrics(record)
    assert metrics["best_induction_head"] == 0.3 and metrics["best_previous_token_head"] == 0.7
    assert metrics["test_loss"] == 2.5 and "icl_score" not in metrics
    analysis = {
        "summary": {"records": 2},
        "missing": [],
        "worst": {"test_loss": [{"damage": 0.12}, {"damage": None}]},
        "runs": [
            {
                "model": "L1-E16-H2",
                "fraction": 0.5,
                "epochs": 32.0,
                "seed": 0,
                "metrics": {"test_loss": {"damage": 0.12}},
            },
            {
                "model": "L1-E16-H2",
                "fraction": 0.0,
                "epochs": 0.0,
                "seed": 0,
                "metrics": {"test_loss": {"damage": 0.0}},
            },
        ],
    }
    study = lineage.study_metrics(analysis)
    assert study["max_test_loss_damage"] == 0.12 and study["evaluated_points"] == 2.0
    assert study["damage L1-E16-H2 f=0.5 E=32 seed=0"] == 0.12


def test_a_pack_model_pointer_lists_every_point_and_a_pack_of_one_is_a_point(tmp_path):
    urls = ["s3://b/runs/a", "s3://b/runs/b"]
    done = [{"step": 10, "tokens": 640, "skipped": True}, {"step": 10, "tokens": 640}]
    pack = FakeArtifact(tmp_path / "pack" / "model")
    lineage.publish_pack_model(pack, urls, done)
    assert lineage.run_urls_of(pack) == urls and lineage.storage_url_of(pack) == "s3://b/runs/a/checkpoints"
    assert pack.metadata["reused"] is False and pack.metadata["run_urls"] == json.dumps(urls, separators=(",", ":"))
    one, alone = FakeArtifact(tmp_path / "one" / "model"), FakeArtifact(tmp_path / "alone" / "model")
    lineage.publish_pack_model(one, urls[:1], done[:1])
    lineage.publish_model(alone, urls[0], done[0])
    assert one.metadata == alone.metadata and lineage.run_urls_of(one) == urls[:1]
    assert pathlib.Path(one.path).read_text() == pathlib.Path(alone.path).read_text()


def test_the_analysis_checks_every_point_of_a_pack_evaluation(tmp_path):
    from repeatlab.errors import AnalysisError

    evaluation = FakeArtifact(tmp_path / "evaluation")
    lineage.write_pointer(
        evaluation, "s3://b/runs/a/eval.json", run_urls=["s3://b/runs/a", "s3://b/runs/b"], point_ids=["a", "b"]
    )
    lineage._check_evaluations({"runs": [{"point_id": "a"}, {"point_id": "b"}]}, [evaluation])
    with pytest.raises(AnalysisError, match=r"\(point b\) was handed to the analysis"):
        lineage._check_evaluations({"runs": [{"point_id": "a"}]}, [evaluation])


class FakeMetrics:
    def __init__(self):
        self.logged = {}

    def log_metric(self, name, value):
        self.logged[name] = value


@pytest.mark.parametrize("pack", [1, 2])
def test_a_pack_evaluation_names_its_metrics_by_point(monkeypatch, tmp_path, pack):
    from repeatlab import steps

    urls = ["s3://b/runs/a", "s3://b/runs/b"][:pack]
    records = {
        url: {
            "point_id": url[-1],
            "test_loss": 2.0 + i,
            "record_sha256": "x",
            "point": {"model": {"name": "L1"}, "fraction": 0.5, "epochs": 2.0, "seed": i},
        }
        for i, url in enumerate(urls)
    }
    monkeypatch.setattr(steps, "evaluate", lambda url: records[url])
    model, evaluation, metrics = FakeArtifact(tmp_path / "m"), FakeArtifact(tmp_path / "e"), FakeMetrics()
    lineage.publish_pack_model(model, urls, [{"step": 1}] * pack)
    pointer = lineage.publish_evaluation(model, metrics, evaluation)
    if pack == 1:  # exactly one point's names, as before packs
        assert metrics.logged == {"test_loss": 2.0, "epochs": 2.0, "fraction": 0.5, "seed": 0.0}
        assert pointer["point_id"] == "a" and "point_ids" not in pointer
    else:
        assert metrics.logged["test_loss L1 f=0.5 E=2 seed=1"] == 3.0 and len(metrics.logged) == 8
        assert pointer["point_ids"] == ["a", "b"] and pointer["eval_urls"][1] == "s3://b/runs/b/eval.json"
