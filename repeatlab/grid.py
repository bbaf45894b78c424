"""The study grid: one point per (model, f, E, seed), plus baselines and optional controls.

A point is a plain JSON object (point.json, docs/architecture.md) that holds everything that determines its run.
Its id is a content hash of those settings, so a finished run is reused by any later study that asks for the same
point, and a study rerun trains only what is missing.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from repeatlab import layout, storage
from repeatlab.config import EXECUTION_ONLY_TRAIN_FIELDS, StudyConfig, stable_hash
from repeatlab.layout import run_url, study_url
from repeatlab.records import Execution, Point, StudyPoints

__all__ = ["EXECUTION_ONLY_TRAIN_FIELDS", "run_url", "study_url"]  # re-exported: the runner and components use them
log = logging.getLogger(__name__)


def resolve_models(cfg: StudyConfig, vocab_size: int) -> list[dict]:
    """Every model of the study as an explicit shape with its parameter counts (sorted by size)."""
    from repeatlab import model as model_lib

    models = []
    for i, spec in enumerate(cfg.models):
        gpt = model_lib.resolve_model(spec, cfg.family, vocab_size, cfg.budget.context, where=f"models[{i}]")
        models.append(
            {
                "name": gpt.name,
                "n_layer": gpt.n_layer,
                "n_embd": gpt.n_embd,
                "n_head": gpt.n_head,
                "mlp_ratio": gpt.mlp_ratio,
                "attention_only": gpt.attention_only,
                "vocab_size": vocab_size,
                "context": cfg.budget.context,
                "n_params_nonembed": gpt.n_params_nonembed,  # Kaplan's convention: what the scaling fits use
                "n_params_total": gpt.n_params_total,  # Chinchilla's: tied embedding once, plus positions
                "fractions": spec.fractions,
            }
        )
    return models


def make_point(
    cfg: StudyConfig,
    model: dict,
    corpus_id: str,
    corpus_url: str,
    fraction: float,
    epochs: float,
    seed: int,
    control: bool = False,
) -> dict[str, Any]:
    """point.json's content (records.Point): the settings that determine the run, without the execution-only ones."""
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in EXECUTION_ONLY_TRAIN_FIELDS}
    point = Point(
        point_id="",
        corpus_id=corpus_id,
        corpus_url=corpus_url,
        model={k: v for k, v in model.items() if k != "fractions"},
        fraction=float(fraction),
        # E is meaningless for the f = 0 baseline and for unique-only controls: 0 there.
        epochs=float(epochs) if fraction > 0 and not control else 0.0,
        seed=int(seed),
        control=bool(control),
        budget=dataclasses.asdict(cfg.budget),
        train=train,
        eval=dataclasses.asdict(cfg.eval),
    )
    point.point_id = stable_hash(point.content())
    return point.to_json()


def grid_points(cfg: StudyConfig, corpus_id: str, corpus_url: str, vocab_size: int) -> list[dict]:
    """All points of the study, deduplicated by id, in a stable order (model, f, E, seed, control)."""
    g = cfg.grid
    points: dict[str, dict] = {}

    def seeds_for(fraction: float, epochs: float | None) -> list[int]:
        seeds = list(g.seeds)
        extra = g.extra_seeds
        if (
            extra.seeds
            and (not extra.fractions or fraction in extra.fractions)
            and (epochs is None or not extra.epochs or epochs in extra.epochs)
        ):
            seeds += [s for s in extra.seeds if s not in seeds]
        return seeds

    for model in resolve_models(cfg, vocab_size):
        fractions = model["fractions"] if model["fractions"] is not None else g.fractions
        for fraction in sorted(fractions):
            if fraction == 0:
                for seed in seeds_for(0.0, None):
                    p = make_point(cfg, model, corpus_id, corpus_url, 0.0, 0.0, seed)
                    points.setdefault(p["point_id"], p)
                continue
            for epochs in sorted(g.epochs):
                for seed in seeds_for(fraction, epochs):
                    p = make_point(cfg, model, corpus_id, corpus_url, fraction, epochs, seed)
                    points.setdefault(p["point_id"], p)
            if g.controls:
                for seed in seeds_for(fraction, None):
                    p = make_point(cfg, model, corpus_id, corpus_url, fraction, 0.0, seed, control=True)
                    points.setdefault(p["point_id"], p)
    return list(points.values())


EPOCHS_TOLERANCE = 0.1  # warn when the plan's realized E is this far (relative) from the E asked for
MIN_REPEATED_SEQUENCES = 2  # a repeated subset shorter than this many sequences is mostly one or two documents


def check_points(points: list[dict]) -> list[str]:
    """Warnings for points whose plan is not quite what was asked; PlanError naming the first impossible point.

    The plan repeats whole sequences, so E is realized as exposures / round(exposures / E): at large E and small f*T
    the repeated subset is a sequence or two and the realized E can be far from the grid's value.
    """
    from repeatlab.errors import PlanError
    from repeatlab.mix import plan_counts

    warnings = []
    for point in points:
        if point["fraction"] == 0 or point["control"]:
            continue
        budget = point["budget"]
        try:
            counts = plan_counts(
                total_tokens=budget["total_tokens"],
                context=budget["context"],
                fraction=point["fraction"],
                epochs=point["epochs"],
            )
        except PlanError as exc:
            raise PlanError(f"grid point {describe(point).split('  ', 1)[1].strip()}: {exc}") from None
        where = f"f = {point['fraction']:g}, E = {point['epochs']:g}"
        realized = counts["realized_epochs"]
        if abs(realized - point["epochs"]) > EPOCHS_TOLERANCE * point["epochs"]:
            warnings.append(
                f"{where}: the repeated subset rounds to {counts['n_repeated']} sequence(s), so E is "
                f"{realized:.4g} (not {point['epochs']:g}); raise f or T, or lower E"
            )
        elif counts["n_repeated"] < MIN_REPEATED_SEQUENCES:
            warnings.append(
                f"{where}: the repeated subset is {counts['n_repeated']} sequence "
                f"({counts['n_repeated'] * budget['context']} tokens)"
            )
    return sorted(set(warnings))


def plan_grid(cfg: StudyConfig, manifest: dict, corpus_url: str) -> list[dict]:
    """Write every point's point.json (when absent: it is content-addressed) and execution.json (always: the
    study's execution settings, so an edited device or thread count takes effect), and the study's points.json and
    config.yaml; return the points.

    Every point's plan size is checked first: an impossible point stops the study before anything is written.
    """
    root = storage.normalize_root(cfg.storage.root)
    points = grid_points(cfg, manifest["corpus_id"], corpus_url, manifest["tokenizer"]["vocab_size"])
    for warning in check_points(points):
        log.warning("grid: %s", warning)
    for point in points:
        run = layout.Run(run_url(root, point["point_id"]))
        if not storage.exists(run.point):
            Point.from_json(point).write(run.point)
        Execution.of_study(point["point_id"], cfg).write(run.execution)
    study = layout.Study(study_url(root, cfg.name))
    storage.write_text(study.config, cfg.to_yaml())
    StudyPoints.from_json(points).write(study.points)
    storage.write_json(study.packs, study_packs(cfg, points))
    return points


def study_packs(cfg: StudyConfig, points: list[dict]) -> list[dict]:
    """The points grouped into training packs (repeatlab.packs), each with its run URLs."""
    from repeatlab.packs import effective_pack_size, plan_packs

    root = storage.normalize_root(cfg.storage.root)
    packs = plan_packs(points, effective_pack_size(cfg.train), cfg.cluster.memory)
    return [{**pack, "run_urls": [run_url(root, pid) for pid in pack["point_ids"]]} for pack in packs]


def describe(point: dict) -> str:
    kind = "control" if point["control"] else ("baseline" if point["fraction"] == 0 else f"E={point['epochs']:g}")
    m = point["model"]
    return (
        f"{point['point_id']}  {m['name']:<16} N={m['n_params_nonembed']:<9} f={point['fraction']:<5g} "
        f"{kind:<10} seed={point['seed']}"
    )
