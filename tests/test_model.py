"""The GPT, its attention-only variant, parameter counts and the size family (repeatlab.model)."""

import itertools
import json
import math

import pytest
import torch

from repeatlab.config import FamilyConfig, ModelSpec
from repeatlab.errors import ConfigError
from repeatlab.model import (
    GPT,
    GPTConfig,
    family_shape,
    list_family,
    non_embedding_params,
    resolve_model,
    training_flops_per_token,
)

VOCAB, CONTEXT = 16, 12


def tiny(attention_only=False, n_layer=2, n_embd=8, n_head=2, mlp_ratio=4, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(
        vocab_size=VOCAB,
        context=CONTEXT,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        mlp_ratio=mlp_ratio,
        attention_only=attention_only,
    )
    return GPT(cfg).eval()


def tokens(batch=3, length=CONTEXT, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def perturb_weights(model, seed=2):
    """Fresh-init biases are zero and residual projections small: give every parameter O(1) values so the
    comparisons below exercise all of them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


# ---------------------------------------------------------------------------------------------------------------------
# Forward paths


@pytest.mark.parametrize("attention_only", [False, True])
def test_pattern_path_gives_the_fast_path_logits(attention_only):
    model = tiny(attention_only)
    perturb_weights(model)
    idx = tokens()
    with torch.no_grad():
        fast, _ = model(idx)
        slow, patterns = model.forward_with_attention(idx)
    assert fast.shape == (3, CONTEXT, VOCAB)
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()
    assert len(patterns) == 2
    assert all(p.shape == (3, 2, CONTEXT, CONTEXT) for p in patterns)


@pytest.mark.parametrize("attention_only", [False, True])
def test_patterns_are_causal_probability_rows(attention_only):
    model = tiny(attention_only)
    perturb_weights(model)
    with torch.no_grad():
        _, patterns = model.forward_with_attention(tokens())
    upper = torch.ones(CONTEXT, CONTEXT, dtype=torch.bool).triu(diagonal=1)
    for p in patterns:
        assert torch.allclose(p.sum(-1), torch.ones(p.shape[:-1]), atol=1e-6)
        assert torch.all(p[..., upper] == 0)
        assert torch.all(p >= 0)
        assert torch.all(p[..., 0, 0] == 1)  # the first query can only attend to itself


@pytest.mark.parametrize("attention_only", [False, True])
def test_a_future_token_does_not_change_earlier_logits(attention_only):
    model = tiny(attention_only)
    perturb_weights(model)
    idx = tokens(batch=1)
    changed = idx.clone()
    t = 5
    changed[0, t] = (idx[0, t] + 1) % VOCAB
    with torch.no_grad():
        before, _ = model(idx)
        after, _ = model(changed)
        before_slow, _ = model.forward_with_attention(idx)
        after_slow, _ = model.forward_with_attention(changed)
    assert torch.equal(before[:, :t], after[:, :t])
    assert torch.equal(before_slow[:, :t], after_slow[:, :t])
    assert not torch.allclose(before[:, t:], after[:, t:])  # the change is visible from position t on


def test_per_token_loss_mean_is_the_loss():
    model = tiny()
    idx, targets = tokens(seed=3), tokens(seed=4)
    with torch.no_grad():
        logits, loss = model(idx, targets)
        per_token = model.per_token_loss(idx, targets)
    assert per_token.shape == (3, CONTEXT)
    assert torch.allclose(per_token.mean(), loss, atol=1e-6)
    manual = -torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(per_token, manual, atol=1e-5)
    assert loss.item() == pytest.approx(math.log(VOCAB), abs=0.1)  # a fresh model predicts about uniformly


def test_shorter_sequences_work_and_longer_ones_are_refused():
    model = tiny()
    logits, _ = model(tokens(length=4))
    assert logits.shape == (3, 4, VOCAB)
    with pytest.raises(ConfigError, match="context"):
        model(tokens(length=CONTEXT + 1))


def test_gradients_reach_every_parameter():
    model = tiny().train()
    _, loss = model(tokens(seed=5), tokens(seed=6))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


# ---------------------------------------------------------------------------------------------------------------------
# Structure, init, optimizer


def test_attention_only_blocks_have_no_mlp_and_no_ln_2():
    names = [n for n, _ in tiny(attention_only=True).named_parameters()]
    assert not any("mlp" in n or "ln_2" in n for n in names)
    assert "transformer.h.1.attn.c_attn.weight" in names
    full = [n for n, _ in tiny().named_parameters()]
    assert "transformer.h.1.mlp.c_fc.weight" in full and "transformer.h.1.ln_2.weight" in full


def test_gpt2_parameter_names_and_tied_embedding():
    model = tiny()
    names = set(model.state_dict())
    for expected in (
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_proj.bias",
        "transformer.h.0.ln_2.bias",
        "transformer.h.0.mlp.c_fc.weight",
        "transformer.h.0.mlp.c_proj.weight",
        "transformer.ln_f.weight",
        "lm_head.weight",
    ):
        assert expected in names
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.bias is None


def test_same_seed_same_init_and_other_seed_differs():
    a, b, c = tiny(seed=7), tiny(seed=7), tiny(seed=8)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.transformer.wte.weight, c.transformer.wte.weight)


@pytest.mark.parametrize("attention_only,branches", [(False, 2 * 4), (True, 4)])
def test_init_scales_residual_projections(attention_only, branches):
    model = tiny(attention_only, n_layer=4, n_embd=64, n_head=4)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    projections = torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith("c_proj.weight")])
    assert projections.std().item() == pytest.approx(0.02 / math.sqrt(branches), rel=0.05)
    assert all(torch.all(p == 0) for n, p in model.named_parameters() if n.endswith(".bias"))


def test_optimizer_decays_matrices_only_and_covers_every_parameter_once():
    model = tiny()
    opt = model.configure_optimizer(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type="cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))  # the tied matrix appears once
    assert set(grouped) == {id(p) for p in model.parameters()}
    assert any(p is model.transformer.wte.weight for p in decay["params"])
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["betas"] == (0.9, 0.95)


# ---------------------------------------------------------------------------------------------------------------------
# Parameter counts and FLOPs


def test_parameter_counts_match_a_hand_count():
    d, L = 8, 2
    # full block: ln_1 (2d) + c_attn (d*3d + 3d) + attn.c_proj (d*d + d) + ln_2 (2d) + c_fc (d*4d + 4d)
    #             + mlp.c_proj (4d*d + d) = 12 d^2 + 13 d
    full_block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
    assert full_block == 12 * d * d + 13 * d == 872
    attn_block = 2 * d + (3 * d * d + 3 * d) + (d * d + d)
    assert attn_block == 4 * d * d + 6 * d == 304
    ln_f = 2 * d
    embeddings = VOCAB * d + CONTEXT * d  # wte (tied with lm_head, once) + wpe

    full, attn = tiny(), tiny(attention_only=True)
    assert full.num_params(non_embedding=True) == L * full_block + ln_f == 1760
    assert full.num_params(non_embedding=False) == 1760 + embeddings == 1984
    assert attn.num_params(non_embedding=True) == L * attn_block + ln_f == 624
    assert attn.num_params(non_embedding=False) == 624 + embeddings
    assert full.config.n_params_nonembed == 1760 and full.config.n_params_total == 1984


@pytest.mark.parametrize(
    "n_layer,n_embd,n_head,mlp_ratio,attention_only",
    [
        (1, 4, 1, 4, False),
        (2, 8, 2, 4, True),
        (3, 24, 3, 2, False),
        (2, 16, 4, 1, False),
        (4, 32, 2, 4, True),
    ],
)
def test_closed_form_equals_the_module_count(n_layer, n_embd, n_head, mlp_ratio, attention_only):
    model = tiny(attention_only, n_layer=n_layer, n_embd=n_embd, n_head=n_head, mlp_ratio=mlp_ratio)
    assert non_embedding_params(n_layer, n_embd, mlp_ratio, attention_only) == model.num_params(True)
    assert model.config.n_params_total == model.num_params(False)


def test_flops_per_token_is_kaplans_formula():
    model = tiny()
    assert model.flops_per_token() == 6 * 1760 + 6 * 2 * CONTEXT * 8
    assert training_flops_per_token(1000, 3, 16, 64) == 6 * 1000 + 6 * 3 * 64 * 16


# ---------------------------------------------------------------------------------------------------------------------
# Config validation


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"n_embd": 10, "n_head": 4}, "n_embd"),
        ({"n_layer": 0}, "n_layer"),
        ({"n_head": 0}, "n_head"),
        ({"n_embd": -8}, "n_embd"),
        ({"vocab_size": 1}, "vocab_size"),
        ({"context": 0}, "context"),
        ({"context": 1 << 20}, "context"),
        ({"n_layer": True}, "n_layer"),
        ({"n_embd": 8.0}, "n_embd"),
        ({"mlp_ratio": 0}, "mlp_ratio"),
        ({"attention_only": "yes"}, "attention_only"),
    ],
)
def test_bad_config_raises_config_error_naming_the_field(overrides, field):
    args = {"vocab_size": VOCAB, "context": CONTEXT, "n_layer": 2, "n_head": 2, "n_embd": 8} | overrides
    with pytest.raises(ConfigError, match=rf"^model\.{field}: .* is not allowed: "):
        GPTConfig(**args)


def test_config_dict_round_trip():
    cfg = GPTConfig(vocab_size=VOCAB, context=CONTEXT, n_layer=2, n_head=2, n_embd=8, name="L2-E8-H2")
    data = cfg.to_dict()
    assert data["n_params_nonembed"] == 1760
    assert GPTConfig.from_dict(json.loads(json.dumps(data))) == cfg
    with pytest.raises(ConfigError, match="model.dropout: unknown field"):
        GPTConfig.from_dict({**data, "dropout": 0.1})
    with pytest.raises(ConfigError, match="model.n_head: missing"):
        GPTConfig.from_dict({k: v for k, v in data.items() if k != "n_head"})


# ---------------------------------------------------------------------------------------------------------------------
# Family and resolution

FAMILY = FamilyConfig(aspect_ratio=32, head_dim=16, mlp_ratio=4)


def test_family_shape_rounds_width_up_to_whole_heads():
    assert family_shape(2, 32, 16) == (2, 64, 4)
    assert family_shape(1, 10, 16) == (1, 16, 1)
    assert family_shape(3, 10, 16) == (3, 32, 2)
    for depth in range(1, 13):
        n_layer, n_embd, n_head = family_shape(depth, 24, 16)
        assert n_layer == depth and n_embd % 16 == 0 and n_embd >= depth * 24 and n_embd - depth * 24 < 16
        assert n_head * 16 == n_embd
    with pytest.raises(ConfigError, match="family.head_dim"):
        family_shape(2, 32, 0)


@pytest.mark.parametrize("attention_only", [False, True])
def test_family_grows_strictly_and_counts_are_exact(attention_only):
    rows = list_family(FAMILY, vocab_size=256, context=128, max_depth=12, attention_only=attention_only)
    assert [r["n_layer"] for r in rows] == list(range(1, 13))
    sizes = [r["n_params_nonembed"] for r in rows]
    assert all(a < b for a, b in itertools.pairwise(sizes))
    assert all(r["n_params_total"] == r["n_params_nonembed"] + (256 + 128) * r["n_embd"] for r in rows)
    assert rows[1]["name"] == ("d2-attn" if attention_only else "d2")
    r = rows[1]
    assert r["flops_per_token"] == 6 * r["n_params_nonembed"] + 6 * r["n_layer"] * 128 * r["n_embd"]
    torch.manual_seed(0)
    small = GPT(
        GPTConfig(
            vocab_size=256,
            context=128,
            n_layer=r["n_layer"],
            n_head=r["n_head"],
            n_embd=r["n_embd"],
            attention_only=attention_only,
        )
    )
    assert small.num_params(True) == r["n_params_nonembed"] and small.num_params(False) == r["n_params_total"]


def test_target_params_picks_the_nearest_member_in_log_space():
    rows = list_family(FAMILY, 256, 128, max_depth=10)
    by_depth = {r["n_layer"]: r["n_params_nonembed"] for r in rows}
    for depth, n in by_depth.items():
        cfg = resolve_model(ModelSpec(target_params=float(n)), FAMILY, 256, 128)
        assert (cfg.n_layer, cfg.name) == (depth, f"d{depth}")
    # between d3 and d4: the geometric midpoint separates them
    low, high = by_depth[3], by_depth[4]
    mid = math.sqrt(low * high)
    assert resolve_model(ModelSpec(target_params=mid * 0.99), FAMILY, 256, 128).n_layer == 3
    assert resolve_model(ModelSpec(target_params=mid * 1.01), FAMILY, 256, 128).n_layer == 4
    # below the arithmetic midpoint (where a linear-nearest choice would pick d3) but above the geometric one
    between = (mid + (low + high) / 2) / 2
    assert abs(between - low) < abs(between - high)
    assert resolve_model(ModelSpec(target_params=between), FAMILY, 256, 128).n_layer == 4
    # the study's label is kept; attention-only resolves in its own family
    assert resolve_model(ModelSpec(name="small", target_params=1e5), FAMILY, 256, 128).name == "small"
    attn = resolve_model(ModelSpec(target_params=by_depth[2], attention_only=True), FAMILY, 256, 128)
    assert attn.attention_only and attn.name.endswith("-attn")
    assert attn.n_params_nonembed == min(
        (r["n_params_nonembed"] for r in list_family(FAMILY, 256, 128, 10, attention_only=True)),
        key=lambda n: abs(math.log(n / by_depth[2])),
    )


def test_target_params_out_of_range():
    with pytest.raises(ConfigError, match=r"^models\[1\]\.target_params: 10\.0 is not allowed: the smallest"):
        resolve_model(ModelSpec(target_params=10.0), FAMILY, 256, 128, where="models[1]")
    with pytest.raises(ConfigError, match="target_params"):
        resolve_model(ModelSpec(target_params=1e30), FAMILY, 256, 128)
    with pytest.raises(ConfigError, match="target_params"):
        resolve_model(ModelSpec(target_params=-5.0), FAMILY, 256, 128)


def test_resolve_explicit_shapes_and_names():
    cfg = resolve_model(ModelSpec(n_layer=2, n_embd=64, n_head=4), FAMILY, 256, 128)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.name, cfg.attention_only) == (2, 64, 4, "L2-E64-H4", False)
    assert cfg.vocab_size == 256 and cfg.context == 128 and cfg.mlp_ratio == 4
    attn = resolve_model(ModelSpec(n_layer=2, n_embd=64, n_head=4, attention_only=True), FAMILY, 256, 128)
    assert attn.name == "L2-E64-H4-attn" and attn.attention_only
    assert resolve_model(ModelSpec(name="tiny", n_layer=1, n_embd=8, n_head=2), FAMILY, 256, 128).name == "tiny"

    d4 = resolve_model(ModelSpec(name="d4"), FAMILY, 256, 128)
    assert (d4.n_layer, d4.n_embd, d4.n_head, d4.name) == (4, 128, 8, "d4")
    by_name = resolve_model(ModelSpec(name="L2-E64-H4-attn"), FAMILY, 256, 128)
    assert by_name == attn
    assert resolve_model(ModelSpec(name="d2-attn"), FAMILY, 256, 128).attention_only


@pytest.mark.parametrize(
    "spec,pattern",
    [
        (ModelSpec(name="gpt2-small"), r"^models\[0\]\.name: 'gpt2-small' is not allowed: 'd\{depth\}'"),
        (ModelSpec(name="d0"), r"^models\[0\]\.name: 'd0'"),
        (ModelSpec(name="L2-E30-H4"), r"^models\[0\]\.name: 'L2-E30-H4'.*multiple"),
        (ModelSpec(), r"^models\[0\]: no model given"),
        (ModelSpec(n_layer=2, n_embd=64), r"^models\[0\]: .*needs n_layer, n_embd and n_head"),
        (ModelSpec(n_layer=2, n_embd=30, n_head=4), r"^models\[0\]\.n_embd: 30 is not allowed"),
        (ModelSpec(n_layer=0, n_embd=64, n_head=4), r"^models\[0\]\.n_layer: 0 is not allowed"),
        (ModelSpec(n_layer=2, n_embd=64, n_head=4, target_params=1e5), r"^models\[0\]\.target_params: .*not both"),
        (ModelSpec(name="L3-E64-H4", n_layer=2, n_embd=64, n_head=4), r"^models\[0\]\.name: .*different shape"),
    ],
)
def test_resolve_bad_specs(spec, pattern):
    with pytest.raises(ConfigError, match=pattern):
        resolve_model(spec, FAMILY, 256, 128, where="models[0]")


def test_resolve_bad_vocab_or_context():
    with pytest.raises(ConfigError, match=r"^model\.context: 0 is not allowed"):
        resolve_model(ModelSpec(name="d2"), FAMILY, 256, 0)
    with pytest.raises(ConfigError, match=r"^model\.vocab_size: 1 is not allowed"):
        resolve_model(ModelSpec(n_layer=2, n_embd=64, n_head=4), FAMILY, 1, 128)


# ---------------------------------------------------------------------------------------------------------------------
# CLI (`repeatlab family`, defined in repeatlab.cli)

from repeatlab import cli  # noqa: E402
from repeatlab.cli import main  # noqa: E402


def test_cli_json_and_table(capsys):
    assert main(["family", "--json", "--max-depth", "5", "--aspect-ratio", "16", "--head-dim", "8"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["d1", "d2", "d3", "d4", "d5"]
    assert rows == list_family(FamilyConfig(aspect_ratio=16, head_dim=8), 256, 128, max_depth=5)

    assert main(["family", "--max-depth", "3", "--attention-only", "--vocab-size", "512", "--context", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "layers", "width", "heads"]
    assert lines[3].split()[0] == "d3-attn"
    expected = list_family(FamilyConfig(), 512, 64, max_depth=3, attention_only=True)[2]["n_params_nonembed"]
    assert f"{expected:,}" in lines[3]


def test_cli_bad_option_raises_config_error():
    with pytest.raises(ConfigError, match="--head-dim: 0 is not allowed"):
        cli.cmd_family(cli.build_parser().parse_args(["family", "--head-dim", "0"]))
    assert main(["family", "--head-dim", "0"]) == 2
