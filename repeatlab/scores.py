"""Per-head scores over attention patterns, and the copying score of a head's OV circuit.

Pure functions: inputs (patterns, tokens, models) are never modified. Attention patterns are accepted as
  - a tensor [layer, head, query, key]                      (one sample), or
  - a tensor [layer, batch, head, query, key], or
  - a list with one tensor per layer, each [batch, head, query, key] or [head, query, key]
    (what `GPT.forward_with_attention` returns),
and tokens as [query] or [batch, query]. Scores come back as a float64 tensor [layer, head].

Definitions (Olsson et al. 2022, "In-context Learning and Induction Heads"; Hernandez et al. 2022, arXiv 2205.10487):
  prefix matching  for each query token that occurred earlier in the sequence, the attention mass on the positions
                   right after its earlier occurrences (summed over all of them); averaged over such queries, then
                   over samples. Samples: BOS, then R random tokens repeated K times.
  previous token   the attention from position q to q-1, averaged over q >= 1 and samples.
  copying          from the full OV circuit W_U W_O W_V W_E of each head: sum(eigenvalues) / sum(|eigenvalues|),
                   +1 for a head that raises the logit of the token it attends to, -1 for one that suppresses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------------------------------
# Input normalisation


def _as_patterns(patterns: Any) -> torch.Tensor:
    """[layer, batch, head, query, key] float64 copy of any accepted pattern layout."""
    if isinstance(patterns, (list, tuple)):
        layers = [torch.as_tensor(p).detach() for p in patterns]
        if not layers:
            raise ValueError("no attention patterns (empty list)")
        layers = [p.unsqueeze(0) if p.dim() == 3 else p for p in layers]
        for p in layers:
            if p.dim() != 4:
                raise ValueError(f"per-layer patterns must be [batch, head, query, key]; got shape {tuple(p.shape)}")
        out = torch.stack([p.to(torch.float64) for p in layers])
    else:
        t = torch.as_tensor(patterns).detach()
        if t.dim() == 4:
            out = t.to(torch.float64).unsqueeze(1)
        elif t.dim() == 5:
            out = t.to(torch.float64)
        else:
            raise ValueError(
                f"patterns must be [layer, head, query, key] or [layer, batch, head, query, key]; "
                f"got shape {tuple(t.shape)}"
            )
    if out.shape[-1] != out.shape[-2]:
        raise ValueError(f"patterns must be square over (query, key); got shape {tuple(out.shape)}")
    return out  # no function below writes into it in place


def _as_tokens(tokens: Any, batch: int, length: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens).detach().long().cpu()
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise ValueError(f"tokens must be [query] or [batch, query]; got shape {tuple(t.shape)}")
    if t.shape[1] != length:
        raise ValueError(f"tokens have length {t.shape[1]} but the patterns cover {length} positions")
    if t.shape[0] == 1 and batch > 1:
        t = t.expand(batch, -1)
    if t.shape[0] != batch:
        raise ValueError(f"tokens have batch {t.shape[0]} but the patterns have batch {batch}")
    return t


# ----------------------------------------------------------------------------------------------------------------------
# Prefix matching


def prefix_matching_targets(tokens: Any) -> torch.Tensor:
    """Boolean [batch, query, key]: key k is right after an earlier occurrence of the query's token (k-1 < q)."""
    t = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens).detach().long().cpu()
    if t.dim() == 1:
        t = t.unsqueeze(0)
    b, n = t.shape
    same = t[:, :, None] == t[:, None, :]  # [b, q, j]: token at q equals token at j
    earlier = torch.ones(n, n, dtype=torch.bool).tril(-1)  # j < q
    occurrence = same & earlier  # [b, q, j]
    targets = torch.zeros(b, n, n, dtype=torch.bool)
    targets[:, :, 1:] = occurrence[:, :, :-1]  # key k = j + 1 (always <= q since j < q)
    return targets


def prefix_matching_sums(patterns: Any, tokens: Any) -> tuple[torch.Tensor, int]:
    """(sum over samples of each head's per-sample score [layer, head], number of samples that had a scored query).

    The building block for sharded evaluation: all-reduce both and divide.
    """
    p = _as_patterns(patterns)  # [L, B, H, Q, K]
    batch, q_len = p.shape[1], p.shape[3]
    tok = _as_tokens(tokens, batch, q_len)
    targets = prefix_matching_targets(tok).to(torch.float64)  # [B, Q, K]
    valid = targets.sum(-1) > 0  # [B, Q]: queries with an earlier occurrence
    mass = (p * targets[None, :, None]).sum(-1)  # [L, B, H, Q]
    n_valid = valid.sum(-1)  # [B]
    per_sample = (mass * valid[None, :, None].to(torch.float64)).sum(-1) / n_valid.clamp(min=1)[None, :, None]
    keep = n_valid > 0
    return per_sample[:, keep].sum(1), int(keep.sum())


def prefix_matching_score(patterns: Any, tokens: Any) -> torch.Tensor:
    """Per-head prefix-matching score [layer, head] (Olsson et al. 2022); NaN where no query repeats a token."""
    total, count = prefix_matching_sums(patterns, tokens)
    return total / count if count else torch.full_like(total, float("nan"))


def uniform_attention_prefix_score(n_random: int, n_repeats: int) -> float:
    """The exact prefix-matching score of a head with uniform causal attention on BOS + (R distinct tokens) x K.

    The query at copy c (0-based, c >= 1), offset i sits at position q = 1 + c*R + i and has c target keys among
    q + 1 attended positions, so the head scores c / (2 + c*R + i), averaged over the (K-1)*R scored queries.
    """
    values = [c / (2 + c * n_random + i) for c in range(1, n_repeats) for i in range(n_random)]
    return float(np.mean(values))


def uniform_attention_previous_token_score(length: int) -> float:
    """The previous-token score of a head with uniform causal attention over `length` positions: mean 1/(q+1)."""
    return float(np.mean([1.0 / (q + 1) for q in range(1, length)]))


def make_prefix_matching_batch(
    token_counts: Any,
    n_random: int,
    n_repeats: int,
    n_samples: int,
    generator: torch.Generator | None = None,
    drop_fraction: float = 0.1,
    bos_id: int = 0,
) -> torch.Tensor:
    """[n_samples, 1 + n_random * n_repeats] int64: BOS, then n_random random tokens repeated n_repeats times.

    The random tokens exclude BOS/EOT and the most and least frequent tokens: among the tokens that occur in the
    training data (count > 0), the top and bottom `drop_fraction` by frequency are dropped. Tokens within a sample
    are distinct whenever the remaining pool is large enough (else drawn with replacement).
    """
    counts = np.asarray(token_counts, dtype=np.float64).reshape(-1)
    ids = np.arange(counts.size)
    seen = ids[(counts > 0) & (ids != bos_id)]
    if seen.size == 0:  # no frequency information: every non-BOS token is eligible
        seen = ids[ids != bos_id]
    if seen.size == 0:
        raise ValueError("no tokens to draw a prefix-matching sample from (vocabulary holds only BOS)")
    order = seen[np.argsort(-counts[seen], kind="stable")]  # most frequent first, ties by id
    drop = int(np.floor(drop_fraction * order.size))
    pool = order[drop : order.size - drop] if order.size - 2 * drop >= max(2, n_random) else order
    pool_t = torch.as_tensor(np.sort(pool), dtype=torch.long)
    rows = []
    for _ in range(n_samples):
        if pool_t.numel() >= n_random:
            pick = torch.randperm(pool_t.numel(), generator=generator)[:n_random]
        else:
            pick = torch.randint(pool_t.numel(), (n_random,), generator=generator)
        block = pool_t[pick]
        rows.append(torch.cat([torch.tensor([bos_id], dtype=torch.long), block.repeat(n_repeats)]))
    return torch.stack(rows)


# ----------------------------------------------------------------------------------------------------------------------
# Previous token


def previous_token_sums(patterns: Any) -> tuple[torch.Tensor, int]:
    """(sum over samples of each head's per-sample previous-token score [layer, head], number of samples)."""
    p = _as_patterns(patterns)  # [L, B, H, Q, K]
    q_len = p.shape[-1]
    if q_len < 2:
        return torch.zeros(p.shape[0], p.shape[2], dtype=torch.float64), 0
    q = torch.arange(1, q_len)
    prev = p[..., q, q - 1]  # [L, B, H, Q-1]
    return prev.mean(-1).sum(1), int(p.shape[1])


def previous_token_score(patterns: Any) -> torch.Tensor:
    """Per-head mean attention from position q to q-1 (q >= 1), [layer, head]."""
    total, count = previous_token_sums(patterns)
    return total / count if count else torch.full_like(total, float("nan"))


# ----------------------------------------------------------------------------------------------------------------------
# Copying (OV circuit eigenvalues)


def _unwrap(model: Any) -> Any:
    for attr in ("module", "_orig_mod"):  # DDP, torch.compile
        while hasattr(model, attr) and isinstance(getattr(model, attr), torch.nn.Module):
            model = getattr(model, attr)
    return model


def _layernorm_linear(ln: Any, n_embd: int) -> torch.Tensor:
    """The linear part of a LayerNorm as a matrix, up to the positive 1/std factor: diag(weight) @ (I - 11^T/d)."""
    center = torch.eye(n_embd, dtype=torch.float64) - 1.0 / n_embd
    weight = getattr(ln, "weight", None)
    if weight is None:
        return center
    return weight.detach().to("cpu", torch.float64)[:, None] * center


def copying_score(model: Any) -> torch.Tensor:
    """Per-head copying score [layer, head] from the eigenvalues of the full OV circuit W_U W_O W_V W_E.

    LayerNorm gains and centering (ln_1 before W_V, ln_f before W_U) are folded in; the positive 1/std factors and
    biases are ignored (Elhage et al. 2021), and so is the all-tokens logit direction (softmax is shift-invariant).
    The nonzero eigenvalues of the [vocab, vocab] circuit are those of the
    [head_dim, head_dim] matrix W_V W_E^T W_U W_O (cyclic permutation), which is what is computed.
    Score = sum(lambda).real / sum(|lambda|): +1 copies the attended token, -1 suppresses it.
    """
    m = _unwrap(model)
    tr = m.transformer
    with torch.no_grad():
        w_e = tr.wte.weight.detach().to("cpu", torch.float64)  # [V, d]
        n_embd = w_e.shape[1]
        lm_head = getattr(m, "lm_head", None)
        w_u = (lm_head.weight if lm_head is not None else tr.wte.weight).detach().to("cpu", torch.float64)  # [V, d]
        ln_f = getattr(tr, "ln_f", None)
        final_norm = _layernorm_linear(ln_f, n_embd) if ln_f is not None else torch.eye(n_embd, dtype=torch.float64)
        unembed = w_u @ final_norm
        unembed = unembed - unembed.mean(0, keepdim=True)  # logits are shift-invariant: drop the all-tokens direction
        rows = []
        for block in tr.h:
            attn = block.attn
            n_head = int(getattr(attn, "n_head", 0) or m.config.n_head)
            hd = n_embd // n_head
            w_qkv = attn.c_attn.weight.detach().to("cpu", torch.float64)  # [3d, d] (out, in)
            w_proj = attn.c_proj.weight.detach().to("cpu", torch.float64)  # [d, d]
            ln_1 = getattr(block, "ln_1", None)
            embed_in = (
                _layernorm_linear(ln_1, n_embd) if ln_1 is not None else torch.eye(n_embd, dtype=torch.float64)
            ) @ w_e.T  # [d, V]: residual input per token
            scores = []
            for h in range(n_head):
                w_v = w_qkv[2 * n_embd + h * hd : 2 * n_embd + (h + 1) * hd]  # [hd, d]
                w_o = w_proj[:, h * hd : (h + 1) * hd]  # [d, hd]
                small = w_v @ embed_in @ unembed @ w_o  # [hd, hd]; same nonzero spectrum as W_U W_O W_V W_E
                eig = torch.linalg.eigvals(small)
                denom = eig.abs().sum().item()
                # a head whose OV circuit does not reach the logits (zero, or only the shift direction) scores 0,
                # not the sign of rounding noise
                scale = (
                    torch.linalg.matrix_norm(w_v @ embed_in, 2) * torch.linalg.matrix_norm(unembed @ w_o, 2)
                ).item()
                scores.append(eig.real.sum().item() / denom if denom > 1e-9 * scale and denom > 0 else 0.0)
            rows.append(scores)
    return torch.tensor(rows, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------------------
# Model-level aggregates


def head_max(scores: Any) -> float:
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    s = s[~torch.isnan(s)]
    return float(s.max()) if s.numel() else float("nan")


def top_k_mean(scores: Any, k: int) -> float:
    """Mean of the k highest head scores (all heads when there are fewer than k)."""
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    s = s[~torch.isnan(s)]
    if not s.numel():
        return float("nan")
    return float(torch.topk(s, min(int(k), s.numel())).values.mean())


def aggregate(scores: Any, top_k: int) -> dict[str, float]:
    return {"max": head_max(scores), "top_mean": top_k_mean(scores, top_k)}


def to_nested(scores: Any) -> list[list[float | None]]:
    """[layer][head] plain floats (NaN becomes None) for JSON."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    return [[None if np.isnan(v) else float(v) for v in row] for row in s.tolist()]


__all__: Sequence[str] = [
    "aggregate",
    "copying_score",
    "head_max",
    "make_prefix_matching_batch",
    "prefix_matching_score",
    "prefix_matching_sums",
    "prefix_matching_targets",
    "previous_token_score",
    "previous_token_sums",
    "to_nested",
    "top_k_mean",
    "uniform_attention_prefix_score",
    "uniform_attention_previous_token_score",
]
