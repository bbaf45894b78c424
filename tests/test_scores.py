"""Known-answer tests of the per-head scorers (repeatlab/scores.py).

The centrepiece is a hand-built 2-layer attention-only GPT whose weights implement an exact previous-token head
(layer 0, head 0) and an exact induction head (layer 1, head 0); every other head has zero weights and therefore
exactly uniform causal attention. See `build_induction_model` for the construction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repeatlab import scores
from repeatlab.model import GPT, GPTConfig

VOCAB = 64
CONTEXT = 64
N_HEAD = 4
HEAD_DIM = 64  # >= VOCAB and >= CONTEXT: one-hot queries and keys fit in one head
N_EMBD = N_HEAD * HEAD_DIM
# residual stream layout: token one-hot | position one-hot | previous-token one-hot | balance | unused
T0, P0, S0, BAL = 0, VOCAB, VOCAB + CONTEXT, VOCAB + CONTEXT + VOCAB
MARGIN = 30.0  # attention logit gap between the intended key and every other key
COPY_GAIN = 10.0  # how strongly the induction head writes the attended token into the logits
LN_EPS = 1e-5


def build_induction_model(copy_sign: float = 1.0) -> GPT:
    """A 2-layer attention-only GPT with an exact previous-token head (L0H0) and induction head (L1H0).

    Pre-LayerNorm is handled by keeping every residual vector at mean 0 and a known norm: each one-hot written into
    the stream is balanced by -1 in a "balance" coordinate, so LayerNorm is a known constant scale s = 1/sqrt(|x|^2/d
    + eps), divided out of the hand-set weights.
      embeddings  wte[t] = e_T[t] - e_BAL, wpe[p] = e_P[p] - e_BAL                 |x0|^2 = 6
      L0H0        query(p) = e_p, key(j) = e_{j+1} (from positions): attends q -> q-1;
                  value = token one-hot; writes e_S[token at q-1] - e_BAL          |x1|^2 = 12
      L1H0        query(q) = e_{token q}, key(j) = e_{token at j-1} (K-composition with L0H0's output): attends to
                  the positions right after earlier occurrences of the current token; value = token one-hot at j;
                  writes COPY_GAIN * (e_T[token j] - e_BAL): the logit of the attended token goes up
      ln_f        gain 3; lm_head is tied to wte, so logit_u reads e_T[u] (the balance part is a shift).
    """
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            vocab_size=VOCAB,
            context=CONTEXT,
            n_layer=2,
            n_head=N_HEAD,
            n_embd=N_EMBD,
            attention_only=True,
            name="induction",
        )
    )
    s0 = 1.0 / math.sqrt(6.0 / N_EMBD + LN_EPS)
    s1 = 1.0 / math.sqrt(12.0 / N_EMBD + LN_EPS)
    q_, k_, v_ = 0, N_EMBD, 2 * N_EMBD  # row offsets of query, key, value in c_attn.weight (head 0: first HEAD_DIM)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        tr = model.transformer
        for t in range(VOCAB):
            tr.wte.weight[t, T0 + t] = 1.0
            tr.wte.weight[t, BAL] = -1.0
        for p in range(CONTEXT):
            tr.wpe.weight[p, P0 + p] = 1.0
            tr.wpe.weight[p, BAL] = -1.0
        for block in tr.h:
            block.ln_1.weight.fill_(1.0)
        tr.ln_f.weight.fill_(3.0)

        a0, a1 = tr.h[0].attn, tr.h[1].attn
        beta0 = MARGIN * math.sqrt(HEAD_DIM) / s0**2
        for i in range(CONTEXT):
            a0.c_attn.weight[q_ + i, P0 + i] = beta0  # query of position p: e_p
            if i >= 1:
                a0.c_attn.weight[k_ + i, P0 + i - 1] = 1.0  # key of position j: e_{j+1}
        for t in range(VOCAB):
            a0.c_attn.weight[v_ + t, T0 + t] = 1.0 / s0  # value: the token one-hot
            a0.c_proj.weight[S0 + t, t] = 1.0  # -> previous-token subspace
            a0.c_proj.weight[BAL, t] = -1.0

        beta1 = MARGIN * math.sqrt(HEAD_DIM) / s1**2
        for t in range(VOCAB):
            a1.c_attn.weight[q_ + t, T0 + t] = beta1  # query: current token
            a1.c_attn.weight[k_ + t, S0 + t] = 1.0  # key: the token before the key position
            a1.c_attn.weight[v_ + t, T0 + t] = 1.0 / s1  # value: the key position's token
            a1.c_proj.weight[T0 + t, t] = copy_sign * COPY_GAIN  # -> raise that token's logit
            a1.c_proj.weight[BAL, t] = -copy_sign * COPY_GAIN
    model.eval()
    return model


def random_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(
        GPTConfig(vocab_size=VOCAB, context=CONTEXT, n_layer=2, n_head=N_HEAD, n_embd=64, attention_only=True)
    ).eval()


def prefix_batch(n_samples=6, n_random=12, n_repeats=4, seed=0):
    counts = np.arange(VOCAB, dtype=np.int64) + 1  # distinct frequencies: 1..64 (id 0 is BOS, excluded anyway)
    return scores.make_prefix_matching_batch(
        counts, n_random, n_repeats, n_samples, generator=torch.Generator().manual_seed(seed)
    )


def patterns_of(model, tokens):
    with torch.no_grad():
        _, patterns = model.forward_with_attention(tokens)
    return patterns


def uniform_patterns(n_layer, n_head, length, batch=1):
    causal = torch.ones(length, length).tril()
    return (causal / causal.sum(-1, keepdim=True)).expand(n_layer, batch, n_head, length, length).clone()


# ----------------------------------------------------------------------------------------------------------------------
# The hand-built model


def test_hand_built_model_has_exact_previous_token_and_induction_heads():
    model = build_induction_model()
    tokens = prefix_batch()
    pats = patterns_of(model, tokens)
    prefix = scores.prefix_matching_score(pats, tokens)
    prev = scores.previous_token_score(pats)
    assert prefix.shape == prev.shape == (2, N_HEAD)
    assert prefix[1, 0] > 0.99  # the induction head
    assert prev[0, 0] > 0.99  # the previous-token head
    assert prev[1, 0] < 0.2 and prefix[0, 0] < 0.2  # and they are not each other
    uniform = scores.uniform_attention_prefix_score(12, 4)
    others = [(layer, h) for layer in range(2) for h in range(N_HEAD) if h != 0]
    for layer, h in others:  # zero-weight heads attend uniformly: the analytic value, exactly
        assert prefix[layer, h].item() == pytest.approx(uniform, abs=1e-6)
        assert prev[layer, h].item() == pytest.approx(
            scores.uniform_attention_previous_token_score(tokens.shape[1]), abs=1e-6
        )
    assert scores.head_max(prefix) == pytest.approx(prefix[1, 0].item())
    assert uniform < 0.2


def test_induction_model_copies_after_the_first_repeat():
    model = build_induction_model()
    g = torch.Generator().manual_seed(1)
    para = torch.randperm(VOCAB - 1, generator=g)[:9] + 1  # 9 distinct non-BOS tokens
    seq = torch.cat([torch.zeros(1, dtype=torch.long), para.repeat(5)]).unsqueeze(0)  # 46 tokens
    with torch.no_grad():
        loss = model.per_token_loss(seq[:, :-1], seq[:, 1:])[0]
    per_copy = loss.reshape(5, 9).mean(-1)
    assert per_copy[0] > 2.0  # nothing to copy yet
    # copy 2 opens with "last token -> first token", a bigram not seen before (1 of its 9 targets); the rest is exact
    assert per_copy[1] < per_copy[0] / 4 and loss[10:18].max() < 0.01
    assert per_copy[2:].max() < 0.01  # then exact copying


def test_copying_scores_of_the_hand_built_heads():
    model = build_induction_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = scores.copying_score(model)
    assert copy.shape == (2, N_HEAD)
    assert copy[1, 0] > 0.99  # OV raises the logit of the attended token
    assert abs(copy[0, 0]) < 0.01  # writes only into the previous-token subspace, never read by the unembedding
    assert torch.all(copy[:, 1:] == 0)  # zero heads
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    flipped = scores.copying_score(build_induction_model(copy_sign=-1.0))
    assert flipped[1, 0] < -0.99  # a head that suppresses the attended token


def test_random_model_scores_near_chance():
    model = random_model()
    tokens = prefix_batch(n_samples=4)
    pats = patterns_of(model, tokens)
    prefix = scores.prefix_matching_score(pats, tokens)
    prev = scores.previous_token_score(pats)
    uniform = scores.uniform_attention_prefix_score(12, 4)
    assert torch.allclose(prefix, torch.full_like(prefix, uniform), atol=0.02)
    assert torch.allclose(prev, torch.full_like(prev, scores.uniform_attention_previous_token_score(49)), atol=0.02)
    assert scores.head_max(prefix) < 0.2
    assert torch.all(scores.copying_score(model).abs() <= 1.0)


# ----------------------------------------------------------------------------------------------------------------------
# The scorers on hand-made patterns


def test_uniform_attention_prefix_score_matches_analytic_value():
    for n_random, n_repeats in [(25, 4), (3, 2), (5, 3)]:
        length = 1 + n_random * n_repeats
        tokens = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(1, n_random + 1).repeat(n_repeats)])
        got = scores.prefix_matching_score(uniform_patterns(1, 2, length), tokens)
        assert got.shape == (1, 2)
        expected = scores.uniform_attention_prefix_score(n_random, n_repeats)
        assert torch.allclose(got, torch.full_like(got, expected), atol=1e-12)
    # a hand-checked case: R = 2, K = 2, tokens [0, a, b, a, b]; queries 3 (targets {2}) and 4 (targets {3}):
    # uniform attention gives 1/4 and 1/5
    assert scores.uniform_attention_prefix_score(2, 2) == pytest.approx((1 / 4 + 1 / 5) / 2)


def test_prefix_matching_counts_all_earlier_occurrences_and_skips_fresh_queries():
    tokens = torch.tensor([0, 5, 6, 5, 6, 5])  # query 5 (token 5) has earlier occurrences at 1 and 3 -> keys 2, 4
    length = len(tokens)
    pat = torch.zeros(1, 1, length, length)
    pat[0, 0, :, 0] = 1.0  # attend BOS by default
    pat[0, 0, 5, 0], pat[0, 0, 5, 2], pat[0, 0, 5, 4] = 0.2, 0.3, 0.5  # 0.8 on targets
    pat[0, 0, 3, 0], pat[0, 0, 3, 2] = 0.0, 1.0  # query 3 (token 5, earlier at 1) -> key 2: 1.0
    # query 4 (token 6, earlier at 2 -> key 3) attends BOS: 0.0; queries 0-2 have no earlier occurrence
    got = scores.prefix_matching_score(pat, tokens)
    assert got.item() == pytest.approx((0.8 + 1.0 + 0.0) / 3)
    targets = scores.prefix_matching_targets(tokens)[0]
    assert targets[5].nonzero().flatten().tolist() == [2, 4]
    assert targets[:3].sum() == 0


def test_previous_token_score_and_layouts():
    length = 7
    pat = torch.zeros(length, length)
    pat[0, 0] = 1.0
    for q in range(1, length):
        pat[q, q - 1] = 1.0
    stacked = torch.stack([torch.stack([pat, uniform_patterns(1, 1, length)[0, 0, 0]])])  # [1 layer, 2 heads, Q, K]
    got = scores.previous_token_score(stacked)
    assert got[0, 0] == pytest.approx(1.0)
    assert got[0, 1] == pytest.approx(scores.uniform_attention_previous_token_score(length))
    per_layer = [stacked[0].unsqueeze(0).expand(3, -1, -1, -1)]  # list of [batch, head, Q, K]
    assert torch.allclose(scores.previous_token_score(per_layer), got)


def test_scorers_do_not_mutate_inputs():
    tokens = prefix_batch(n_samples=2, n_random=5, n_repeats=3)
    pats = [torch.rand(2, 2, 16, 16).softmax(-1), torch.rand(2, 2, 16, 16).softmax(-1)]
    pats_before = [p.clone() for p in pats]
    tokens_before = tokens.clone()
    scores.prefix_matching_score(pats, tokens)
    scores.previous_token_score(pats)
    scores.prefix_matching_sums(torch.stack(pats), tokens.numpy())
    for p, b in zip(pats, pats_before):
        assert torch.equal(p, b)
    assert torch.equal(tokens, tokens_before)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="patterns"):
        scores.previous_token_score(torch.rand(4, 4))
    with pytest.raises(ValueError, match="length"):
        scores.prefix_matching_score(uniform_patterns(1, 1, 5), torch.arange(6))


# ----------------------------------------------------------------------------------------------------------------------
# Prefix-matching samples and aggregates


def test_make_prefix_matching_batch_excludes_bos_and_extreme_frequencies():
    counts = np.zeros(VOCAB, dtype=np.int64)
    counts[0] = 10**6  # BOS/EOT: most frequent but never drawn
    counts[1:41] = np.arange(1, 41) * 10  # 40 seen tokens; 10% = 4 dropped at each end
    batch = scores.make_prefix_matching_batch(counts, 10, 3, 50, generator=torch.Generator().manual_seed(0))
    assert batch.shape == (50, 31) and batch.dtype == torch.long
    assert torch.all(batch[:, 0] == 0) and torch.all(batch[:, 1:] != 0)
    drawn = set(batch[:, 1:].unique().tolist())
    assert drawn <= set(range(5, 37))  # ids 1-4 (rarest) and 37-40 (most frequent) dropped, unseen 41+ never
    assert len(drawn) > 25
    for row in batch:
        block = row[1:11]
        assert len(set(block.tolist())) == 10  # distinct within a sample
        assert torch.equal(row[1:], block.repeat(3))
    again = scores.make_prefix_matching_batch(counts, 10, 3, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(batch, again)  # seeded


def test_aggregates():
    s = torch.tensor([[0.1, 0.9], [0.5, float("nan")]])
    assert scores.head_max(s) == pytest.approx(0.9)
    assert scores.top_k_mean(s, 2) == pytest.approx(0.7)
    assert scores.top_k_mean(s, 10) == pytest.approx(0.5)
    assert scores.aggregate(s, 1) == {"max": pytest.approx(0.9), "top_mean": pytest.approx(0.9)}
    assert scores.to_nested(s) == [[pytest.approx(0.1), pytest.approx(0.9)], [pytest.approx(0.5), None]]
