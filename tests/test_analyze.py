"""repeatlab/analyze.py: fits with known answers, the whole-study analysis on a synthetic study whose baseline law,
peak epochs, region edges and damage are known (tests/synthetic_study.py), and bad or partial input."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from repeatlab import analyze, storage
from repeatlab.cli import main as repeatlab_main
from repeatlab.errors import AnalysisError

sys.path.insert(0, os.path.dirname(__file__))
import synthetic_study as syn

L_INF, AMP, ALPHA = syn.BASELINE["test_loss"]
SIZES8 = np.geomspace(1e4, 1e7, 8)


def law(n):
    return L_INF + AMP * np.asarray(n, dtype=float) ** -ALPHA


def true_n_eff(value: float) -> float:
    """The size whose true baseline test loss is `value` (inverting the synthetic law by hand)."""
    return (AMP / (value - L_INF)) ** (1 / ALPHA)


@pytest.fixture(scope="module")
def study():
    """The full synthetic study (4 sizes, f = 0.1 and 0.5, E = 1..16384, baselines and controls), no noise."""
    records = syn.synthetic_records(controls=True)
    return records, analyze.analyze_study(records, [r["point"] for r in records], study="synthetic")


def point_of(analysis, n, f, e=None, kind="repeated"):
    rows = [
        p
        for p in analysis["points"]
        if p["kind"] == kind and p["n_params"] == n and p["fraction"] == f and (e is None or p["epochs"] == e)
    ]
    assert len(rows) == 1, (n, f, e, kind, len(rows))
    return rows[0]


# ----------------------------------------------------------------------------------------------------------------------
# The baseline law


def test_fit_recovers_an_exact_law():
    fit = analyze.fit_power_law(SIZES8, law(SIZES8))
    assert fit["ok"] and fit["outliers"] == []
    assert fit["asymptote"] == pytest.approx(L_INF, abs=1e-6)
    assert fit["A"] == pytest.approx(AMP, rel=1e-4)
    assert fit["alpha"] == pytest.approx(ALPHA, abs=1e-6)
    assert fit["rms_residual"] < 1e-8
    assert analyze.predict(fit, 5e5) == pytest.approx(float(law(5e5)), abs=1e-9)


def test_fit_of_a_score_that_grows_with_n():
    s_inf, amp, alpha = syn.BASELINE["prefix_matching"]
    scores = s_inf - amp * SIZES8**-alpha
    fit = analyze.fit_power_law(SIZES8, scores, "higher")
    assert fit["ok"] and fit["form"] == "S_inf - A * N^-alpha"
    assert (fit["asymptote"], fit["A"], fit["alpha"]) == pytest.approx((s_inf, amp, alpha), rel=1e-4)
    assert analyze.invert_fit(fit, s_inf - amp * 2e5**-alpha) == pytest.approx(2e5, rel=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_fit_with_one_percent_noise_stays_near(seed):
    rng = np.random.default_rng(seed)
    noisy = law(SIZES8) * (1 + rng.normal(0, 0.01, SIZES8.size))
    fit = analyze.fit_power_law(SIZES8, noisy)
    assert fit["ok"]
    assert fit["asymptote"] == pytest.approx(L_INF, abs=0.15)
    assert fit["alpha"] == pytest.approx(ALPHA, abs=0.06)
    pred = np.array([analyze.predict(fit, n) for n in SIZES8])
    assert np.max(np.abs(pred - law(SIZES8))) < 0.1  # 1 % noise is ~0.025 nats here


@pytest.mark.parametrize("index", [0, 3, 7])
def test_one_outlier_is_left_out(index):
    values = law(SIZES8)
    values[index] += 0.5
    fit = analyze.fit_power_law(SIZES8, values)
    assert fit["outliers"] == [SIZES8[index]]
    assert fit["asymptote"] == pytest.approx(L_INF, abs=1e-4)
    assert fit["alpha"] == pytest.approx(ALPHA, abs=1e-4)
    assert fit["residuals"][index] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("seed", range(3))
def test_one_outlier_among_noisy_points(seed):
    rng = np.random.default_rng(seed)
    values = law(SIZES8) * (1 + rng.normal(0, 0.01, SIZES8.size))
    values[4] += 0.5
    fit = analyze.fit_power_law(SIZES8, values)
    assert SIZES8[4] in fit["outliers"]
    assert fit["asymptote"] == pytest.approx(L_INF, abs=0.15)
    assert fit["alpha"] == pytest.approx(ALPHA, abs=0.06)


def test_no_fit_below_three_sizes_or_without_improvement():
    one = analyze.fit_power_law([1e5], [2.5])
    two = analyze.fit_power_law([1e5, 1e6], [2.5, 2.2])
    assert not one["ok"] and "1 model size" in one["note"] and "interpolation" not in one["note"]
    assert not two["ok"] and "2 model size" in two["note"] and "interpolation only" in two["note"]
    flat = analyze.fit_power_law([1e5, 1e6, 1e7], [2.0, 2.1, 2.2])
    assert not flat["ok"] and "does not improve" in flat["note"]


def test_inversion_and_multiplier_on_known_values():
    fit = analyze.fit_power_law(SIZES8, law(SIZES8))
    assert analyze.invert_fit(fit, float(law(3e5))) == pytest.approx(3e5, rel=1e-6)
    damaged = float(law(1e6)) + 0.1
    n_eff = analyze.invert_fit(fit, damaged)
    assert n_eff == pytest.approx(true_n_eff(damaged), rel=1e-5)
    assert 1e6 / n_eff == pytest.approx(1e6 / true_n_eff(damaged), rel=1e-5)
    assert analyze.invert_fit(fit, L_INF - 0.01) is None  # beats the asymptote: no finite N


def test_log_n_interpolation_fallback():
    sizes = [1e5, 1e6, 1e7]
    interp = analyze.make_interpolation(sizes, [3.0, 2.0, 1.5])
    assert analyze.invert_interpolation(interp, 2.0) == pytest.approx(1e6)
    assert analyze.invert_interpolation(interp, 2.5) == pytest.approx(math.sqrt(1e5 * 1e6))  # midway in log N
    assert analyze.invert_interpolation(interp, 3.5) == pytest.approx(10**4.5)  # the end segment extends it
    # a non-monotone baseline is made monotone (pool-adjacent-violators): 2.0, 2.2 pool to 2.1
    bumpy = analyze.make_interpolation(sizes, [3.0, 2.0, 2.2])
    assert bumpy["values"] == pytest.approx([3.0, 2.1, 2.1])
    assert analyze.make_interpolation([1e5], [3.0]) is None


def test_interpolation_is_reported_beside_the_fit(study):
    _, analysis = study
    assert analysis["baseline"]["test_loss"]["interpolation"]["log_n"] == pytest.approx(np.log(syn.SIZES))
    m = point_of(analysis, 1e6, 0.1, 32.0)["metrics"]["test_loss"]
    assert m["n_eff_method"] == "fit" and m["n_eff"] == m["n_eff_fit"]
    assert m["n_eff_fit"] == pytest.approx(true_n_eff(float(law(1e6)) + syn.damage(1e6, 0.1, 32.0)), rel=1e-5)
    # piecewise linear in log N between the 3e5 and 1e6 baselines: close to the law, not equal to it
    assert 3e5 < m["n_eff_interp"] < 1e6
    assert m["n_eff_interp"] == pytest.approx(m["n_eff_fit"], rel=0.2)
    assert m["multiplier_interp"] == pytest.approx(1e6 / m["n_eff_interp"])


# ----------------------------------------------------------------------------------------------------------------------
# The whole study


def test_worst_epochs_is_the_known_peak(study):
    _, analysis = study
    rows = analysis["worst"]["test_loss"]
    assert {(w["n_params"], w["fraction"]) for w in rows} == {(n, f) for n in syn.SIZES for f in (0.1, 0.5)}
    for w in rows:
        n, f, e = w["n_params"], w["fraction"], w["epochs"]
        # the synthetic damage has a flat top of half-width PLATEAU in ln E around the known peak: the worst grid E
        # is on it, and nothing on the grid is worse
        assert abs(math.log(e / syn.peak_epochs(n))) <= syn.PLATEAU
        assert syn.damage(n, f, e) == pytest.approx(syn.DAMAGE[f])
        assert w["damage"] == pytest.approx(syn.DAMAGE[f], abs=1e-9)
        assert w["interior"] is True and w["edge"] is None
        assert w["epochs_grid"] == list(syn.EPOCHS)
        assert w["test_loss"] == pytest.approx(float(law(n)) + syn.DAMAGE[f])
        expected = n / true_n_eff(float(law(n)) + syn.DAMAGE[f])
        # extrapolated exactly when the damaged loss is worse than the worst (smallest-N) baseline
        assert w["extrapolated"] is (w["test_loss"] > float(law(min(syn.SIZES))))
        if w["extrapolated"]:  # no number outside the baselines: a bound phrased as a multiplier helps nobody
            m = point_of(analysis, n, f, e)["metrics"]["test_loss"]
            assert m["extrapolation"] == "worse than the worst baseline"
            assert w["multiplier"] is None and m["multiplier"] is None and m["n_eff"] is None
            assert w["multiplier_note"].startswith("not meaningful for this study: worse than the worst baseline")
        else:
            assert w["multiplier"] == pytest.approx(expected, rel=1e-5) and w["multiplier_note"] is None
    assert any(w["extrapolated"] for w in rows) and not all(w["extrapolated"] for w in rows)
    # the peak moves to fewer epochs as N grows
    for f in (0.1, 0.5):
        peaks = [w["epochs"] for w in sorted(rows, key=lambda w: w["n_params"]) if w["fraction"] == f]
        assert peaks == sorted(peaks, reverse=True) and peaks[0] > peaks[-1]


def test_worst_at_the_grid_edge_is_flagged():
    epochs = (1.0, 2.0, 4.0, 8.0)  # the peak (E ~ 17..95) lies beyond the largest E
    records = syn.synthetic_records(sizes=(1e5, 1e6, 3e6), fractions=(0.5,), epochs=epochs)
    analysis = analyze.analyze_study(records)
    for w in analysis["worst"]["test_loss"]:
        assert w["epochs"] == 8.0 and w["interior"] is False and w["edge"] == "largest E"
    assert "peak_at_edge" in {w["code"] for w in analysis["warnings"]}


def test_mechanistic_metrics_are_damaged_more(study):
    _, analysis = study
    for f in (0.1, 0.5):
        for n in syn.SIZES:
            by_metric = {
                m: next(w for w in analysis["worst"][m] if w["n_params"] == n and w["fraction"] == f)
                for m in ("test_loss", "copying", "prefix_matching")
            }
            assert by_metric["copying"]["damage"] == pytest.approx(syn.COPY_FACTOR * syn.DAMAGE[f])
            assert by_metric["prefix_matching"]["damage"] == pytest.approx(syn.PREFIX_FACTOR * syn.DAMAGE[f])
            if by_metric["copying"]["multiplier"] is not None and by_metric["test_loss"]["multiplier"] is not None:
                assert by_metric["copying"]["multiplier"] > by_metric["test_loss"]["multiplier"] > 1
    pairs = [
        (
            w,
            next(
                c
                for c in analysis["worst"]["copying"]
                if (c["n_params"], c["fraction"]) == (w["n_params"], w["fraction"])
            ),
        )
        for w in analysis["worst"]["test_loss"]
    ]
    assert any(c["multiplier"] is not None and w["multiplier"] is not None for w, c in pairs)


def test_region_edges_and_their_power_laws(study):
    _, analysis = study
    assert [r["fraction"] for r in analysis["regions"]] == [0.1, 0.5]
    for reg in analysis["regions"]:
        for row in reg["per_model"]:
            n = row["n_params"]
            assert row["left"] == pytest.approx(syn.LEFT_K * n**syn.PEAK_ALPHA, rel=1e-6)
            assert row["right"] == pytest.approx(syn.RIGHT_K * n**syn.PEAK_ALPHA, rel=1e-6)
            assert row["left_censored"] is False and row["right_censored"] is False
            assert row["max_damage"] == pytest.approx(syn.DAMAGE[reg["fraction"]])
        left, right = reg["fits"]["left"], reg["fits"]["right"]
        assert left["ok"] and right["ok"] and left["n_sizes"] == right["n_sizes"] == len(syn.SIZES)
        assert left["alpha"] == pytest.approx(syn.PEAK_ALPHA, abs=1e-6)
        assert right["alpha"] == pytest.approx(syn.PEAK_ALPHA, abs=1e-6)
        assert left["k"] == pytest.approx(syn.LEFT_K, rel=1e-6)
        assert right["k"] == pytest.approx(syn.RIGHT_K, rel=1e-6)


def test_region_exponent_with_noise_and_seeds():
    records = syn.synthetic_records(fractions=(0.5,), seeds=(0, 1), noise=0.003, rng_seed=7)
    analysis = analyze.analyze_study(records)
    fits = analysis["regions"][0]["fits"]
    assert fits["left"]["alpha"] == pytest.approx(syn.PEAK_ALPHA, abs=0.12)
    assert fits["right"]["alpha"] == pytest.approx(syn.PEAK_ALPHA, abs=0.12)
    assert point_of(analysis, 1e6, 0.5, 32.0)["n_seeds"] == 2


def test_region_edge_helpers():
    e = [1, 2, 4, 8, 16]
    out = analyze.region_edges(e, [0.0, 0.5, 1.0, 0.5, 0.0])
    assert (out["peak_epochs"], out["max_damage"], out["threshold"]) == (4, 1.0, 0.5)
    assert (out["left"], out["right"]) == pytest.approx((2.0, 8.0))
    censored = analyze.region_edges(e, [1.0, 0.9, 0.2, 0.1, 0.0])
    assert censored["left"] is None and censored["left_censored"] and "censored" in censored["note"]
    assert analyze.region_edges(e, [0.0, -0.1, 0.0, -0.2, 0.0])["left"] is None
    fit = analyze.fit_edge([1e5, 1e6, 1e7], [100 * n**-0.5 for n in (1e5, 1e6, 1e7)])
    assert (fit["k"], fit["alpha"]) == pytest.approx((100, -0.5))
    assert not analyze.fit_edge([1e5], [3.0])["ok"]


def test_controls_split_harm_from_lost_unique_data(study):
    _, analysis = study
    for f in (0.1, 0.5):
        ctrl = point_of(analysis, 1e6, f, kind="control")["metrics"]["test_loss"]
        assert ctrl["damage"] == pytest.approx(syn.UNIQUE_LOSS_PER_F * f)
        for e in (1.0, 32.0, 4096.0):
            m = point_of(analysis, 1e6, f, e)["metrics"]["test_loss"]
            d = syn.damage(1e6, f, e)
            assert m["unique_data_loss"] == pytest.approx(syn.UNIQUE_LOSS_PER_F * f)
            assert m["repetition_harm"] == pytest.approx(d - syn.UNIQUE_LOSS_PER_F * f)
            assert m["repetition_harm"] + m["unique_data_loss"] == pytest.approx(m["damage"])
    assert analysis["summary"]["has_controls"] is True


def test_no_controls_no_harm_split():
    analysis = analyze.analyze_study(syn.synthetic_records(sizes=(1e5, 1e6, 3e6), fractions=(0.5,)))
    m = point_of(analysis, 1e6, 0.5, 32.0)["metrics"]["test_loss"]
    assert m["repetition_harm"] is None and m["unique_data_loss"] is None and m["control"] is None
    assert analysis["summary"]["has_controls"] is False


def _curve(losses):
    return [{"tokens": 1000 * (i + 1), "test_loss": v} for i, v in enumerate(losses)]


def test_epochwise_double_descent_on_known_curves():
    bump = analyze.epochwise_double_descent(_curve([3.0, 2.5, 2.2, 2.4, 2.6, 2.3, 2.0]))
    assert bump["non_monotone"] and bump["falls_again"]
    assert bump["max_rise"] == pytest.approx(0.4) and bump["fall_after_peak"] == pytest.approx(0.6)
    assert (bump["min_tokens"], bump["peak_tokens"]) == (3000, 5000)
    monotone = analyze.epochwise_double_descent(_curve([3.0, 2.5, 2.2, 2.1, 2.05, 2.0]))
    assert not monotone["non_monotone"] and not monotone["falls_again"] and monotone["max_rise"] == 0.0
    plateau = analyze.epochwise_double_descent(_curve([3.0, 2.5, 2.2, 2.5, 2.5]))
    assert plateau["non_monotone"] and not plateau["falls_again"]
    noise = analyze.epochwise_double_descent(_curve([3.0, 2.5, 2.2, 2.205, 2.1]))
    assert not noise["non_monotone"]  # below EPOCHWISE_TOLERANCE
    assert analyze.epochwise_double_descent(_curve([3.0, 2.0])) is None


def test_a_warmup_spike_is_not_epochwise_double_descent():
    """The demo's first run at lr 3e-3 spiked by ~1.8 nats during warmup; that is an optimizer transient."""
    tokens = [1, 2, 3, 6, 12, 21, 39, 72, 133, 245]  # the demo's log-spaced eval steps
    losses = [5.4, 5.2, 5.0, 4.4, 6.2, 3.1, 2.7, 2.6, 2.55, 2.45]
    curve = [{"tokens": t * 4096, "test_loss": v} for t, v in zip(tokens, losses)]
    assert not analyze.epochwise_double_descent(curve)["non_monotone"]
    assert analyze.epochwise_double_descent(curve, burn_in=0.0)["max_rise"] == pytest.approx(1.8)


def test_epochwise_in_the_study(study):
    _, analysis = study
    by_f = {e["fraction"]: e for e in analysis["epochwise"]}
    # the synthetic learning curves rise mid-training (a bump of 3x the damage) only at f >= 0.5 where there is damage
    assert by_f[0.1]["non_monotone_runs"] == 0 and by_f[0.0]["non_monotone_runs"] == 0
    runs = [r for r in analysis["runs"] if r["fraction"] == 0.5 and not r["control"]]
    peak = [r for r in runs if syn.damage(r["n_params"], 0.5, r["epochs"]) == syn.DAMAGE[0.5]]
    flat = [r for r in runs if syn.damage(r["n_params"], 0.5, r["epochs"]) == 0.0]
    assert peak and flat
    assert all(r["epochwise"]["non_monotone"] and r["epochwise"]["falls_again"] for r in peak)
    assert not any(r["epochwise"]["non_monotone"] for r in flat)
    assert len(peak) <= by_f[0.5]["non_monotone_runs"] <= len(runs) - len(flat)
    assert by_f[0.5]["max_rise"] > 0.1


def test_analysis_is_json_and_deterministic(study):
    records, analysis = study
    text = json.dumps(analysis, sort_keys=True, allow_nan=False)
    assert json.loads(text) == analysis
    again = analyze.analyze_study(list(reversed(records)), [r["point"] for r in records], study="synthetic")
    assert again == analysis
    assert analysis["summary"]["runs_used"] == len(records) and analysis["summary"]["partial"] is False


# ----------------------------------------------------------------------------------------------------------------------
# Bad and partial input


def test_no_baseline_runs():
    records = syn.synthetic_records(baseline=False)
    analysis = analyze.analyze_study(records)
    warning = next(w["message"] for w in analysis["warnings"] if w["code"] == "no_baseline")
    assert "N_eff needs f = 0 runs" in warning
    assert analysis["summary"]["has_baseline"] is False
    for w in analysis["worst"]["test_loss"]:
        assert w["n_eff"] is None and w["multiplier"] is None and w["damage"] is None
        # the raw loss is still reported, and its argmax still finds the peak
        assert w["value"] == pytest.approx(float(law(w["n_params"])) + syn.DAMAGE[w["fraction"]])
        assert abs(math.log(w["epochs"] / syn.peak_epochs(w["n_params"]))) <= syn.PLATEAU
    for reg in analysis["regions"]:
        assert not reg["fits"]["left"]["ok"] and "f = 0" in reg["fits"]["left"]["note"]
    assert any("N_eff needs f = 0 runs" in line for line in analysis["findings"])


def test_single_model_size():
    analysis = analyze.analyze_study(syn.synthetic_records(sizes=(1e6,)))
    codes = {w["code"] for w in analysis["warnings"]}
    assert "single_size" in codes
    base = analysis["baseline"]["test_loss"]
    assert base["fit"] is None and "1 model size" in base["fit_note"] and base["interpolation"] is None
    assert any(line.startswith("Baseline test loss: no fit: 1 model size") for line in analysis["findings"])
    w = next(w for w in analysis["worst"]["test_loss"] if w["fraction"] == 0.5)
    assert w["n_eff"] is None and w["damage"] == pytest.approx(syn.DAMAGE[0.5])
    assert all(not r["fits"][side]["ok"] for r in analysis["regions"] for side in ("left", "right"))


def test_malformed_and_diverged_records_are_skipped():
    records = syn.synthetic_records(sizes=(1e5, 1e6, 3e6), fractions=(0.5,), epochs=(1.0, 32.0, 1024.0))
    broken = dict(records[1], point={"fraction": 0.5})  # no model
    diverged = dict(records[2], test_loss=float("nan"))
    analysis = analyze.analyze_study([broken, diverged] + records[3:])
    codes = [w["code"] for w in analysis["warnings"]]
    assert "bad_record" in codes and "no_test_loss" in codes
    assert analysis["summary"]["runs_used"] == len(records) - 3
    with pytest.raises(AnalysisError, match="no eval records"):
        analyze.analyze_study([])
    with pytest.raises(AnalysisError, match="none of the 1 eval records is usable"):
        analyze.analyze_study([broken])


def test_missing_and_corrupt_eval_files_make_a_partial_analysis(tmp_path):
    records = syn.synthetic_records(sizes=(1e5, 1e6, 3e6), fractions=(0.5,), epochs=(1.0, 32.0, 1024.0))
    root = str(tmp_path)
    syn.write_study(root, "part", records, drop=2)
    corrupt = records[0]["point_id"]
    storage.write_text(storage.join(root, "runs", corrupt, "eval.json"), "{not json")
    analysis = analyze.run_analysis(root, "part")
    summary = analysis["summary"]
    assert summary["partial"] is True and summary["missing_points"] == 3
    assert summary["expected_points"] == len(records) and summary["runs_used"] == len(records) - 3
    assert {m["point_id"] for m in analysis["missing"]} == {corrupt} | {r["point_id"] for r in records[-2:]}
    assert any(w["code"] == "missing_evals" for w in analysis["warnings"])
    assert "partial: 3 expected points missing" in analysis["findings"][0]
    on_disk = storage.read_json(storage.join(root, "studies", "part", "analysis.json"))
    assert on_disk == analysis


def _one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_cli_without_eval_records(tmp_path, capsys):
    root = str(tmp_path)
    rc = repeatlab_main(["analyze", "--root", root, "--study", "nothing"])  # not even points.json
    assert "points.json" in _one_line_error(capsys, rc)
    records = syn.synthetic_records(sizes=(1e5,), fractions=(0.5,), epochs=(1.0,))
    storage.write_json(storage.join(root, "studies", "empty", "points.json"), [r["point"] for r in records])
    rc = repeatlab_main(["analyze", "--root", root, "--study", "empty"])
    assert "has an eval.json" in _one_line_error(capsys, rc)
    rc = repeatlab_main(["analyze", "--root", root])
    assert "--study" in _one_line_error(capsys, rc)


def test_python_m_repeatlab_analyze_errors_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "repeatlab", "analyze", "--root", str(tmp_path), "--study", "none"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("repeatlab analyze: error:")


def test_cli_writes_the_analysis(tmp_path, capsys):
    records = syn.synthetic_records(sizes=(1e5, 1e6, 3e6), fractions=(0.5,), epochs=(1.0, 8.0, 32.0, 128.0, 1024.0))
    syn.write_study(str(tmp_path), "small", records)
    assert repeatlab_main(["analyze", "--root", str(tmp_path), "--study", "small"]) == 0
    out = capsys.readouterr().out
    analysis = storage.read_json(storage.join(str(tmp_path), "studies", "small", "analysis.json"))
    assert analysis["findings"][0] in out and "wrote " in out
    assert repeatlab_main(["analyze", "--root", str(tmp_path), "--study", "small", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == analysis


def test_grid_rounding_of_E_is_a_warning_in_the_analysis():
    records = syn.synthetic_records(sizes=(1e5, 1e6, 3e6), fractions=(0.5,))
    expected = [r["point"] for r in records]
    odd = copy.deepcopy(next(p for p in expected if p["fraction"] == 0.5))
    budget = odd["budget"]
    sequences = budget["total_tokens"] // budget["context"]
    odd["epochs"] = 0.5 * sequences / 1.4  # the repeated subset would be 1.4 sequences: rounds to 1
    odd["point_id"] = "rounded"
    analysis = analyze.analyze_study(records, expected_points=[*expected, odd])
    grid_warnings = [w["message"] for w in analysis["warnings"] if w["code"] == "grid_epochs"]
    assert any(
        w.startswith(f"f = 0.5, E = {odd['epochs']:g}: the repeated subset rounds to 1 sequence(s)")
        for w in grid_warnings
    )
    assert all("E = 4:" not in w for w in grid_warnings)  # small E: many sequences, exact


def test_baselines_without_induction_heads_are_warned():
    from repeatlab.scores import uniform_attention_prefix_score

    chance = uniform_attention_prefix_score(25, 4)
    records = syn.synthetic_records(sizes=(1e5, 1e6, 3e6), fractions=(0.5,))
    analysis = analyze.analyze_study(records)
    assert not [w for w in analysis["warnings"] if w["code"] == "no_induction_heads"]
    for r in records:
        if r["point"]["fraction"] == 0 and r["point"]["model"]["n_params_nonembed"] == 1e5:
            r["aggregates"]["prefix_matching_max"] = 1.5 * chance
    warned = [w["message"] for w in analyze.analyze_study(records)["warnings"] if w["code"] == "no_induction_heads"]
    assert len(warned) == 1 and "without an induction head" in warned[0]
