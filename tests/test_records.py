"""One typed record per stored file (repeatlab.records), one storage layout (repeatlab.layout), one import graph
without cycles (scripts/check_architecture.py)."""

import ast
import copy
import json
import sys
from pathlib import Path

import pytest

from repeatlab import layout, storage
from repeatlab.errors import RecordError
from repeatlab.integrity import check_record
from repeatlab.records import Done, EvalRecord, Point, StudyPoints

REPO = Path(__file__).resolve().parents[1]
ARCHIVES = REPO / "docs" / "results"
sys.path.insert(0, str(REPO / "scripts"))
import check_architecture  # noqa: E402


def _archived(name: str) -> list[Path]:
    return sorted(ARCHIVES.glob(f"*/runs/*/{name}"))


def test_every_archived_record_round_trips_exactly():
    evals, dones = _archived("eval.json"), _archived("done.json")
    assert evals and dones
    for path in evals:
        data = json.loads(path.read_text())
        assert EvalRecord.from_json(data, where=str(path)).to_json() == data
        check_record(str(path), EvalRecord.from_json(data).to_json())  # the seal still holds
    for path in dones:
        data = json.loads(path.read_text())
        assert Done.from_json(data).to_json() == data
    for path in sorted(ARCHIVES.glob("*/studies/*/points.json")):
        data = json.loads(path.read_text())
        assert StudyPoints.from_json(data).to_json() == data


def test_unknown_keys_are_an_error_naming_the_file_and_the_key(tmp_path):
    point = json.loads(_archived("point.json")[0].read_text())
    url = str(tmp_path / "point.json")
    storage.write_json(url, {**point, "dropout": 0.1})
    with pytest.raises(RecordError, match=r"point.json.dropout: unknown field; allowed fields here: budget, "):
        Point.read(url)
    nested = copy.deepcopy(point)
    nested["train"]["learning_rat"] = 1e-3
    with pytest.raises(RecordError, match=r"point.json.train.learning_rat: unknown field"):
        Point.from_json(nested)
    nested = copy.deepcopy(point)
    nested["model"]["n_kv_head"] = 2
    with pytest.raises(RecordError, match=r"point.json.model.n_kv_head: unknown field"):
        Point.from_json(nested)
    record = json.loads(_archived("eval.json")[0].read_text())
    with pytest.raises(RecordError, match=r"eval.json.perplexity: unknown field"):
        EvalRecord.from_json({**record, "perplexity": 3.0})
    with pytest.raises(RecordError, match=r"eval.json.point.model.n_kv_head: unknown field"):
        EvalRecord.from_json(
            {**record, "point": {**record["point"], "model": {**record["point"]["model"], "n_kv_head": 2}}}
        )
    with pytest.raises(RecordError, match=r"done.json: field 'step' is missing"):
        Done.from_json({k: v for k, v in json.loads(_archived("done.json")[0].read_text()).items() if k != "step"})


def test_the_analysis_counts_a_record_with_an_unknown_key_as_missing(tmp_path, caplog):
    sys.path.insert(0, str(Path(__file__).parent))
    import synthetic_study as syn

    from repeatlab.analyze import load_records

    root = str(tmp_path)
    records = syn.synthetic_records(sizes=(2e5, 1e6, 5e6), epochs=(2, 16))
    syn.write_study(root, "s", records)
    bad = records[0]
    storage.write_json(layout.Run(layout.run_url(root, bad["point_id"])).eval, {**bad, "extra": 1})
    loaded, missing = load_records(root, "s")
    assert [p["point_id"] for p in missing] == [bad["point_id"]] and len(loaded) == len(records) - 1
    assert "eval.json.extra: unknown field" in caplog.text


def test_point_ids_do_not_change_and_leave_out_the_execution_settings():
    """The archived point ids are what the content hash gives today (runs are reused across versions)."""
    from repeatlab.config import stable_hash

    for path in _archived("point.json"):
        point = Point.from_json(json.loads(path.read_text()))
        assert stable_hash(point.content()) == point.point_id
        assert "nproc_per_node" not in point.content()["train"]


def test_no_file_name_literal_outside_the_layout():
    """Every reader and writer asks repeatlab.layout for a path: no module but layout.py spells a file name of the
    storage layout (docstrings may name files)."""
    names = {
        layout.POINT,
        layout.EXECUTION,
        layout.DONE,
        layout.EVAL,
        layout.POINTS,
        layout.MANIFEST,
        layout.TOKENIZER,
        layout.LEASE,
        "plan.json",
        "plan.npy",
        "repeated.npy",
        "train.jsonl",
        "analysis.json",
        "config.yaml",
        "state.json",
        *layout.CHECKPOINT_FILES,
        layout.CHECKPOINTS,
    }
    offenders = set()
    for path in sorted((REPO / "repeatlab").glob("*.py")):
        if path.name == "layout.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        if any(isinstance(n, ast.Constant) and n.value in names and id(n) not in docstrings for n in ast.walk(tree)):
            offenders.add(path.name)
    assert offenders == set(), f"file names spelled outside repeatlab/layout.py in: {sorted(offenders)}"


def test_the_import_graph_has_no_cycle():
    assert check_architecture.cycles(check_architecture.import_graph()) == []
    # the check itself finds a cycle, also through an import inside a function
    assert check_architecture.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_layout_spells_the_documented_paths():
    run = layout.Run(layout.run_url("file:///r", "abc"))
    assert run.point == "file:///r/runs/abc/point.json" and run.checkpoint_state(12) == (
        "file:///r/runs/abc/checkpoints/step-0000012/state.json"
    )
    assert run.eval_at(5, final_step=10) == "file:///r/runs/abc/eval-step-0000005.json"
    assert run.eval_at(10, final_step=10) == run.eval
    assert layout.Study(layout.study_url("file:///r", "s")).analysis == "file:///r/studies/s/analysis.json"
    assert layout.Corpus(layout.corpus_url("file:///r", "c")).split("train") == "file:///r/corpora/c/train.bin"


def test_the_length_check_flags_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    (tmp_path / "short.py").write_text("def short():\n    return 1\n")
    (tmp_path / "long.py").write_text(f"def too_long():\n{body}\n")
    found = check_architecture.long_functions(tmp_path)
    assert [(name, message.split(": ", 1)[1]) for _, name, message in found] == [
        ("too_long", "too_long is 81 lines (more than 80)")
    ]
    assert check_architecture.long_functions(check_architecture.PACKAGE) == []
