"""Intervals and confidence sequences: unit behaviour and coverage over many seeds."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from evaluation import (
    EventStats,
    bernstein_interval,
    bootstrap_interval,
    confidence_interval,
    confidence_sequence,
    cs_interval,
    estimate,
    estimate_many,
    evaluate,
    evaluate_many,
    normal_interval,
    terms_from_stats,
)
from evaluation.intervals import bootstrap_replicates
from evaluation.ope import max_importance_weight, term_bounds
from tests.evaluation.synth import make_world, sample

RNG = np.random.default_rng(0)
SKEWED = RNG.exponential(size=3000)


def test_normal_interval_is_mean_plus_minus_z_se() -> None:
    lo, hi = normal_interval(SKEWED, alpha=0.05)
    se = SKEWED.std(ddof=1) / np.sqrt(SKEWED.size)
    assert lo == pytest.approx(SKEWED.mean() - 1.959963984540054 * se)
    assert hi == pytest.approx(SKEWED.mean() + 1.959963984540054 * se)


def test_bootstrap_is_seeded_and_close_to_normal_for_large_n() -> None:
    a = bootstrap_interval(SKEWED, rng=7)
    b = bootstrap_interval(SKEWED, rng=np.random.default_rng(7))
    c = bootstrap_interval(SKEWED, rng=8)
    assert a == b and a != c
    lo, hi = normal_interval(SKEWED)
    assert a[0] == pytest.approx(lo, abs=0.1 * (hi - lo))
    assert a[1] == pytest.approx(hi, abs=0.1 * (hi - lo))
    # The percentile bootstrap follows the right skew of the terms.
    reps = bootstrap_replicates(SKEWED, n_boot=4000, rng=1)
    assert np.mean((reps - reps.mean()) ** 3) > 0


def test_bootstrap_on_buckets_for_large_n_matches_the_normal_interval() -> None:
    x = np.random.default_rng(3).normal(5.0, 2.0, size=200_000)
    lo, hi = bootstrap_interval(x, rng=0)  # 200k events > 16384 units: bucketed
    n_lo, n_hi = normal_interval(x)
    assert lo == pytest.approx(n_lo, abs=0.05 * (n_hi - n_lo))
    assert hi == pytest.approx(n_hi, abs=0.05 * (n_hi - n_lo))


def test_columns_share_resampling_weights() -> None:
    x = SKEWED
    both = bootstrap_interval(np.stack([x, x + 1.0], axis=1), rng=5)
    np.testing.assert_allclose(both[0][1] - both[0][0], 1.0, rtol=1e-9)
    np.testing.assert_allclose(both[1][1] - both[1][0], 1.0, rtol=1e-9)
    np.testing.assert_allclose(both[0][0], bootstrap_interval(x, rng=5)[0], rtol=1e-6)


def test_constant_terms_give_zero_width_only_without_a_priori_range() -> None:
    x = np.full(50, 0.3)
    for kind in ("normal", "bootstrap"):
        lo, hi = confidence_interval(x, kind, rng=0)
        assert lo == pytest.approx(0.3) and hi == pytest.approx(0.3), kind
    # bernstein and cs take their width from the a priori range too: 50 equal terms do not prove
    # that the mean is 0.3 when the terms may lie anywhere in [0, 1].
    for kind in ("bernstein", "cs"):
        lo, hi = confidence_interval(x, kind, bounds=(0.0, 1.0))
        assert 0.0 <= lo <= 0.3 <= hi <= 1.0 and hi - lo > 0.05, kind
        # Point bounds: the terms are known to be constant, so is the mean.
        assert confidence_interval(x, kind, bounds=(0.3, 0.3)) == (0.3, 0.3), kind


def test_bernstein_respects_bounds_and_shrinks_with_n() -> None:
    x = np.random.default_rng(1).random(4000)
    lo, hi = bernstein_interval(x, bounds=(0.0, 1.0))
    assert 0.0 <= lo < x.mean() < hi <= 1.0
    lo4, hi4 = bernstein_interval(x[:1000], bounds=(0.0, 1.0))
    assert (hi4 - lo4) > 1.7 * (hi - lo)
    assert (hi - lo) > (normal_interval(x)[1] - normal_interval(x)[0])  # conservative
    with pytest.raises(ValueError, match="bounds must contain every term"):
        bernstein_interval(x, bounds=(0.0, 0.5))
    with pytest.raises(ValueError, match="bounds must be finite"):
        bernstein_interval(x, bounds=(1.0, 0.0))


def test_confidence_sequence_is_nested_and_ends_at_cs_interval() -> None:
    x = np.random.default_rng(2).random(5000)
    lo, hi = confidence_sequence(x, bounds=(0.0, 1.0))
    assert lo.shape == hi.shape == x.shape
    assert np.all(np.diff(lo) >= 0) and np.all(np.diff(hi) <= 0)
    assert np.all(lo <= hi)
    final = cs_interval(x, bounds=(0.0, 1.0))
    assert final == (lo[-1], hi[-1])
    assert lo[-1] < 0.5 < hi[-1]
    assert hi[-1] - lo[-1] < 0.1
    two = confidence_sequence(np.stack([x, 1 - x], axis=1), bounds=(0.0, 1.0))
    np.testing.assert_allclose(two[0][:, 0], lo)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: normal_interval(SKEWED, alpha=0.0), r"alpha must be in \(0, 1\), got 0.0"),
        (lambda: normal_interval(SKEWED[:1]), "terms must hold at least 2 events"),
        (lambda: normal_interval(np.ones((2, 2, 2))), "terms must be a 1-D or 2-D array"),
        (lambda: normal_interval([1.0, np.nan]), "terms must be .*finite.* got nan at index 1"),
        (lambda: bootstrap_interval(SKEWED, n_boot=5), "n_boot must be an integer >= 10"),
        (lambda: bootstrap_interval(SKEWED, max_units=1), "max_units must be an integer >= 100"),
        (lambda: confidence_interval(SKEWED, "magic"), "interval must be one of"),
        (lambda: confidence_interval(SKEWED, "bernstein"), "bounds must be given for the bern"),
        (lambda: confidence_interval(SKEWED, "cs", bounds=None), "bounds must be given for"),
        (lambda: cs_interval(SKEWED, bounds=(0.0, np.nan)), "bounds must be finite"),
        (lambda: estimate(SKEWED, method="ips", interval="cs"), r"bounds must map every method"),
        (
            lambda: estimate_many(
                {"a": SKEWED, "b": SKEWED}, interval="bernstein", bounds={"a": (0, 20)}
            ),
            r"bounds must map every method .* got none for \['b'\]",
        ),
        (lambda: estimate(SKEWED, method="x", interval="magic"), "interval must be one of"),
        (lambda: estimate_many({}), "terms must map at least one method"),
        (
            lambda: estimate_many({"a": SKEWED, "b": SKEWED[:10]}),
            r"terms\['b'\] must have one entry per event like terms\['a'\]",
        ),
    ],
)
def test_interval_inputs_are_validated(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_estimate_builds_an_estimate() -> None:
    e = estimate(SKEWED, method="ips", interval="normal", ess=123.0)
    assert e.method == "ips/normal" and e.n == SKEWED.size and e.ess == 123.0
    assert e.value == pytest.approx(SKEWED.mean())
    assert estimate(SKEWED, method="ips", interval="normal").ess == SKEWED.size
    bounded = estimate(SKEWED, method="ips", interval="cs", bounds=(0.0, 20.0))
    assert bounded.contains(1.0)


# ---- coverage over many seeds -------------------------------------------------------------

WORLD = make_world(0)
N_EVENTS, N_SEEDS = 5000, 500


@pytest.fixture(scope="module")
def seeds_terms() -> dict[str, NDArray[np.float64]]:
    """(N_EVENTS, N_SEEDS) terms of IPS, SNIPS and DR (fixed imperfect model) per estimator."""
    cols: dict[str, list[NDArray[np.float64]]] = {"ips": [], "snips": [], "dr": []}
    for i in range(N_SEEDS):
        s = sample(WORLD, N_EVENTS, seed=1000 + i)
        stats = EventStats.from_arrays(**s.kwargs(np.clip(0.8 * s.q_true + 0.05, 0, 1)))
        for name, col in cols.items():
            col.append(terms_from_stats(name, stats))
    return {name: np.stack(col, axis=1) for name, col in cols.items()}


def _coverage(lo: NDArray[np.float64], hi: NDArray[np.float64]) -> float:
    truth = WORLD.true_value
    return float(np.mean((lo <= truth) & (truth <= hi)))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["normal", "bootstrap", "bucketed_bootstrap"])
@pytest.mark.parametrize("name", ["ips", "snips", "dr"])
def test_95_percent_intervals_cover_92_to_98_percent(
    seeds_terms: dict[str, NDArray[np.float64]], name: str, kind: str
) -> None:
    terms = seeds_terms[name]
    if kind == "bucketed_bootstrap":  # the large-n path, exercised with 250 buckets of 20 events
        lo, hi = bootstrap_interval(terms, rng=0, max_units=250)
    else:
        lo, hi = confidence_interval(terms, kind, rng=0)
    assert 0.92 <= _coverage(lo, hi) <= 0.98


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ips", "dr"])
def test_bernstein_and_confidence_sequence_are_conservative(
    seeds_terms: dict[str, NDArray[np.float64]], name: str
) -> None:
    w_max = float(np.max(WORLD.target / WORLD.logging))  # a priori bound of the weights
    bounds = (0.0, w_max) if name == "ips" else (-w_max, 1.0 + w_max)
    terms = seeds_terms[name]
    assert _coverage(*bernstein_interval(terms, bounds=bounds)) >= 0.95
    lo, hi = confidence_sequence(terms, bounds=bounds)
    truth = WORLD.true_value
    # Time-uniform: the truth is inside the interval at every one of the 5000 looks.
    assert np.mean(np.all((lo <= truth) & (truth <= hi), axis=0)) >= 0.95


# ---- a priori bounds of the terms -----------------------------------------------------------


def test_term_bounds_contain_every_estimators_terms() -> None:
    s = sample(WORLD, 4000, seed=11)
    q_hat = np.clip(0.8 * s.q_true + 0.05, 0.0, 1.0)
    stats = EventStats.from_arrays(**s.kwargs(q_hat))
    exact = max_importance_weight(action_dist=s.action_dist, logging_dist=s.logging_dist)
    floor = max_importance_weight(pscore=s.pscore, action_dist=s.action_dist)
    # The exact per-context bound is at most the floor-based one, and both hold every weight.
    assert stats.weight.max() <= exact <= floor <= 1.0 / s.pscore.min()
    assert exact == pytest.approx(float(np.max(WORLD.target / WORLD.logging)), rel=0.5)
    for name, params in [
        ("ips", {}),
        ("clipped_ips", {"max_weight": 3.0}),
        ("dm", {}),
        ("dr", {}),
        ("switch_dr", {"threshold": 4.0}),
    ]:
        lo, hi = term_bounds(
            name,
            reward_range=(0.0, 1.0),
            action_dist=s.action_dist,
            logging_dist=s.logging_dist,
            **params,
        )
        terms = terms_from_stats(name, stats, **params)
        assert lo <= terms.min() and terms.max() <= hi, name
    w = exact
    assert term_bounds("ips", reward_range=(0.0, 1.0), weight_bound=w) == (0.0, w)
    assert term_bounds("ips", reward_range=(-1.0, 2.0), weight_bound=w) == (-w, 2.0 * w)
    assert term_bounds("ips", reward_range=(0.5, 2.0), weight_bound=w) == (0.0, 2.0 * w)
    assert term_bounds("clipped_ips", reward_range=(0.0, 1.0), weight_bound=w, max_weight=2.0) == (
        0.0,
        2.0,
    )
    assert term_bounds("dm", reward_range=(0.0, 1.0), weight_bound=w, q_range=(0.2, 0.7)) == (
        0.2,
        0.7,
    )
    assert term_bounds("dr", reward_range=(0.0, 1.0), weight_bound=w) == (-w, 1.0 + w)
    assert term_bounds("switch_dr", reward_range=(0.0, 1.0), weight_bound=w, threshold=0.0) == (
        0.0,
        1.0,
    )


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: term_bounds("snips", reward_range=(0.0, 1.0), weight_bound=5.0),
            "snips has no a priori bounds on its terms",
        ),
        (
            lambda: term_bounds("sndr", reward_range=(0.0, 1.0), weight_bound=5.0),
            "sndr has no a priori bounds",
        ),
        (lambda: term_bounds("magic", reward_range=(0, 1), weight_bound=5.0), "name must be one"),
        (
            lambda: term_bounds("ips", reward_range=(1.0, 0.0), weight_bound=5.0),
            r"reward_range must be finite \(low, high\) with low <= high",
        ),
        (
            lambda: term_bounds("dr", reward_range=(0, 1), q_range=(0, np.inf), weight_bound=5.0),
            "q_range must be finite",
        ),
        (
            lambda: term_bounds("ips", reward_range=(0.0, 1.0), weight_bound=-1.0),
            "weight_bound must be a finite number >= 0",
        ),
        (
            lambda: term_bounds("ips", reward_range=(0.0, 1.0), weight_bound=5.0, pscore=[0.5]),
            "weight_bound must be given alone",
        ),
        (
            lambda: term_bounds("ips", reward_range=(0.0, 1.0)),
            r"pscore \(or logging_dist with action_dist\) must be given",
        ),
        (
            lambda: term_bounds("ips", reward_range=(0, 1), weight_bound=5.0, threshold=1.0),
            r"params of ips must be among \[\], got \['threshold'\]",
        ),
        (
            lambda: max_importance_weight(logging_dist=np.full((3, 2), 0.5)),
            "action_dist must be given with logging_dist",
        ),
        (
            lambda: max_importance_weight(
                logging_dist=np.full((3, 2), 0.5), action_dist=np.full((3, 4), 0.25)
            ),
            r"action_dist must have the shape of logging_dist \(3, 2\)",
        ),
        (lambda: max_importance_weight(pscore=[0.5, 0.0]), "pscore must be .*probabilities"),
    ],
)
def test_term_bounds_inputs_are_validated(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_evaluate_derives_the_bounds_from_the_reward_range() -> None:
    s = sample(WORLD, 3000, seed=12)
    q_hat = np.clip(0.8 * s.q_true + 0.05, 0.0, 1.0)
    for kind in ("bernstein", "cs"):
        many = evaluate_many(**s.kwargs(q_hat), interval=kind, reward_range=(0.0, 1.0))
        # The self-normalised estimators have no a priori bounds: not chosen by default.
        assert sorted(many) == ["clipped_ips", "dm", "dr", "ips", "switch_dr"], kind
        for name, e in many.items():
            assert e.ci_low < e.value < e.ci_high, (kind, name)
        one = evaluate("dr", **s.kwargs(q_hat), interval=kind, reward_range=(0.0, 1.0))
        assert one == many["dr"]
    # The logging policy's known floor (epsilon / n_actions) may be given instead.
    w_floor = WORLD.n_actions / 0.2
    floor = evaluate(
        "ips", **s.kwargs(), interval="cs", reward_range=(0.0, 1.0), weight_bound=w_floor
    )
    assert floor.ci_low < floor.value < floor.ci_high
    # Or the full logging pmf: the largest weight any logged context could have given.
    exact = max_importance_weight(action_dist=s.action_dist, logging_dist=s.logging_dist)
    by_pmf = evaluate(
        "ips", **s.kwargs(), interval="cs", reward_range=(0, 1), logging_dist=s.logging_dist
    )
    assert by_pmf == evaluate(
        "ips", **s.kwargs(), interval="cs", reward_range=(0, 1), weight_bound=exact
    )
    with pytest.raises(ValueError, match=r"reward_range \(or bounds\) must be given for interval"):
        evaluate("ips", **s.kwargs(), interval="cs")
    with pytest.raises(ValueError, match="snips has no a priori bounds"):
        evaluate("snips", **s.kwargs(), interval="bernstein", reward_range=(0.0, 1.0))
    stats = EventStats.from_arrays(**s.kwargs())
    with pytest.raises(ValueError, match="weight_bound must be given with stats"):
        evaluate_many(["ips"], stats=stats, interval="cs", reward_range=(0.0, 1.0))
    with_bound = evaluate_many(
        ["ips"], stats=stats, interval="cs", reward_range=(0.0, 1.0), weight_bound=w_floor
    )
    assert with_bound["ips"] == floor
    # Rewards outside the reward range: the bounds were not a priori bounds of the terms.
    with pytest.raises(ValueError, match="bounds must contain every term"):
        evaluate("ips", **s.kwargs(), interval="cs", reward_range=(0.0, 0.5))
