"""Bandit estimators: invariants between them and accuracy against exact ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation import (
    ESTIMATORS,
    EventStats,
    clipped_ips,
    cross_fit_q_hat,
    dm,
    dr,
    evaluate,
    evaluate_many,
    importance_weight,
    ips,
    self_normalize,
    sndr,
    snips,
    switch_dr,
    terms_from_stats,
)
from tests.evaluation.synth import BanditSample, make_world, sample

WORLD = make_world(0)


@pytest.fixture(scope="module")
def logged() -> BanditSample:
    return sample(WORLD, 5000, seed=1)


def test_registry_lists_the_seven_estimators() -> None:
    assert sorted(ESTIMATORS) == sorted(
        ["ips", "clipped_ips", "snips", "dm", "dr", "sndr", "switch_dr"]
    )


def test_dr_with_zero_q_hat_equals_ips(logged: BanditSample) -> None:
    zero = np.zeros_like(logged.q_true)
    np.testing.assert_allclose(dr(**logged.kwargs(zero)), ips(**logged.kwargs()), rtol=0, atol=0)


def test_switch_dr_limits_are_dm_and_dr(logged: BanditSample) -> None:
    q = logged.q_true + 0.1
    kw = logged.kwargs(q)
    np.testing.assert_array_equal(switch_dr(**kw, threshold=0.0), dm(**kw))
    np.testing.assert_array_equal(switch_dr(**kw, threshold=np.inf), dr(**kw))


def test_snips_and_ips_of_the_logging_policy_equal_the_mean_reward() -> None:
    s = sample(WORLD, 3000, seed=2, target=WORLD.logging)
    kw = s.kwargs()
    assert snips(**kw).mean() == pytest.approx(s.reward.mean(), rel=1e-12)
    assert ips(**kw).mean() == pytest.approx(s.reward.mean(), rel=1e-12)


def test_snips_is_invariant_to_rescaling_the_propensities(logged: BanditSample) -> None:
    kw = logged.kwargs()
    scaled = {**kw, "pscore": kw["pscore"] * 0.5}
    assert snips(**scaled).mean() == pytest.approx(snips(**kw).mean(), rel=1e-12)
    assert ips(**scaled).mean() == pytest.approx(2 * ips(**kw).mean(), rel=1e-12)


def test_self_normalised_terms_are_linearised_ratios(logged: BanditSample) -> None:
    w = importance_weight(
        action=logged.action, pscore=logged.pscore, action_dist=logged.action_dist
    )
    terms = snips(**logged.kwargs())
    ratio = np.sum(w * logged.reward) / np.sum(w)
    assert terms.mean() == pytest.approx(ratio, rel=1e-12)
    # The delta-method variance of a ratio of means.
    expected = np.var(w * logged.reward - ratio * w) / np.mean(w) ** 2
    assert np.var(terms) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="weight must not all be 0"):
        self_normalize(np.zeros(3), np.zeros(3))


def test_clipping_above_the_largest_weight_changes_nothing(logged: BanditSample) -> None:
    kw = logged.kwargs()
    w = importance_weight(
        action=logged.action, pscore=logged.pscore, action_dist=logged.action_dist
    )
    np.testing.assert_array_equal(clipped_ips(**kw, max_weight=w.max()), ips(**kw))
    clipped = clipped_ips(**kw, max_weight=1.0)
    assert np.all(clipped <= logged.reward)


def test_dr_with_a_perfect_model_has_no_variance_from_rewards() -> None:
    s = sample(WORLD, 2000, seed=3, noise_free=True)
    kw = s.kwargs(s.q_true)
    np.testing.assert_allclose(dr(**kw), dm(**kw), atol=1e-12)
    np.testing.assert_allclose(sndr(**kw).mean(), dm(**kw).mean(), atol=1e-12)


@pytest.mark.slow
def test_dr_with_the_true_q_hat_has_lower_variance_than_ips() -> None:
    values = np.array(
        [
            [ips(**s.kwargs()).mean(), dr(**s.kwargs(s.q_true)).mean()]
            for s in (sample(WORLD, 1000, seed=100 + i) for i in range(200))
        ]
    )
    var_ips, var_dr = values.var(axis=0, ddof=1)
    assert var_dr < 0.5 * var_ips
    # Both are unbiased: their means over the seeds are within 4 standard errors of the truth.
    se = np.sqrt(values.var(axis=0, ddof=1) / len(values))
    assert np.all(np.abs(values.mean(axis=0) - WORLD.true_value) < 4 * se)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_accuracy_within_ten_percent_at_10k_events(seed: int) -> None:
    s = sample(WORLD, 10_000, seed=seed)
    q_hat = cross_fit_q_hat(
        reward=s.reward, action=s.action, n_actions=WORLD.n_actions, context=s.features, seed=seed
    )
    truth = WORLD.true_value
    estimates = {
        **{n: fn(**s.kwargs(q_hat)).mean() for n, fn in ESTIMATORS.items()},
        "dm_true_q": dm(**s.kwargs(s.q_true)).mean(),
    }
    for name in ("ips", "snips", "dr", "sndr", "dm_true_q"):
        assert abs(estimates[name] - truth) / truth <= 0.10, (name, estimates[name], truth)


def test_event_stats_concatenate_matches_the_whole(logged: BanditSample) -> None:
    q = logged.q_true * 0.9
    kw = logged.kwargs(q)
    whole = EventStats.from_arrays(**kw)
    parts = [
        EventStats.from_arrays(**{k: v[sl] for k, v in kw.items()})
        for sl in (slice(0, 1234), slice(1234, 4000), slice(4000, None))
    ]
    joined = EventStats.concatenate(parts)
    for name, fn in ESTIMATORS.items():
        np.testing.assert_allclose(terms_from_stats(name, joined), fn(**kw), rtol=1e-12)
        np.testing.assert_allclose(terms_from_stats(name, whole), fn(**kw), rtol=1e-12)
    with pytest.raises(ValueError, match="all have q_hat or all lack it"):
        EventStats.concatenate([parts[0], EventStats(parts[1].weight, parts[1].reward)])
    with pytest.raises(ValueError, match="name must be one of"):
        terms_from_stats("nope", whole)


def test_evaluate_and_evaluate_many_agree(logged: BanditSample) -> None:
    q = logged.q_true
    many = evaluate_many(**logged.kwargs(q), interval="normal")
    assert set(many) == set(ESTIMATORS)
    for name, est in many.items():
        one = evaluate(name, **logged.kwargs(q), interval="normal")
        assert est == one
        assert est.method == f"{name}/normal" and est.n == 5000
    assert many["dm"].ess == 5000
    assert 0 < many["ips"].ess < 5000
    without_q = evaluate_many(**logged.kwargs(), interval="normal")
    assert set(without_q) == {"ips", "clipped_ips", "snips"}
    with pytest.raises(ValueError, match="stats must be given alone"):
        evaluate_many(stats=EventStats.from_arrays(**logged.kwargs()), reward=logged.reward)
    with pytest.raises(ValueError, match="names must be among"):
        evaluate_many(["ips", "nope"], **logged.kwargs())


def test_evaluate_passes_hyperparameters(logged: BanditSample) -> None:
    loose = evaluate("clipped_ips", **logged.kwargs(), interval="normal", max_weight=1e9)
    tight = evaluate("clipped_ips", **logged.kwargs(), interval="normal", max_weight=1.0)
    assert loose.value == pytest.approx(ips(**logged.kwargs()).mean())
    assert tight.value < loose.value and tight.ess > loose.ess
