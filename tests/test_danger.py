"""repeatlab/danger.py: "is (N, f, E) dangerous?" from a synthetic study with a known region and damage, from the
paper's published region without a study, and one-line errors for bad inputs."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

from repeatlab import analyze, danger, storage
from repeatlab.cli import main as repeatlab_main
from repeatlab.errors import AnalysisError

sys.path.insert(0, os.path.dirname(__file__))
import synthetic_study as syn


@pytest.fixture(scope="module")
def analysis():
    return analyze.analyze_study(syn.synthetic_records(), study="synthetic")


def study_point(analysis, fraction, epochs, **match):
    """The study's repeated-data point at (f, E) whose fields equal `match` (n_params=..., model=...)."""
    return next(
        p
        for p in analysis["points"]
        if p["kind"] == "repeated"
        and p["fraction"] == fraction
        and p["epochs"] == epochs
        and all(p[k] == v for k, v in match.items())
    )


def worst_multiplier(analysis, n, f, e):
    return study_point(analysis, f, e, n_params=n)["metrics"]["test_loss"]["multiplier"]


def test_inside_the_fitted_region(analysis):
    n = 1e6
    r = danger.assess(n, 0.1, 30.0, analysis)  # E = 30 is the known peak at N = 1e6
    assert r["source"] == "study" and r["study"] == "synthetic" and r["study_fraction"] == 0.1
    assert r["in_region"] is True and r["extrapolated"] is False
    assert r["left_edge"] == pytest.approx(syn.LEFT_K * n**syn.PEAK_ALPHA, rel=1e-6)
    assert r["right_edge"] == pytest.approx(syn.RIGHT_K * n**syn.PEAK_ALPHA, rel=1e-6)
    assert r["left_basis"].startswith("fitted E = ")
    assert "IN the poor-performance region" in r["answer"] and "study synthetic" in r["answer"]


@pytest.mark.parametrize("epochs", [1.0, 2.0, 1000.0, 16384.0])
def test_outside_the_fitted_region(analysis, epochs):
    r = danger.assess(1e6, 0.1, epochs, analysis)  # the region at N = 1e6 is E = 4.06 .. 222
    assert r["in_region"] is False
    assert "outside the poor-performance region" in r["answer"]


def test_edges_move_with_n(analysis):
    small, large = (danger.assess(n, 0.5, 10.0, analysis) for n in (1e5, 3e6))
    assert small["left_edge"] > large["left_edge"] and small["right_edge"] > large["right_edge"]
    assert small["in_region"] is False and large["in_region"] is True  # E = 10 is below 1e5's left edge 12.8


def test_predicted_multiplier(analysis):
    # on a study point: the study's own multiplier
    r = danger.assess(1e6, 0.5, 32.0, analysis)
    assert r["multiplier"] == pytest.approx(worst_multiplier(analysis, 1e6, 0.5, 32.0))
    assert r["n_eff"] == pytest.approx(1e6 / r["multiplier"])
    assert r["multiplier"] > 3  # the synthetic damage at its peak: 0.2 nats, ~3.2x at this size
    assert f"{r['multiplier']:.2f}x smaller" in r["answer"]
    # between grid points: between its neighbours, in (log N, log E)
    mid = danger.assess(math.sqrt(1e6 * 3e6), 0.5, 32.0, analysis)
    lo, hi = sorted([worst_multiplier(analysis, 1e6, 0.5, 32.0), worst_multiplier(analysis, 3e6, 0.5, 32.0)])
    assert lo < mid["multiplier"] < hi and mid["extrapolated"] is False
    # far from the peak: hardly any damage
    assert danger.assess(1e6, 0.5, 16384.0, analysis)["multiplier"] == pytest.approx(1.0, abs=0.01)


def test_extrapolation_beyond_the_study(analysis):
    big = danger.assess(1e8, 0.1, 3.0, analysis)
    assert big["extrapolated"] is True and "EXTRAPOLATED" in big["answer"]
    assert any("outside the study's sizes" in note for note in big["notes"])
    assert big["left_edge"] == pytest.approx(syn.LEFT_K * 1e8**syn.PEAK_ALPHA, rel=1e-6)  # the fitted law
    many = danger.assess(1e6, 0.1, 1e6, analysis)
    assert many["extrapolated"] is True and any("E range" in note for note in many["notes"])


def test_fraction_not_in_the_study(analysis):
    r = danger.assess(1e6, 0.4, 30.0, analysis)
    assert r["study_fraction"] == 0.5 and "nearest fraction f = 0.5" in r["fraction_note"]
    assert danger.assess(1e6, 0.5, 30.0, analysis)["fraction_note"] is None


def test_nothing_repeated():
    r = danger.assess(1e6, 0.0, 30.0)
    assert r["in_region"] is False and "nothing is repeated" in r["answer"]


def test_study_without_baseline_cannot_say():
    no_base = analyze.analyze_study(syn.synthetic_records(baseline=False), study="nobase")
    r = danger.assess(1e6, 0.1, 30.0, no_base)
    assert r["in_region"] is None and r["multiplier"] is None
    assert "unknown danger" in r["answer"] and any("no f = 0 baseline" in n for n in r["notes"])


def test_paper_region_without_a_study():
    n = 8e8
    r = danger.assess(n, 0.1, 100.0)  # the paper's headline: 800M, 0.1 % of the data repeated 100 times
    assert r["source"] == "paper" and r["in_region"] is True and r["extrapolated"] is False
    assert r["left_edge"] == pytest.approx(4.2e6 * n**-0.56)
    assert r["right_edge"] == pytest.approx(5.1e7 * n**-0.50)
    assert r["multiplier"] is None
    assert any(note.startswith("No study given: the paper's published region") for note in r["notes"])
    assert "the paper's published region" in r["answer"]
    assert danger.assess(n, 0.1, 2.0)["in_region"] is False
    assert danger.assess(n, 0.1, 5000.0)["in_region"] is False
    assert "f = 10%" in danger.assess(n, 0.5, 100.0)["fraction_note"]
    far = danger.assess(1e11, 0.1, 10.0)
    assert far["extrapolated"] is True and "EXTRAPOLATED" in far["answer"]


def test_cli_without_a_study_says_so(capsys):
    assert repeatlab_main(["danger", "--params", "8e8", "--fraction", "0.1", "--epochs", "100"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("N = 8e+08, f = 0.1, E = 100 is IN the poor-performance region")
    assert "note: No study given" in out


def test_cli_with_a_study(tmp_path, analysis, capsys):
    url = str(tmp_path / "analysis.json")
    storage.write_json(url, analysis)
    assert (
        repeatlab_main(["danger", "--params", "1e6", "--fraction", "0.1", "--epochs", "30", "--study", url, "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads(json.dumps(danger.assess(1e6, 0.1, 30, analysis)))
    assert result["in_region"] is True


@pytest.mark.parametrize(
    "args, field, allowed",
    [
        (["--params", "-5", "--fraction", "0.1", "--epochs", "10"], "--params", "> 0"),
        (["--params=-5", "--fraction", "0.1", "--epochs", "10"], "--params", "> 0"),
        (["--params", "0", "--fraction", "0.1", "--epochs", "10"], "--params", "> 0"),
        (["--params", "big", "--fraction", "0.1", "--epochs", "10"], "--params", "> 0"),
        (["--params", "1e9", "--fraction", "1", "--epochs", "10"], "--fraction", "[0, 1)"),
        (["--params", "1e9", "--fraction", "-0.1", "--epochs", "10"], "--fraction", "[0, 1)"),
        (["--params", "1e9", "--fraction", "nan", "--epochs", "10"], "--fraction", "[0, 1)"),
        (["--params", "1e9", "--fraction", "0.1", "--epochs", "0.5"], "--epochs", ">= 1"),
        (["--params", "1e9", "--fraction", "0.1", "--epochs", "many"], "--epochs", ">= 1"),
        (["--params", "1e9", "--fraction", "0.1", "--epochs", "inf"], "--epochs", ">= 1"),
    ],
)
def test_bad_inputs_give_one_line_errors(capsys, args, field, allowed):
    rc = repeatlab_main(["danger", *args])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2 and captured.out == ""
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"repeatlab danger: error: {field}:")
    assert allowed in err


def test_bad_inputs_in_the_api():
    with pytest.raises(AnalysisError, match=r"--epochs: .* must be a number >= 1"):
        danger.assess(1e6, 0.1, None)


def test_missing_or_wrong_study_file(tmp_path, capsys):
    rc = repeatlab_main(
        ["danger", "--params", "1e6", "--fraction", "0.1", "--epochs", "30", "--study", str(tmp_path / "none.json")]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "run `repeatlab analyze` first" in err
    other = tmp_path / "other.json"
    other.write_text('{"points": []}')
    rc = repeatlab_main(["danger", "--params", "1e6", "--fraction", "0.1", "--epochs", "30", "--study", str(other)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not an analysis.json" in err


# ----------------------------------------------------------------------------------------------------------------------
# Against the archived paper-small analysis: edges the grid does not reach, the nearest size's edge, damage in nats

PAPER_SMALL = os.path.join(
    os.path.dirname(__file__), "..", "docs", "results", "paper-small", "studies", "paper-small", "analysis.json"
)


@pytest.fixture(scope="module")
def paper_small():
    with open(PAPER_SMALL) as f:
        return json.load(f)


def _point(analysis, model, fraction, epochs):
    return study_point(analysis, fraction, epochs, model=model)


def test_a_right_edge_beyond_the_grid_is_a_bound_not_unknown(paper_small):
    # f = 0.1: the damage is still above half its peak at E = 2048 at every size, so the right edge is >= 2048
    assert all(r["right_censored"] for r in paper_small["regions"][0]["per_model"] if not r["attention_only"])
    r = danger.assess(1e5, 0.1, 512.0, paper_small)
    assert r["right_edge"] is None and r["right_edge_bound"] == 2048.0
    assert r["in_region"] is True and "E from 220 to at least 2048" in r["answer"]
    beyond = danger.assess(1e5, 0.1, 4096.0, paper_small)
    assert beyond["in_region"] is None and "unknown danger" in beyond["answer"]
    assert danger.assess(1e5, 0.1, 64.0, paper_small)["in_region"] is False  # below the fitted left edge


def test_an_edge_without_a_fit_comes_from_the_nearest_size(paper_small):
    # f = 0.5: the right edge is inside the grid at 100k only (E = 1250); at 336k it is >= 2048
    near_100k = danger.assess(1.1e5, 0.5, 1500.0, paper_small)
    assert near_100k["right_edge"] == pytest.approx(1250.3, abs=0.1) and near_100k["in_region"] is False
    near_336k = danger.assess(3e5, 0.5, 1500.0, paper_small)
    assert near_336k["right_edge_bound"] == 2048.0 and near_336k["in_region"] is True
    assert "N = 3.36e+05" in near_336k["right_basis"]
    assert _point(paper_small, "L3-E96-H6", 0.5, 1024.0)["metrics"]["test_loss"]["significant"]


def test_the_answer_gives_the_damage_in_nats_with_the_reports_error(paper_small):
    r = danger.assess(100096.0, 0.5, 256.0, paper_small)
    t = _point(paper_small, "L2-E64-H4", 0.5, 256.0)["metrics"]["test_loss"]
    assert r["multiplier"] is None and "not meaningful" in r["answer"]
    assert r["damage"] == pytest.approx(t["damage"])
    assert r["nearest_point"]["damage_se"] == pytest.approx(t["damage_se"])
    assert f"predicted test-loss damage {t['damage']:+.3f} nats" in r["answer"]
    assert f"+- {t['damage_se']:.3f} nats, {t['z']:.1f} sigma, significant" in r["answer"]
    quiet = danger.assess(335712.0, 0.1, 16.0, paper_small)
    assert "within the noise" in quiet["answer"]


def test_attention_only_models_are_not_placed_between_the_gpt_sizes(paper_small):
    n = 33664.0  # the attention-only model's size, between the 12.8k and 56.6k GPTs
    attn = _point(paper_small, "L2-E64-H4-attn", 0.5, 1024.0)["metrics"]["test_loss"]["damage"]
    lo = _point(paper_small, "L1-E32-H2", 0.5, 1024.0)["metrics"]["test_loss"]["damage"]
    hi = _point(paper_small, "L2-E48-H3", 0.5, 1024.0)["metrics"]["test_loss"]["damage"]
    t = math.log(n / 12768.0) / math.log(56640.0 / 12768.0)
    damage = danger.predicted_damage(paper_small, 0.5, n, 1024.0)
    assert damage == pytest.approx(lo + t * (hi - lo)) and damage != pytest.approx(attn)
    assert danger.assess(n, 0.5, 1024.0, paper_small)["nearest_point"]["model"] != "L2-E64-H4-attn"
