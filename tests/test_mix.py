"""Exactness and determinism of mixture plans (repeatlab.mix)."""

import collections

import numpy as np
import pytest

from repeatlab.errors import PlanError
from repeatlab.mix import build_plan, count_windows

CONTEXT = 16


def plan_for(fraction, epochs, *, total=16 * 1000, train=16 * 5000 + 1, seed=0, control=False, salt="p"):
    return build_plan(
        train_tokens=train,
        total_tokens=total,
        context=CONTEXT,
        fraction=fraction,
        epochs=epochs,
        seed=seed,
        control=control,
        salt=salt,
    )


@pytest.mark.parametrize("fraction,epochs", [(0.5, 10), (0.1, 4), (0.1, 3), (0.9, 7), (0.03, 1), (0.5, 500)])
def test_every_repeated_sequence_seen_exactly_e_times(fraction, epochs):
    plan = plan_for(fraction, epochs)
    info = plan.info
    counts = collections.Counter(plan.offsets.tolist())
    repeated = set(plan.repeated.tolist())
    assert len(repeated) == info["repeated_sequences"] == len(plan.repeated)
    exposures = [counts[o] for o in plan.repeated.tolist()]
    assert sum(exposures) == info["repeated_exposures"]
    # the documented rule: every count is floor or ceil of R / n_rep, and the first R mod n_rep get the extra one
    base, extra = divmod(info["repeated_exposures"], info["repeated_sequences"])
    assert exposures == [base + 1] * extra + [base] * (len(exposures) - extra)
    # every unique sequence exactly once, none of them in the repeated subset
    unique = [o for o, c in counts.items() if o not in repeated]
    assert all(counts[o] == 1 for o in unique)
    assert len(unique) == info["unique_sequences"]
    # realized f within one sequence of the request
    sequences = 1000
    assert abs(info["repeated_exposures"] - fraction * sequences) <= 1
    assert len(plan.offsets) == sequences
    assert info["realized"]["epochs"] == pytest.approx(info["repeated_exposures"] / info["repeated_sequences"])


def test_even_division_gives_exactly_e():
    plan = plan_for(0.5, 10)  # R = 500, n_rep = 50
    counts = collections.Counter(plan.offsets.tolist())
    assert {counts[o] for o in plan.repeated.tolist()} == {10}
    assert plan.info["realized"]["epochs"] == 10


def test_offsets_are_window_starts_inside_the_pool():
    train = 16 * 2000 + 5
    plan = plan_for(0.2, 5, train=train)
    windows = count_windows(train, CONTEXT)
    assert plan.offsets.dtype == np.int64
    assert np.all(plan.offsets % CONTEXT == 0)
    assert plan.offsets.min() >= 0 and plan.offsets.max() + CONTEXT + 1 <= train
    assert plan.offsets.max() // CONTEXT < windows


def test_repeats_are_spread_through_training():
    plan = plan_for(0.5, 10)
    repeated = np.isin(plan.offsets, plan.repeated)
    halves = [repeated[:500].mean(), repeated[500:].mean()]
    # 500 exposures spread uniformly: each half holds about half of them (a sorted layout would give 1.0 / 0.0)
    assert all(0.35 < h < 0.65 for h in halves)


def test_baseline_has_no_repeats():
    plan = plan_for(0.0, 0)
    assert len(plan.repeated) == 0
    assert len(set(plan.offsets.tolist())) == len(plan.offsets) == 1000
    assert plan.info["realized"]["fraction"] == 0


def test_control_trains_on_the_unique_share_alone():
    plan = plan_for(0.5, 0, control=True)
    assert len(plan.repeated) == 0
    assert len(plan.offsets) == 500 == len(set(plan.offsets.tolist()))
    assert plan.info["control"] is True


def test_same_inputs_same_plan_bytes_and_other_seed_other_plan():
    a, b = plan_for(0.1, 4, seed=3), plan_for(0.1, 4, seed=3)
    assert a.offsets.tobytes() == b.offsets.tobytes() and a.repeated.tobytes() == b.repeated.tobytes()
    c = plan_for(0.1, 4, seed=4)
    assert c.offsets.tobytes() != a.offsets.tobytes()
    d = plan_for(0.1, 4, seed=3, salt="another point")
    assert d.offsets.tobytes() != a.offsets.tobytes()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(fraction=1.0, epochs=2), "fraction: 1.0 is not allowed"),
        (dict(fraction=-0.1, epochs=2), "fraction: -0.1 is not allowed"),
        (dict(fraction=0.5, epochs=0.5), "epochs: 0.5 is not allowed"),
        (dict(fraction=0.01, epochs=20), "shorter than one sequence"),
        (dict(fraction=0.1, epochs=2, train=16 * 900 + 1), "tokens are missing"),
    ],
)
def test_bad_plans_raise_one_line_errors(kwargs, message):
    with pytest.raises(PlanError) as err:
        plan_for(**kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_token_count_is_stated():
    with pytest.raises(PlanError) as err:
        plan_for(0.0, 0, train=16 * 900 + 1)
    # 1000 sequences needed, 900 windows available -> 100 windows of 16 tokens missing
    assert "1600 tokens are missing" in str(err.value)
