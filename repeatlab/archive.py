"""Keep a study's results without its checkpoints: the small files that the analysis and the report are made of.

    repeatlab archive --config pipelines/configs/demo.yaml --out docs/results/demo

copies, from any storage root to any destination (both fsspec URLs or local paths):
    study/config.yaml, points.json, analysis.json, report/results.csv   (the study folder; the report's HTML,
                                                    Markdown and figures are regenerated with `repeatlab report`)
    runs/{point_id}/point.json, plan.json, done.json, eval.json, train.jsonl   (per point; no plans, no checkpoints)
    corpora/{corpus_id}/manifest.json      (the split composition the report shows; no token shards)

`repeatlab analyze --root DEST --study NAME` and `repeatlab report` work on the archive, so a study run on a machine
that is not kept can be re-analyzed later. Points without an eval.json are listed as missing, as in the analysis.
"""

from __future__ import annotations

import argparse
import re
import sys

from repeatlab import storage
from repeatlab.errors import StorageError
from repeatlab.grid import run_url, study_url

STUDY_FILES = ("config.yaml", "points.json", "analysis.json")
RECORD_SUFFIXES = (".csv", ".json")  # records only: figures and pages are made again from them
RUN_FILES = ("point.json", "plan.json", "done.json", "eval.json", "train.jsonl")


POINT_ID = re.compile(r"[0-9a-f]{8,64}")


def check_point_id(point: object, points_url: str) -> None:
    """A point id becomes a path component: only a content hash is allowed (`../x` would escape --out)."""
    pid = point.get("point_id") if isinstance(point, dict) else None
    if not isinstance(pid, str) or not POINT_ID.fullmatch(pid):
        raise StorageError(f"{points_url}: point_id {pid!r} is not allowed: a content hash of 8-64 characters "
                           "0-9a-f; the file is corrupt or was edited")


def archive_study(root: str, study: str, out: str) -> dict:
    """Copy a study's small files from `root` to `out` (laid out as a storage root); returns counts."""
    root, out = storage.normalize_root(root), storage.normalize_root(out)
    src_study, out_study = study_url(root, study), study_url(out, study)
    points_url = storage.join(src_study, "points.json")
    if not storage.exists(points_url):
        raise StorageError(f"{points_url}: not found: no study {study!r} under {root} (run the study first)")
    points = storage.read_json(points_url)
    copied = 0
    for name in STUDY_FILES:
        src = storage.join(src_study, name)
        if storage.exists(src):
            storage.write_bytes(storage.join(out_study, name), storage.read_bytes(src))
            copied += 1
    report = storage.join(src_study, "report")
    for name in storage.listdir(report):
        if not name.endswith(RECORD_SUFFIXES):
            continue
        storage.write_bytes(storage.join(out_study, "report", name),
                            storage.read_bytes(storage.join(report, name)))
        copied += 1
    evaluated = 0
    for point in points:
        check_point_id(point, points_url)
        run, out_run = run_url(root, point["point_id"]), run_url(out, point["point_id"])
        for name in RUN_FILES:
            src = storage.join(run, name)
            if storage.exists(src):
                storage.write_bytes(storage.join(out_run, name), storage.read_bytes(src))
                copied += 1
                evaluated += name == "eval.json"
    for cid in sorted({str(p.get("corpus_id")) for p in points if p.get("corpus_id")}):
        src = storage.join(root, "corpora", cid, "manifest.json")
        if storage.exists(src):
            storage.write_bytes(storage.join(out, "corpora", cid, "manifest.json"), storage.read_bytes(src))
            copied += 1
    return {"files": copied, "points": len(points), "evaluated": evaluated, "out": out}


def cli(argv: list[str]) -> int:
    from repeatlab.analyze import add_study_args, resolve_study

    parser = argparse.ArgumentParser(prog="repeatlab archive", description=__doc__.split("\n\n")[0])
    add_study_args(parser)
    parser.add_argument("--out", required=True, help="destination root (a folder or an fsspec URL)")
    args = parser.parse_args(argv)
    root, study = resolve_study(args)
    result = archive_study(root, study, args.out)
    print(f"archived {study}: {result['files']} files, {result['evaluated']} of {result['points']} points evaluated "
          f"-> {result['out']}", file=sys.stderr)
    return 0
