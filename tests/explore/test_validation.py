"""The shared validator: accepted inputs and messages for rejected ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from explore.validation import (
    check_int,
    check_non_empty_str,
    check_pmf,
    check_probability,
    check_real,
    check_scores,
)


def test_check_scores_returns_float64_copy_of_lists() -> None:
    out = check_scores([1, 2, 3])
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    ("scores", "match"),
    [
        ([], r"^scores must be a non-empty 1-D array of finite numbers, got shape \(0,\)$"),
        (np.zeros((2, 2)), r"got shape \(2, 2\)"),
        (3.0, r"got shape \(\)"),
        ([1.0, float("nan")], r"got nan at index 1"),
        ([float("inf"), 1.0], r"got inf at index 0"),
        (["a", "b"], r"scores must be .* got list"),
        ("12", r"scores must be .* got str"),
        ([[1.0], [1.0, 2.0]], r"scores must be .* got list"),
    ],
)
def test_check_scores_rejects(scores: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_scores(scores)


def test_check_scores_uses_given_name() -> None:
    with pytest.raises(ValueError, match=r"^boosts must be"):
        check_scores([], name="boosts")


@pytest.mark.parametrize(
    ("pmf", "match"),
    [
        ([], r"pmf must be a non-empty 1-D array .* got shape \(0,\)"),
        ([0.5, -0.1, 0.6], r"non-negative .* got -0.1 at index 1"),
        ([0.5, 0.4], r"summing to 1, got sum 0.9"),
        ([0.5, float("nan")], r"got nan at index 1"),
    ],
)
def test_check_pmf_rejects(pmf: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_pmf(pmf)


def test_check_pmf_tolerates_round_off() -> None:
    check_pmf([0.1] * 10)
    check_pmf([1 / 3, 1 / 3, 1 / 3 + 5e-7])


@pytest.mark.parametrize(
    ("x", "positive", "match"),
    [
        (-0.1, False, r"^p must be a probability in \[0, 1\], got -0.1$"),
        (1.5, False, r"got 1.5"),
        (float("nan"), False, r"got nan"),
        (float("inf"), False, r"got inf"),
        (True, False, r"got bool"),
        ("0.5", False, r"got str"),
        (None, False, r"got NoneType"),
        (0.0, True, r"^p must be a probability in \(0, 1\], got 0.0$"),
    ],
)
def test_check_probability_rejects(x: Any, positive: bool, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_probability(x, "p", positive=positive)


def test_check_probability_accepts_numpy_scalars() -> None:
    assert check_probability(np.float32(0.5), "p") == 0.5
    assert check_probability(1, "p", positive=True) == 1.0
    assert check_probability(0, "p") == 0.0


@pytest.mark.parametrize(
    ("x", "kwargs", "match"),
    [
        (-1.0, {"minimum": 0.0}, r"^lam must be a finite real number >= 0.0, got -1.0$"),
        (2.0, {"maximum": 1.0}, r"<= 1.0, got 2.0"),
        (5.0, {"minimum": 0.0, "maximum": 1.0}, r"in \[0.0, 1.0\], got 5.0"),
        (float("inf"), {}, r"finite real number, got inf"),
        (False, {}, r"got bool"),
    ],
)
def test_check_real_rejects(x: Any, kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_real(x, "lam", **kwargs)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (1.0, r"^n must be an integer >= 1, got float$"),
        (True, r"got bool"),
        (0, r"^n must be an integer >= 1, got 0$"),
    ],
)
def test_check_int_rejects(x: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_int(x, "n", minimum=1)


def test_check_int_accepts_numpy_integers() -> None:
    assert check_int(np.int64(3), "n", minimum=1) == 3


@pytest.mark.parametrize(
    ("x", "match"), [("", r"got ''"), (3, r"got int"), (None, r"got NoneType")]
)
def test_check_non_empty_str_rejects(x: Any, match: str) -> None:
    with pytest.raises(ValueError, match=r"^id must be a non-empty string, " + match):
        check_non_empty_str(x, "id")
