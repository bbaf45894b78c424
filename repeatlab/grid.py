"""The study grid: one point per (model, f, E, seed), plus baselines and optional controls.

A point is a plain JSON object (point.json, docs/architecture.md) that holds everything that determines its run.
Its id is a content hash of those settings, so a finished run is reused by any later study that asks for the same
point, and a study rerun trains only what is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from repeatlab import storage
from repeatlab.config import StudyConfig, stable_hash

# Settings that change how a run is executed but not what it computes: excluded from the point id, so the same
# point trained on 1 CPU or 8 GPUs is the same point.
EXECUTION_ONLY_TRAIN_FIELDS = (
    "nproc_per_node", "nnodes", "device", "compile", "threads_per_rank", "checkpoint_every",
    "keep_checkpoints", "process_group_timeout_s", "micro_batch_sequences", "pack_size",
)


def run_url(root: str, point_id: str) -> str:
    return storage.join(storage.normalize_root(root), "runs", point_id)


def study_url(root: str, study: str) -> str:
    return storage.join(storage.normalize_root(root), "studies", study)


def resolve_models(cfg: StudyConfig, vocab_size: int) -> list[dict]:
    """Every model of the study as an explicit shape with its parameter counts (sorted by size)."""
    from repeatlab import model as model_lib

    models = []
    for i, spec in enumerate(cfg.models):
        gpt = model_lib.resolve_model(spec, cfg.family, vocab_size, cfg.budget.context, where=f"models[{i}]")
        models.append({
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
        })
    return models


def _point_id(point: dict) -> str:
    train = {k: v for k, v in point["train"].items() if k not in EXECUTION_ONLY_TRAIN_FIELDS}
    model = {k: v for k, v in point["model"].items() if k not in ("name",)}
    return stable_hash({
        "corpus_id": point["corpus_id"], "model": model, "fraction": point["fraction"],
        "epochs": point["epochs"], "seed": point["seed"], "control": point["control"],
        "budget": point["budget"], "train": train, "version": 1,
    })


def make_point(cfg: StudyConfig, model: dict, corpus_id: str, corpus_url: str, fraction: float,
               epochs: float, seed: int, control: bool = False) -> dict:
    model = {k: v for k, v in model.items() if k != "fractions"}
    point = {
        "corpus_id": corpus_id,
        "corpus_url": corpus_url,
        "model": model,
        "fraction": float(fraction),
        # E is meaningless for the f = 0 baseline and for unique-only controls: 0 there.
        "epochs": float(epochs) if fraction > 0 and not control else 0.0,
        "seed": int(seed),
        "control": bool(control),
        "budget": dataclasses.asdict(cfg.budget),
        "train": dataclasses.asdict(cfg.train),
        "eval": dataclasses.asdict(cfg.eval),
    }
    point["point_id"] = _point_id(point)
    return point


def grid_points(cfg: StudyConfig, corpus_id: str, corpus_url: str, vocab_size: int) -> list[dict]:
    """All points of the study, deduplicated by id, in a stable order (model, f, E, seed, control)."""
    g = cfg.grid
    points: dict[str, dict] = {}

    def seeds_for(fraction: float, epochs: float | None) -> list[int]:
        seeds = list(g.seeds)
        extra = g.extra_seeds
        if extra.seeds and (not extra.fractions or fraction in extra.fractions) and (
            epochs is None or not extra.epochs or epochs in extra.epochs
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
            counts = plan_counts(total_tokens=budget["total_tokens"], context=budget["context"],
                                 fraction=point["fraction"], epochs=point["epochs"])
        except PlanError as exc:
            raise PlanError(f"grid point {describe(point).split('  ', 1)[1].strip()}: {exc}") from None
        where = f"f = {point['fraction']:g}, E = {point['epochs']:g}"
        realized = counts["realized_epochs"]
        if abs(realized - point["epochs"]) > EPOCHS_TOLERANCE * point["epochs"]:
            warnings.append(f"{where}: the repeated subset rounds to {counts['n_repeated']} sequence(s), so E is "
                            f"{realized:.4g} (not {point['epochs']:g}); raise f or T, or lower E")
        elif counts["n_repeated"] < MIN_REPEATED_SEQUENCES:
            warnings.append(f"{where}: the repeated subset is {counts['n_repeated']} sequence "
                            f"({counts['n_repeated'] * budget['context']} tokens)")
    return sorted(set(warnings))


def plan_grid(cfg: StudyConfig, manifest: dict, corpus_url: str, log=None) -> list[dict]:
    """Write every point's point.json (when absent) and the study's points.json + config.yaml; return the points.

    Every point's plan size is checked first: an impossible point stops the study before anything is written.
    """
    root = storage.normalize_root(cfg.storage.root)
    points = grid_points(cfg, manifest["corpus_id"], corpus_url, manifest["tokenizer"]["vocab_size"])
    for warning in check_points(points):
        (log or (lambda m: print(m, file=sys.stderr)))(f"grid: warning: {warning}")
    for point in points:
        url = storage.join(run_url(root, point["point_id"]), "point.json")
        if not storage.exists(url):
            storage.write_json(url, point)
    study = study_url(root, cfg.name)
    storage.write_text(storage.join(study, "config.yaml"), cfg.to_yaml())
    storage.write_json(storage.join(study, "points.json"), points)
    storage.write_json(storage.join(study, "packs.json"), study_packs(cfg, points))
    return points


def study_packs(cfg: StudyConfig, points: list[dict]) -> list[dict]:
    """The points grouped into training packs (repeatlab.packs), each with its run URLs."""
    from repeatlab.packs import plan_packs

    root = storage.normalize_root(cfg.storage.root)
    packs = plan_packs(points, cfg.train.pack_size, cfg.cluster.memory)
    return [{**pack, "run_urls": [run_url(root, pid) for pid in pack["point_ids"]]} for pack in packs]


def describe(point: dict) -> str:
    kind = "control" if point["control"] else ("baseline" if point["fraction"] == 0 else f"E={point['epochs']:g}")
    m = point["model"]
    return (f"{point['point_id']}  {m['name']:<16} N={m['n_params_nonembed']:<9} f={point['fraction']:<5g} "
            f"{kind:<10} seed={point['seed']}")


def cli(argv: list[str]) -> int:
    from repeatlab import config as config_lib
    from repeatlab.corpus import corpus_url as make_corpus_url
    from repeatlab.corpus import prepare_corpus

    parser = argparse.ArgumentParser(prog="repeatlab grid", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="study YAML")
    parser.add_argument("--json", action="store_true", help="print the points as JSON")
    parser.add_argument("--write", action="store_true", help="also write point.json files and points.json")
    args = parser.parse_args(argv)
    cfg = config_lib.load(args.config)
    storage.configure(cfg.storage.options, anonymous=cfg.storage.anonymous)
    manifest = prepare_corpus(cfg.corpus, cfg.storage.root, log=lambda m: print(m, file=sys.stderr))
    curl = make_corpus_url(cfg.storage.root, manifest["corpus_id"])
    if args.write:
        points = plan_grid(cfg, manifest, curl)
    else:
        points = grid_points(cfg, manifest["corpus_id"], curl, manifest["tokenizer"]["vocab_size"])
        for warning in check_points(points):
            print(f"grid: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(points, indent=2, sort_keys=True))
    else:
        from repeatlab.packs import describe_packs

        for point in points:
            print(describe(point))
        packs = study_packs(cfg, points)
        for line in describe_packs(packs, points):
            print(line)
        print(f"{len(points)} points in {len(packs)} packs (train.pack_size {cfg.train.pack_size})")
    return 0
