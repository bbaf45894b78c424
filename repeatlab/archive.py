"""Keep a study's results without its checkpoints: the small files that the analysis and the report are made of.

    repeatlab archive --config pipelines/configs/demo.yaml --out docs/results/demo

copies, from any storage root to any destination (both fsspec URLs or local paths):
    study/config.yaml, points.json, packs.json, analysis.json, report/results.csv   (the study folder; the report's
                                                    HTML, Markdown and figures are regenerated with `repeatlab report`)
    runs/{point_id}/point.json, plan.json, done.json, eval.json, train.jsonl   (per point; no plans, no checkpoints)
    corpora/{corpus_id}/manifest.json      (the split composition the report shows; no token shards)

`repeatlab analyze --root DEST --study NAME` and `repeatlab report` work on the archive, so a study run on a machine
that is not kept can be re-analyzed later. Points without an eval.json are listed as missing, as in the analysis.
"""

from __future__ import annotations

import re

from repeatlab import layout, storage
from repeatlab.errors import StorageError

RECORD_SUFFIXES = (".csv", ".json")  # records only: figures and pages are made again from them


POINT_ID = re.compile(r"[0-9a-f]{8,64}")


def check_point_id(point: object, points_url: str) -> None:
    """A point id becomes a path component: only a content hash is allowed (`../x` would escape --out)."""
    pid = point.get("point_id") if isinstance(point, dict) else None
    if not isinstance(pid, str) or not POINT_ID.fullmatch(pid):
        raise StorageError(
            f"{points_url}: point_id {pid!r} is not allowed: a content hash of 8-64 characters "
            "0-9a-f; the file is corrupt or was edited"
        )


def archive_study(root: str, study: str, out: str) -> dict:
    """Copy a study's small files from `root` to `out` (laid out as a storage root); returns counts."""
    root, out = storage.normalize_root(root), storage.normalize_root(out)
    src_study, out_study = layout.study_url(root, study), layout.study_url(out, study)
    points_url = layout.Study(src_study).points
    if not storage.exists(points_url):
        raise StorageError(f"{points_url}: not found: no study {study!r} under {root} (run the study first)")
    points = storage.read_json(points_url)
    copied = 0
    for name in layout.STUDY_RECORDS:
        src = storage.join(src_study, name)
        if storage.exists(src):
            storage.write_bytes(storage.join(out_study, name), storage.read_bytes(src))
            copied += 1
    report = layout.Study(src_study).report
    for name in storage.listdir(report):
        if not name.endswith(RECORD_SUFFIXES):
            continue
        storage.write_bytes(
            storage.join(layout.Study(out_study).report, name), storage.read_bytes(storage.join(report, name))
        )
        copied += 1
    evaluated = 0
    for point in points:
        check_point_id(point, points_url)
        run = layout.Run(layout.run_url(root, point["point_id"]))
        out_run = layout.Run(layout.run_url(out, point["point_id"]))
        for name in layout.RUN_RECORDS:
            if storage.exists(run.file(name)):
                storage.write_bytes(out_run.file(name), storage.read_bytes(run.file(name)))
                copied += 1
                evaluated += run.file(name) == run.eval
    for cid in sorted({str(p.get("corpus_id")) for p in points if p.get("corpus_id")}):
        src = layout.Corpus(layout.corpus_url(root, cid)).manifest
        if storage.exists(src):
            storage.write_bytes(layout.Corpus(layout.corpus_url(out, cid)).manifest, storage.read_bytes(src))
            copied += 1
    return {"files": copied, "points": len(points), "evaluated": evaluated, "out": out}
