"""The shared input validator of off-policy evaluation.

Every check returns the argument as a float64 / int64 numpy array (no copy when it already is
one) or raises ``ValueError`` with a message that names the argument and says what was expected,
in the form ``"<name> must be <expectation>, got <what>"``. The checks are written to cost one or
two passes over the data: the exact location of a bad value is only searched for once a cheap
aggregate says there is one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "PMF_ATOL",
    "BanditInputs",
    "check_action",
    "check_action_dist",
    "check_finite",
    "check_probability_array",
    "check_q_hat",
    "check_same_length",
    "validate_bandit_inputs",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

PMF_ATOL = 1e-5
"""Tolerance on the sum of a row of ``action_dist``."""


def _describe(x: Any) -> str:
    return type(x).__name__


def _as_float(x: Any, name: str, ndim: int, expectation: str) -> FloatArray:
    if isinstance(x, str | bytes):
        raise ValueError(f"{name} must be {expectation}, got {_describe(x)}")
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {expectation}, got {_describe(x)}") from None
    if arr.ndim != ndim or arr.size == 0:
        raise ValueError(f"{name} must be {expectation}, got shape {arr.shape}")
    return arr


def _first_bad(bad: NDArray[np.bool_]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))


def _index_str(index: tuple[int, ...]) -> str:
    return str(index[0]) if len(index) == 1 else str(index)


def check_finite(
    x: Any, name: str, *, ndim: int = 1, shape: tuple[int, ...] | None = None
) -> FloatArray:
    """Return ``x`` as a float64 array of ``ndim`` dimensions (and ``shape``) of finite numbers."""
    dims = "1-D" if ndim == 1 else f"{ndim}-D"
    expectation = f"a non-empty {dims} array of finite numbers"
    if shape is not None:
        expectation += f" of shape {shape}"
    arr = _as_float(x, name, ndim, expectation)
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must be {expectation}, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        i = _first_bad(~np.isfinite(arr))
        raise ValueError(f"{name} must be {expectation}, got {arr[i]} at index {_index_str(i)}")
    return arr


def check_probability_array(
    x: Any,
    name: str,
    *,
    ndim: int = 1,
    shape: tuple[int, ...] | None = None,
    allow_zero: bool = False,
) -> FloatArray:
    """Return ``x`` as a float64 array of probabilities in (0, 1] (or [0, 1] with allow_zero)."""
    interval = "[0, 1]" if allow_zero else "(0, 1]"
    dims = "1-D" if ndim == 1 else f"{ndim}-D"
    expectation = f"a non-empty {dims} array of probabilities in {interval}"
    if shape is not None:
        expectation += f" of shape {shape}"
    arr = _as_float(x, name, ndim, expectation)
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must be {expectation}, got shape {arr.shape}")
    # NaN fails both comparisons, so it is caught here too.
    ok = ((arr >= 0.0) if allow_zero else (arr > 0.0)) & (arr <= 1.0)
    if not ok.all():
        i = _first_bad(~ok)
        raise ValueError(f"{name} must be {expectation}, got {arr[i]} at index {_index_str(i)}")
    return arr


def check_action(x: Any, name: str = "action", *, n_actions: int | None = None) -> IntArray:
    """Return ``x`` as a 1-D int64 array of indices in [0, n_actions)."""
    bound = f"[0, {n_actions})" if n_actions is not None else "[0, n_actions)"
    expectation = f"a non-empty 1-D integer array of action indices in {bound}"
    if isinstance(x, str | bytes):
        raise ValueError(f"{name} must be {expectation}, got {_describe(x)}")
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be {expectation}, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be {expectation}, got shape {arr.shape}")
    out = arr.astype(np.int64, copy=False)
    low, high = int(out.min()), int(out.max())
    too_high = n_actions is not None and high >= n_actions
    if low < 0 or too_high:
        bad = (out < 0) if low < 0 else (out >= (n_actions if n_actions is not None else 0))
        i = int(np.argmax(bad))
        raise ValueError(f"{name} must be {expectation}, got {out[i]} at index {i}")
    return out


def check_action_dist(
    x: Any, name: str = "action_dist", *, n_rounds: int | None = None
) -> FloatArray:
    """Return ``x`` as an (n_rounds, n_actions) float64 array whose rows are pmfs."""
    rows = "n_rounds" if n_rounds is None else str(n_rounds)
    expectation = (
        f"a 2-D array of shape ({rows}, n_actions) of probabilities in [0, 1] "
        "with rows summing to 1"
    )
    arr = _as_float(x, name, 2, expectation)
    if n_rounds is not None and arr.shape[0] != n_rounds:
        raise ValueError(f"{name} must be {expectation}, got shape {arr.shape}")
    # min() is NaN when any entry is NaN and NaN >= 0 is False; +inf makes a row sum inf.
    if not arr.min() >= 0.0:
        i = _first_bad(~(arr >= 0.0))
        raise ValueError(f"{name} must be {expectation}, got {arr[i]} at index {_index_str(i)}")
    sums = arr.sum(axis=1)
    off = ~(np.abs(sums - 1.0) <= PMF_ATOL)
    if off.any():
        row = int(np.argmax(off))
        raise ValueError(
            f"{name} must be {expectation}, got row {row} summing to {float(sums[row])!r}"
        )
    return arr


def check_q_hat(x: Any, name: str = "q_hat", *, shape: tuple[int, int]) -> FloatArray:
    """Return ``x`` as a float64 array of finite predicted rewards of the given shape."""
    return check_finite(x, name, ndim=2, shape=shape)


def check_same_length(**arrays: NDArray[Any]) -> int:
    """Return the common length of the arrays; ValueError naming the one that differs.

    The expected length is the one most of the arrays have (the first array's on a tie).
    """
    lengths = {name: int(arr.shape[0]) for name, arr in arrays.items()}
    values = list(lengths.values())
    n = max(values, key=lambda v: (values.count(v), -values.index(v)))
    for name, length in lengths.items():
        if length != n:
            agree = ", ".join(k for k, v in lengths.items() if v == n)
            raise ValueError(
                f"{name} must have one entry per event ({n}, like {agree}), got {length}"
            )
    return n


class BanditInputs(NamedTuple):
    """Validated arrays of a logged bandit and a target policy."""

    reward: FloatArray
    action: IntArray
    pscore: FloatArray
    action_dist: FloatArray
    q_hat: FloatArray | None


def validate_bandit_inputs(
    *,
    reward: Any,
    action: Any,
    pscore: Any,
    action_dist: Any,
    q_hat: Any = None,
) -> BanditInputs:
    """Validate the Open-Bandit-Pipeline-style inputs of every estimator in one place.

    reward (n,) finite; action (n,) int in [0, n_actions); pscore (n,) in (0, 1];
    action_dist (n, n_actions) rows are pmfs; q_hat None or (n, n_actions) finite.
    """
    r = check_finite(reward, "reward")
    p = check_probability_array(pscore, "pscore")
    dist = check_action_dist(action_dist)
    a = check_action(action, n_actions=dist.shape[1])
    n = check_same_length(reward=r, action=a, pscore=p, action_dist=dist)
    q = None if q_hat is None else check_q_hat(q_hat, shape=(n, dist.shape[1]))
    return BanditInputs(r, a, p, dist, q)
