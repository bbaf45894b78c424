"""The study config: pydantic v2 dataclasses, validated once, at load, and saved beside every artifact.

A study YAML maps one-to-one onto `StudyConfig`. Loading checks every field: unknown keys, wrong types and values out
of range raise ConfigError with the dotted field path, the value and what is allowed, e.g.
    grid.fractions[2]: 1.5 is not allowed: a repeated fraction must be in [0, 1)
Types and unknown keys are pydantic's (extra="forbid"; integers and booleans strict); ranges and cross-field rules are
the sections' after-validators, which raise ConfigError themselves so the message keeps its path and its advice.
Consumers trust the typed object: a StudyConfig that exists is valid (`dataclasses.replace` validates again).

Pydantic *dataclasses* rather than BaseModel: the sections stay `dataclasses.asdict`/`replace`-able, which the
trainer, the runner and the tests use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BeforeValidator, ConfigDict, Strict, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from repeatlab.errors import ConfigError

SECTION = ConfigDict(extra="forbid", allow_inf_nan=False)

# Settings that change how a run is executed but not what it computes. The one list: excluded from the point id
# (the same point trained on 1 CPU or 8 GPUs is the same point), kept out of point.json and written to the run's
# execution.json instead, which every plan rewrites (records.Execution).
EXECUTION_ONLY_TRAIN_FIELDS = (
    "nproc_per_node",
    "nnodes",
    "device",
    "compile",
    "threads_per_rank",
    "checkpoint_every",
    "keep_checkpoints",
    "process_group_timeout_s",
    "micro_batch_sequences",
)


def _integral(value: Any) -> Any:
    """YAML has no int literal for 1e6 and KFP's local runner passes floats: accept integral floats as integers."""
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    return value


def _number(value: Any) -> Any:
    """A number written as a string (YAML 1.1 reads `1e-3` as one) is read as that number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Int = Annotated[int, BeforeValidator(_integral), Strict()]
Float = Annotated[float, BeforeValidator(_number), Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


_T = TypeVar("_T")
_SECTION_PATHS: dict[type, str] = {}  # section class -> its path in a study (for errors of a section built alone)


def _config_errors(cls: type[_T]) -> type[_T]:
    """Stacked on a pydantic dataclass: building it raises ConfigError, one line with the dotted path, like loading
    a study does (`CorpusConfig(chunk_tokens=1.5)` and `dataclasses.replace(...)` included)."""
    pydantic_init = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            pydantic_init(self, *args, **kwargs)
        except ValidationError as exc:
            raise ConfigError(_one_line(exc, cls, _SECTION_PATHS.get(cls, ""))) from None

    setattr(cls, "__init__", __init__)  # noqa: B010 - mypy refuses assigning to a method
    return cls


def _check(condition: bool, path: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"{path}: {value!r} is not allowed: {allowed}")


def _positive_ints(section: Any, prefix: str, names: tuple[str, ...], minimum: int = 1) -> None:
    for name in names:
        value = getattr(section, name)
        _check(value >= minimum, f"{prefix}.{name}", value, f"an integer >= {minimum}")


# ----------------------------------------------------------------------------------------------------------------------
# Sections


@_config_errors
@dataclass(config=SECTION)
class CorpusConfig:
    """Where the documents come from and how they become tokens."""

    url: Str = "default"  # "default": the embedded public-domain corpus; else a file/glob/fsspec URL
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"
    text_field: Str = "text"  # JSONL key / Parquet column
    split_on_blank_lines: Bool = False  # plain text: one document per blank-line-separated paragraph
    tokenizer: Literal["byte", "bpe"] = "byte"
    vocab_size: Int = 256  # byte: must be 256; bpe: size of the trained vocabulary
    test_fraction: Float = 0.05  # of documents, chosen by document hash
    probe_fraction: Float = 0.02  # held-out documents for the copying probe
    split_salt: Str = "repeatlab"  # changes which documents land in which split
    ood_url: Str | None = None  # optional out-of-distribution text for an OOD loss
    # Cut every document into pieces of about this many byte-level tokens (UTF-8 bytes; at line ends where possible)
    # before the hash split, so that test and probe sample every part of a corpus of few, large documents.
    # None: automatic (DEFAULT_CHUNK_TOKENS for `url: default`, off otherwise); 0: off.
    chunk_tokens: Int | None = None
    source_field: Str | None = None  # JSONL key / Parquet column naming each document's source (split composition)

    @model_validator(mode="after")
    def _ranges(self) -> CorpusConfig:
        _check(bool(self.url.strip()), "corpus.url", self.url, "a non-empty URL, path, glob, or 'default'")
        _check(bool(self.text_field), "corpus.text_field", self.text_field, "a non-empty field name")
        if self.tokenizer == "byte":
            _check(self.vocab_size == 256, "corpus.vocab_size", self.vocab_size, "256 for the byte tokenizer")
        else:
            _check(
                512 <= self.vocab_size <= 1 << 20,
                "corpus.vocab_size",
                self.vocab_size,
                "between 512 and 1048576 for the BPE tokenizer",
            )
        _check(
            self.chunk_tokens is None or self.chunk_tokens == 0 or self.chunk_tokens >= 256,
            "corpus.chunk_tokens",
            self.chunk_tokens,
            "null (automatic), 0 (off) or an integer number of tokens >= 256",
        )
        _check(
            self.source_field is None or bool(self.source_field),
            "corpus.source_field",
            self.source_field,
            "null (the input file names the source) or a non-empty field name",
        )
        _check(0 < self.test_fraction < 0.5, "corpus.test_fraction", self.test_fraction, "a fraction in (0, 0.5)")
        _check(0 < self.probe_fraction < 0.5, "corpus.probe_fraction", self.probe_fraction, "a fraction in (0, 0.5)")
        _check(
            self.test_fraction + self.probe_fraction < 0.5,
            "corpus.probe_fraction",
            self.probe_fraction,
            "test_fraction + probe_fraction must stay below 0.5",
        )
        return self


@_config_errors
@dataclass(config=SECTION)
class BudgetConfig:
    """The same token budget T for every run: repeats replace unique tokens, they are not added."""

    total_tokens: Int = 1_000_000
    context: Int = 128
    batch_tokens: Int = 4096  # global batch per optimizer step, in tokens (a multiple of context)

    @model_validator(mode="after")
    def _ranges(self) -> BudgetConfig:
        _check(8 <= self.context <= 1 << 17, "budget.context", self.context, "an integer in [8, 131072]")
        _check(
            self.batch_tokens >= self.context and self.batch_tokens % self.context == 0,
            "budget.batch_tokens",
            self.batch_tokens,
            f"a positive multiple of budget.context ({self.context})",
        )
        _check(
            self.total_tokens >= self.batch_tokens,
            "budget.total_tokens",
            self.total_tokens,
            f"at least one batch (budget.batch_tokens = {self.batch_tokens})",
        )
        return self


@_config_errors
@dataclass(config=SECTION)
class FamilyConfig:
    """The shape family that target sizes are resolved in: width = depth * aspect_ratio, fixed head size."""

    aspect_ratio: Int = 32
    head_dim: Int = 16
    mlp_ratio: Int = 4

    @model_validator(mode="after")
    def _ranges(self) -> FamilyConfig:
        _positive_ints(self, "family", ("aspect_ratio", "head_dim", "mlp_ratio"))
        return self


@_config_errors
@dataclass(config=SECTION)
class ModelSpec:
    """One model of the study: a named/explicit shape, or a target non-embedding size resolved in the family.
    Checked by StudyConfig, which knows its index in `models` and the grid's fractions."""

    name: Str | None = None
    n_layer: Int | None = None
    n_embd: Int | None = None
    n_head: Int | None = None
    target_params: Float | None = None  # non-embedding parameters (Kaplan convention)
    attention_only: Bool = False
    fractions: list[Float] | None = None  # restrict this model to some of grid.fractions (e.g. attention-only runs)

    def check(self, p: str, grid_fractions: list[float]) -> None:
        explicit = [self.n_layer, self.n_embd, self.n_head]
        if self.target_params is not None:
            _check(
                all(x is None for x in explicit),
                f"{p}.target_params",
                self.target_params,
                "either target_params or an explicit shape (n_layer, n_embd, n_head), not both",
            )
            _check(self.target_params > 0, f"{p}.target_params", self.target_params, "a positive parameter count")
        elif any(x is not None for x in explicit) or self.name is None:
            if self.n_layer is None or self.n_embd is None or self.n_head is None:
                raise ConfigError(
                    f"{p}: {dict(n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head)!r} is "
                    "not allowed: an explicit shape needs n_layer, n_embd and n_head (or give "
                    "target_params)"
                )
            _check(self.n_layer >= 1, f"{p}.n_layer", self.n_layer, "an integer >= 1")
            _check(self.n_head >= 1, f"{p}.n_head", self.n_head, "an integer >= 1")
            _check(
                self.n_embd >= 1 and self.n_embd % self.n_head == 0,
                f"{p}.n_embd",
                self.n_embd,
                f"a positive multiple of n_head ({self.n_head})",
            )
        for j, f in enumerate(self.fractions or []):
            _check(f in grid_fractions, f"{p}.fractions[{j}]", f, f"one of grid.fractions {grid_fractions}")


@_config_errors
@dataclass(config=SECTION)
class ExtraSeeds:
    """More seeds at the key points (the paper's boundary fits were noisy)."""

    seeds: list[Int] = field(default_factory=list)
    fractions: list[Float] = field(default_factory=list)  # empty: all
    epochs: list[Float] = field(default_factory=list)  # empty: all


@_config_errors
@dataclass(config=SECTION)
class GridConfig:
    fractions: list[Float] = field(default_factory=lambda: [0.0, 0.5])  # f; 0 is the baseline
    epochs: list[Float] = field(default_factory=lambda: [2, 8, 32, 128, 512])  # E, repeated epochs
    seeds: list[Int] = field(default_factory=lambda: [0])
    extra_seeds: ExtraSeeds = field(default_factory=ExtraSeeds)
    controls: Bool = False  # add per (N, f) a run on the (1-f)*T unique tokens alone

    @model_validator(mode="after")
    def _ranges(self) -> GridConfig:
        _check(len(self.fractions) >= 1, "grid.fractions", self.fractions, "at least one repeated fraction")
        for i, f in enumerate(self.fractions):
            _check(0.0 <= f < 1.0, f"grid.fractions[{i}]", f, "a repeated fraction must be in [0, 1)")
        _check(len(set(self.fractions)) == len(self.fractions), "grid.fractions", self.fractions, "no duplicates")
        _check(
            len(self.epochs) >= 1 or self.fractions == [0.0],
            "grid.epochs",
            self.epochs,
            "at least one repeated-epoch count",
        )
        for i, epochs in enumerate(self.epochs):
            _check(epochs >= 1.0, f"grid.epochs[{i}]", epochs, "repeated epochs E must be >= 1")
        _check(len(set(self.epochs)) == len(self.epochs), "grid.epochs", self.epochs, "no duplicates")
        _check(len(self.seeds) >= 1, "grid.seeds", self.seeds, "at least one seed")
        for i, s in enumerate(self.seeds + self.extra_seeds.seeds):
            _check(0 <= s < 2**31, f"grid.seeds[{i}]", s, "an integer in [0, 2^31)")
        for i, f in enumerate(self.extra_seeds.fractions):
            _check(
                f in self.fractions, f"grid.extra_seeds.fractions[{i}]", f, f"one of grid.fractions {self.fractions}"
            )
        for i, epochs in enumerate(self.extra_seeds.epochs):
            _check(epochs in self.epochs, f"grid.extra_seeds.epochs[{i}]", epochs, f"one of grid.epochs {self.epochs}")
        return self


@_config_errors
@dataclass(config=SECTION)
class TrainConfig:
    learning_rate: Float = 2e-3
    min_lr_ratio: Float = 0.1  # cosine decay to this fraction of the peak over the whole budget
    warmup_fraction: Float = 0.02
    weight_decay: Float = 0.1
    beta1: Float = 0.9
    beta2: Float = 0.95
    grad_clip: Float = 1.0
    micro_batch_sequences: Int = 0  # sequences per rank per micro-step; 0: the whole per-rank batch at once
    eval_points: Int = 12  # log-spaced evaluations of test / repeated-subset loss (the epoch-wise curves)
    eval_sequences: Int = 32  # fixed evaluation sequences per split for the curves
    checkpoint_every: Int = 0  # steps; 0: about 10 checkpoints per run
    keep_checkpoints: Int = 2
    nproc_per_node: Int = 1
    nnodes: Int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: Bool = False
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    process_group_timeout_s: Int = 600
    threads_per_rank: Int = 0  # torch.set_num_threads; 0: leave torch's default

    @model_validator(mode="after")
    def _ranges(self) -> TrainConfig:
        _check(0 < self.learning_rate < 1, "train.learning_rate", self.learning_rate, "a number in (0, 1)")
        _check(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]")
        _check(0 <= self.warmup_fraction < 1, "train.warmup_fraction", self.warmup_fraction, "a number in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "a number >= 0")
        _check(0 <= self.beta1 < 1, "train.beta1", self.beta1, "a number in [0, 1)")
        _check(0 <= self.beta2 < 1, "train.beta2", self.beta2, "a number in [0, 1)")
        _check(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "a number >= 0 (0 disables clipping)")
        _positive_ints(self, "train", ("eval_points", "eval_sequences"))
        _positive_ints(self, "train", ("checkpoint_every",), minimum=0)
        _positive_ints(self, "train", ("keep_checkpoints",))
        _check(
            self.nproc_per_node >= 1,
            "train.nproc_per_node",
            self.nproc_per_node,
            "an explicit integer >= 1 ('auto' counts the node's CPUs, not the pod's)",
        )
        _positive_ints(self, "train", ("nnodes",))
        _check(
            self.process_group_timeout_s >= 10,
            "train.process_group_timeout_s",
            self.process_group_timeout_s,
            "an integer >= 10 seconds",
        )
        _positive_ints(self, "train", ("threads_per_rank",), minimum=0)
        return self


@_config_errors
@dataclass(config=SECTION)
class EvalConfig:
    eval_tokens: Int = 65_536  # test and repeated-subset loss, per split
    copy_repeats: Int = 11
    prefix_samples: Int = 10
    prefix_random_tokens: Int = 25
    prefix_repeats: Int = 4
    top_k_heads: Int = 3
    icl_early: Int = 50  # positions of the in-context-learning score, for a 512-token context;
    icl_late: Int = 500  # scaled to the study's context
    icl_windows: Int = 2048  # test windows at random offsets for the ICL estimate and its standard error

    @model_validator(mode="after")
    def _ranges(self) -> EvalConfig:
        _check(self.copy_repeats >= 2, "eval.copy_repeats", self.copy_repeats, "an integer >= 2")
        _check(self.prefix_samples >= 1, "eval.prefix_samples", self.prefix_samples, "an integer >= 1")
        _check(
            self.prefix_random_tokens >= 2, "eval.prefix_random_tokens", self.prefix_random_tokens, "an integer >= 2"
        )
        _check(self.prefix_repeats >= 2, "eval.prefix_repeats", self.prefix_repeats, "an integer >= 2")
        _check(self.top_k_heads >= 1, "eval.top_k_heads", self.top_k_heads, "an integer >= 1")
        _check(
            self.icl_windows >= 2, "eval.icl_windows", self.icl_windows, "an integer >= 2 (a standard error needs two)"
        )
        _check(
            0 <= self.icl_early < self.icl_late < 512,
            "eval.icl_late",
            self.icl_late,
            "0 <= icl_early < icl_late < 512 (positions of a 512-token context, scaled to budget.context)",
        )
        return self


@_config_errors
@dataclass(config=SECTION)
class StorageConfig:
    root: Str = "file://./.repeatlab"
    options: dict[Str, dict[Str, Any]] = field(default_factory=dict)  # per protocol fsspec options (no secrets)
    anonymous: Bool = False  # gs:// / s3:// without credentials: read public buckets anonymously (opt-in)

    @model_validator(mode="after")
    def _ranges(self) -> StorageConfig:
        _check(bool(self.root.strip()), "storage.root", self.root, "a non-empty path or fsspec URL")
        for where in _secret_paths(self.options, "storage.options"):
            raise ConfigError(f"{where}: <hidden> is not allowed: {SECRET_HINT}")
        return self


@_config_errors
@dataclass(config=SECTION)
class ClusterConfig:
    """Settings that only matter on a Kubernetes cluster (ignored by the local runner)."""

    image: Str = "ghcr.io/repeatlab/repeatlab:0.1.0"
    train_image: Str = "ghcr.io/repeatlab/repeatlab-cuda:0.1.0"
    parallelism: Int = 4  # grid points trained at once
    # The Kubernetes resource name of the accelerator (KFP's driver makes it the container limit's name, verbatim):
    # nvidia.com/gpu, amd.com/gpu, ... The GPU model is not a resource: select it with node_selector, e.g.
    # {cloud.google.com/gke-accelerator: nvidia-l4} on GKE or {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3} (GFD).
    accelerator_type: Str | None = "nvidia.com/gpu"  # null (older study configs): the default
    accelerator_limit: Int = 0  # accelerators per training pod (0: none)
    cpu: Str = "2"
    memory: Str = "8Gi"
    shm_size: Str = "1Gi"
    node_selector: dict[Str, Str] = field(default_factory=dict)
    tolerations: list[dict[Str, Str]] = field(default_factory=list)
    storage_secret: Str | None = None  # Kubernetes secret whose keys become env vars of every step
    storage_secret_keys: dict[Str, Str] = field(  # secret key -> env var (MinIO's secret in a Kubeflow install)
        default_factory=lambda: {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
    )
    env: dict[Str, Str] = field(default_factory=dict)  # plain env vars of every step (no secrets), e.g. S3 endpoint
    timeout_s: Int = 86_400
    retries: Int = 1
    multinode: Bool = False  # train through a Kubeflow Trainer TrainJob instead of in the step's pod
    trainer_runtime: Str = "torch-distributed"

    @model_validator(mode="after")
    def _ranges(self) -> ClusterConfig:
        _check(self.parallelism >= 1, "cluster.parallelism", self.parallelism, "an integer >= 1")
        _check(self.accelerator_limit >= 0, "cluster.accelerator_limit", self.accelerator_limit, "an integer >= 0")
        if self.accelerator_type is None:
            self.accelerator_type = "nvidia.com/gpu"
        _check_accelerator(self.accelerator_type)
        if self.accelerator_limit:
            _check(
                image_repository(self.train_image) != image_repository(self.image),
                "cluster.train_image",
                self.train_image,
                f"the CPU image (cluster.image) cannot use the {self.accelerator_limit} GPU(s) "
                "of cluster.accelerator_limit: use the CUDA image, e.g. ghcr.io/repeatlab/repeatlab-cuda:0.1.0, "
                "or set cluster.accelerator_limit: 0",
            )
        _check(self.retries >= 0, "cluster.retries", self.retries, "an integer >= 0")
        _check(self.timeout_s >= 60, "cluster.timeout_s", self.timeout_s, "an integer >= 60 seconds")
        for name, value in self.env.items():
            _check(
                bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)),
                f"cluster.env.{name}",
                name,
                "an environment variable name",
            )
            if secret_looking_name(name) or secret_looking_value(value):
                raise ConfigError(f"cluster.env.{name}: <hidden> is not allowed: {SECRET_HINT}")
        return self


def _check_accelerator(name: str) -> None:
    problem = container_resource_name_problem(name)
    _check(
        problem is None,
        "cluster.accelerator_type",
        name,
        f"{problem}: write the accelerator's Kubernetes resource name, e.g. nvidia.com/gpu, and select the GPU "
        "model with cluster.node_selector (e.g. cloud.google.com/gke-accelerator: nvidia-l4)",
    )
    _check(
        name not in STANDARD_CONTAINER_RESOURCES and not name.startswith("hugepages-"),
        "cluster.accelerator_type",
        name,
        "an accelerator resource such as nvidia.com/gpu, "
        "not cpu/memory (set those with cluster.cpu and cluster.memory)",
    )


def _default_models() -> list[ModelSpec]:
    return [ModelSpec(n_layer=2, n_embd=64, n_head=4)]


@_config_errors
@dataclass(config=SECTION)
class StudyConfig:
    name: Str = "study"
    description: Str = ""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    family: FamilyConfig = field(default_factory=FamilyConfig)
    models: list[ModelSpec] = field(default_factory=_default_models)
    grid: GridConfig = field(default_factory=GridConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _cross_field(self) -> StudyConfig:
        _check(
            bool(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", self.name)),
            "name",
            self.name,
            "lowercase letters, digits and '-', 1-63 characters, starting and ending alphanumeric (a Kubernetes name)",
        )
        _check(len(self.models) >= 1, "models", self.models, "at least one model")
        for i, spec in enumerate(self.models):
            spec.check(f"models[{i}]", self.grid.fractions)
        _check_batch(self.budget, self.train)
        _check_eval_fits(self.eval, self.budget)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """One line of JSON (valid YAML too): how the pipeline passes the study, since KFP's compiled-file header
        breaks on multi-line parameter defaults."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def to_yaml(self) -> str:
        import yaml

        return str(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _check_batch(budget: BudgetConfig, train: TrainConfig) -> None:
    sequences_per_step = budget.batch_tokens // budget.context
    world = train.nproc_per_node * train.nnodes
    _check(
        sequences_per_step % world == 0,
        "budget.batch_tokens",
        budget.batch_tokens,
        f"the global batch of {sequences_per_step} sequences must divide evenly over "
        f"{world} ranks (train.nproc_per_node x train.nnodes)",
    )
    per_rank = sequences_per_step // world
    micro = train.micro_batch_sequences
    _check(
        micro >= 0 and (micro == 0 or per_rank % micro == 0),
        "train.micro_batch_sequences",
        micro,
        f"0 or a divisor of the per-rank batch ({per_rank} sequences)",
    )


def _check_eval_fits(ev: EvalConfig, budget: BudgetConfig) -> None:
    _check(
        ev.eval_tokens >= budget.context, "eval.eval_tokens", ev.eval_tokens, f"at least one context ({budget.context})"
    )
    _check(
        1 + ev.prefix_random_tokens * ev.prefix_repeats <= budget.context,
        "eval.prefix_random_tokens",
        ev.prefix_random_tokens,
        f"1 + prefix_random_tokens x prefix_repeats must fit budget.context ({budget.context})",
    )


# ----------------------------------------------------------------------------------------------------------------------
# pydantic's errors as one line: the dotted path, the value, what is allowed


def _strip(tp: Any) -> Any:
    """The annotation without Annotated[...] metadata."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _type_name(tp: Any) -> str:
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is type(None):
        return "null"
    names = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}
    return names.get(tp, str(tp))


def _step_into(tp: Any, key: Any) -> tuple[Any, bool]:
    """(the annotation one level down at `key`, whether `key` is a real path element or a pydantic tag)."""
    tp = _strip(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = _strip(args[0])
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(key, str):
        hints = typing.get_type_hints(tp, include_extras=True)
        if key in hints:
            return hints[key], True
        return Any, True  # an unknown field
    if origin is list and isinstance(key, int):
        return typing.get_args(tp)[0], True
    if origin is dict and isinstance(key, str):
        return typing.get_args(tp)[1], True
    return tp, False


def _walk(loc: tuple[Any, ...], root: Any, prefix: str = "") -> tuple[str, Any, Any]:
    """(dotted path, annotation at the end, annotation of its parent) of a pydantic error location in `root`."""
    path, tp, parent = prefix, root, root
    for key in loc:
        below, real = _step_into(tp, key)
        if not real:
            continue
        parent, tp = tp, below
        path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else str(key))
    return path, tp, parent


def _one_line(exc: ValidationError, root: Any = None, prefix: str = "") -> str:
    error = exc.errors(include_url=False)[0]
    path, tp, parent = _walk(tuple(error["loc"]), root or StudyConfig, prefix)
    value = error.get("input")
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        allowed = sorted(f.name for f in dataclasses.fields(_strip(parent)))
        return f"{path}: unknown field; allowed fields here: {', '.join(allowed)}"
    if value is None and dataclasses.is_dataclass(_strip(tp)):  # `grid:` with nothing under it
        return f"{path}: null is not allowed: expected a mapping (remove the line to use the defaults)"
    return f"{path or 'config'}: {value!r} is not allowed: expected {_type_name(tp)}"


_STUDY = TypeAdapter(StudyConfig)
_SECTION_PATHS.update(
    {
        CorpusConfig: "corpus",
        BudgetConfig: "budget",
        FamilyConfig: "family",
        GridConfig: "grid",
        ExtraSeeds: "grid.extra_seeds",
        TrainConfig: "train",
        EvalConfig: "eval",
        StorageConfig: "storage",
        ClusterConfig: "cluster",
        ModelSpec: "models[]",
    }
)


# ----------------------------------------------------------------------------------------------------------------------
# Kubernetes names (the rules of k8s.io/apimachinery/pkg/util/validation and pkg/apis/core/validation)

_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
STANDARD_CONTAINER_RESOURCES = {"cpu", "memory", "ephemeral-storage"}


def _is_qualified_name(value: str) -> bool:
    """IsQualifiedName: [prefix/]name, prefix a DNS-1123 subdomain (<= 253), name <= 63 alphanumerics, -, _, ."""

    prefix, _, name = value.rpartition("/")
    if "/" in value and not (prefix and len(prefix) <= 253 and re.fullmatch(_DNS1123_SUBDOMAIN, prefix)):
        return False
    return bool(name) and len(name) <= 63 and re.fullmatch(_QUALIFIED_NAME, name) is not None


def container_resource_name_problem(name: str) -> str | None:
    """Why Kubernetes refuses `name` in a container's resources (ValidateContainerResourceName), or None.

    A container resource is cpu, memory, ephemeral-storage, hugepages-<size>, or an extended resource: a
    domain-prefixed qualified name outside kubernetes.io (IsExtendedResourceName), such as nvidia.com/gpu."""
    if name in STANDARD_CONTAINER_RESOURCES or name.startswith("hugepages-"):
        return None
    if "/" not in name:
        return "not a standard container resource (cpu, memory, ephemeral-storage) and not domain-prefixed"
    if not _is_qualified_name(name):
        return "not a qualified name ([DNS subdomain/]name, alphanumerics, '-', '_', '.')"
    domain = name.split("/", 1)[0]
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        return "the kubernetes.io domain is reserved for native resources"
    if not _is_qualified_name("requests." + name):
        return "'requests.' + name is not a qualified name (the quota key Kubernetes derives from it)"
    return None


def image_repository(image: str) -> str:
    """registry/name of an image reference, without its :tag and @digest."""
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


# ----------------------------------------------------------------------------------------------------------------------
# No secrets in a study config: it is saved with every study, compiled into the pipeline YAML and printed in logs.
#
# A NAME is secret-looking when one of its words (split at _ - . and camelCase) is key(s), secret(s), token(s),
# password(s), passwd, apikey(s), credential(s), private or privatekey, or when it contains secret, password, passwd,
# apikey or credential anywhere (DBPASSWORD). Words, not substrings, for key/token/private: TOKENIZERS_PARALLELISM
# and KEYCLOAK_URL are not secrets. Allowed: gcsfs's `token` when it names an auth mode (anon, google_default, cloud,
# browser), and names of KMS keys (words kms: a key's id, not the key).
# A VALUE is secret-looking when it holds a PEM block, a URL with a password (scheme://user:pass@host), an AWS access
# key id (AKIA/ASIA...), a JWT, or an assignment such as `password=...` / `token: ...`.

SECRET_WORDS = frozenset(
    {
        "key",
        "keys",
        "secret",
        "secrets",
        "token",
        "tokens",
        "password",
        "passwords",
        "passwd",
        "apikey",
        "apikeys",
        "credential",
        "credentials",
        "private",
        "privatekey",
    }
)
SECRET_SUBSTRINGS = ("secret", "password", "passwd", "apikey", "credential")
GCS_TOKEN_MODES = ("anon", "google_default", "cloud", "browser")
_SECRET_VALUE_PATTERNS = (
    r"-----BEGIN [A-Z ]*-----",
    r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"\beyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}",
    r"(?:key|secret|token|password|passwd|apikey|credential)s?\s*[=:]\s*\S",
)
SECRET_HINT = (
    "no credentials in a study config (it is saved with the study, compiled into the pipeline and "
    "logged): set them as environment variables (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, ...) "
    "or, on a cluster, in a Kubernetes Secret named by cluster.storage_secret"
)


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def secret_looking_name(name: str) -> bool:
    words = _words(name)
    if "kms" in words:
        return False
    lowered = str(name).lower()
    return bool(SECRET_WORDS.intersection(words)) or any(s in lowered for s in SECRET_SUBSTRINGS)


def secret_looking_value(value: Any) -> bool:
    return isinstance(value, str) and any(re.search(p, value, flags=re.IGNORECASE) for p in _SECRET_VALUE_PATTERNS)


def _secret_paths(value: Any, path: str) -> Iterator[str]:
    """Paths (dotted) of secret-looking keys or values at any depth of a mapping / list."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}"
            if secret_looking_name(key) and not (str(key) == "token" and item in GCS_TOKEN_MODES):
                yield where
            else:
                yield from _secret_paths(item, where)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _secret_paths(item, f"{path}[{i}]")
    elif secret_looking_value(value):
        yield path


class _UniqueKeyLoader:
    """yaml.SafeLoader that rejects a key given twice in one mapping (YAML would silently keep the last value)."""

    @staticmethod
    def make():
        import yaml

        class Loader(yaml.SafeLoader):
            def construct_mapping(self, node, deep=False):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=deep)
                    if key in seen:
                        raise ConfigError(
                            f"line {key_node.start_mark.line + 1}: key {key!r} is given twice in one "
                            f"mapping (first at line {seen[key] + 1}); keep one"
                        )
                    seen[key] = key_node.start_mark.line
                return super().construct_mapping(node, deep=deep)

        return Loader


def safe_load_unique(text: str) -> Any:
    """yaml.safe_load, but a duplicate key is a ConfigError."""
    import yaml

    return yaml.load(text, Loader=_UniqueKeyLoader.make())  # noqa: S506 - a SafeLoader subclass


def from_dict(data: Any) -> StudyConfig:
    """The validated StudyConfig of plain data (a parsed YAML/JSON study); ConfigError, one line, otherwise."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config: {data!r} is not allowed: expected a mapping")
    try:
        return _STUDY.validate_python(data or {})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def validate(cfg: StudyConfig) -> StudyConfig:
    """Validate again a StudyConfig changed in place (a new object built from it). `dataclasses.replace` already
    validates; this is for code that assigns fields."""
    return from_dict(cfg.to_dict())


def load(url: str) -> StudyConfig:
    """Load and validate a study YAML (any storage URL)."""
    import yaml

    from repeatlab import storage

    text = storage.read_text(url)
    try:
        data = safe_load_unique(text)
    except ConfigError as exc:
        raise ConfigError(f"{url}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{url}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        raise ConfigError(f"{url}: the study config is empty")
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{url}: {exc}") from exc


def loads(text: str) -> StudyConfig:
    return from_dict(safe_load_unique(text))


def with_storage_root(study_config: str, storage_root: str) -> str:
    """The study (YAML/JSON text) with storage.root replaced by `storage_root` (empty: unchanged), validated, as one
    line of JSON: what the pipeline's resolve step hands to every other step."""
    cfg = loads(study_config)
    if storage_root.strip():
        try:
            cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root=storage_root.strip()))
        except ConfigError as exc:
            raise ConfigError(f"storage_root: {exc}") from exc
    return cfg.to_json()


def is_local_root(root: str) -> bool:
    """A storage root on this machine's disk (a path or file://): every pod of a cluster run would see its own."""
    return "://" not in root or root.startswith("file://")


def check_for_cluster(cfg: StudyConfig) -> StudyConfig:
    """What a cluster cannot grant or run, stopped before anything is compiled or sent (ConfigError, one line)."""
    _check(
        not is_local_root(cfg.storage.root),
        "storage.root",
        cfg.storage.root,
        "a cluster run needs shared object storage that every pod reaches (gs://BUCKET/..., s3://BUCKET/...); "
        "a local path or file:// root is a different folder in each pod",
    )
    return cfg


def stable_hash(obj: Any, length: int = 16) -> str:
    """Content hash of JSON-able data (sorted keys): the basis of corpus ids and point ids."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
