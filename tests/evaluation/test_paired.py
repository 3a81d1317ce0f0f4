"""Paired differences (candidate - incumbent on the same events): the promotion gate's input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from evaluation import (
    EventStats,
    bootstrap_interval,
    evaluate,
    evaluate_paired,
    normal_interval,
    paired_difference,
    terms_from_stats,
)
from tests.evaluation.synth import make_world, sample

WORLD = make_world(0)


def _softmax(x: NDArray[np.float64]) -> NDArray[np.float64]:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


INCUMBENT = _softmax(WORLD.q / 0.3)  # a softer version of the target: worse, but similar
TRUE_DIFFERENCE = WORLD.true_value - WORLD.value(INCUMBENT)


def _paired_inputs(n: int, seed: int) -> dict[str, object]:
    s = sample(WORLD, n, seed=seed)
    return {
        "reward": s.reward,
        "action": s.action,
        "pscore": s.pscore,
        "candidate_dist": s.action_dist,
        "incumbent_dist": INCUMBENT[s.context],
        "q_hat": np.clip(0.8 * s.q_true + 0.05, 0, 1),
    }


def test_a_policy_against_itself_differs_by_exactly_zero() -> None:
    kw = _paired_inputs(2000, 1)
    kw["incumbent_dist"] = kw["candidate_dist"]
    p = evaluate_paired("dr", **kw, seed=0)  # type: ignore[arg-type]
    assert p.difference.value == 0 and p.difference.ci_low == 0 and p.difference.ci_high == 0
    assert p.candidate == p.incumbent.__class__(
        **{**p.incumbent.__dict__, "method": p.candidate.method}
    )
    assert not p.exceeds(0.0)


def test_paired_values_match_separate_evaluations_and_are_narrower() -> None:
    kw = _paired_inputs(5000, 2)
    for name in ("ips", "snips", "dr", "sndr"):
        p = evaluate_paired(name, **kw, interval="normal")  # type: ignore[arg-type]
        single = {
            "candidate": evaluate(
                name,
                reward=kw["reward"],
                action=kw["action"],
                pscore=kw["pscore"],
                action_dist=kw["candidate_dist"],
                q_hat=kw["q_hat"],
                interval="normal",
            ),
            "incumbent": evaluate(
                name,
                reward=kw["reward"],
                action=kw["action"],
                pscore=kw["pscore"],
                action_dist=kw["incumbent_dist"],
                q_hat=kw["q_hat"],
                interval="normal",
            ),
        }
        assert p.candidate.value == pytest.approx(single["candidate"].value, rel=1e-12)
        assert p.incumbent.value == pytest.approx(single["incumbent"].value, rel=1e-12)
        assert p.difference.value == pytest.approx(p.candidate.value - p.incumbent.value)
        assert p.difference.method == f"{name}:difference/normal"
        assert p.difference.ess == min(p.candidate.ess, p.incumbent.ess)
        # Unpaired: the two intervals' half-widths combined as if independent.
        unpaired = np.hypot(p.candidate.width, p.incumbent.width)
        assert p.difference.width < 0.75 * unpaired, name


def test_paired_difference_validates() -> None:
    with pytest.raises(ValueError, match="incumbent_terms must have one entry per event"):
        paired_difference(np.ones(5), np.ones(4))
    kw = _paired_inputs(100, 3)
    kw["incumbent_dist"] = np.full((100, 4), 0.25)
    with pytest.raises(ValueError, match=r"incumbent_dist must have the shape of candidate_dist"):
        evaluate_paired("ips", **kw)  # type: ignore[arg-type]
    kw["incumbent_dist"] = np.full((99, 5), 0.2)
    with pytest.raises(ValueError, match=r"incumbent_dist must be a 2-D array of shape \(100,"):
        evaluate_paired("ips", **kw)  # type: ignore[arg-type]


def test_bounds_are_carried_to_the_difference() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random(3000), rng.random(3000)
    p = paired_difference(a, b, interval="cs", bounds=(0.0, 1.0))
    assert -1.0 <= p.difference.ci_low < 0.0 < p.difference.ci_high <= 1.0
    assert p.candidate.ci_high <= 1.0 and p.incumbent.ci_low >= 0.0


def test_bounded_intervals_need_bounds_and_combine_both_policies_ranges() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random(2000), 2.0 * rng.random(2000)
    with pytest.raises(ValueError, match="bounds must be given for interval 'cs'"):
        paired_difference(a, b, interval="cs")
    with pytest.raises(ValueError, match="bounds must contain every term"):
        paired_difference(a, b, interval="bernstein", bounds=(0.0, 1.0))  # b reaches 2
    p = paired_difference(a, b, interval="bernstein", bounds=(0.0, 1.0), incumbent_bounds=(0, 2))
    assert p.incumbent.ci_high <= 2.0 and p.candidate.ci_high <= 1.0
    assert -2.0 <= p.difference.ci_low < p.difference.value < p.difference.ci_high <= 1.0
    assert p.difference.ci_low < -0.5 < p.difference.ci_high  # the true difference


def test_evaluate_paired_derives_each_policys_bounds_from_the_reward_range() -> None:
    kw: dict[str, Any] = _paired_inputs(4000, 4)
    with pytest.raises(ValueError, match=r"reward_range \(or bounds\) must be given"):
        evaluate_paired("dr", **kw, interval="cs")
    for kind in ("bernstein", "cs"):
        p = evaluate_paired("dr", **kw, interval=kind, reward_range=(0.0, 1.0))
        assert p.difference.ci_low <= TRUE_DIFFERENCE <= p.difference.ci_high, kind
        assert p.candidate.ci_low <= WORLD.true_value <= p.candidate.ci_high, kind
    logging = sample(WORLD, 4000, seed=4).logging_dist  # the same events' logging pmfs
    by_pmf = evaluate_paired("dr", **kw, interval="cs", reward_range=(0, 1), logging_dist=logging)
    assert by_pmf.difference.ci_low <= TRUE_DIFFERENCE <= by_pmf.difference.ci_high
    # Against itself the difference terms are all 0, and the interval is still not a point:
    # 4000 zeros do not prove a zero difference when the terms could have been anything in the
    # a priori range (the observed range gave a zero-width interval here).
    kw["incumbent_dist"] = kw["candidate_dist"]
    for kind in ("bernstein", "cs"):
        same = evaluate_paired("ips", **kw, interval=kind, reward_range=(0.0, 1.0))
        assert same.difference.value == 0.0
        assert same.difference.ci_low < -0.01 and same.difference.ci_high > 0.01, kind
        assert not same.exceeds(0.0)


@pytest.mark.slow
def test_paired_difference_intervals_cover_and_the_gate_promotes_the_better_policy() -> None:
    n_seeds, n = 400, 5000
    diffs = []
    for i in range(n_seeds):
        kw = _paired_inputs(n, 5000 + i)
        common = {k: kw[k] for k in ("reward", "action", "pscore", "q_hat")}
        cand = terms_from_stats(
            "dr", EventStats.from_arrays(**common, action_dist=kw["candidate_dist"])
        )
        inc = terms_from_stats(
            "dr", EventStats.from_arrays(**common, action_dist=kw["incumbent_dist"])
        )
        diffs.append(cand - inc)
    terms = np.stack(diffs, axis=1)
    for lo, hi in (normal_interval(terms), bootstrap_interval(terms, rng=0)):
        covered = np.mean((lo <= TRUE_DIFFERENCE) & (hi >= TRUE_DIFFERENCE))
        assert 0.92 <= covered <= 0.98
        # The candidate is truly better: the gate (lower bound > 0) promotes it almost always.
        assert TRUE_DIFFERENCE > 0 and np.mean(lo > 0) > 0.9
