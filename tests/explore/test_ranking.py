"""Order of a response ranking."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from explore import rank_order


def test_chosen_first_then_probability_then_score_then_index() -> None:
    pmf = np.array([0.1, 0.3, 0.0, 0.3, 0.1, 0.2, 0.0])
    scores = np.array([2.0, 1.0, 9.0, 5.0, 2.0, 0.0, 3.0])
    # chosen 5 first; then 3 (p .3, score 5) before 1 (p .3, score 1); then 0 and 4 tie on p and
    # score, so by index; zero-probability 2 (score 9) and 6 (score 3) last.
    assert rank_order(pmf, scores, [5]) == [5, 3, 1, 0, 4, 2, 6]


def test_slate_slots_keep_slot_order() -> None:
    pmf = np.array([0.4, 0.3, 0.2, 0.1])
    scores = np.array([4.0, 3.0, 2.0, 1.0])
    assert rank_order(pmf, scores, [2, 0, 3]) == [2, 0, 3, 1]


def test_no_chosen_is_plain_order() -> None:
    pmf = np.array([0.25, 0.25, 0.25, 0.25])
    assert rank_order(pmf, np.array([1.0, 3.0, 2.0, 3.0]), []) == [1, 3, 2, 0]


def test_result_is_a_permutation_of_python_ints() -> None:
    rng = np.random.default_rng(4)
    pmf = rng.dirichlet(np.ones(20))
    pmf[[3, 7]] = 0.0
    pmf /= pmf.sum()
    order = rank_order(pmf, rng.normal(size=20), [5, 1])
    assert sorted(order) == list(range(20))
    assert all(type(i) is int for i in order)
    assert order[:2] == [5, 1]
    assert set(order[-2:]) == {3, 7}


@pytest.mark.parametrize(
    ("pmf", "scores", "chosen", "match"),
    [
        ([0.5, 0.5], [1.0], [0], r"^scores must have the shape of pmf \(2,\), got \(1,\)"),
        ([0.5, 0.5], [1.0, 2.0], [2], r"^chosen\[0\] must be an index < 2, got 2"),
        ([0.5, 0.5], [1.0, 2.0], [-1], r"^chosen\[0\] must be an integer >= 0, got -1"),
        ([0.5, 0.5], [1.0, 2.0], [0, 0], r"^chosen must hold distinct indices, got \[0, 0\]"),
        ([0.5, 0.5], [1.0, 2.0], [0.0], r"^chosen\[0\] must be an integer >= 0, got float"),
        ([0.5, 0.6], [1.0, 2.0], [0], r"^pmf must be .* got sum"),
        ([0.5, 0.5], [1.0, np.nan], [0], r"^scores must be .* got nan at index 1"),
    ],
)
def test_rank_order_rejects(
    pmf: list[float], scores: list[float], chosen: list[Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        rank_order(np.array(pmf), np.array(scores), chosen)
