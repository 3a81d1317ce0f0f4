"""Slates: slot-by-slot sampling without replacement and the logged slate probability."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import numpy as np
import pytest
from scipy.stats import chisquare

from explore import epsilon_greedy, rng_for, sample_slate, slate_probability, softmax

N_SLATES = 40_000
P_MIN = 1e-3
SCORES = np.array([0.8, 0.1, 1.5, -0.4])
N_ACTIONS, N_SLOTS = 4, 2


def slot_pmf(k: int, remaining: np.ndarray) -> np.ndarray:
    """Slot 0: softmax over the remaining actions; slot 1: epsilon-greedy over them."""
    s = SCORES[remaining]
    return softmax(s, 1.0) if k == 0 else epsilon_greedy(s, 0.3)


def conditional(k: int, taken: tuple[int, ...]) -> dict[int, float]:
    """Probability of each remaining action in slot k given the actions already taken."""
    remaining = np.array([a for a in range(N_ACTIONS) if a not in taken])
    return dict(zip(remaining.tolist(), slot_pmf(k, remaining).tolist(), strict=True))


@pytest.fixture(scope="module")
def slates() -> list[list[tuple[int, float]]]:
    rng = np.random.default_rng(314159)
    return [sample_slate(slot_pmf, N_ACTIONS, N_SLOTS, rng) for _ in range(N_SLATES)]


def test_logged_probabilities_are_the_conditionals(slates: list[list[tuple[int, float]]]) -> None:
    for slate in slates[:2000]:
        (a0, p0), (a1, p1) = slate
        assert a0 != a1
        assert p0 == conditional(0, ())[a0]
        assert p1 == conditional(1, (a0,))[a1]


def test_slot0_frequency_matches_slot0_pmf(slates: list[list[tuple[int, float]]]) -> None:
    counts = np.bincount([s[0][0] for s in slates], minlength=N_ACTIONS)
    expected = softmax(SCORES, 1.0) * N_SLATES
    assert chisquare(counts, expected).pvalue > P_MIN


@pytest.mark.parametrize("first", range(N_ACTIONS))
def test_slot1_given_slot0_matches_conditional_pmf(
    slates: list[list[tuple[int, float]]], first: int
) -> None:
    seconds = [s[1][0] for s in slates if s[0][0] == first]
    cond = conditional(1, (first,))
    actions = sorted(cond)
    counts = Counter(seconds)
    assert set(counts) <= set(actions)
    observed = np.array([counts[a] for a in actions])
    expected = np.array([cond[a] for a in actions]) * len(seconds)
    assert chisquare(observed, expected).pvalue > P_MIN


def test_slate_probability_matches_slate_frequency(
    slates: list[list[tuple[int, float]]],
) -> None:
    all_slates = list(itertools.permutations(range(N_ACTIONS), N_SLOTS))
    assert len(all_slates) == 12
    truth = {sl: conditional(0, ())[sl[0]] * conditional(1, sl[:1])[sl[1]] for sl in all_slates}
    assert abs(sum(truth.values()) - 1.0) < 1e-12
    counts: Counter[tuple[int, ...]] = Counter()
    for slate in slates:
        key = tuple(a for a, _ in slate)
        counts[key] += 1
        assert slate_probability(slate) == pytest.approx(truth[key], rel=1e-12)
    observed = np.array([counts[sl] for sl in all_slates])
    expected = np.array([truth[sl] for sl in all_slates]) * N_SLATES
    assert chisquare(observed, expected).pvalue > P_MIN


def test_callback_sees_remaining_in_original_order() -> None:
    seen: list[list[int]] = []

    def record(k: int, remaining: np.ndarray) -> np.ndarray:
        seen.append(remaining.tolist())
        assert remaining.dtype.kind == "i"
        remaining[:] = 0  # a callback scribbling on its argument must not change the sample
        return np.full(remaining.size, 1.0 / remaining.size)

    slate = sample_slate(record, 5, 5, np.random.default_rng(3))
    chosen = [a for a, _ in slate]
    assert sorted(chosen) == [0, 1, 2, 3, 4]
    assert seen[0] == [0, 1, 2, 3, 4]
    for k in range(1, 5):
        assert seen[k] == sorted(set(seen[k - 1]) - {chosen[k - 1]})
    assert [p for _, p in slate] == [1 / 5, 1 / 4, 1 / 3, 1 / 2, 1.0]
    assert slate_probability(slate) == pytest.approx(1 / 120)


def test_excluded_action_never_in_slate() -> None:
    def without_action_1(k: int, remaining: np.ndarray) -> np.ndarray:
        w = np.where(remaining == 1, 0.0, 1.0)
        return w / w.sum()

    rng = np.random.default_rng(11)
    for _ in range(2000):
        slate = sample_slate(without_action_1, 4, 3, rng)
        assert 1 not in [a for a, _ in slate]


def test_slate_is_deterministic_per_event() -> None:
    a = sample_slate(slot_pmf, N_ACTIONS, N_SLOTS, rng_for(bytes(32), "evt-42"))
    b = sample_slate(slot_pmf, N_ACTIONS, N_SLOTS, rng_for(bytes(32), "evt-42"))
    assert a == b


def uniform(k: int, remaining: np.ndarray) -> np.ndarray:
    return np.full(remaining.size, 1.0 / remaining.size)


@pytest.mark.parametrize(
    ("callback", "n_actions", "n_slots", "match"),
    [
        (uniform, 3, 4, r"^n_slots must be <= n_actions \(3\), got 4"),
        (uniform, 3, 0, r"^n_slots must be an integer >= 1, got 0"),
        (uniform, 0, 1, r"^n_actions must be an integer >= 1, got 0"),
        (uniform, 3.0, 1, r"^n_actions must be an integer >= 1, got float"),
        (
            lambda k, r: np.full(r.size + 1, 1.0 / (r.size + 1)),
            3,
            1,
            r"^slot_pmf\(0, remaining\) must return one probability per remaining action \(3\)",
        ),
        (
            lambda k, r: np.full(r.size, 0.5),
            3,
            1,
            r"^slot_pmf\(0, remaining\) must be .* summing to 1, got sum 1.5",
        ),
        (
            lambda k, r: np.array([1.0, 0.0, 0.0]),
            3,
            2,
            r"^slot_pmf\(1, remaining\) must return one probability .* \(2\), got 3",
        ),
    ],
)
def test_sample_slate_rejects(callback: Any, n_actions: Any, n_slots: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample_slate(callback, n_actions, n_slots, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("choices", "match"),
    [
        ([], r"^choices must be a non-empty sequence"),
        ([(0, 0.5), (1, 0.0)], r"^choices\[1\] probability must be a probability in \(0, 1\]"),
        ([(0, 1.5)], r"^choices\[0\] probability must be .* got 1.5"),
        ([(0, float("nan"))], r"^choices\[0\] probability must be .* got nan"),
    ],
)
def test_slate_probability_rejects(choices: list[tuple[int, float]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        slate_probability(choices)


def test_slate_probability_is_the_product() -> None:
    assert slate_probability([(2, 0.5), (0, 0.25), (1, 0.8)]) == pytest.approx(0.1)
