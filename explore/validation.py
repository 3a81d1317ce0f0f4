"""Shared input validation: every message names the argument and what was expected."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np

__all__ = [
    "check_int",
    "check_non_empty_str",
    "check_pmf",
    "check_probability",
    "check_real",
    "check_scores",
]

PMF_ATOL = 1e-6
"""Tolerance on the sum of a probability vector."""


def _as_float_array(x: Any, name: str, expectation: str) -> np.ndarray:
    if isinstance(x, str | bytes):
        raise ValueError(f"{name} must be {expectation}, got {type(x).__name__}")
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {expectation}, got {type(x).__name__}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be {expectation}, got shape {arr.shape}")
    finite = np.isfinite(arr)
    if not finite.all():
        i = int(np.argmin(finite))
        raise ValueError(f"{name} must be {expectation}, got {arr[i]} at index {i}")
    return arr


def check_scores(scores: Any, name: str = "scores") -> np.ndarray:
    """Return `scores` as a 1-D float64 array; ValueError unless non-empty, 1-D and finite."""
    return _as_float_array(scores, name, "a non-empty 1-D array of finite numbers")


def check_pmf(pmf: Any, name: str = "pmf", atol: float = PMF_ATOL) -> np.ndarray:
    """Return `pmf` as a 1-D float64 array; ValueError unless finite, >= 0 and summing to 1."""
    expectation = "a non-empty 1-D array of finite non-negative numbers summing to 1"
    arr = _as_float_array(pmf, name, expectation)
    if arr.min() < 0.0:
        i = int(np.argmax(arr < 0.0))
        raise ValueError(f"{name} must be {expectation}, got {arr[i]} at index {i}")
    total = float(arr.sum())
    if abs(total - 1.0) > atol:
        raise ValueError(f"{name} must be {expectation}, got sum {total!r}")
    return arr


def check_real(
    x: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """Return `x` as a float; ValueError unless a finite real number in [minimum, maximum]."""
    bounds = ""
    if minimum is not None and maximum is not None:
        bounds = f" in [{minimum}, {maximum}]"
    elif minimum is not None:
        bounds = f" >= {minimum}"
    elif maximum is not None:
        bounds = f" <= {maximum}"
    expectation = f"a finite real number{bounds}"
    if isinstance(x, bool) or not isinstance(x, Real):
        raise ValueError(f"{name} must be {expectation}, got {type(x).__name__}")
    value = float(x)
    if (
        not math.isfinite(value)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        raise ValueError(f"{name} must be {expectation}, got {value!r}")
    return value


def check_probability(x: Any, name: str, *, positive: bool = False) -> float:
    """Return `x` as a float; ValueError unless in [0, 1] (or (0, 1] when `positive`)."""
    interval = "(0, 1]" if positive else "[0, 1]"
    expectation = f"a probability in {interval}"
    if isinstance(x, bool) or not isinstance(x, Real):
        raise ValueError(f"{name} must be {expectation}, got {type(x).__name__}")
    value = float(x)
    if not (0.0 <= value <= 1.0) or (positive and value == 0.0):
        raise ValueError(f"{name} must be {expectation}, got {value!r}")
    return value


def check_int(x: Any, name: str, *, minimum: int | None = None) -> int:
    """Return `x` as an int; ValueError unless an integer (not bool) >= minimum."""
    expectation = "an integer" if minimum is None else f"an integer >= {minimum}"
    if isinstance(x, bool) or not isinstance(x, Integral):
        raise ValueError(f"{name} must be {expectation}, got {type(x).__name__}")
    value = int(x)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {expectation}, got {value}")
    return value


def check_non_empty_str(x: Any, name: str) -> str:
    """Return `x`; ValueError unless a non-empty string."""
    if not isinstance(x, str):
        raise ValueError(f"{name} must be a non-empty string, got {type(x).__name__}")
    if not x:
        raise ValueError(f"{name} must be a non-empty string, got ''")
    return x
