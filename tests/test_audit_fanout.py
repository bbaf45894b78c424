"""The fan-out audit (plan -> map per file group -> reduce from storage) equals the single-process audit."""

import json
import pathlib
import warnings

import pytest

from repeatlab import storage
from repeatlab.audit import run_audit, write_deduplicated
from repeatlab.audit_fanout import map_group, plan_groups, reduce_groups
from repeatlab.audit_scan import ScanSettings, scan
from repeatlab.audit_synthetic import make_planted_corpus
from repeatlab.errors import ConfigError, CorpusError

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def split_corpus(tmp_path_factory):
    """The planted corpus (exact copies, near-duplicates, repeated spans) split into 5 files: copies land in
    different files, so every kind of repeat crosses group boundaries."""
    folder = tmp_path_factory.mktemp("split")
    whole = folder / "planted.jsonl"
    make_planted_corpus(
        str(whole),
        unique_docs=200,
        exact_copies=(5, 20),
        near_similarities=(0.9,),
        near_pairs_each=8,
        span_repeats=(3, 12),
    )
    lines = whole.read_text().splitlines()
    whole.unlink()
    parts = folder / "parts"
    parts.mkdir()
    for i in range(5):
        (parts / f"part-{i}.jsonl").write_text("\n".join(lines[i::5]) + "\n")
    return str(parts)


def _fanout(url, groups, work, settings):
    plan = plan_groups(url, groups)
    for i, files in enumerate(plan):
        map_group(url, files, i, work, settings)
    return reduce_groups(url, len(plan), work, settings)


def _same_scan(a, b):
    assert a.histogram == b.histogram
    assert a.total_tokens == b.total_tokens and a.documents == b.documents
    assert a.exact == b.exact and a.near == b.near
    for name in ("doc_content", "doc_cluster", "doc_mult", "doc_tokens"):
        assert a.__dict__[name].tolist() == b.__dict__[name].tolist()
    for name in ("doc", "start", "end", "count", "key"):
        assert a.segments[name].tolist() == b.segments[name].tolist()
    assert a.examples == b.examples
    assert {k: v for k, v in a.spans.items() if k not in ("shards", "method")} == {
        k: v for k, v in b.spans.items() if k not in ("shards", "method")
    }


@pytest.mark.parametrize("shard_tokens", [1 << 21, 20_000])
def test_map_reduce_equals_the_single_process_scan(split_corpus, tmp_path, shard_tokens):
    settings = ScanSettings(shard_tokens=shard_tokens)
    single = scan(split_corpus, settings)
    merged = _fanout(split_corpus, 3, "file://" + str(tmp_path / "work"), settings)
    assert merged.shards >= 3  # group boundaries cut shards: the cross-group fingerprint pass is exercised
    _same_scan(merged, single)
    assert merged.histogram[20] > 0 and merged.exact["duplicate_documents"] > 0 and merged.near["clusters"] > 0


def test_plan_groups_are_contiguous_and_bounded(split_corpus):
    plan = plan_groups(split_corpus, 3)
    assert [len(g) for g in plan] == [2, 1, 2]
    assert [f for g in plan for f in g] == sorted(f for g in plan for f in g)
    assert len(plan_groups(split_corpus, 50)) == 5
    with pytest.raises(ConfigError, match="--groups"):
        plan_groups(split_corpus, 0)


def test_a_rerun_map_step_leaves_nothing_of_its_earlier_run(split_corpus, tmp_path):
    """A retried map step on other files (or a changed corpus) must not leave stale partitions for the reduce."""
    work = "file://" + str(tmp_path / "work")
    settings = ScanSettings(shard_tokens=20_000)
    plan = plan_groups(split_corpus, 2)
    map_group(split_corpus, plan[0] + plan[1], 0, work, settings)  # more shards and fingerprints than group 0 has
    stale = [storage.join(work, "group-00000", name) for name in ("shard-00099.npy", "h99")]
    for url in stale:  # what an earlier run with more shards or partitions would leave
        storage.write_bytes(url, b"stale")
    map_group(split_corpus, plan[0], 0, work, settings)
    assert not any(storage.exists(url) for url in stale)
    map_group(split_corpus, plan[1], 1, work, settings)
    _same_scan(reduce_groups(split_corpus, 2, work, settings), scan(split_corpus, settings))


def test_reduce_names_a_missing_or_mismatched_group(split_corpus, tmp_path):
    work = "file://" + str(tmp_path / "work")
    plan = plan_groups(split_corpus, 2)
    map_group(split_corpus, plan[0], 0, work, ScanSettings())
    with pytest.raises(CorpusError, match="group-00001.*did not finish"):
        reduce_groups(split_corpus, 2, work, ScanSettings())
    map_group(split_corpus, plan[1], 1, work, ScanSettings())
    with pytest.raises(CorpusError, match="group-00000: written with other settings"):
        reduce_groups(split_corpus, 2, work, ScanSettings(min_span=30))


def test_checked_in_audit_pipeline_matches_a_fresh_compile(tmp_path):
    from repeatlab.pipelines.audit_corpus import GOLDEN, compile_audit_pipeline

    fresh = compile_audit_pipeline(str(tmp_path / "audit.yaml"))
    assert pathlib.Path(GOLDEN).read_text() == pathlib.Path(fresh).read_text(), (
        "pipelines/audit_corpus.yaml is stale: run `make compile` and review the diff"
    )


def test_audit_pipeline_fans_out_and_reduces_after_the_loop():
    import yaml

    spec = next(yaml.safe_load_all((REPO / "pipelines/audit_corpus.yaml").read_text()))  # then the platform spec
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"audit-plan", "for-loop-1", "audit-reduce"}
    assert root["audit-reduce"]["dependentTasks"] == ["for-loop-1"]  # by .after: no Collected fan-in
    assert "Collected" not in json.dumps(spec) and "pipelinechannel--audit-map" not in json.dumps(root["audit-reduce"])
    assert set(spec["components"]["comp-for-loop-1"]["dag"]["tasks"]) == {"audit-map"}


def test_fanout_pipeline_through_the_local_runner_equals_the_single_process_audit(split_corpus, tmp_path):
    import kfp.local

    from repeatlab.pipelines.audit_corpus import build_audit_pipeline

    warnings.filterwarnings("ignore", module=r"kfp\.local\..*")
    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"), raise_on_error=True
    )
    out = "file://" + str(tmp_path / "audit")
    options = json.dumps({"shard_tokens": 20_000})
    clean = str(tmp_path / "clean.jsonl")
    build_audit_pipeline(parallelism=2)(
        corpus_url=split_corpus,
        out_url=out,
        groups=3,
        params="1e9",
        options_json=options,
        write_deduplicated=clean,
        remove="all",
    )
    fanned = storage.read_json(storage.join(out, "audit.json"))
    single, scanned = run_audit(split_corpus, ScanSettings(shard_tokens=20_000), n_params=1e9)
    single_clean = str(tmp_path / "single-clean.jsonl")
    single["deduplicated"] = write_deduplicated(single, scanned, single_clean, "all")
    for counts in (fanned["deduplicated"], single["deduplicated"]):
        counts.pop("url")
    assert fanned["deduplicated"] == single["deduplicated"] and fanned["deduplicated"]["documents_dropped"] > 0
    assert pathlib.Path(clean).read_bytes() == pathlib.Path(single_clean).read_bytes()
    assert len(storage.read_json(storage.join(out, "work", "plan.json"))["groups"]) == 3
    for key in ("corpus", "settings", "exact", "near", "histogram", "profile", "examples", "placement", "audit_id"):
        assert fanned[key] == single[key], key
    strip = ("shards", "method")
    assert {k: v for k, v in fanned["spans"].items() if k not in strip} == {
        k: v for k, v in single["spans"].items() if k not in strip
    }
    assert "<img" in storage.read_text(storage.join(out, "index.html"))


@pytest.mark.storage
def test_map_reduce_through_object_storage(split_corpus, s3_env):
    """Input files and the partial results on s3 (SeaweedFS): the map steps' work goes through storage only."""
    src = storage.join(s3_env, "parts")
    for path in sorted(pathlib.Path(split_corpus).iterdir()):
        storage.write_bytes(storage.join(src, path.name), path.read_bytes())
    settings = ScanSettings(shard_tokens=20_000)
    merged = _fanout(src, 2, storage.join(s3_env, "work"), settings)
    assert storage.exists(storage.join(s3_env, "work", "group-00001", "group.json"))
    _same_scan(merged, scan(split_corpus, settings))
