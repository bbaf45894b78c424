"""The records the steps hand each other through storage, one typed class per concept (docs/architecture.md).

    Point       point.json: everything that determines a run (content-addressed: its id hashes these settings)
    Execution   execution.json: how a run is executed (devices, threads, checkpoints); never part of the point id
    Done        done.json: training finished (final step, tokens, wall time, final curve losses)
    EvalRecord  eval.json: the evaluation of the final (or a given) checkpoint, sealed by record_sha256

Every reader and writer goes through `from_json` / `to_json` (and `read` / `write` for a URL). Unknown keys are an
error (RecordError naming the file and the key), never dropped: a record written by a newer repeatlab is refused
instead of being half-read. `to_json(from_json(d)) == d` for every record, so sealed records keep their hash.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from repeatlab import layout, storage
from repeatlab.config import EXECUTION_ONLY_TRAIN_FIELDS, BudgetConfig, EvalConfig, StudyConfig, TrainConfig
from repeatlab.errors import RecordError

R = TypeVar("R", bound="Record")

MODEL_FIELDS = (
    "name",
    "n_layer",
    "n_embd",
    "n_head",
    "mlp_ratio",
    "attention_only",
    "vocab_size",
    "context",
    "n_params_nonembed",
    "n_params_total",
)
# The parameter counts are derived from the shape (GPTConfig computes them): a point.json may leave them out.
MODEL_DERIVED = ("n_params_nonembed", "n_params_total")


def _names(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _check_keys(data: Any, allowed: set[str], required: set[str], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RecordError(f"{where}: {type(data).__name__} is not allowed: expected a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RecordError(f"{where}.{unknown[0]}: unknown field; allowed fields here: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(data))
    if missing:
        raise RecordError(f"{where}: field {missing[0]!r} is missing")
    return data


class Record:
    """from_json/to_json over a dataclass; fields listed in OPTIONAL are omitted from the JSON when None."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ()
    NAME: ClassVar[str] = "record"

    @classmethod
    def from_json(cls: type[R], data: Any, where: str | None = None) -> R:
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        required = {
            f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        data = _check_keys(data, {f.name for f in fields}, required, where or cls.NAME)
        record = cls(**data)
        record.check(where or cls.NAME)
        return record

    def check(self, where: str) -> None:
        """Checks of nested sections (overridden)."""

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.name in self.OPTIONAL:
                continue
            out[f.name] = value
        return out

    @classmethod
    def read(cls: type[R], url: str) -> R:
        return cls.from_json(storage.read_json(url), where=url)

    def write(self, url: str) -> None:
        storage.write_json(url, self.to_json())


@dataclass
class Point(Record):
    """point.json. `train` holds the settings that change the computation only (EXECUTION_ONLY_TRAIN_FIELDS are in
    Execution); records written before that split hold them too and are read as they are."""

    NAME: ClassVar[str] = layout.POINT

    point_id: str
    corpus_id: str
    corpus_url: str
    model: dict[str, Any]
    fraction: float
    epochs: float
    seed: int
    control: bool
    budget: dict[str, Any]
    train: dict[str, Any]
    eval: dict[str, Any]

    def check(self, where: str) -> None:
        _check_keys(self.model, set(MODEL_FIELDS), set(MODEL_FIELDS) - set(MODEL_DERIVED), f"{where}.model")
        _check_keys(self.budget, _names(BudgetConfig), set(), f"{where}.budget")
        _check_keys(self.train, _names(TrainConfig), set(), f"{where}.train")
        _check_keys(self.eval, _names(EvalConfig), set(), f"{where}.eval")

    @property
    def is_baseline(self) -> bool:
        return self.fraction == 0 and not self.control

    def budget_config(self) -> BudgetConfig:
        return BudgetConfig(**self.budget)

    def eval_config(self) -> EvalConfig:
        return EvalConfig(**self.eval)

    def content(self) -> dict[str, Any]:
        """What the point id hashes: the record without its id, the corpus URL, the model's display name and the
        execution-only settings (the same point trained on 1 CPU or 8 GPUs is the same point)."""
        train = {k: v for k, v in self.train.items() if k not in EXECUTION_ONLY_TRAIN_FIELDS}
        model = {k: v for k, v in self.model.items() if k != "name"}
        return {
            "corpus_id": self.corpus_id,
            "model": model,
            "fraction": self.fraction,
            "epochs": self.epochs,
            "seed": self.seed,
            "control": self.control,
            "budget": self.budget,
            "train": train,
            "version": 1,
        }


@dataclass
class Execution(Record):
    """execution.json: the execution-only train settings of the study that last planned the run. Rewritten on every
    plan (unlike point.json, which is content-addressed and written once), so an edited device, micro-batch or
    thread count takes effect on a rerun of an existing point."""

    NAME: ClassVar[str] = layout.EXECUTION

    point_id: str
    train: dict[str, Any]

    def check(self, where: str) -> None:
        allowed = set(EXECUTION_ONLY_TRAIN_FIELDS)
        _check_keys(self.train, allowed, allowed, f"{where}.train")

    @classmethod
    def of_study(cls, point_id: str, cfg: StudyConfig) -> Execution:
        return cls(point_id=point_id, train={k: getattr(cfg.train, k) for k in EXECUTION_ONLY_TRAIN_FIELDS})


def train_settings(point: Point, execution: Execution | None) -> TrainConfig:
    """The trainer's settings: the point's computation settings plus the run's execution settings (defaults where a
    run has no execution.json yet)."""
    values = dict(point.train)
    if execution is not None:
        values.update(execution.train)
    return TrainConfig(**values)


@dataclass
class Done(Record):
    """done.json: written by rank 0 after the final checkpoint; its presence means the point is trained."""

    NAME: ClassVar[str] = layout.DONE
    OPTIONAL: ClassVar[tuple[str, ...]] = ("pack_size",)  # absent in records written before packed training

    point_id: str
    config_hash: str
    step: int
    steps: int
    sequences: int
    tokens: int
    batch_sequences: int
    last_batch_sequences: int
    world_size: int
    parallelism: str
    wall_time_s: float
    checkpoint: str
    # The last learning-curve row's losses over train.eval_sequences sequences (not eval.json's test_loss, which is
    # measured over eval.eval_tokens tokens).
    test_loss: float | None
    repeated_loss: float | None
    repeated_exposures: dict[str, int]
    pack_size: int | None = None  # points trained together in one batched program (repeatlab.packs); 1: alone


@dataclass
class EvalRecord(Record):
    """eval.json. `step` (the evaluated checkpoint), `icl`, `warnings` and `record_sha256` are absent from records
    made before they existed."""

    NAME: ClassVar[str] = layout.EVAL
    OPTIONAL: ClassVar[tuple[str, ...]] = ("step", "icl", "warnings", "record_sha256")

    point_id: str
    point: dict[str, Any]
    test_loss: float
    repeated_loss: float | None
    ood_loss: float | None
    copying: dict[str, Any] | None
    icl_score: float | None
    icl_positions: list[int]
    heads: dict[str, Any]
    aggregates: dict[str, float | None]
    learning_curve: list[dict[str, Any]]
    step: int | None = None
    icl: dict[str, Any] | None = None
    warnings: list[str] | None = None
    record_sha256: str | None = None

    def check(self, where: str) -> None:
        Point.from_json(self.point, where=f"{where}.point")

    @property
    def point_record(self) -> Point:
        return Point.from_json(self.point)


@dataclass
class StudyPoints:
    """points.json: the study's points, in grid order."""

    points: list[Point] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Any, where: str = layout.POINTS) -> StudyPoints:
        if not isinstance(data, list):
            raise RecordError(f"{where}: {type(data).__name__} is not allowed: expected a JSON list of points")
        return cls([Point.from_json(p, where=f"{where}[{i}]") for i, p in enumerate(data)])

    def to_json(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in self.points]

    @classmethod
    def read(cls, url: str) -> StudyPoints:
        return cls.from_json(storage.read_json(url), where=url)

    def write(self, url: str) -> None:
        storage.write_json(url, self.to_json())
