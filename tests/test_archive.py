"""repeatlab archive: a study's small files copied to another root, where analyze and report still work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import synthetic_study as syn

from repeatlab import analyze, storage
from repeatlab.archive import archive_study
from repeatlab.errors import StorageError


def test_archive_keeps_what_the_analysis_needs_and_no_checkpoints(tmp_path):
    root, out = f"file://{tmp_path / 'root'}", f"file://{tmp_path / 'kept'}"
    records = syn.synthetic_records(sizes=(1e5, 1e6, 3e6), fractions=(0.5,))
    syn.write_study(root, "s", records, drop=2)
    first = records[0]["point_id"]
    storage.write_bytes(storage.join(root, "runs", first, "checkpoints", "step-0000001", "model.pt"), b"x" * 1000)
    storage.write_bytes(storage.join(root, "runs", first, "plan.npy"), b"x" * 1000)
    corpus = storage.join(root, "corpora", "synthetic")
    comp = {"test": {"A": {"documents": 60, "tokens": 600, "share": 1.0}}}
    storage.write_json(
        storage.join(corpus, "manifest.json"),
        {"corpus_id": "synthetic", "composition": comp, "splits": {"test": {"documents": 60, "tokens": 600}}},
    )
    storage.write_bytes(storage.join(corpus, "train.bin"), b"x" * 1000)
    packs = [{"point_ids": [r["point_id"] for r in records[:2]], "split": False}]
    storage.write_json(storage.join(root, "studies", "s", "packs.json"), packs)
    original = analyze.run_analysis(root, "s")
    assert original["corpus"][0]["composition"] == comp

    result = archive_study(root, "s", out)
    assert result["points"] == len(records) and result["evaluated"] == len(records) - 2
    kept = tmp_path / "kept"
    assert (kept / "studies" / "s" / "analysis.json").exists()
    assert json.loads((kept / "studies" / "s" / "packs.json").read_text()) == packs  # which points trained together
    assert not list(kept.rglob("checkpoints")) and not list(kept.rglob("*.npy"))
    assert (kept / "corpora" / "synthetic" / "manifest.json").exists() and not list(kept.rglob("*.bin"))
    again = analyze.run_analysis(out, "s")
    assert again["corpus"] == original["corpus"]  # the split composition travels with the archive
    assert json.dumps(again["worst"], sort_keys=True) == json.dumps(original["worst"], sort_keys=True)
    assert again["summary"]["missing_points"] == 2


def test_archive_of_a_missing_study_is_one_line(tmp_path):
    with pytest.raises(StorageError, match="no study 'nope'"):
        archive_study(f"file://{tmp_path}", "nope", f"file://{tmp_path / 'out'}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "repeatlab",
            "archive",
            "--root",
            str(tmp_path),
            "--study",
            "nope",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()
