"""Value types of off-policy evaluation: logged bandit data and an estimate with its interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from evaluation.validation import (
    check_action,
    check_action_dist,
    check_finite,
    check_probability_array,
    check_same_length,
)

__all__ = ["Estimate", "Estimator", "LoggedBandit"]


def _real(x: Any, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, Real):
        raise ValueError(f"{name} must be a finite real number, got {type(x).__name__}")
    value = float(x)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value}")
    return value


class Estimator(Protocol):
    """The plug point of a bandit estimator: per-event terms whose mean is the estimate.

    ``evaluation.ope.evaluate`` / ``estimate`` turn the terms into an :class:`Estimate`.
    Hyperparameters are extra keyword-only arguments with defaults.
    """

    def __call__(
        self, *, reward: Any, action: Any, pscore: Any, action_dist: Any, q_hat: Any = None
    ) -> NDArray[np.float64]: ...


@dataclass(frozen=True)
class Estimate:
    """A policy value (or a difference of values) with a confidence interval.

    value: the point estimate (the mean of the per-event terms).
    ci_low, ci_high: the interval; ``ci_low <= ci_high``. The point estimate is usually inside it
        but is not required to be (a percentile bootstrap or a running-intersection confidence
        sequence may exclude it).
    n: number of events; ess: effective sample size of the importance weights, in [0, n].
    method: what produced it, e.g. ``"dr/bootstrap"``.
    """

    value: float
    ci_low: float
    ci_high: float
    n: int
    ess: float
    method: str

    def __post_init__(self) -> None:
        for name in ("value", "ci_low", "ci_high", "ess"):
            object.__setattr__(self, name, _real(getattr(self, name), name))
        if isinstance(self.n, bool) or not isinstance(self.n, Integral) or int(self.n) < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        object.__setattr__(self, "n", int(self.n))
        if self.ci_low > self.ci_high:
            raise ValueError(
                f"ci_low must be <= ci_high, got ci_low={self.ci_low} > ci_high={self.ci_high}"
            )
        if not 0.0 <= self.ess <= self.n * (1.0 + 1e-9):
            raise ValueError(f"ess must be in [0, n={self.n}], got {self.ess}")
        if not isinstance(self.method, str) or not self.method.strip():
            raise ValueError(f"method must be a non-empty string, got {self.method!r}")

    @property
    def width(self) -> float:
        """Width of the interval, ``ci_high - ci_low``."""
        return self.ci_high - self.ci_low

    def contains(self, x: float) -> bool:
        """True when ``ci_low <= x <= ci_high``."""
        return self.ci_low <= x <= self.ci_high

    def to_dict(self) -> dict[str, float | int | str]:
        """Plain JSON-ready dict of the fields."""
        return {
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n": self.n,
            "ess": self.ess,
            "method": self.method,
        }


@dataclass(frozen=True, eq=False)
class LoggedBandit:
    """Logged bandit feedback: one row per event.

    reward (n,) float; action (n,) int index into the event's candidate set; pscore (n,) the
    logging probability of the logged action, in (0, 1]; candidates_mask (n, n_actions) bool, True
    where the action was a candidate of the event (events with fewer candidates are padded with
    False). The logged action must be one of the event's candidates. The arrays are stored as
    read-only float64 / int64 / bool arrays.
    """

    reward: NDArray[np.float64]
    action: NDArray[np.int64]
    pscore: NDArray[np.float64]
    candidates_mask: NDArray[np.bool_]

    def __post_init__(self) -> None:
        mask = np.asarray(self.candidates_mask)
        if mask.dtype != np.bool_ or mask.ndim != 2 or mask.size == 0:
            raise ValueError(
                "candidates_mask must be a non-empty 2-D bool array of shape (n_rounds, n_actions)"
                f", got dtype {mask.dtype} and shape {mask.shape}"
            )
        reward = check_finite(self.reward, "reward")
        action = check_action(self.action, n_actions=mask.shape[1])
        pscore = check_probability_array(self.pscore, "pscore")
        n = check_same_length(reward=reward, action=action, pscore=pscore, candidates_mask=mask)
        offered = mask[np.arange(n), action]
        if not offered.all():
            i = int(np.argmin(offered))
            raise ValueError(
                "action must be one of the event's candidates (candidates_mask True), "
                f"got action {action[i]} at index {i}"
            )
        for name, arr in (
            ("reward", reward),
            ("action", action),
            ("pscore", pscore),
            ("candidates_mask", mask),
        ):
            frozen = np.array(arr, copy=True)
            frozen.flags.writeable = False
            object.__setattr__(self, name, frozen)

    @property
    def n_rounds(self) -> int:
        """Number of logged events."""
        return int(self.reward.shape[0])

    @property
    def n_actions(self) -> int:
        """Width of the padded candidate axis."""
        return int(self.candidates_mask.shape[1])

    def as_kwargs(self) -> dict[str, NDArray[Any]]:
        """``reward``, ``action`` and ``pscore``: spread into any estimator or ``evaluate``."""
        return {"reward": self.reward, "action": self.action, "pscore": self.pscore}

    def check_action_dist(self, action_dist: Any, name: str = "action_dist") -> NDArray[np.float64]:
        """Validate a target policy's ``action_dist`` against these events and return it.

        It must be (n_rounds, n_actions), rows pmfs, and put no probability on padded
        (non-candidate) actions.
        """
        dist = check_action_dist(action_dist, name, n_rounds=self.n_rounds)
        if dist.shape[1] != self.n_actions:
            raise ValueError(
                f"{name} must have shape ({self.n_rounds}, {self.n_actions}), got {dist.shape}"
            )
        outside = (dist > 0.0) & ~self.candidates_mask
        if outside.any():
            i, a = (int(v) for v in np.unravel_index(int(np.argmax(outside)), outside.shape))
            raise ValueError(
                f"{name} must put probability 0 on non-candidate actions, "
                f"got {dist[i, a]} at index ({i}, {a})"
            )
        return dist
