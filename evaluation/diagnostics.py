"""Diagnostics of importance weights: is the logged data fit to evaluate this target policy?

- ``ess``: Kish's effective sample size ``(sum w)^2 / sum w^2``; ``ess / n`` near 1 means the
  target is close to the logging policy, near 0 means a few events carry the estimate.
- ``mean_weight``: the mean importance weight. Its expectation under the logging policy is 1 when
  the logging policy gives positive probability to every action the target may choose; a mean far
  from 1 (in standard errors, ``mean_weight_se``) means wrong propensities, a policy mismatch or
  missing support.
- ``max_weight``: the largest weight (one event's share of the estimate is max_weight / sum w).
- ``target_support``: share of events whose logged action has positive target probability (the
  events IPS learns from).
- ``unsupported_mass`` (only with the full logging pmf ``logging_dist``): the target's average
  probability on actions the logging policy never takes; IPS is biased by up to this much times
  the reward range, and no estimator can see those actions' rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluation.estimators import effective_sample_size, importance_weight
from evaluation.validation import check_action_dist, check_finite

__all__ = ["Diagnostics", "diagnostics"]


@dataclass(frozen=True)
class Diagnostics:
    """Importance-weight diagnostics of a target policy on logged events."""

    n: int
    ess: float
    mean_weight: float
    mean_weight_se: float
    max_weight: float
    target_support: float
    unsupported_mass: float | None = None

    @classmethod
    def from_weights(cls, weight: Any, *, unsupported_mass: float | None = None) -> Diagnostics:
        """Diagnostics of a vector of importance weights (e.g. ``EventStats.weight``)."""
        w = check_finite(weight, "weight")
        n = int(w.shape[0])
        return cls(
            n=n,
            ess=effective_sample_size(w),
            mean_weight=float(w.mean()),
            mean_weight_se=float(w.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
            max_weight=float(w.max()),
            target_support=float(np.count_nonzero(w > 0.0) / n),
            unsupported_mass=unsupported_mass,
        )

    @property
    def ess_ratio(self) -> float:
        """ESS as a share of n."""
        return self.ess / self.n

    def problems(
        self,
        *,
        min_ess: float = 100.0,
        max_weight: float | None = None,
        weight_tolerance: float = 0.05,
        weight_z: float = 3.0,
        max_unsupported_mass: float = 0.0,
    ) -> tuple[str, ...]:
        """Human-readable reasons the estimate should not be trusted; empty when none.

        The mean weight fails when ``|mean - 1| > weight_tolerance + weight_z * se``.
        """
        out: list[str] = []
        if self.ess < min_ess:
            out.append(f"effective sample size {self.ess:.1f} is below {min_ess}")
        deviation = abs(self.mean_weight - 1.0)
        if deviation > weight_tolerance + weight_z * self.mean_weight_se:
            out.append(
                f"mean importance weight {self.mean_weight:.4f} is not near 1 "
                f"(standard error {self.mean_weight_se:.4f})"
            )
        if max_weight is not None and self.max_weight > max_weight:
            out.append(f"max importance weight {self.max_weight:.4g} is above {max_weight}")
        if self.unsupported_mass is not None and self.unsupported_mass > max_unsupported_mass:
            out.append(
                f"the target policy puts {self.unsupported_mass:.2%} of its probability on "
                "actions the logging policy never takes"
            )
        return tuple(out)

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain JSON-ready dict of the fields and ess_ratio."""
        return {
            "n": self.n,
            "ess": self.ess,
            "ess_ratio": self.ess_ratio,
            "mean_weight": self.mean_weight,
            "mean_weight_se": self.mean_weight_se,
            "max_weight": self.max_weight,
            "target_support": self.target_support,
            "unsupported_mass": self.unsupported_mass,
        }


def diagnostics(
    *, action: Any, pscore: Any, action_dist: Any, logging_dist: Any = None
) -> Diagnostics:
    """Diagnostics of the importance weights ``action_dist[i, action_i] / pscore_i``.

    ``logging_dist`` (n, n_actions), optional: the logging policy's full pmf per event (the
    service logs it), needed for ``unsupported_mass``.
    """
    w = importance_weight(action=action, pscore=pscore, action_dist=action_dist)
    n = int(w.shape[0])
    unsupported: float | None = None
    if logging_dist is not None:
        target = np.asarray(action_dist, dtype=np.float64)
        logging = check_action_dist(logging_dist, "logging_dist", n_rounds=n)
        if logging.shape != target.shape:
            raise ValueError(
                f"logging_dist must have the shape of action_dist {target.shape}, "
                f"got {logging.shape}"
            )
        unsupported = float(np.where(logging > 0.0, 0.0, target).sum() / n)
    return Diagnostics.from_weights(w, unsupported_mass=unsupported)
