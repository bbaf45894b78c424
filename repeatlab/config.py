"""The study config: typed dataclasses, validated on load, saved beside every artifact.

A study YAML maps one-to-one onto `StudyConfig`. Loading checks every field: unknown keys, wrong types and values out
of range raise ConfigError with the dotted field path, the value and what is allowed, e.g.
    grid.fractions[2]: 1.5 is not allowed: a repeated fraction must be in [0, 1)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from repeatlab.errors import ConfigError

# ----------------------------------------------------------------------------------------------------------------------
# Sections


@dataclass
class CorpusConfig:
    """Where the documents come from and how they become tokens."""

    url: str = "default"  # "default": the embedded public-domain corpus; else a file/glob/fsspec URL
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"
    text_field: str = "text"  # JSONL key / Parquet column
    split_on_blank_lines: bool = False  # plain text: one document per blank-line-separated paragraph
    tokenizer: Literal["byte", "bpe"] = "byte"
    vocab_size: int = 256  # byte: must be 256; bpe: size of the trained vocabulary
    test_fraction: float = 0.05  # of documents, chosen by document hash
    probe_fraction: float = 0.02  # held-out documents for the copying probe
    split_salt: str = "repeatlab"  # changes which documents land in which split
    ood_url: str | None = None  # optional out-of-distribution text for an OOD loss
    # Cut every document into pieces of about this many byte-level tokens (UTF-8 bytes; at line ends where possible)
    # before the hash split, so that test and probe sample every part of a corpus of few, large documents.
    # None: automatic (DEFAULT_CHUNK_TOKENS for `url: default`, off otherwise); 0: off.
    chunk_tokens: int | None = None
    source_field: str | None = None  # JSONL key / Parquet column naming each document's source (split composition)


@dataclass
class BudgetConfig:
    """The same token budget T for every run: repeats replace unique tokens, they are not added."""

    total_tokens: int = 1_000_000
    context: int = 128
    batch_tokens: int = 4096  # global batch per optimizer step, in tokens (a multiple of context)


@dataclass
class FamilyConfig:
    """The shape family that target sizes are resolved in: width = depth * aspect_ratio, fixed head size."""

    aspect_ratio: int = 32
    head_dim: int = 16
    mlp_ratio: int = 4


@dataclass
class ModelSpec:
    """One model of the study: a named/explicit shape, or a target non-embedding size resolved in the family."""

    name: str | None = None
    n_layer: int | None = None
    n_embd: int | None = None
    n_head: int | None = None
    target_params: float | None = None  # non-embedding parameters (Kaplan convention)
    attention_only: bool = False
    fractions: list[float] | None = None  # restrict this model to some of grid.fractions (e.g. attention-only runs)


@dataclass
class ExtraSeeds:
    """More seeds at the key points (the paper's boundary fits were noisy)."""

    seeds: list[int] = field(default_factory=list)
    fractions: list[float] = field(default_factory=list)  # empty: all
    epochs: list[float] = field(default_factory=list)  # empty: all


@dataclass
class GridConfig:
    fractions: list[float] = field(default_factory=lambda: [0.0, 0.5])  # f; 0 is the baseline
    epochs: list[float] = field(default_factory=lambda: [2, 8, 32, 128, 512])  # E, repeated epochs
    seeds: list[int] = field(default_factory=lambda: [0])
    extra_seeds: ExtraSeeds = field(default_factory=ExtraSeeds)
    controls: bool = False  # add per (N, f) a run on the (1-f)*T unique tokens alone


@dataclass
class TrainConfig:
    learning_rate: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decay to this fraction of the peak over the whole budget
    warmup_fraction: float = 0.02
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    micro_batch_sequences: int = 0  # sequences per rank per micro-step; 0: the whole per-rank batch at once
    eval_points: int = 12  # log-spaced evaluations of test / repeated-subset loss (the epoch-wise curves)
    eval_sequences: int = 32  # fixed evaluation sequences per split for the curves
    checkpoint_every: int = 0  # steps; 0: about 10 checkpoints per run
    keep_checkpoints: int = 2
    nproc_per_node: int = 1
    nnodes: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    process_group_timeout_s: int = 600
    threads_per_rank: int = 0  # torch.set_num_threads; 0: leave torch's default
    pack_size: int = 8  # points of one shape and schedule trained as one batched program (repeatlab.packs)


@dataclass
class EvalConfig:
    eval_tokens: int = 65_536  # test and repeated-subset loss, per split
    copy_repeats: int = 11
    prefix_samples: int = 10
    prefix_random_tokens: int = 25
    prefix_repeats: int = 4
    top_k_heads: int = 3
    icl_early: int = 50  # positions of the in-context-learning score, for a 512-token context;
    icl_late: int = 500  # scaled to the study's context
    icl_windows: int = 2048  # test windows at random offsets for the ICL estimate and its standard error


@dataclass
class StorageConfig:
    root: str = "file://./.repeatlab"
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per protocol fsspec options (no secrets)
    anonymous: bool = False  # gs:// / s3:// without credentials: read public buckets anonymously (opt-in)


@dataclass
class ClusterConfig:
    """Settings that only matter on a Kubernetes cluster (ignored by the local runner)."""

    image: str = "ghcr.io/repeatlab/repeatlab:0.1.0"
    train_image: str = "ghcr.io/repeatlab/repeatlab-cuda:0.1.0"
    parallelism: int = 4  # grid points trained at once
    # The Kubernetes resource name of the accelerator (KFP's driver makes it the container limit's name, verbatim):
    # nvidia.com/gpu, amd.com/gpu, ... The GPU model is not a resource: select it with node_selector, e.g.
    # {cloud.google.com/gke-accelerator: nvidia-l4} on GKE or {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3} (GFD).
    accelerator_type: str | None = "nvidia.com/gpu"  # null (older study configs): the default
    accelerator_limit: int = 0  # accelerators per training pod (0: none)
    cpu: str = "2"
    memory: str = "8Gi"
    shm_size: str = "1Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)
    storage_secret: str | None = None  # Kubernetes secret whose keys become env vars of every step
    storage_secret_keys: dict[str, str] = field(  # secret key -> env var (MinIO's secret in a Kubeflow install)
        default_factory=lambda: {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"})
    env: dict[str, str] = field(default_factory=dict)  # plain env vars of every step (no secrets), e.g. S3 endpoint
    timeout_s: int = 86_400
    retries: int = 1
    multinode: bool = False  # train through a Kubeflow Trainer TrainJob instead of in the step's pod
    trainer_runtime: str = "torch-distributed"


@dataclass
class StudyConfig:
    name: str = "study"
    description: str = ""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    family: FamilyConfig = field(default_factory=FamilyConfig)
    models: list[ModelSpec] = field(default_factory=lambda: [ModelSpec(n_layer=2, n_embd=64, n_head=4)])
    grid: GridConfig = field(default_factory=GridConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """One line of JSON (valid YAML too): how the pipeline passes the study, since KFP's compiled-file header
        breaks on multi-line parameter defaults."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------------------------------------------------
# Loading: a small strict converter from plain data to the dataclasses above


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: {value!r} is not allowed: expected {_type_name(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: {value!r} is not allowed: expected {_type_name(tp)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: {value!r} is not allowed: expected {_type_name(tp)}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {value!r} is not allowed: expected a mapping")
        _, val_tp = typing.get_args(tp)
        return {str(k): _convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if value is None:  # `grid:` with nothing under it would silently mean the defaults
            raise ConfigError(f"{path}: null is not allowed: expected a mapping (remove the line to use the defaults)")
        return _build(tp, value, path)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {value!r} is not allowed: expected true or false")
        return value
    if tp is int:
        # YAML has no separate int literal for 1e6; accept integral floats (and KFP's local runner's floats).
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and (not math.isfinite(value) or value != int(value))
        ):
            raise ConfigError(f"{path}: {value!r} is not allowed: expected an integer")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{path}: {value!r} is not allowed: expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {value!r} is not allowed: expected a string")
        return value
    raise ConfigError(f"{path}: unsupported field type {tp}")


def _build(cls: type, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: {data!r} is not allowed: expected a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - names)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"{where}: unknown field; allowed fields here: {', '.join(sorted(names))}")
    kwargs = {k: _convert(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Kubernetes names (the rules of k8s.io/apimachinery/pkg/util/validation and pkg/apis/core/validation)

_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
STANDARD_CONTAINER_RESOURCES = {"cpu", "memory", "ephemeral-storage"}


def _is_qualified_name(value: str) -> bool:
    """IsQualifiedName: [prefix/]name, prefix a DNS-1123 subdomain (<= 253), name <= 63 alphanumerics, -, _, ."""
    import re

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
# Semantic validation


def _check(condition: bool, path: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"{path}: {value!r} is not allowed: {allowed}")


def validate(cfg: StudyConfig) -> StudyConfig:
    """Check value ranges and cross-field rules; returns cfg for chaining."""
    import re

    _check(bool(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", cfg.name)), "name", cfg.name,
           "lowercase letters, digits and '-', 1-63 characters, starting and ending alphanumeric (a Kubernetes name)")

    c = cfg.corpus
    _check(bool(c.url.strip()), "corpus.url", c.url, "a non-empty URL, path, glob, or 'default'")
    _check(bool(c.text_field), "corpus.text_field", c.text_field, "a non-empty field name")
    if c.tokenizer == "byte":
        _check(c.vocab_size == 256, "corpus.vocab_size", c.vocab_size, "256 for the byte tokenizer")
    else:
        _check(512 <= c.vocab_size <= 1 << 20, "corpus.vocab_size", c.vocab_size,
               "between 512 and 1048576 for the BPE tokenizer")
    _check(c.chunk_tokens is None or (isinstance(c.chunk_tokens, int) and c.chunk_tokens >= 0),
           "corpus.chunk_tokens", c.chunk_tokens, "null (automatic), 0 (off) or an integer number of tokens >= 256")
    _check(not c.chunk_tokens or c.chunk_tokens >= 256, "corpus.chunk_tokens", c.chunk_tokens,
           "null (automatic), 0 (off) or an integer number of tokens >= 256")
    _check(c.source_field is None or bool(c.source_field), "corpus.source_field", c.source_field,
           "null (the input file names the source) or a non-empty field name")
    _check(0 < c.test_fraction < 0.5, "corpus.test_fraction", c.test_fraction, "a fraction in (0, 0.5)")
    _check(0 < c.probe_fraction < 0.5, "corpus.probe_fraction", c.probe_fraction, "a fraction in (0, 0.5)")
    _check(c.test_fraction + c.probe_fraction < 0.5, "corpus.probe_fraction", c.probe_fraction,
           "test_fraction + probe_fraction must stay below 0.5")

    b = cfg.budget
    _check(8 <= b.context <= 1 << 17, "budget.context", b.context, "an integer in [8, 131072]")
    _check(b.batch_tokens >= b.context and b.batch_tokens % b.context == 0, "budget.batch_tokens", b.batch_tokens,
           f"a positive multiple of budget.context ({b.context})")
    _check(b.total_tokens >= b.batch_tokens, "budget.total_tokens", b.total_tokens,
           f"at least one batch (budget.batch_tokens = {b.batch_tokens})")

    fam = cfg.family
    _check(fam.aspect_ratio >= 1, "family.aspect_ratio", fam.aspect_ratio, "an integer >= 1")
    _check(fam.head_dim >= 1, "family.head_dim", fam.head_dim, "an integer >= 1")
    _check(fam.mlp_ratio >= 1, "family.mlp_ratio", fam.mlp_ratio, "an integer >= 1")

    _check(len(cfg.models) >= 1, "models", cfg.models, "at least one model")
    for i, m in enumerate(cfg.models):
        p = f"models[{i}]"
        explicit = [m.n_layer, m.n_embd, m.n_head]
        if m.target_params is not None:
            _check(all(x is None for x in explicit), f"{p}.target_params", m.target_params,
                   "either target_params or an explicit shape (n_layer, n_embd, n_head), not both")
            _check(m.target_params > 0, f"{p}.target_params", m.target_params, "a positive parameter count")
        elif any(x is not None for x in explicit) or m.name is None:
            _check(all(x is not None for x in explicit), p, {k: getattr(m, k) for k in ("n_layer", "n_embd", "n_head")},
                   "an explicit shape needs n_layer, n_embd and n_head (or give target_params)")
            _check(m.n_layer >= 1, f"{p}.n_layer", m.n_layer, "an integer >= 1")
            _check(m.n_head >= 1, f"{p}.n_head", m.n_head, "an integer >= 1")
            _check(m.n_embd >= 1 and m.n_embd % m.n_head == 0, f"{p}.n_embd", m.n_embd,
                   f"a positive multiple of n_head ({m.n_head})")
        if m.fractions is not None:
            for j, f in enumerate(m.fractions):
                _check(f in cfg.grid.fractions, f"{p}.fractions[{j}]", f,
                       f"one of grid.fractions {cfg.grid.fractions}")

    g = cfg.grid
    _check(len(g.fractions) >= 1, "grid.fractions", g.fractions, "at least one repeated fraction")
    for i, f in enumerate(g.fractions):
        _check(0.0 <= f < 1.0, f"grid.fractions[{i}]", f, "a repeated fraction must be in [0, 1)")
    _check(len(set(g.fractions)) == len(g.fractions), "grid.fractions", g.fractions, "no duplicates")
    _check(len(g.epochs) >= 1 or g.fractions == [0.0], "grid.epochs", g.epochs, "at least one repeated-epoch count")
    for i, e in enumerate(g.epochs):
        _check(e >= 1.0, f"grid.epochs[{i}]", e, "repeated epochs E must be >= 1")
    _check(len(set(g.epochs)) == len(g.epochs), "grid.epochs", g.epochs, "no duplicates")
    _check(len(g.seeds) >= 1, "grid.seeds", g.seeds, "at least one seed")
    for i, s in enumerate(g.seeds + g.extra_seeds.seeds):
        _check(0 <= s < 2**31, f"grid.seeds[{i}]", s, "an integer in [0, 2^31)")
    for i, f in enumerate(g.extra_seeds.fractions):
        _check(f in g.fractions, f"grid.extra_seeds.fractions[{i}]", f, f"one of grid.fractions {g.fractions}")
    for i, e in enumerate(g.extra_seeds.epochs):
        _check(e in g.epochs, f"grid.extra_seeds.epochs[{i}]", e, f"one of grid.epochs {g.epochs}")

    t = cfg.train
    _check(0 < t.learning_rate < 1, "train.learning_rate", t.learning_rate, "a number in (0, 1)")
    _check(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", t.min_lr_ratio, "a number in [0, 1]")
    _check(0 <= t.warmup_fraction < 1, "train.warmup_fraction", t.warmup_fraction, "a number in [0, 1)")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "a number >= 0")
    _check(0 <= t.beta1 < 1, "train.beta1", t.beta1, "a number in [0, 1)")
    _check(0 <= t.beta2 < 1, "train.beta2", t.beta2, "a number in [0, 1)")
    _check(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "a number >= 0 (0 disables clipping)")
    _check(t.eval_points >= 1, "train.eval_points", t.eval_points, "an integer >= 1")
    _check(t.eval_sequences >= 1, "train.eval_sequences", t.eval_sequences, "an integer >= 1")
    _check(t.checkpoint_every >= 0, "train.checkpoint_every", t.checkpoint_every, "an integer >= 0")
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", t.keep_checkpoints, "an integer >= 1")
    _check(t.nproc_per_node >= 1, "train.nproc_per_node", t.nproc_per_node,
           "an explicit integer >= 1 ('auto' counts the node's CPUs, not the pod's)")
    _check(t.nnodes >= 1, "train.nnodes", t.nnodes, "an integer >= 1")
    _check(t.process_group_timeout_s >= 10, "train.process_group_timeout_s", t.process_group_timeout_s,
           "an integer >= 10 seconds")
    _check(t.threads_per_rank >= 0, "train.threads_per_rank", t.threads_per_rank, "an integer >= 0")
    _check(t.pack_size >= 1, "train.pack_size", t.pack_size, "an integer >= 1")
    _check(t.pack_size == 1 or t.parallelism != "fsdp", "train.pack_size", t.pack_size,
           "1 with train.parallelism: fsdp (packs are for models too small to shard)")
    sequences_per_step = b.batch_tokens // b.context
    world = t.nproc_per_node * t.nnodes
    _check(sequences_per_step % world == 0, "budget.batch_tokens", b.batch_tokens,
           f"the global batch of {sequences_per_step} sequences must divide evenly over "
           f"{world} ranks (train.nproc_per_node x train.nnodes)")
    per_rank = sequences_per_step // world
    _check(t.micro_batch_sequences >= 0 and (t.micro_batch_sequences == 0 or per_rank % t.micro_batch_sequences == 0),
           "train.micro_batch_sequences", t.micro_batch_sequences,
           f"0 or a divisor of the per-rank batch ({per_rank} sequences)")

    e = cfg.eval
    _check(e.eval_tokens >= b.context, "eval.eval_tokens", e.eval_tokens, f"at least one context ({b.context})")
    _check(e.copy_repeats >= 2, "eval.copy_repeats", e.copy_repeats, "an integer >= 2")
    _check(e.prefix_samples >= 1, "eval.prefix_samples", e.prefix_samples, "an integer >= 1")
    _check(e.prefix_random_tokens >= 2, "eval.prefix_random_tokens", e.prefix_random_tokens, "an integer >= 2")
    _check(e.prefix_repeats >= 2, "eval.prefix_repeats", e.prefix_repeats, "an integer >= 2")
    _check(1 + e.prefix_random_tokens * e.prefix_repeats <= b.context, "eval.prefix_random_tokens",
           e.prefix_random_tokens, f"1 + prefix_random_tokens x prefix_repeats must fit budget.context ({b.context})")
    _check(e.top_k_heads >= 1, "eval.top_k_heads", e.top_k_heads, "an integer >= 1")
    _check(e.icl_windows >= 2, "eval.icl_windows", e.icl_windows, "an integer >= 2 (a standard error needs two)")
    _check(0 <= e.icl_early < e.icl_late < 512, "eval.icl_late", e.icl_late,
           "0 <= icl_early < icl_late < 512 (positions of a 512-token context, scaled to budget.context)")

    _check(bool(cfg.storage.root.strip()), "storage.root", cfg.storage.root, "a non-empty path or fsspec URL")
    check_no_secrets(cfg)

    k = cfg.cluster
    _check(k.parallelism >= 1, "cluster.parallelism", k.parallelism, "an integer >= 1")
    _check(k.accelerator_limit >= 0, "cluster.accelerator_limit", k.accelerator_limit, "an integer >= 0")
    if k.accelerator_type is None:
        k.accelerator_type = ClusterConfig.accelerator_type
    problem = container_resource_name_problem(k.accelerator_type)
    _check(problem is None, "cluster.accelerator_type", k.accelerator_type,
           f"{problem}: write the accelerator's Kubernetes resource name, e.g. nvidia.com/gpu, and select the GPU "
           "model with cluster.node_selector (e.g. cloud.google.com/gke-accelerator: nvidia-l4)")
    _check(k.accelerator_type not in STANDARD_CONTAINER_RESOURCES and not k.accelerator_type.startswith("hugepages-"),
           "cluster.accelerator_type", k.accelerator_type, "an accelerator resource such as nvidia.com/gpu, "
           "not cpu/memory (set those with cluster.cpu and cluster.memory)")
    if k.accelerator_limit:
        _check(image_repository(k.train_image) != image_repository(k.image), "cluster.train_image", k.train_image,
               f"the CPU image (cluster.image) cannot use the {k.accelerator_limit} GPU(s) of "
               "cluster.accelerator_limit: use the CUDA image, e.g. ghcr.io/repeatlab/repeatlab-cuda:0.1.0, or set "
               "cluster.accelerator_limit: 0")
    _check(k.retries >= 0, "cluster.retries", k.retries, "an integer >= 0")
    _check(k.timeout_s >= 60, "cluster.timeout_s", k.timeout_s, "an integer >= 60 seconds")
    for name in k.env:
        _check(bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)), f"cluster.env.{name}", name,
               "an environment variable name")
    if k.multinode:
        _check(t.nnodes >= 1, "train.nnodes", t.nnodes, "an integer >= 1")
    return cfg


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

SECRET_WORDS = frozenset({"key", "keys", "secret", "secrets", "token", "tokens", "password", "passwords", "passwd",
                          "apikey", "apikeys", "credential", "credentials", "private", "privatekey"})
SECRET_SUBSTRINGS = ("secret", "password", "passwd", "apikey", "credential")
GCS_TOKEN_MODES = ("anon", "google_default", "cloud", "browser")
_SECRET_VALUE_PATTERNS = (
    r"-----BEGIN [A-Z ]*-----",
    r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"\beyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}",
    r"(?:key|secret|token|password|passwd|apikey|credential)s?\s*[=:]\s*\S",
)
SECRET_HINT = ("no credentials in a study config (it is saved with the study, compiled into the pipeline and "
               "logged): set them as environment variables (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, ...) "
               "or, on a cluster, in a Kubernetes Secret named by cluster.storage_secret")


def _words(name: str) -> list[str]:
    import re

    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def secret_looking_name(name: str) -> bool:
    words = _words(name)
    if "kms" in words:
        return False
    lowered = str(name).lower()
    return bool(SECRET_WORDS.intersection(words)) or any(s in lowered for s in SECRET_SUBSTRINGS)


def secret_looking_value(value: Any) -> bool:
    import re

    return isinstance(value, str) and any(re.search(p, value, flags=re.IGNORECASE) for p in _SECRET_VALUE_PATTERNS)


def _secret_paths(value: Any, path: str):
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


def check_no_secrets(cfg: StudyConfig) -> None:
    """ConfigError naming the first secret-looking entry of storage.options or cluster.env (the value is hidden)."""
    for where in _secret_paths(cfg.storage.options, "storage.options"):
        raise ConfigError(f"{where}: <hidden> is not allowed: {SECRET_HINT}")
    for name, value in cfg.cluster.env.items():
        if secret_looking_name(name) or secret_looking_value(value):
            raise ConfigError(f"cluster.env.{name}: <hidden> is not allowed: {SECRET_HINT}")


class _UniqueKeyLoader:
    """yaml.SafeLoader that rejects a key given twice in one mapping (YAML would silently keep the last value)."""

    @staticmethod
    def make():
        import yaml

        class Loader(yaml.SafeLoader):
            def construct_mapping(self, node, deep=False):
                seen = {}
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=deep)
                    if key in seen:
                        raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice in one "
                                          f"mapping (first at line {seen[key] + 1}); keep one")
                    seen[key] = key_node.start_mark.line
                return super().construct_mapping(node, deep=deep)

        return Loader


def safe_load_unique(text: str) -> Any:
    """yaml.safe_load, but a duplicate key is a ConfigError."""
    import yaml

    return yaml.load(text, Loader=_UniqueKeyLoader.make())  # noqa: S506 - a SafeLoader subclass


def from_dict(data: Any) -> StudyConfig:
    return validate(_build(StudyConfig, data, ""))


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
        cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root=storage_root.strip()))
        try:
            validate(cfg)
        except ConfigError as exc:
            raise ConfigError(f"storage_root: {exc}") from exc
    return cfg.to_json()


def is_local_root(root: str) -> bool:
    """A storage root on this machine's disk (a path or file://): every pod of a cluster run would see its own."""
    return "://" not in root or root.startswith("file://")


def check_for_cluster(cfg: StudyConfig) -> StudyConfig:
    """What a cluster cannot grant or run, stopped before anything is compiled or sent (ConfigError, one line)."""
    _check(not is_local_root(cfg.storage.root), "storage.root", cfg.storage.root,
           "a cluster run needs shared object storage that every pod reaches (gs://BUCKET/..., s3://BUCKET/...); "
           "a local path or file:// root is a different folder in each pod")
    return cfg


def stable_hash(obj: Any, length: int = 16) -> str:
    """Content hash of JSON-able data (sorted keys): the basis of corpus ids and point ids."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
