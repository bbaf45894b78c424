"""Typed KFP artifacts that point to the study's real objects in storage, so the Kubeflow UI's lineage connects.

Every step of the pipeline hands the next one a typed artifact (Dataset, Model, Artifact, Metrics, HTML, Markdown).
The large objects (token shards, plans, checkpoints, eval records) stay where content addressing put them, at the
study's storage root, and each artifact is a **pointer**: a small JSON file `{"kind": "repeatlab.pointer",
"storage_url": ..., ...}` with the same URL and a few headline fields in the artifact's metadata (the UI shows both).
The consuming step reads the URL back from the pointer, so the edge in the DAG is an artifact edge, recorded in
ML Metadata as an output event of the producer and an input event of the consumer.

Why pointers, and not the storage URL as the artifact's own URI:
- A component cannot move its output artifact's URI: the backend assigns it under the pipeline root (driver), and
  the launcher uploads the local output folder to that key and records that URI in ML Metadata
  (kubeflow/pipelines backend/src/v2/component/launcher_v2.go, uploadOutputArtifacts: a URI the executor writes back
  is merged in, then uploaded with `bucketConfig.KeyFromURI`, which fails for a URI outside the pipeline root's
  bucket; kubeflow/pipelines #6818, #12386).
- `dsl.importer(artifact_uri=<upstream output>)` makes the artifact's URI the real object, but the artifact is then
  produced by the importer node, not by the step that wrote the object: the lineage graph would break at every
  step (train -> string -> importer -> Model), and every edge would need an extra importer task per grid point.
- A pointer is produced by the step that wrote the object and consumed by the step that reads it; its bytes are a
  few hundred, whatever the object's size, and a reused (content-addressed) object simply gets a new pointer to the
  same URL (`reused: true`), so reuse keeps working and the UI shows which run created the object.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from repeatlab.errors import RepeatlabError

log = logging.getLogger(__name__)

POINTER_KIND = "repeatlab.pointer"


class PointerError(RepeatlabError):
    """An input artifact is not a repeatlab pointer (or names no storage URL)."""


def _scalar(value: Any) -> Any:
    """Metadata values the UI shows: numbers, strings and booleans; anything else as compact JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def write_pointer(artifact: Any, storage_url: str, **summary: Any) -> dict:
    """Make `artifact` (an Output[...] of a KFP component) a pointer to `storage_url`; returns the pointer.

    summary: a few headline fields (ids, counts, realized f and E, reused or not), stored in the pointer file and in
    the artifact's metadata."""
    pointer = {"kind": POINTER_KIND, "storage_url": storage_url, **summary}
    artifact.metadata["storage_url"] = storage_url
    for key, value in summary.items():
        if value is not None:
            artifact.metadata[key] = _scalar(value)
    os.makedirs(os.path.dirname(artifact.path) or ".", exist_ok=True)
    with open(artifact.path, "w", encoding="utf-8") as fh:
        json.dump(pointer, fh, indent=2, sort_keys=True)
    return pointer


def read_pointer(artifact: Any) -> dict:
    """The pointer an Input[...] artifact holds: {"kind", "storage_url", ...}; a clear error when it is not one."""
    try:
        with open(artifact.path, encoding="utf-8") as fh:
            pointer = json.load(fh)
    except (OSError, ValueError) as exc:
        name = getattr(artifact, "name", "?")
        raise PointerError(
            f"input artifact {name!r} at {artifact.path}: not a readable repeatlab pointer "
            f"({type(exc).__name__}); connect it to a repeatlab step's output"
        ) from None
    if not isinstance(pointer, dict) or pointer.get("kind") != POINTER_KIND or not pointer.get("storage_url"):
        raise PointerError(
            f"input artifact {getattr(artifact, 'name', '?')!r} at {artifact.path}: not a repeatlab "
            f"pointer (expected kind {POINTER_KIND!r} and a storage_url)"
        )
    return pointer


def storage_url_of(artifact: Any) -> str:
    return str(read_pointer(artifact)["storage_url"])


def run_url_of(artifact: Any) -> str:
    """The run folder a plan / model / evaluation pointer belongs to."""
    pointer = read_pointer(artifact)
    return str(pointer.get("run_url") or pointer["storage_url"].rstrip("/").rsplit("/", 1)[0])


def point_metrics(record: dict) -> dict[str, float]:
    """The per-point numbers the UI's compare view shows: what the point is, its losses, its best heads."""
    point = record.get("point") or {}
    aggregates = record.get("aggregates") or {}
    headline = {
        "n_params_nonembed": (point.get("model") or {}).get("n_params_nonembed"),
        "fraction": point.get("fraction"),
        "epochs": point.get("epochs"),
        "seed": point.get("seed"),
        "test_loss": record.get("test_loss"),
        "repeated_loss": record.get("repeated_loss"),
        "copying_loss": (record.get("copying") or {}).get("mean_copies_2_to_last"),
        "icl_score": record.get("icl_score"),
        "best_induction_head": aggregates.get("prefix_matching_max"),
        "best_previous_token_head": aggregates.get("previous_token_max"),
    }
    return {name: float(value) for name, value in headline.items() if value is not None}


def point_label(point: dict) -> str:
    """`L2-E64-H4 f=0.5 E=32 seed=0`: a grid point in words, for logs, metrics and the terminal."""
    model = point.get("model") or "?"
    if isinstance(model, dict):  # point.json; an analysis row names its model directly
        model = model.get("name", "?")
    label = f"{model} f={point.get('fraction', 0):g}"
    if point.get("fraction") or point.get("epochs"):  # a baseline has no repeats: no E
        label += f" E={point.get('epochs', 0):g}"
    label += f" seed={point.get('seed', 0)}"
    return label + (" control" if point.get("control") else "")


def study_metrics(analysis: dict) -> dict[str, float]:
    """Study-level metrics of the analysis step: records, and per point its test-loss damage (metric names are
    the point's label, so the UI's compare view lines them up across runs of the study)."""
    summary = analysis.get("summary") or {}
    out = {
        "evaluated_points": float(summary.get("records") or len(analysis.get("runs") or [])),
        "missing_points": float(len(analysis.get("missing") or [])),
    }
    damages = [w.get("damage") for w in (analysis.get("worst") or {}).get("test_loss") or []]
    damages = [float(d) for d in damages if d is not None]
    if damages:
        out["max_test_loss_damage"] = max(damages)
    for run in analysis.get("runs") or []:
        damage = ((run.get("metrics") or {}).get("test_loss") or {}).get("damage")
        if damage is not None:
            out[f"damage {point_label(run)}"] = float(damage)
    return out


def publish_model(artifact: Any, run_url: str, done: dict) -> dict:
    """The Model pointer of one trained point: its checkpoints folder, final step and tokens, reused or not."""
    from repeatlab import layout

    return write_pointer(
        artifact,
        layout.Run(run_url).checkpoints,
        run_url=run_url,
        step=done.get("step"),
        tokens=done.get("tokens"),
        reused=bool(done.get("skipped")),
        trainjob=done.get("trainjob"),
    )


def run_urls_of(artifact: Any) -> list[str]:
    """The run folders a model pointer covers: every point of a trained pack, or the one point."""
    urls = read_pointer(artifact).get("run_urls")
    return [str(url) for url in urls] if urls else [run_url_of(artifact)]


def publish_packs(study_config: str, plans: list | None, packs: Any) -> list[str]:
    """The plan_packs step: the study's packs (JSON lists of run URLs, the train fan-out's items) and a pointer to
    its packs.json. plans: the collected plan pointers; every packed point must be among them."""
    from repeatlab import layout, steps
    from repeatlab.errors import PlanError

    items = steps.plan_packs(study_config)
    packed = [url for item in items for url in json.loads(item)]
    if plans is not None:
        planned = {run_url_of(plan) for plan in plans}
        for url in packed:
            if url not in planned:
                raise PlanError(
                    f"pack point {url} has no plan among the {len(planned)} handed to plan_packs; is "
                    "storage.root the same for every step?"
                )
    cfg = steps.load_study(study_config)
    write_pointer(
        packs, layout.Study(layout.study_url(cfg.storage.root, cfg.name)).packs, packs=len(items), points=len(packed)
    )
    return items


def publish_pack_model(artifact: Any, run_urls: list[str], done: list[dict]) -> dict:
    """The Model pointer of one trained pack: a pack of one is exactly publish_model's; a larger pack points to its
    first point's checkpoints and lists every point's run URL."""
    from repeatlab import layout

    if len(run_urls) == 1:
        return publish_model(artifact, run_urls[0], done[0])
    return write_pointer(
        artifact,
        layout.Run(run_urls[0]).checkpoints,
        run_url=run_urls[0],
        run_urls=run_urls,
        step=done[0].get("step"),
        tokens=[d.get("tokens") for d in done],
        reused=all(bool(d.get("skipped")) for d in done),
    )


def publish_evaluation(model: Any, metrics: Any, evaluation: Any) -> dict:
    """The evaluate step: every point of the model pointer (one point or a pack), its headline metrics (prefixed by
    nothing for one point, suffixed by the point's label for a pack) and a pointer to each eval.json."""
    from repeatlab import layout, steps

    urls = run_urls_of(model)
    records = [steps.evaluate(url) for url in urls]
    labels = [point_label(record.get("point") or {}) for record in records]
    for record, label in zip(records, labels):
        for name, value in point_metrics(record).items():
            metrics.log_metric(name if len(urls) == 1 else f"{name} {label}", value)
    if len(urls) == 1:
        record = records[0]
        return write_pointer(
            evaluation,
            layout.Run(urls[0]).eval,
            run_url=urls[0],
            point_id=record.get("point_id"),
            point=labels[0],
            test_loss=record.get("test_loss"),
            record_sha256=record.get("record_sha256"),
        )
    return write_pointer(
        evaluation,
        layout.Run(urls[0]).eval,
        run_url=urls[0],
        run_urls=urls,
        eval_urls=[layout.Run(url).eval for url in urls],
        point_ids=[record.get("point_id") for record in records],
        points=labels,
        test_loss=[record.get("test_loss") for record in records],
    )


def _check_evaluations(analysis: dict, evaluations: list) -> None:
    """Every evaluation the loop handed over is among the records the analysis read from storage."""
    from repeatlab.errors import AnalysisError

    analysed = {str(run.get("point_id")) for run in analysis.get("runs") or []}
    for artifact in evaluations:
        pointer = read_pointer(artifact)
        for point_id in pointer.get("point_ids") or [pointer.get("point_id")]:  # a pack's evaluation lists several
            if str(point_id) not in analysed:
                raise AnalysisError(
                    f"evaluation {pointer['storage_url']} (point {point_id}) was handed to the "
                    "analysis but its record was not read from storage; is storage.root the same "
                    "for every step?"
                )


def publish_analysis(study_config: str, points: Any, evaluations: list | None, analysis: Any, metrics: Any) -> dict:
    """The analyze step: fit the study from storage, check the collected evaluations, publish pointer and metrics."""
    from repeatlab import layout, steps

    storage_url_of(points)  # the study's planned points: the analysis reads them from storage
    result = steps.analyze(study_config)
    if evaluations is not None:
        _check_evaluations(result, evaluations)
    cfg = steps.load_study(study_config)
    write_pointer(
        analysis,
        layout.Study(layout.study_url(cfg.storage.root, cfg.name)).analysis,
        evaluated_points=len(result.get("runs") or []),
        missing_points=len(result.get("missing") or []),
    )
    for name, value in study_metrics(result).items():
        metrics.log_metric(name, value)
    return result


def publish_report(urls: dict, html: Any, markdown: Any, results: Any) -> None:
    """The report step's outputs: HTML and Markdown as themselves (the UI renders an artifact's own bytes; the
    Markdown's figures are data URIs), results.csv as a pointer. Their metadata names the copies in storage."""
    from repeatlab import storage

    for artifact, key in ((html, "index.html"), (markdown, "report.md")):
        artifact.metadata["storage_url"] = urls[key]
        os.makedirs(os.path.dirname(artifact.path) or ".", exist_ok=True)
        with open(artifact.path, "wb") as fh:
            fh.write(storage.read_bytes(urls[key]))
    write_pointer(results, urls["results.csv"])
