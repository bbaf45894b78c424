"""Evaluate one trained grid point: losses, copying, in-context learning and per-head scores -> `eval.json`.

`evaluate_run(run_url)` reads `{run}/point.json`, the corpus manifest and shards, and the final (or a given)
complete checkpoint, and writes `{run}/eval.json` (docs/architecture.md). `evaluate_model(...)` is the pure core: a
model and token arrays in, the metrics dict out, no files.

What is measured (Hernandez et al. 2022, arXiv 2205.10487; Olsson et al. 2022, "In-context Learning and Induction
Heads"):
  test_loss      mean per-token loss over up to eval.eval_tokens tokens of test.bin, in contiguous non-overlapping
                 windows of context + 1 tokens (the training window layout)
  repeated_loss  the same over the repeated subset's windows (repeated.npy offsets into train.bin); null for f = 0
  ood_loss       the same over ood.bin when the corpus has an ood split, else null
  copying        probe paragraphs of (context - 1) // copy_repeats tokens from probe.bin (no EOT inside), each as
                 BOS + paragraph x copy_repeats in one context; per-copy mean loss averaged over paragraphs, the mean
                 over copies 2..last, and the last copy
  icl            Olsson's in-context-learning score, estimated so that it has an error bar: over eval.icl_windows
                 test windows at random offsets (the same offsets for every run of a corpus and context, so runs are
                 compared on the same text), inside one document where the test split allows, the mean loss over a
                 band of positions around icl_late * context // 512 minus the mean over a band around
                 icl_early * context // 512; the mean over windows and its standard error (negative: the model uses
                 its context). `icl_score` is that mean (records made before the estimate hold a single-position
                 score there, at the fixed window offsets, and have no `icl`)
  heads          per-head prefix matching (eval.prefix_samples samples of BOS + prefix_random_tokens random tokens x
                 prefix_repeats, tokens drawn without the most/least frequent train tokens), previous-token score on
                 test windows, and the OV-circuit copying score (repeatlab.scores)

Distributed: under torchrun (WORLD_SIZE > 1) the loss windows, probe paragraphs and prefix samples are sharded over
ranks, their sums and counts all-reduced, and rank 0 writes eval.json; one plain process works the same way.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from repeatlab import integrity, layout, logs, scores, storage
from repeatlab.config import EvalConfig
from repeatlab.distributed import DistEnv
from repeatlab.errors import CheckpointError, CorpusError
from repeatlab.records import EvalRecord, Point

log = logging.getLogger(__name__)
EOT_ID = 0
COPY_PARAGRAPHS = 16  # probe paragraphs averaged for the copying metric (fewer when the probe split is short)
PREVIOUS_TOKEN_WINDOWS = 8  # test windows for the previous-token score
TOKEN_COUNT_LIMIT = 1 << 26  # train tokens counted for the prefix-matching token frequencies (evenly spread chunks)


# ----------------------------------------------------------------------------------------------------------------------
# The pure core


def _eval_config(cfg: EvalConfig | dict[str, Any]) -> EvalConfig:
    """An EvalConfig (validated; an unknown key is a ConfigError, never dropped) of a dict or an EvalConfig."""
    return cfg if isinstance(cfg, EvalConfig) else EvalConfig(**cfg)


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _windows(tokens: np.ndarray, context: int, max_windows: int) -> np.ndarray:
    """Offsets of contiguous non-overlapping (context + 1)-token windows: k * context, k < max_windows."""
    n = max(0, (len(tokens) - 1) // context)
    return np.arange(min(n, max_windows), dtype=np.int64) * context


def _gather(tokens: np.ndarray, offsets: np.ndarray, length: int) -> torch.Tensor:
    rows = [np.asarray(tokens[int(o) : int(o) + length], dtype=np.int64) for o in offsets]
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, length, dtype=torch.long)


def _batch_size(context: int, n_layer: int = 1, n_head: int = 1, with_attention: bool = False) -> int:
    if with_attention:  # patterns hold n_layer * n_head * context^2 floats per sequence
        return max(1, min(64, (1 << 25) // max(1, n_layer * n_head * context * context)))
    return max(1, min(256, (1 << 16) // context))


def _loss_stats(model: Any, windows: torch.Tensor, dist: DistEnv, positions: tuple[int, ...] = ()) -> torch.Tensor:
    """All-reduced [sum, count, sum at each position...] of per-token losses over this rank's share of windows."""
    device = _model_device(model)
    mine = windows[list(dist.shard(len(windows)))]
    stats = torch.zeros(2 + len(positions), dtype=torch.float64)
    bs = _batch_size(windows.shape[1])
    for start in logs.progress(range(0, len(mine), bs), desc="evaluate: loss", unit="batch"):
        chunk = mine[start : start + bs].to(device)
        loss = model.per_token_loss(chunk[:, :-1], chunk[:, 1:]).detach().to("cpu", torch.float64)  # [B, T]
        stats[0] += loss.sum()
        stats[1] += loss.numel()
        for i, p in enumerate(positions):
            stats[2 + i] += loss[:, p].sum()
    return dist.reduce(stats)


def _mean_loss(model: Any, windows: torch.Tensor | None, dist: DistEnv) -> float | None:
    if windows is None or len(windows) == 0:
        return None
    stats = _loss_stats(model, windows, dist)
    return float(stats[0] / stats[1]) if stats[1] > 0 else None


def probe_paragraphs(probe_tokens: np.ndarray, length: int, limit: int = COPY_PARAGRAPHS) -> np.ndarray:
    """Up to `limit` paragraphs [n, length] of consecutive tokens without EOT, spread evenly over the probe split.

    Candidates are the non-overlapping `length`-token chunks of each EOT-separated document. A document's first chunk
    is used only when there are too few others: it is usually a title or header rather than running text (the default
    corpus's works open with "THE TAMING OF THE SHREW\n\nby William Shakespeare"), which would make the copying metric
    measure how well a model copies title pages.
    """
    if length < 1:
        return np.zeros((0, max(length, 0)), dtype=np.int64)
    tokens = np.asarray(probe_tokens)
    eot = np.flatnonzero(tokens == EOT_ID)
    bounds = np.concatenate([[-1], eot, [len(tokens)]])
    inner: list[int] = []
    firsts: list[int] = []
    for a, b in itertools.pairwise(bounds):
        start, n_chunks = int(a) + 1, (int(b) - int(a) - 1) // length
        if n_chunks > 0:
            firsts.append(start)
            inner.extend(range(start + length, start + n_chunks * length, length))
    if len(inner) > limit:
        inner = [inner[i] for i in np.linspace(0, len(inner) - 1, limit).round().astype(int)]
    starts = inner + firsts[: max(0, limit - len(inner))]
    if not starts:
        return np.zeros((0, length), dtype=np.int64)
    return np.stack([np.asarray(tokens[s : s + length], dtype=np.int64) for s in starts])


def copying_losses(model: Any, paragraphs: np.ndarray, repeats: int, dist: DistEnv | None = None) -> list[float] | None:
    """Per-copy mean loss of BOS + paragraph x repeats, averaged over paragraphs (None without paragraphs)."""
    dist = dist or DistEnv()
    n, length = paragraphs.shape
    if n == 0 or length == 0:
        return None
    device = _model_device(model)
    seqs = torch.cat(
        [
            torch.zeros(n, 1, dtype=torch.long),
            torch.from_numpy(np.asarray(paragraphs, dtype=np.int64)).repeat(1, repeats),
        ],
        dim=1,
    )
    mine = seqs[list(dist.shard(n))]
    stats = torch.zeros(repeats + 1, dtype=torch.float64)  # per-copy sums, then paragraph count
    bs = _batch_size(seqs.shape[1])
    for start in range(0, len(mine), bs):
        chunk = mine[start : start + bs].to(device)
        loss = model.per_token_loss(chunk[:, :-1], chunk[:, 1:]).detach().to("cpu", torch.float64)  # [B, R*P]
        stats[:repeats] += loss.reshape(len(chunk), repeats, length).mean(-1).sum(0)
        stats[repeats] += len(chunk)
    stats = dist.reduce(stats)
    return (stats[:repeats] / stats[repeats]).tolist()


ICL_SEED = 0x1C1  # the random window offsets of the ICL estimate: fixed, so every run reads the same windows


def icl_bands(eval_cfg: Any, context: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((early_lo, early_hi), (late_lo, late_hi)) inclusive position bands of the ICL estimate: each centre
    +- context // 64 (at least 1), clamped into [0, context - 1] and kept apart."""
    early, late = icl_positions(eval_cfg, context)
    half = max(1, context // 64)
    early_band = (max(0, early - half), min(context - 1, early + half))
    late_band = (max(early_band[1] + 1, late - half), min(context - 1, late + half))
    if late_band[0] > late_band[1]:
        late_band = (late, late)
    return early_band, late_band


def icl_window_offsets(
    tokens: np.ndarray, context: int, n: int, span: int, seed: int = ICL_SEED
) -> tuple[np.ndarray, int]:
    """(offsets of n random (context + 1)-token windows, how many hold no EOT in their first `span` + 1 tokens).

    Windows inside one document are preferred (a late position in the next document measures nothing about the
    context); when the split has too few of them, other windows fill up the n. Sorted, deterministic in seed."""
    limit = len(tokens) - context - 1
    if limit < 0:
        return np.zeros(0, dtype=np.int64), 0
    rng = np.random.default_rng(seed)
    candidates = (
        rng.choice(limit + 1, size=min(limit + 1, 8 * n), replace=False)
        if limit + 1 > 8 * n
        else rng.permutation(limit + 1)
    )
    eot = np.append(np.flatnonzero(np.asarray(tokens) == EOT_ID), 1 << 62)  # a sentinel past the end
    # a window [o, o + span] is inside one document when no EOT lies at o..o + span - 1 (a final EOT target is fine)
    nxt = eot[np.searchsorted(eot, candidates)]
    inside = nxt >= candidates + span
    chosen = np.concatenate([candidates[inside][:n], candidates[~inside][: max(0, n - int(inside.sum()))]])
    return np.sort(chosen.astype(np.int64)), int(min(n, inside.sum()))


def icl_estimate(model: Any, test_tokens: np.ndarray, eval_cfg: Any, context: int, dist: DistEnv | None = None) -> dict:
    """Olsson's ICL score (late-band minus early-band loss) over random test windows, with its standard error."""
    cfg = _eval_config(eval_cfg)
    dist = dist or DistEnv()
    (e0, e1), (l0, l1) = icl_bands(cfg, context)
    offsets, inside = icl_window_offsets(test_tokens, context, cfg.icl_windows, l1 + 1)
    windows = _gather(test_tokens, offsets, context + 1)
    device = _model_device(model)
    mine = windows[list(dist.shard(len(windows)))]
    stats = torch.zeros(3, dtype=torch.float64)  # n, sum of per-window scores, sum of their squares
    bs = _batch_size(context)
    for start in range(0, len(mine), bs):
        chunk = mine[start : start + bs].to(device)
        loss = model.per_token_loss(chunk[:, :-1], chunk[:, 1:]).detach().to("cpu", torch.float64)  # [B, T]
        score = loss[:, l0 : l1 + 1].mean(1) - loss[:, e0 : e1 + 1].mean(1)
        stats += torch.stack([torch.tensor(float(len(score)), dtype=torch.float64), score.sum(), (score**2).sum()])
    n, total, squares = (float(v) for v in dist.reduce(stats))
    mean = total / n if n else float("nan")
    var = (squares - n * mean * mean) / (n - 1) if n > 1 else float("nan")
    stderr = math.sqrt(max(var, 0.0) / n) if n > 1 else float("nan")
    return {
        "score": _nan_to_none(mean),
        "stderr": _nan_to_none(stderr),
        "windows": int(n),
        "windows_inside_one_document": inside,
        "early_band": [e0, e1],
        "late_band": [l0, l1],
        "seed": ICL_SEED,
        "method": "mean over random test windows of the late-band minus early-band loss",
    }


def icl_positions(eval_cfg: Any, context: int) -> tuple[int, int]:
    """(early, late) positions of the ICL score, scaled from a 512-token context and clamped into [0, context)."""
    cfg = _eval_config(eval_cfg)
    early = min(context - 1, cfg.icl_early * context // 512)
    late = min(context - 1, cfg.icl_late * context // 512)
    return early, late


def head_scores(
    model: Any, prefix_batch: torch.Tensor, test_windows: torch.Tensor, dist: DistEnv | None = None
) -> dict[str, torch.Tensor]:
    """Per-head prefix-matching, previous-token and copying scores, each [layer, head] float64."""
    dist = dist or DistEnv()
    device = _model_device(model)
    cfg = getattr(scores._unwrap(model), "config", None)
    n_layer, n_head = getattr(cfg, "n_layer", 1), getattr(cfg, "n_head", 1)

    def sums(batch: torch.Tensor, fn: Callable) -> torch.Tensor:
        mine = batch[list(dist.shard(len(batch)))]
        total, count = None, 0
        bs = _batch_size(batch.shape[1], n_layer, n_head, with_attention=True)
        for start in range(0, len(mine), bs):
            chunk = mine[start : start + bs]
            _, patterns = model.forward_with_attention(chunk.to(device))
            patterns = [p.detach().float().cpu() for p in patterns]
            s, c = fn(patterns, chunk) if fn is scores.prefix_matching_sums else fn(patterns)
            total = s if total is None else total + s
            count += c
        if total is None:
            total = torch.zeros(n_layer, n_head, dtype=torch.float64)
        flat = dist.reduce(torch.cat([total.reshape(-1), torch.tensor([float(count)], dtype=torch.float64)]))
        out = flat[:-1].reshape(total.shape)
        return out / flat[-1] if flat[-1] > 0 else torch.full_like(out, float("nan"))

    return {
        "prefix_matching": sums(prefix_batch, scores.prefix_matching_sums),
        "previous_token": sums(test_windows, scores.previous_token_sums),
        "copying": scores.copying_score(model),
    }


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _copying(
    model: Any, probe_tokens: np.ndarray, test_tokens: np.ndarray, cfg: EvalConfig, context: int, dist: DistEnv
) -> dict | None:
    """eval.json's `copying`: per-copy losses of probe paragraphs repeated cfg.copy_repeats times in one context."""
    para_len = (context - 1) // cfg.copy_repeats
    paragraphs = probe_paragraphs(probe_tokens, para_len)
    if len(paragraphs) == 0:  # probe split too short or fragmented: fall back to test text
        paragraphs = probe_paragraphs(test_tokens, para_len)
    per_copy = copying_losses(model, paragraphs, cfg.copy_repeats, dist)
    if per_copy is None:
        return None
    return {
        "per_copy_loss": per_copy,
        "mean_copies_2_to_last": float(np.mean(per_copy[1:])),
        "last_copy": float(per_copy[-1]),
    }


def evaluate_model(
    model: Any,
    test_tokens: np.ndarray,
    probe_tokens: np.ndarray,
    token_freqs: np.ndarray,
    eval_cfg: Any,
    context: int,
    repeated_windows: np.ndarray | torch.Tensor | None = None,
    ood_tokens: np.ndarray | None = None,
    seed: int = 0,
    dist: DistEnv | None = None,
) -> dict:
    """Every eval.json metric except the point and learning curve; does not modify the model (mode restored).

    test_tokens / probe_tokens / ood_tokens: flat token arrays (memmaps are fine); token_freqs: train-token counts
    per id (for the prefix-matching tokens); repeated_windows: [n, context + 1] token windows of the repeated subset.
    """
    cfg = _eval_config(eval_cfg)
    dist = dist or DistEnv()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            n_windows = max(1, cfg.eval_tokens // context)
            test = _gather(test_tokens, _windows(test_tokens, context, n_windows), context + 1)
            if len(test) == 0:
                raise CorpusError(
                    f"the test split has {len(test_tokens)} tokens: fewer than one context + 1 "
                    f"({context + 1}) to evaluate on"
                )
            early, late = icl_positions(cfg, context)
            stats = _loss_stats(model, test, dist)
            test_loss = float(stats[0] / stats[1])
            icl = icl_estimate(model, test_tokens, cfg, context, dist)

            repeated_loss = None
            if repeated_windows is not None and len(repeated_windows) > 0:
                rep = torch.as_tensor(np.asarray(repeated_windows[:n_windows], dtype=np.int64))
                repeated_loss = _mean_loss(model, rep, dist)
            ood_loss = None
            if ood_tokens is not None:
                ood_loss = _mean_loss(
                    model, _gather(ood_tokens, _windows(ood_tokens, context, n_windows), context + 1), dist
                )

            copying = _copying(model, probe_tokens, test_tokens, cfg, context, dist)

            gen = torch.Generator().manual_seed(int(seed))
            prefix = scores.make_prefix_matching_batch(
                token_freqs, cfg.prefix_random_tokens, cfg.prefix_repeats, cfg.prefix_samples, generator=gen
            )
            heads = head_scores(model, prefix, test[:PREVIOUS_TOKEN_WINDOWS, :-1], dist)
    finally:
        model.train(was_training)

    k = cfg.top_k_heads
    return {
        "test_loss": test_loss,
        "repeated_loss": _nan_to_none(repeated_loss),
        "ood_loss": _nan_to_none(ood_loss),
        "copying": copying,
        "icl_score": icl["score"],
        "icl_positions": [early, late],
        "icl": icl,
        "heads": {name: scores.to_nested(v) for name, v in heads.items()},
        "aggregates": {
            "prefix_matching_max": _nan_to_none(scores.head_max(heads["prefix_matching"])),
            "prefix_matching_top_mean": _nan_to_none(scores.top_k_mean(heads["prefix_matching"], k)),
            "previous_token_max": _nan_to_none(scores.head_max(heads["previous_token"])),
            "copying_max": _nan_to_none(scores.head_max(heads["copying"])),
        },
    }


# ----------------------------------------------------------------------------------------------------------------------
# Files: corpus shards, checkpoints


def _load_manifest(corpus_url: str) -> dict:
    from repeatlab.corpus import load_manifest

    return load_manifest(corpus_url)


def _open_split(corpus_url: str, split: str, manifest: dict) -> np.ndarray:
    """Read-only memory map of one split's token ids."""
    from repeatlab.corpus import open_split

    return open_split(corpus_url, split, manifest)


def token_counts(tokens: np.ndarray, vocab_size: int, limit: int = TOKEN_COUNT_LIMIT) -> np.ndarray:
    """Token frequencies over the train split (evenly spread chunks of at most `limit` tokens in all)."""
    n = len(tokens)
    if n <= limit:
        return np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size)[:vocab_size]
    chunks, chunk = 64, limit // 64
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in np.linspace(0, n - chunk, chunks).astype(np.int64):
        counts += np.bincount(np.asarray(tokens[start : start + chunk], dtype=np.int64), minlength=vocab_size)[
            :vocab_size
        ]
    return counts


def list_checkpoints(run_url: str) -> list[int]:
    """Steps of the complete checkpoints (those with state.json), ascending."""
    return layout.Run(run_url).checkpoint_steps(complete_only=True)


def checkpoint_url(run_url: str, step: int) -> str:
    return layout.Run(run_url).checkpoint(step)


def _strip_prefixes(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        for prefix in ("_orig_mod.", "module."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def load_state_dict(url: str, expected_sha256: str | None = None) -> dict:
    """The model state_dict in a model.pt (a plain state_dict, or a dict with a "model" entry), checked against
    the sha256 its checkpoint's state.json recorded when given."""
    if not storage.exists(url):
        raise CheckpointError(f"{url}: checkpoint file not found")
    data = storage.read_bytes(url)
    integrity.check_bytes(
        url,
        data,
        expected_sha256,
        storage.join(url.rsplit("/", 1)[0], layout.CHECKPOINT_STATE),
        "train the point again from an earlier checkpoint (remove this checkpoint folder)",
    )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors: corrupt file
        raise CheckpointError(f"{url}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{url}: expected a state_dict, found {type(state).__name__}")
    return _strip_prefixes(state)


def check_state_dict(state: dict, expected: dict, url: str) -> None:
    """Raise CheckpointError naming the first differences between a checkpoint and the config's model."""
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
    for key in sorted(set(state) & set(expected)):
        got, want = tuple(getattr(state[key], "shape", ())), tuple(expected[key].shape)
        if got != want:
            problems.append(f"{key} has shape {list(got)}, the config needs {list(want)}")
            if len(problems) >= 4:
                break
    if problems:
        raise CheckpointError(f"checkpoint {url} does not match the config: {'; '.join(problems)}")


def build_model(model_cfg: dict):
    """A GPT of point.json's `model` (its derived parameter counts are ignored)."""
    from repeatlab.model import GPT, GPTConfig

    return GPT(GPTConfig.from_dict(dict(model_cfg)))


def load_model(run_url: str, point: dict, step: int | None = None) -> tuple[Any, int]:
    """(GPT with the checkpoint's weights, its step): the latest complete checkpoint, or the one at `step`."""
    run = layout.Run(run_url)
    steps = list_checkpoints(run_url)
    if not steps:
        raise CheckpointError(
            f"{run.checkpoints}: no complete checkpoint (with {layout.CHECKPOINT_STATE}) "
            f"to evaluate; train the point first"
        )
    if step is None:
        step = steps[-1]
    elif int(step) not in steps:
        raise CheckpointError(
            f"{checkpoint_url(run_url, step)}: no complete checkpoint at step {step}; "
            f"available steps: {', '.join(map(str, steps))}"
        )
    url = run.checkpoint_file(step, layout.MODEL_FILE)
    recorded = storage.read_json(run.checkpoint_state(step)).get("files") or {}
    state = load_state_dict(url, recorded.get(layout.MODEL_FILE))
    model = build_model(point["model"])
    check_state_dict(state, model.state_dict(), url)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {url} does not match the config: {str(exc).splitlines()[0]}") from exc
    return model, int(step)


def read_learning_curve(run_url: str) -> list[dict]:
    url = layout.Run(run_url).train_log
    if not storage.exists(url):
        return []
    rows = []
    for line in storage.read_text(url).splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of a crashed run
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# The run-level entry point


def _dist_env(device: str) -> DistEnv:
    """This process's rank and device; with several ranks, in torchrun's process group (joined here with torch's
    default timeout, unless the trainer evaluating in its own processes has it already: then the trainer owns it)."""
    env = DistEnv.from_env()
    env.choose_device(device, field="device")
    if env.world > 1:
        env.init_process_group(timeout_s=None)
    return env


def eval_url(run_url: str, step: int | None, final_step: int) -> str:
    """{run}/eval.json for the final checkpoint; {run}/eval-step-XXXXXXX.json for an earlier one."""
    return layout.Run(run_url).eval_at(step, final_step)


def short_split_warnings(test: np.ndarray, ood: np.ndarray | None, eval_tokens: int) -> list[str]:
    """Say so when a split holds fewer tokens than eval.eval_tokens asks for: its loss is noisier than configured."""
    notes = []
    for name, tokens in (("test", test), ("ood", ood)):
        if tokens is not None and len(tokens) < eval_tokens:
            notes.append(
                f"the {name} split has {len(tokens)} tokens, fewer than eval.eval_tokens ({eval_tokens}): "
                f"its loss is measured on {len(tokens)} tokens only (a larger corpus or test_fraction "
                "gives the configured precision)"
            )
    return notes


def headline(record: dict) -> dict:
    """The eval record's main numbers, one JSON object (what `repeatlab evaluate` prints on stdout)."""
    copying = record.get("copying") or {}
    return {
        "event": "eval",
        "point_id": record["point_id"],
        "step": record.get("step"),
        "test_loss": record["test_loss"],
        "repeated_loss": record["repeated_loss"],
        "ood_loss": record["ood_loss"],
        "copy_last": copying.get("last_copy"),
        "copy_mean_2_to_last": copying.get("mean_copies_2_to_last"),
        "icl_score": record["icl_score"],
        "icl_stderr": (record.get("icl") or {}).get("stderr"),
        **record["aggregates"],
    }


def _repeated_windows(
    run: layout.Run, point: Point, train: np.ndarray, max_windows: int, context: int
) -> np.ndarray | None:
    """The first windows of the repeated subset (repeated.npy's offsets into train.bin); None without repeats."""
    if point.fraction <= 0 or point.control or not storage.exists(run.repeated_npy):
        return None
    offsets = np.load(io.BytesIO(storage.read_bytes(run.repeated_npy)), allow_pickle=False).astype(np.int64)
    offsets = offsets[: max(1, max_windows)]
    return _gather(train, offsets, context + 1).numpy() if len(offsets) else None


def evaluate_run(run_url: str, step: int | None = None, device: str = "auto") -> dict:
    """Evaluate the run's final (or given) checkpoint, write eval.json atomically (rank 0) and return its content."""
    started = time.time()
    run = layout.Run(run_url)
    point_record = Point.read(run.point)
    point = point_record.to_json()
    dist = _dist_env(device)
    try:
        model, used_step = load_model(run_url, point, step)
        model.to(dist.device)
        context = int(point_record.model["context"])
        corpus_url = point_record.corpus_url
        manifest = _load_manifest(corpus_url)
        if manifest.get("corpus_id") != point_record.corpus_id:
            raise CorpusError(
                f"{corpus_url}: corpus id {manifest.get('corpus_id')} does not match the point's "
                f"{point_record.corpus_id}"
            )
        train, test, probe = (_open_split(corpus_url, name, manifest) for name in ("train", "test", "probe"))
        ood = _open_split(corpus_url, "ood", manifest) if "ood" in manifest.get("splits", {}) else None
        cfg = point_record.eval_config()

        repeated = _repeated_windows(run, point_record, train, cfg.eval_tokens // context, context)
        notes = short_split_warnings(test, ood, cfg.eval_tokens)
        if dist.rank == 0:  # every rank finds the same
            for note in notes:
                log.warning("evaluate: %s", note)
        freqs = token_counts(train, int(point_record.model["vocab_size"]))
        metrics = evaluate_model(
            model,
            test,
            probe,
            freqs,
            cfg,
            context,
            repeated_windows=repeated,
            ood_tokens=ood,
            seed=point_record.seed,
            dist=dist,
        )
        final_step = list_checkpoints(run_url)[-1]
        # "step" (the evaluated checkpoint) is beyond the documented schema: steps.evaluate reuses an eval.json
        # only when its step is done.json's final step
        result = {
            "point_id": point_record.point_id,
            "point": point,
            "step": used_step,
            **metrics,
            "learning_curve": read_learning_curve(run_url),
            "warnings": notes,
        }
        if dist.rank == 0:
            out = eval_url(run_url, step, final_step)
            result = EvalRecord.from_json(integrity.seal_record(result), where=out).to_json()
            storage.write_json(out, result)
            log.info(
                "%s",
                json.dumps(
                    {
                        **headline(result),
                        "world_size": dist.world,
                        "seconds": round(time.time() - started, 2),
                        "output": out,
                    },
                    sort_keys=False,
                ),
            )
        return result
    finally:
        dist.teardown()


if __name__ == "__main__":  # `python -m repeatlab.evaluate` under torchrun: the `repeatlab evaluate` command
    import sys

    from repeatlab.cli import main

    sys.exit(main(["evaluate", *sys.argv[1:]]))
