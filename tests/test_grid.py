"""Grid points: the study's cross product, content-addressed ids that ignore how a run is executed."""

import dataclasses

from repeatlab import config
from repeatlab.grid import grid_points, make_point, resolve_models

STUDY = {
    "name": "g",
    "models": [
        {"n_layer": 1, "n_embd": 32, "n_head": 2},
        {"n_layer": 2, "n_embd": 32, "n_head": 2, "attention_only": True, "fractions": [0.0, 0.5]},
    ],
    "grid": {
        "fractions": [0.0, 0.1, 0.5],
        "epochs": [2, 16],
        "seeds": [0],
        "extra_seeds": {"seeds": [1], "fractions": [0.0, 0.5], "epochs": [16]},
    },
}


def points(data=STUDY):
    return grid_points(config.from_dict(data), "corpus123", "file:///c", vocab_size=256)


def test_cross_product_with_baselines_extra_seeds_and_restricted_models():
    pts = points()
    key = {(p["model"]["name"], p["fraction"], p["epochs"], p["seed"]) for p in pts}
    assert len(key) == len(pts)
    gpt, attn = (m["name"] for m in resolve_models(config.from_dict(STUDY), 256))
    # GPT: baseline x 2 seeds + f=0.1 x 2 E + f=0.5 x 2 E + 1 extra seed at (0.5, 16)
    assert sum(p["model"]["name"] == gpt for p in pts) == 2 + 2 + 2 + 1
    # attention-only model restricted to f in {0, 0.5}
    assert {p["fraction"] for p in pts if p["model"]["name"] == attn} == {0.0, 0.5}
    assert (gpt, 0.5, 16.0, 1) in key and (gpt, 0.1, 16.0, 1) not in key and (gpt, 0.5, 2.0, 1) not in key
    assert all(p["epochs"] == 0.0 for p in pts if p["fraction"] == 0)


def test_controls_add_one_unique_only_point_per_model_fraction_and_seed():
    data = {**STUDY, "grid": {**STUDY["grid"], "controls": True}}
    controls = [p for p in points(data) if p["control"]]
    # GPT: f=0.1 (seed 0) and f=0.5 (seeds 0, 1); attention-only: f=0.5 (seeds 0, 1)
    assert len(controls) == 5
    assert all(p["epochs"] == 0.0 and p["fraction"] > 0 for p in controls)


def test_point_ids_are_stable_and_ignore_execution_settings():
    cfg = config.from_dict(STUDY)
    model = resolve_models(cfg, 256)[0]
    a = make_point(cfg, model, "c", "file:///c", 0.5, 16, 0)
    b = make_point(cfg, model, "c", "file:///elsewhere", 0.5, 16, 0)
    faster = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, nproc_per_node=2, threads_per_rank=4, checkpoint_every=7)
    )
    c = make_point(faster, model, "c", "file:///c", 0.5, 16, 0)
    assert a["point_id"] == b["point_id"] == c["point_id"]
    other_lr = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, learning_rate=1e-4))
    assert make_point(other_lr, model, "c", "file:///c", 0.5, 16, 0)["point_id"] != a["point_id"]
    assert make_point(cfg, model, "c", "file:///c", 0.5, 16, 1)["point_id"] != a["point_id"]
    assert make_point(cfg, model, "other-corpus", "file:///c", 0.5, 16, 0)["point_id"] != a["point_id"]


def test_models_carry_both_parameter_conventions():
    from repeatlab.model import GPT, GPTConfig

    m = resolve_models(config.from_dict(STUDY), 256)[0]
    module = GPT(
        GPTConfig(vocab_size=256, context=m["context"], n_layer=m["n_layer"], n_head=m["n_head"], n_embd=m["n_embd"])
    )
    assert m["n_params_nonembed"] == module.num_params(non_embedding=True)
    assert m["n_params_total"] == module.num_params(non_embedding=False)


def _budget_study(total_tokens, context, fractions, epochs):
    return {
        "name": "b",
        "models": [{"n_layer": 1, "n_embd": 32, "n_head": 2}],
        "budget": {"total_tokens": total_tokens, "context": context, "batch_tokens": context * 4},
        "grid": {"fractions": fractions, "epochs": epochs, "seeds": [0]},
    }


def test_check_points_warns_where_whole_sequences_change_E():
    from repeatlab.grid import check_points

    # T = 5M, context 256: 19531 sequences; f = 0.1 -> 1953 repeated exposures.
    warnings = check_points(points(_budget_study(5_000_000, 256, [0.0, 0.1], [64, 1024, 2048, 3000])))
    # E = 64: 31 sequences, realized 63.0 (fine); E = 1024: 2 sequences, 976.5 (within 10%): no warning
    assert not any("E = 64:" in w or "E = 1024:" in w for w in warnings)
    # E = 2048: 1 sequence, realized 1953 (within 10%) but a single sequence
    assert any(w.startswith("f = 0.1, E = 2048: the repeated subset is 1 sequence (256 tokens)") for w in warnings)
    # E = 3000: round(0.651) = 1 sequence, realized 1953: 35% off
    assert any(
        w.startswith("f = 0.1, E = 3000: the repeated subset rounds to 1 sequence(s), so E is 1953") for w in warnings
    )


def test_check_points_names_an_impossible_point():
    import pytest

    from repeatlab.errors import PlanError
    from repeatlab.grid import check_points

    with pytest.raises(PlanError, match=r"grid point .*f=0.1 .*E=4096.*shorter than one sequence"):
        check_points(points(_budget_study(5_000_000, 256, [0.0, 0.1], [64, 4096])))
