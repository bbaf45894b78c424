"""Mechanism evidence per run: previous-token head, prefix-matching head, copying, and in-context learning.

Pure functions on eval records, used by analyze_study.

- previous_token: the best head's mean attention to the previous token (eval.json aggregates.previous_token_max),
  against a head attending uniformly over the test window (scores.uniform_attention_previous_token_score).
- prefix_matching: the best head's prefix-matching score (aggregates.prefix_matching_max), against uniform attention
  on the probe (scores.uniform_attention_prefix_score).
- copy_gain: how much cheaper copies 2..n of a probe paragraph are than copy 1 (nats; per_copy_loss[0] minus the mean
  of the rest): a model that copies from its context has a large gain whatever its heads look like.
- ICL: eval.json `icl` (score and standard error over random windows); present only when the score is below
  -ICL_SE_FACTOR standard errors. Records made before that estimate hold a single-position `icl_score` without an
  error bar: reported, not judged.
- A verdict per run: "induction head" (best prefix head >= CLEAR_FACTOR x uniform), "copies, no clear induction head"
  (copy gain >= COPY_GAIN without one), "previous-token head, no copying" or "no copying mechanism".
"""

from __future__ import annotations

import math
from typing import Any

CLEAR_FACTOR = 5.0  # a head scoring this many times the uniform-attention score is a clear head of its kind
COPY_GAIN = 0.1  # nats: later copies this much cheaper than the first one means the model copies
ICL_SE_FACTOR = 2.0  # ICL is present when the score is below -2 standard errors


def finite_number(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def icl_of(record: dict) -> dict:
    """{"score", "stderr", "windows", "present", "note"} of one eval record."""
    icl = record.get("icl") if isinstance(record.get("icl"), dict) else None
    if icl is None:
        score = finite_number(record.get("icl_score"))
        return {
            "score": score,
            "stderr": None,
            "windows": None,
            "present": None,
            "note": None
            if score is None
            else "single-position score without a standard error (record made before the ICL estimate): not judged",
        }
    score, se = finite_number(icl.get("score")), finite_number(icl.get("stderr"))
    present = None if score is None or se is None else bool(score < -ICL_SE_FACTOR * se)
    return {"score": score, "stderr": se, "windows": icl.get("windows"), "present": present, "note": None}


def copy_gain(record: dict) -> float | None:
    per_copy = (record.get("copying") or {}).get("per_copy_loss") if isinstance(record.get("copying"), dict) else None
    maybe = [finite_number(v) for v in per_copy or []]
    vals = [v for v in maybe if v is not None]
    if len(vals) < 2 or len(vals) < len(maybe):
        return None
    return vals[0] - sum(vals[1:]) / (len(vals) - 1)


def _chance(point: dict) -> tuple[float, float]:
    from repeatlab.scores import uniform_attention_prefix_score, uniform_attention_previous_token_score

    ev = point.get("eval") or {}
    context = int((point.get("model") or {}).get("context") or (point.get("budget") or {}).get("context") or 128)
    return (
        uniform_attention_prefix_score(int(ev.get("prefix_random_tokens", 25)), int(ev.get("prefix_repeats", 4))),
        uniform_attention_previous_token_score(context),
    )


def evidence(record: dict) -> dict:
    """The mechanism evidence of one eval record (see the module docstring)."""
    agg: dict = record.get("aggregates") if isinstance(record.get("aggregates"), dict) else {}  # type: ignore[assignment]
    prefix_chance, prev_chance = _chance(record.get("point") or {})
    prefix, prev, gain = (
        finite_number(agg.get("prefix_matching_max")),
        finite_number(agg.get("previous_token_max")),
        copy_gain(record),
    )
    return {
        "prefix_matching_max": prefix,
        "prefix_chance": prefix_chance,
        "previous_token_max": prev,
        "previous_token_chance": prev_chance,
        "copy_gain": gain,
        "icl": icl_of(record),
        "verdict": verdict(prefix, prefix_chance, prev, prev_chance, gain),
    }


def verdict(
    prefix: float | None, prefix_chance: float, prev: float | None, prev_chance: float, gain: float | None
) -> str | None:
    if prefix is None and gain is None:
        return None
    if prefix is not None and prefix >= CLEAR_FACTOR * prefix_chance:
        return "induction head"
    if gain is not None and gain >= COPY_GAIN:
        return "copies, no clear induction head"
    if prev is not None and prev >= CLEAR_FACTOR * prev_chance:
        return "previous-token head, no copying"
    return "no copying mechanism"


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def damage_at_worst(base: list[dict], worst: list[dict], control: list[dict] | None = None) -> dict:
    """Baseline vs worst-E evidence (means over seeds); damage > 0 means the worst point has less of it. With the
    unique-only control of the same fraction, its evidence too: a head the control also lacks is lost to the
    missing unique tokens, not to repetition."""
    control = control or []
    out: dict[str, Any] = {}
    for key in ("previous_token_max", "prefix_matching_max", "copy_gain"):
        b, w, c = (_mean([e[key] for e in runs]) for runs in (base, worst, control))
        out[key] = {"baseline": b, "worst": w, "damage": None if b is None or w is None else b - w, "control": c}
    out["baseline_verdicts"] = sorted({e["verdict"] for e in base if e["verdict"]})
    out["worst_verdicts"] = sorted({e["verdict"] for e in worst if e["verdict"]})
    out["control_verdicts"] = sorted({e["verdict"] for e in control if e["verdict"]})
    return out


def control_note(change: dict) -> str:
    """' (control 0.027)' after a baseline -> worst pair of damage_at_worst, or '' without a control."""
    return f" (control {change['control']:.3f})" if change.get("control") is not None else ""


def head_loss_against_control(row: dict) -> str | None:
    """For each head the baseline has and the worst E lacks: how much of it the unique-only control (the same unique
    tokens, no repeats) lacks too. That share is the missing unique tokens' doing, the rest repetition's. None when
    no head was lost or there is no control. One number per run: no standard error is claimed."""
    phrases = []
    for head, key in (
        ("induction head", "prefix_matching_max"),
        ("previous-token head, no copying", "previous_token_max"),
    ):
        if head not in row["baseline_verdicts"] or head in row["worst_verdicts"]:
            continue
        m = row[key]
        if m.get("control") is not None and m["baseline"] is not None and m["worst"] is not None:
            phrases.append(_against_control(head.split(",")[0], m["baseline"], m["worst"], m["control"]))
    return "; ".join(phrases) or None


def _against_control(name: str, baseline: float, worst: float, control: float) -> str:
    drop, by_control = baseline - worst, baseline - control
    if by_control >= 0.9 * drop:
        return (
            f"the unique-only control lacks the {name} as well ({control:.3f}): the missing unique tokens, "
            "not repetition, explain its loss"
        )
    if by_control <= 0.1 * drop:
        return (
            f"the unique-only control keeps the {name} ({control:.3f}): repetition, not the missing unique "
            "tokens, takes it away"
        )
    return (
        f"the unique-only control keeps part of the {name} ({control:.3f}): the missing unique tokens account "
        f"for {by_control:.3f} of the {drop:.3f} drop, repetition for the rest"
    )
