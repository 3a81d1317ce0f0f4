"""Exploration strategies: properties, invalid inputs and the factory."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from explore import (
    EpsilonGreedy,
    Explorer,
    Greedy,
    Softmax,
    epsilon_greedy,
    make_explorer,
    softmax,
)

# Deterministic examples: the suite is seeded.
SETTINGS = settings(derandomize=True, database=None, max_examples=150, deadline=None)

finite = st.floats(allow_nan=False, allow_infinity=False)
moderate = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
score_arrays = arrays(np.float64, st.integers(1, 30), elements=finite)
moderate_arrays = arrays(np.float64, st.integers(1, 30), elements=moderate)
epsilons = st.floats(min_value=0.0, max_value=1.0)
lams = st.floats(min_value=0.0, max_value=1e300)


def assert_is_pmf(p: np.ndarray, n: int) -> None:
    assert p.shape == (n,)
    assert p.dtype == np.float64
    assert np.all(np.isfinite(p))
    assert np.all(p >= 0.0)
    assert abs(p.sum() - 1.0) < 1e-9


# --- epsilon-greedy ---------------------------------------------------------------------------


def test_epsilon_greedy_values() -> None:
    p = epsilon_greedy(np.array([0.1, 0.9, 0.3, 0.2]), 0.2)
    np.testing.assert_allclose(p, [0.05, 0.85, 0.05, 0.05])


def test_epsilon_greedy_splits_ties() -> None:
    p = epsilon_greedy(np.array([1.0, 3.0, 3.0, 2.0]), 0.4)
    np.testing.assert_allclose(p, [0.1, 0.4, 0.4, 0.1])


def test_untrained_model_is_uniform() -> None:
    for eps in (0.0, 0.1, 1.0):
        np.testing.assert_allclose(epsilon_greedy(np.zeros(5), eps), np.full(5, 0.2))


def test_greedy_is_epsilon_zero() -> None:
    scores = np.array([0.5, 2.0, -1.0, 2.0])
    np.testing.assert_array_equal(Greedy().pmf(scores), EpsilonGreedy(0.0).pmf(scores))
    np.testing.assert_array_equal(Greedy().pmf(scores), [0.0, 0.5, 0.0, 0.5])
    assert Greedy().epsilon == 0.0


def test_epsilon_one_is_uniform() -> None:
    np.testing.assert_allclose(epsilon_greedy(np.array([1.0, 5.0, 2.0]), 1.0), np.full(3, 1 / 3))


@SETTINGS
@given(scores=score_arrays, epsilon=epsilons)
def test_epsilon_greedy_properties(scores: np.ndarray, epsilon: float) -> None:
    n = scores.size
    p = epsilon_greedy(scores, epsilon)
    assert_is_pmf(p, n)
    assert p.min() >= epsilon / n * (1 - 1e-12)
    best = scores == scores.max()
    # All tied maxima get the same, largest probability.
    assert np.all(p[best] == p[best][0])
    assert np.all(p[~best] <= p[best][0])
    np.testing.assert_allclose(p[best][0], (1 - epsilon) / best.sum() + epsilon / n)


# --- softmax ----------------------------------------------------------------------------------


def test_softmax_values() -> None:
    scores = np.array([0.0, 1.0, 2.0])
    expected = np.exp(0.5 * scores) / np.exp(0.5 * scores).sum()
    np.testing.assert_allclose(softmax(scores, 0.5), expected)


def test_softmax_lam_zero_is_uniform() -> None:
    np.testing.assert_array_equal(softmax(np.array([1e300, -3.0, 7.0, 0.0]), 0.0), np.full(4, 0.25))


@pytest.mark.parametrize(
    ("scores", "lam", "expected"),
    [
        ([1e308, -1e308, 0.0], 1.0, [1.0, 0.0, 0.0]),
        ([1e308, 1e308], 1e300, [0.5, 0.5]),
        ([1000.0, 999.0], 1e308, [1.0, 0.0]),
        ([-1e308, -1e308, 5.0], 1e-300, [0.0, 0.0, 1.0]),
        # s - max overflows float64 here, but lam * (s - max) = -0.02 does not.
        ([-1e308, 1e308], 1e-310, [1 / (1 + np.exp(0.02)), 1 / (1 + np.exp(-0.02))]),
    ],
)
def test_softmax_extreme_scores_do_not_overflow(
    scores: list[float], lam: float, expected: list[float]
) -> None:
    # Warnings are errors in this suite, so an overflow warning would fail the test.
    p = softmax(np.array(scores), lam)
    np.testing.assert_allclose(p, expected, atol=1e-12)


@SETTINGS
@given(scores=score_arrays, lam=lams)
def test_softmax_properties(scores: np.ndarray, lam: float) -> None:
    p = softmax(scores, lam)
    assert_is_pmf(p, scores.size)
    # Higher score never gets lower probability.
    order = np.argsort(scores, kind="stable")
    assert np.all(np.diff(p[order]) >= -1e-15)
    assert p[np.argmax(scores)] > 0.0


@SETTINGS
@given(scores=moderate_arrays, lam=st.floats(0.0, 10.0), shift=moderate)
def test_softmax_invariant_to_adding_a_constant(
    scores: np.ndarray, lam: float, shift: float
) -> None:
    np.testing.assert_allclose(softmax(scores + shift, lam), softmax(scores, lam), atol=1e-6)


# --- classes, protocol, factory ---------------------------------------------------------------


def test_classes_call_the_functions() -> None:
    scores = np.array([0.3, -0.2, 1.5])
    np.testing.assert_array_equal(EpsilonGreedy(0.3).pmf(scores), epsilon_greedy(scores, 0.3))
    np.testing.assert_array_equal(Softmax(2.0).pmf(scores), softmax(scores, 2.0))


def test_implementations_satisfy_protocol() -> None:
    for explorer in (EpsilonGreedy(0.1), Greedy(), Softmax(1.0)):
        assert isinstance(explorer, Explorer)


def test_make_explorer() -> None:
    assert make_explorer("epsilon_greedy", epsilon=0.2) == EpsilonGreedy(0.2)
    assert make_explorer("softmax", lam=3.0) == Softmax(3.0)
    assert make_explorer("greedy") == Greedy()


def test_pmf_does_not_modify_scores() -> None:
    scores = np.array([3.0, 1.0, 2.0])
    for explorer in (EpsilonGreedy(0.1), Softmax(2.0)):
        explorer.pmf(scores)
    np.testing.assert_array_equal(scores, [3.0, 1.0, 2.0])


@pytest.mark.parametrize(
    ("kind", "params", "match"),
    [
        ("ucb", {}, r"^kind must be one of \['epsilon_greedy', 'greedy', 'softmax'\], got 'ucb'"),
        ("softmax", {}, r"must be exactly \['lam'\], got missing \['lam'\] and unknown \[\]"),
        ("epsilon_greedy", {"epsilon": 0.1, "lam": 1.0}, r"unknown \['lam'\]"),
        ("epsilon_greedy", {"eps": 0.1}, r"missing \['epsilon'\] and unknown \['eps'\]"),
        ("greedy", {"epsilon": 0.1}, r"unknown \['epsilon'\]"),
        ("epsilon_greedy", {"epsilon": 1.5}, r"^epsilon must be a probability in \[0, 1\]"),
        ("softmax", {"lam": -1.0}, r"^lam must be a finite real number >= 0.0, got -1.0"),
    ],
)
def test_make_explorer_rejects(kind: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_explorer(kind, **params)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: EpsilonGreedy(-0.1), r"^epsilon must be a probability in \[0, 1\], got -0.1"),
        (lambda: EpsilonGreedy(float("nan")), r"^epsilon must be .* got nan"),
        (lambda: EpsilonGreedy("0.1"), r"^epsilon must be .* got str"),  # type: ignore[arg-type]
        (lambda: Softmax(float("inf")), r"^lam must be a finite real number >= 0.0, got inf"),
        (lambda: Softmax(-2.0), r"^lam must be .* got -2.0"),
        (lambda: epsilon_greedy(np.array([1.0]), 2.0), r"^epsilon must be .* got 2.0"),
        (lambda: softmax(np.array([1.0]), -1.0), r"^lam must be .* got -1.0"),
        (lambda: epsilon_greedy(np.array([]), 0.1), r"^scores must be .* shape \(0,\)"),
        (lambda: softmax(np.array([[1.0]]), 1.0), r"^scores must be .* shape \(1, 1\)"),
        (lambda: Softmax(1.0).pmf(np.array([0.0, np.nan])), r"^scores must .* nan at index 1"),
        (lambda: Greedy().pmf(np.array([np.inf])), r"^scores must .* inf at index 0"),
    ],
)
def test_strategies_reject(build: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()
