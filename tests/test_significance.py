"""Noise floors, significance, suspect baselines, loss spikes, bounded fits, ICL with error bars, mechanism evidence
and the danger answer agreeing with the report (small hand-made studies with known answers)."""

import math

import numpy as np
import pytest
import synthetic_study as syn

from repeatlab import analyze, danger, mechanism, noise

EPOCHS = (2.0, 8.0, 32.0, 128.0, 512.0)


def record(n, f, e, seed=0, test=2.3, repeated=2.5, curve=None, **extra):
    rec = syn.make_record(n, f, e, seed=seed, ood=False, epochwise_bump=False)
    rec["test_loss"] = test
    rec["repeated_loss"] = repeated if f > 0 else None
    rec["learning_curve"] = (
        curve
        if curve is not None
        else [{"tokens": t, "test_loss": test + 0.3 * (1e6 / t) ** 0.5 - 0.3} for t in (1e5, 2e5, 4e5, 7e5, 1e6)]
    )
    rec.update(extra)
    return rec


def study(base=(2.30, 2.31), low_e=2.305, damage=None, n=1e5):
    """One size: two baseline seeds, E = 2 at the baseline level, and the given damage (nats) per E."""
    damage = damage or {8.0: 0.0, 32.0: 0.01, 128.0: 0.05, 512.0: 0.2}
    recs = [record(n, 0.0, 0.0, seed=i, test=v) for i, v in enumerate(base)]
    recs.append(record(n, 0.5, 2.0, test=low_e))
    recs += [record(n, 0.5, e, test=float(np.mean(base)) + d, repeated=2.4 - 4 * d) for e, d in damage.items()]
    return recs


def test_noise_floor_pools_seeds_and_low_e_points():
    a = analyze.analyze_study(study())
    (row,) = a["noise"]["per_model"]
    seed_ss = 2 * 0.005**2  # two seeds 0.01 apart
    low_ss = 0.0**2 / (1 + 1 / 2)  # E = 2 sits on the baseline mean
    assert row["seed_dof"] == 1 and row["low_e_dof"] == 1 and row["source"] == "own"
    assert row["sigma"] == pytest.approx(math.sqrt((seed_ss + low_ss) / 2))


def test_damage_is_significant_only_beyond_three_standard_errors():
    a = analyze.analyze_study(study())
    sigma = a["noise"]["per_model"][0]["sigma"]
    se = sigma * math.sqrt(1 + 1 / 2)
    pts = {p["epochs"]: p["metrics"]["test_loss"] for p in a["points"] if p["kind"] == "repeated"}
    assert pts[512.0]["damage_se"] == pytest.approx(se) and pts[512.0]["significant"] is True
    assert pts[32.0]["significant"] is False and pts[32.0]["z"] == pytest.approx(0.01 / se)
    (w,) = a["worst"]["test_loss"]
    assert w["epochs"] == 512.0 and w["significant"] is True and w["edge"] == "largest E"
    assert "sigma: significant" in next(x for x in a["findings"] if x.startswith("At N = "))


def test_a_peak_within_the_noise_is_no_peak_and_no_region():
    a = analyze.analyze_study(
        study(base=(2.30, 2.36), low_e=2.33, damage={8.0: 0.0, 32.0: 0.04, 128.0: 0.0, 512.0: 0.0})
    )
    (w,) = a["worst"]["test_loss"]
    assert w["epochs"] == 32.0 and w["significant"] is False and w["interior_significant"] is False
    assert "within the noise, not significant" in next(x for x in a["findings"] if x.startswith("At N = "))
    (row,) = a["regions"][0]["per_model"]
    assert row["significant"] is False and row["left"] is None and "no region" in row["note"]


def test_outlier_baseline_is_flagged_and_damage_given_against_the_pooled_baseline():
    # the E = 2 and E = 8 runs, practically baselines, land 0.1 nats below a baseline whose seeds agree to 0.002
    recs = study(base=(2.40, 2.402), low_e=2.30) + study(base=(2.20, 2.201), low_e=2.2005, n=3e5)
    a = analyze.analyze_study(recs)
    checks = {r["n_params"]: r for r in a["baseline_checks"]}
    assert checks[1e5]["outlier"] is True and checks[3e5]["outlier"] is False
    assert checks[1e5]["pooled_mean"] == pytest.approx(np.mean([2.40, 2.402, 2.30]))
    assert "baseline_suspect" in {w["code"] for w in a["warnings"]}
    w = next(w for w in a["worst"]["test_loss"] if w["n_params"] == 1e5)
    assert w["damage_pooled"] == pytest.approx(w["test_loss"] - checks[1e5]["pooled_mean"])
    assert "against the pooled baseline" in next(x for x in a["findings"] if x.startswith("At N = 1e+05"))


def test_baseline_still_falling_at_the_end_is_flagged_not_converged():
    recs = study()
    steep = [{"tokens": t, "test_loss": v} for t, v in ((1e5, 3.3), (2e5, 3.2), (4e5, 3.1), (7e5, 2.8), (1e6, 2.3))]
    recs[0]["learning_curve"] = steep  # mid-way through its escape from the unigram plateau
    a = analyze.analyze_study(recs)
    (check,) = a["baseline_checks"]
    assert check["not_converged"] is True and "still falls" in check["notes"][0]


def test_loss_spike_is_flagged():
    recs = study()
    recs[-1]["learning_curve"] = [
        {"tokens": t, "test_loss": v} for t, v in ((1e4, 5.0), (3e4, 4.4), (6e4, 6.2), (2e5, 3.0), (1e6, 2.5))
    ]
    a = analyze.analyze_study(recs)
    (spike,) = a["loss_spikes"]
    assert spike["rise"] == pytest.approx(1.8) and spike["recovered"] is True and spike["epochs"] == 512.0
    assert any(w["code"] == "loss_spike" and "4.40 to 6.20" in w["message"] for w in a["warnings"])


def test_fit_cannot_go_unphysical_and_is_marked_unusable():
    # paper-small's four GPT baselines: the unconstrained law has L_inf = -15 nats and alpha at its bound
    n, loss = [12.8e3, 56.6e3, 100.1e3, 335.7e3], [2.334, 2.281, 2.252, 2.040]
    fit = analyze.fit_power_law(n, loss)
    assert fit["ok"] and 0.0 <= fit["asymptote"] <= min(loss)
    assert fit["usable"] is False and fit["unusable_reason"]
    good = analyze.fit_power_law(
        [1e5, 3e5, 1e6, 3e6], [syn.baseline_value("test_loss", x) for x in (1e5, 3e5, 1e6, 3e6)]
    )
    assert good["usable"] is True and good["asymptote"] == pytest.approx(1.8, abs=1e-3)


def test_unusable_fit_and_out_of_range_points_give_no_multiplier_anywhere(tmp_path):
    recs = []
    for n, base in ((12.8e3, 2.334), (56.6e3, 2.281), (100.1e3, 2.252), (335.7e3, 2.040)):
        recs += study(
            base=(base, base + 0.004), low_e=base + 0.002, n=n, damage={8.0: 0.0, 32.0: 0.02, 128.0: 0.1, 512.0: 0.35}
        )
    a = analyze.analyze_study(recs)
    assert a["baseline"]["test_loss"]["fit"]["usable"] is False
    text = " ".join(a["findings"])
    assert "more than" not in text and "worse than every baseline" not in text
    assert "The baseline law is not usable for this study" in text
    for w in a["worst"]["test_loss"]:  # 0.35 nats worse: beyond the smallest baseline at every size
        assert w["multiplier"] is None and w["multiplier_note"].startswith("not meaningful for this study")
        r = danger.assess(w["n_params"], 0.5, w["epochs"], a)
        assert r["multiplier"] is None and "x smaller" not in r["answer"]
        assert "not meaningful for this study" in r["answer"]
    inside = next(
        p for p in a["points"] if p["kind"] == "repeated" and p["n_params"] == 335.7e3 and p["epochs"] == 128.0
    )
    m = inside["metrics"]["test_loss"]
    assert m["n_eff_method"] == "interpolation" and m["multiplier"] > 1
    r = danger.assess(335.7e3, 0.5, 128.0, a)
    assert r["multiplier"] == pytest.approx(m["multiplier"])  # danger and report agree


def test_icl_is_judged_only_with_an_error_bar():
    recs = study()
    for i, (score, se) in enumerate(((-0.009, 0.013), (0.022, 0.013))):
        recs[i]["icl"] = {"score": score, "stderr": se, "windows": 512}
        recs[i]["icl_score"] = score
    a = analyze.analyze_study(recs)
    (icl,) = a["icl"]
    assert icl["present"] is False and icl["stderr"] == pytest.approx(0.013)  # the seeds read the same windows
    assert "no ICL (within 2 standard errors of zero)" in a["findings"][-2] + a["findings"][-1]
    recs[0]["icl"] = {"score": -0.2, "stderr": 0.01}
    recs[1]["icl"] = {"score": -0.18, "stderr": 0.01}
    assert analyze.analyze_study(recs)["icl"][0]["present"] is True
    recs[0]["icl"] = {"score": 0.05, "stderr": 0.01}
    recs[1]["icl"] = {"score": 0.04, "stderr": 0.01}
    a = analyze.analyze_study(recs)
    assert a["icl"][0]["present"] is False and any("late positions cost more" in x for x in a["findings"])
    old = study()  # records made before the estimate: a single-position score, no error bar
    a = analyze.analyze_study(old)
    assert a["icl"][0]["present"] is None and "icl_single_position" in {w["code"] for w in a["warnings"]}


def test_mechanism_copies_without_a_clear_induction_head():
    rec = record(1e5, 0.0, 0.0)
    rec["aggregates"]["prefix_matching_max"] = 0.108  # the copy task at E = 16: a weak prefix head ...
    rec["copying"]["per_copy_loss"] = [3.3] + [0.18] * 10  # ... and later copies at 0.18 nats
    ev = mechanism.evidence(rec)
    assert ev["verdict"] == "copies, no clear induction head" and ev["copy_gain"] == pytest.approx(3.12)
    rec["aggregates"]["prefix_matching_max"] = 0.9
    assert mechanism.evidence(rec)["verdict"] == "induction head"
    rec["aggregates"].update(prefix_matching_max=0.03, previous_token_max=0.2)  # 5.7x uniform at context 128
    rec["copying"]["per_copy_loss"] = [2.5] * 11
    assert mechanism.evidence(rec)["verdict"] == "previous-token head, no copying"


def test_mechanism_damage_at_the_worst_e_is_reported():
    recs = study()
    for r in recs:
        r["aggregates"]["previous_token_max"] = 0.14 if r["point"]["fraction"] == 0 else 0.10
    recs[-1]["aggregates"]["previous_token_max"] = 0.03  # the worst E loses its previous-token head
    a = analyze.analyze_study(recs)
    (row,) = a["mechanism"]["at_worst"]
    assert row["epochs"] == 512.0 and row["previous_token_max"]["damage"] == pytest.approx(0.11)
    assert any(x.startswith("Mechanism at N = 1e+05") and "0.140 -> 0.030" in x for x in a["findings"])


@pytest.mark.parametrize(
    "control_head, says",
    [
        (0.03, "the unique-only control lacks the previous-token head as well (0.030): the missing unique tokens"),
        (
            0.17,
            "the unique-only control keeps part of the previous-token head (0.170): the missing unique tokens "
            "account for 0.130 of the 0.270 drop, repetition for the rest",
        ),
        (0.3, "the unique-only control keeps the previous-token head (0.300): repetition, not the missing unique"),
    ],
)
def test_a_head_lost_at_the_worst_e_is_weighed_against_the_unique_only_control(control_head, says):
    recs = study()
    recs.append(syn.make_record(1e5, 0.5, 0.0, control=True, ood=False, epochwise_bump=False))
    for r in recs:  # no prefix-matching head and no copying anywhere: only a previous-token head to lose
        head = 0.3 if r["point"]["fraction"] == 0 else 0.2  # clear: 5x uniform attention is 0.17 here
        r["aggregates"].update(prefix_matching_max=0.03, previous_token_max=head)
        r["copying"]["per_copy_loss"] = [2.5] * 11
    recs[-2]["aggregates"]["previous_token_max"] = 0.03  # the worst E (E = 512) loses its previous-token head
    recs[-1]["aggregates"]["previous_token_max"] = control_head
    a = analyze.analyze_study(recs)
    (row,) = a["mechanism"]["at_worst"]
    assert row["baseline_verdicts"] == ["previous-token head, no copying"]
    assert row["previous_token_max"]["control"] == pytest.approx(control_head)
    (sentence,) = [x for x in a["findings"] if x.startswith("Mechanism at N = 1e+05")]
    assert f"0.300 -> 0.030 (control {control_head:.3f})" in sentence and says in sentence


def test_split_composition_reaches_the_findings_and_old_corpora_are_named():
    recs = study()
    cid = recs[0]["point"]["corpus_id"]
    comp = {
        "train": {
            "A": {"documents": 90, "tokens": 900, "share": 0.6},
            "B": {"documents": 60, "tokens": 600, "share": 0.4},
        },
        "test": {
            "A": {"documents": 55, "tokens": 55, "share": 0.55},
            "B": {"documents": 45, "tokens": 45, "share": 0.45},
        },
    }
    manifest = {
        "corpus_id": cid,
        "chunk_tokens": 2048,
        "composition": comp,
        "warnings": [],
        "splits": {"train": {"documents": 150, "tokens": 1500}, "test": {"documents": 100, "tokens": 100}},
    }
    a = analyze.analyze_study(recs, corpora={cid: manifest})
    assert any("the test split (100 documents) is A 55% / B 45%" in x for x in a["findings"])
    old = dict(manifest, composition=None)
    a = analyze.analyze_study(recs, corpora={cid: old})
    assert any("split per whole document" in x for x in a["findings"])


def test_noise_helpers():
    assert noise.loss_spike([{"tokens": 1, "test_loss": 3.0}, {"tokens": 2, "test_loss": 3.1}]) is None
    assert noise.final_drop_per_doubling(
        [{"tokens": 1e5, "test_loss": 2.5}, {"tokens": 2e5, "test_loss": 2.4}]
    ) == pytest.approx(0.1)
    assert noise.significance(0.1, None, 1, 2)["significant"] is None
