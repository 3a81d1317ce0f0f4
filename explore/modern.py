"""Modern exploration: SquareCB, epsilon-greedy with decay, an exploration floor, and the pmf
that Vowpal Wabbit's own exploration reductions compute (RegCB-optimistic, online cover,
bagging). Pure functions over one vector; each explorer maps it to the pmf sampled from.

**Score strategies** (the policy predicts a reward per action, `scores`, higher is better):

- SquareCB (Foster & Rakhlin 2020, inverse-gap weighting): with the best score ``s*`` and
  ``K`` actions, every other action gets ``1 / (K + gamma_t (s* - s_a))`` and the (tied) best
  share the rest. ``gamma_t = gamma0 * t ** power`` grows with ``t``, the number of examples
  the model has learned (``t`` < 1 counts as 1), so exploration shrinks as the model learns.
  Defaults ``gamma0 = 10``, ``power = 0.5`` (VW's ``--gamma_scale`` / ``--gamma_exponent``).
- Epsilon-greedy with decay: ``epsilon_t = max(epsilon_min, epsilon * (1 + t) ** -decay)``
  (decay 0: constant epsilon).

**VW strategies** (RegCB-optimistic, cover, bagging need more than one score vector: confidence
bounds, or several policies). They run inside the model (VW's ``cb_explore_adf`` with
``--regcbopt``, ``--cover``, ``--bag``), whose prediction is a distribution (or, for RegCB-opt,
a 1 on each optimistic-best action); `vw_pmf` turns it into the pmf (normalised; all zero:
uniform). The service owns the sampling either way.

**Floor**: ``floor(p, f) = (1 - K f') p + f'`` with ``f' = min(f, 1 / K)``: a mixture with the
uniform distribution, so every action has probability at least ``f'`` and the result is exactly
the pmf sampled from. Composable with any explorer (`Floored`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from explore.strategies import epsilon_greedy
from explore.validation import check_probability, check_real, check_scores

__all__ = [
    "DecayingEpsilonGreedy",
    "Floored",
    "SquareCB",
    "VWPmf",
    "decayed_epsilon",
    "floor_pmf",
    "squarecb",
    "squarecb_gamma",
    "vw_pmf",
]


def squarecb_gamma(gamma0: float, power: float, t: float) -> float:
    """``gamma0 * max(t, 1) ** power``."""
    return float(gamma0) * max(float(t), 1.0) ** float(power)


def squarecb(scores: np.ndarray, gamma: float) -> np.ndarray:
    """Inverse-gap weighting: ``1 / (K + gamma * gap)`` off the best, the rest split among the
    tied best. gamma = 0 gives the uniform distribution."""
    s = check_scores(scores)
    gamma = check_real(gamma, "gamma", minimum=0.0)
    n = s.size
    best = s == s.max()
    gap = s.max() - s
    with np.errstate(over="ignore"):
        p = 1.0 / (n + gamma * gap)
    p[best] = 0.0
    p[best] = (1.0 - p.sum()) / int(best.sum())
    return p


def decayed_epsilon(epsilon: float, decay: float, minimum: float, t: float) -> float:
    """``max(minimum, epsilon * (1 + t) ** -decay)``."""
    return max(float(minimum), float(epsilon) * (1.0 + max(float(t), 0.0)) ** -float(decay))


def floor_pmf(pmf: np.ndarray, floor: float) -> np.ndarray:
    """Mix `pmf` with the uniform distribution so that each entry is at least
    ``min(floor, 1 / K)``: ``(1 - K f) p + f``."""
    p = np.asarray(pmf, dtype=np.float64)
    floor = check_real(floor, "floor", minimum=0.0, maximum=1.0)
    if floor == 0.0:
        return p
    n = p.size
    f = min(floor, 1.0 / n)
    out = (1.0 - n * f) * p + f
    return out / out.sum()


def vw_pmf(weights: np.ndarray) -> np.ndarray:
    """VW's exploration output as a pmf: clipped at 0, normalised; all zero gives uniform."""
    w = np.clip(check_scores(weights, "weights"), 0.0, None)
    total = float(w.sum())
    if total <= 0.0:
        return np.full(w.size, 1.0 / w.size)
    return w / total


@dataclass(frozen=True)
class SquareCB:
    """SquareCB exploration at `t` learned examples; see `squarecb`, `squarecb_gamma`."""

    gamma0: float = 10.0
    power: float = 0.5
    t: float = 0.0

    def __post_init__(self) -> None:
        check_real(self.gamma0, "gamma0", minimum=0.0)
        check_real(self.power, "power", minimum=0.0, maximum=1.0)
        check_real(self.t, "t", minimum=0.0)

    @property
    def gamma(self) -> float:
        return squarecb_gamma(self.gamma0, self.power, self.t)

    def pmf(self, scores: np.ndarray) -> np.ndarray:
        return squarecb(scores, self.gamma)


@dataclass(frozen=True)
class DecayingEpsilonGreedy:
    """Epsilon-greedy with ``epsilon_t`` of `decayed_epsilon` at `t` learned examples."""

    epsilon: float
    decay: float = 0.0
    minimum: float = 0.0
    t: float = 0.0

    def __post_init__(self) -> None:
        check_probability(self.epsilon, "epsilon")
        check_real(self.decay, "decay", minimum=0.0, maximum=1.0)
        check_probability(self.minimum, "minimum")
        check_real(self.t, "t", minimum=0.0)

    @property
    def current(self) -> float:
        return decayed_epsilon(self.epsilon, self.decay, self.minimum, self.t)

    def pmf(self, scores: np.ndarray) -> np.ndarray:
        return epsilon_greedy(scores, min(self.current, 1.0))


@dataclass(frozen=True)
class VWPmf:
    """The pmf of a model that explores itself (VW ``cb_explore_adf``); see `vw_pmf`."""

    def pmf(self, scores: np.ndarray) -> np.ndarray:
        return vw_pmf(scores)


@dataclass(frozen=True)
class Floored:
    """Any explorer with an exploration floor; see `floor_pmf`."""

    inner: Any  # an Explorer
    floor: float

    def __post_init__(self) -> None:
        check_real(self.floor, "floor", minimum=0.0, maximum=1.0)
        if not callable(getattr(self.inner, "pmf", None)):
            raise ValueError("inner must be an explorer (with a pmf method)")

    def pmf(self, scores: np.ndarray) -> np.ndarray:
        return floor_pmf(self.inner.pmf(scores), self.floor)
