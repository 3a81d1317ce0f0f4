"""SquareCB, epsilon decay, the exploration floor and VW's pmf: properties, values, and the
propensity invariant (chi-square of keyed samples against the pmf, single and slate)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import chisquare

from explore import (
    DecayingEpsilonGreedy,
    Floored,
    SquareCB,
    VWPmf,
    event_stream,
    floor_pmf,
    make_explorer,
    sample_index,
    sample_slate,
    squarecb,
    vw_pmf,
)
from explore.modern import decayed_epsilon, squarecb_gamma

SETTINGS = settings(derandomize=True, database=None, max_examples=150, deadline=None)
moderate = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)
score_arrays = arrays(np.float64, st.integers(1, 30), elements=moderate)
KEY = bytes(range(32))


def assert_is_pmf(p: np.ndarray, n: int) -> None:
    assert p.shape == (n,)
    assert np.all(np.isfinite(p)) and np.all(p >= 0.0)
    assert abs(p.sum() - 1.0) < 1e-9


def test_squarecb_values() -> None:
    s = np.array([0.5, 0.2, 0.0])
    p = squarecb(s, 10.0)
    np.testing.assert_allclose(p[1], 1 / (3 + 10 * 0.3))
    np.testing.assert_allclose(p[2], 1 / (3 + 10 * 0.5))
    np.testing.assert_allclose(p[0], 1 - p[1] - p[2])
    np.testing.assert_allclose(squarecb(s, 0.0), np.full(3, 1 / 3))


def test_squarecb_splits_ties_and_gamma_schedule() -> None:
    p = squarecb(np.array([1.0, 1.0, 0.0]), 5.0)
    assert p[0] == p[1] > p[2]
    assert squarecb_gamma(10.0, 0.5, 400) == pytest.approx(200.0)
    assert squarecb_gamma(10.0, 0.5, 0) == 10.0  # t < 1 counts as 1
    assert SquareCB(10.0, 0.5, 400).gamma == pytest.approx(200.0)
    # more learned examples, less exploration
    s = np.array([0.3, 0.1, 0.0])
    assert SquareCB(t=10_000).pmf(s)[0] > SquareCB(t=100).pmf(s)[0] > SquareCB(t=1).pmf(s)[0]


@SETTINGS
@given(score_arrays, st.floats(0.0, 1e6))
def test_squarecb_is_a_pmf_favouring_the_best(s: np.ndarray, gamma: float) -> None:
    p = squarecb(s, gamma)
    assert_is_pmf(p, s.size)
    assert p[int(np.argmax(s))] >= p.max() - 1e-12
    assert p.min() > 0.0


def test_epsilon_decay() -> None:
    assert decayed_epsilon(0.3, 0.0, 0.0, 1e6) == 0.3
    assert decayed_epsilon(0.3, 0.5, 0.0, 99) == pytest.approx(0.03)
    assert decayed_epsilon(0.3, 0.5, 0.05, 99) == 0.05
    p = DecayingEpsilonGreedy(0.3, 0.5, 0.0, 99).pmf(np.array([0.0, 1.0, 0.5]))
    np.testing.assert_allclose(p, [0.01, 0.98, 0.01])


@SETTINGS
@given(score_arrays, st.floats(0.0, 0.5))
def test_floor_is_a_pmf_with_the_minimum(s: np.ndarray, floor: float) -> None:
    inner = make_explorer("epsilon_greedy", epsilon=0.0)
    p = Floored(inner, floor).pmf(s)
    assert_is_pmf(p, s.size)
    assert p.min() >= min(floor, 1.0 / s.size) - 1e-12
    # a mixture with uniform
    f = min(floor, 1.0 / s.size)
    np.testing.assert_allclose(p, (1 - s.size * f) * inner.pmf(s) + f, atol=1e-12)


def test_floor_values() -> None:
    np.testing.assert_allclose(floor_pmf(np.array([1.0, 0.0, 0.0, 0.0]), 0.05), [0.85] + [0.05] * 3)
    np.testing.assert_allclose(floor_pmf(np.array([1.0, 0.0]), 0.5), [0.5, 0.5])
    np.testing.assert_allclose(floor_pmf(np.array([1.0, 0.0, 0.0]), 0.5), [1 / 3] * 3)  # 1/K cap
    with pytest.raises(ValueError, match="floor"):
        floor_pmf(np.array([1.0]), -0.1)


def test_vw_pmf_normalises() -> None:
    np.testing.assert_allclose(vw_pmf(np.array([1.0, 1.0, 0.0])), [0.5, 0.5, 0.0])
    np.testing.assert_allclose(vw_pmf(np.array([0.0, 0.0])), [0.5, 0.5])
    np.testing.assert_allclose(VWPmf().pmf(np.array([0.2, 0.8])), [0.2, 0.8])
    with pytest.raises(ValueError):
        vw_pmf(np.array([np.nan, 1.0]))


@pytest.mark.parametrize(
    "bad",
    [
        lambda: SquareCB(gamma0=-1.0),
        lambda: SquareCB(power=2.0),
        lambda: DecayingEpsilonGreedy(1.5),
        lambda: DecayingEpsilonGreedy(0.1, decay=-1.0),
        lambda: Floored(VWPmf(), 2.0),
        lambda: Floored(object(), 0.1),
    ],
)
def test_invalid_parameters(bad: object) -> None:
    with pytest.raises(ValueError):
        bad()  # type: ignore[operator]


EXPLORERS = {
    "squarecb": SquareCB(10.0, 0.5, 25),
    "epsilon_decay": DecayingEpsilonGreedy(0.6, 0.5, 0.0, 3),
    "squarecb_floor": Floored(SquareCB(10.0, 0.5, 10_000), 0.04),
    "vw_pmf_floor": Floored(VWPmf(), 0.05),
}
SCORES = {
    "squarecb": np.array([0.9, 0.5, 0.2, 0.0, -0.4]),
    "epsilon_decay": np.array([0.9, 0.5, 0.2, 0.0, -0.4]),
    "squarecb_floor": np.array([0.9, 0.5, 0.2, 0.0, -0.4]),
    "vw_pmf_floor": np.array([0.7, 0.0, 0.3, 0.0, 0.0]),  # a VW pmf with zeros
}


@pytest.mark.parametrize("name", sorted(EXPLORERS))
def test_keyed_samples_follow_the_pmf(name: str) -> None:
    explorer, s = EXPLORERS[name], SCORES[name]
    p = explorer.pmf(s)
    assert p.max() / p.min() > 3  # far from uniform, and nothing has probability 0
    n = 6000
    counts = Counter(sample_index(p, event_stream(KEY, f"{name}-{i}")) for i in range(n))
    assert chisquare([counts[i] for i in range(p.size)], n * p).pvalue > 1e-4


@pytest.mark.parametrize("name", sorted(EXPLORERS))
def test_keyed_slates_follow_the_slot_pmfs(name: str) -> None:
    """Slot by slot: each slot's conditional pmf is the explorer over the remaining actions;
    slot 0 and slot 1 (given slot 0) match what was logged."""
    explorer, s = EXPLORERS[name], SCORES[name]
    n = 6000
    logged: dict[tuple[int, ...], dict[int, float]] = {}
    slates = []
    for i in range(n):
        choices = sample_slate(
            lambda _k, rem: explorer.pmf(s[rem]), s.size, 2, event_stream(KEY, f"s{name}{i}")
        )
        prefix: tuple[int, ...] = ()
        for action, prob in choices:
            assert logged.setdefault(prefix, {}).setdefault(action, prob) == prob
            prefix = (*prefix, action)
        slates.append(tuple(a for a, _ in choices))
    first = Counter(sl[0] for sl in slates)
    p0 = explorer.pmf(s)
    assert chisquare([first[i] for i in range(s.size)], n * p0).pvalue > 1e-4
    tested = 0
    for a0 in range(s.size):
        rest = [a for a in range(s.size) if a != a0]
        cond = explorer.pmf(s[rest])
        group = Counter(sl[1] for sl in slates if sl[0] == a0)
        m = sum(group.values())
        for a, prob in logged.get((a0,), {}).items():
            assert math.isclose(prob, cond[rest.index(a)], rel_tol=1e-12)
        if m * cond.min() < 5:
            continue
        assert chisquare([group[a] for a in rest], m * cond).pvalue > 1e-4
        tested += 1
    assert tested >= 1
