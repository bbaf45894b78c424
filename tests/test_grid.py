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
    "grid": {"fractions": [0.0, 0.1, 0.5], "epochs": [2, 16], "seeds": [0],
             "extra_seeds": {"seeds": [1], "fractions": [0.0, 0.5], "epochs": [16]}},
}


def points(data=STUDY):
    return grid_points(config.from_dict(data), "corpus123", "file:///c", vocab_size=256)


def test_cross_product_with_baselines_extra_seeds_and_restricted_models():
    pts = points()
    key = {(p["model"]["name"], p["fraction"], p["epochs"], p["seed"]) for p in pts}
    assert len(key) == len(pts)
    gpt, attn = resolve_models(config.from_dict(STUDY), 256)[0]["name"], resolve_models(config.from_dict(STUDY), 256)[1]["name"]
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
    faster = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, nproc_per_node=2, threads_per_rank=4,
                                                                 checkpoint_every=7))
    c = make_point(faster, model, "c", "file:///c", 0.5, 16, 0)
    assert a["point_id"] == b["point_id"] == c["point_id"]
    other_lr = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, learning_rate=1e-4))
    assert make_point(other_lr, model, "c", "file:///c", 0.5, 16, 0)["point_id"] != a["point_id"]
    assert make_point(cfg, model, "c", "file:///c", 0.5, 16, 1)["point_id"] != a["point_id"]
    assert make_point(cfg, model, "other-corpus", "file:///c", 0.5, 16, 0)["point_id"] != a["point_id"]


def test_models_carry_both_parameter_conventions():
    from repeatlab.model import GPT, GPTConfig

    m = resolve_models(config.from_dict(STUDY), 256)[0]
    module = GPT(GPTConfig(vocab_size=256, context=m["context"], n_layer=m["n_layer"], n_head=m["n_head"],
                           n_embd=m["n_embd"]))
    assert m["n_params_nonembed"] == module.num_params(non_embedding=True)
    assert m["n_params_total"] == module.num_params(non_embedding=False)
