"""Off-policy estimators of a target policy's value from logged bandit feedback.

Every estimator is a pure function with one keyword-only signature, in Open Bandit Pipeline's
vocabulary::

    name(*, reward, action, pscore, action_dist, q_hat=None, **hyperparameters) -> terms

reward (n,) observed rewards; action (n,) logged action indices; pscore (n,) logging probability
of the logged action, in (0, 1]; action_dist (n, n_actions) the target policy's pmf per event;
q_hat (n, n_actions) a reward model's prediction per action (needed by dm, dr, sndr, switch_dr;
accepted and ignored by the others so that all share the signature).

Each returns per-event *terms* ``t`` whose mean is the estimate, so one set of helpers
(:func:`evaluation.intervals.estimate`) turns any of them into an
:class:`~evaluation.types.Estimate` with an interval. Self-normalised estimators are ratio
estimators ``V = sum(n_i) / sum(w_i)``; they return the *linearised* terms (the influence
function plus the estimate)::

    t_i = V + (n_i - V * w_i) / mean(w)

whose mean is exactly ``V`` and whose sample variance is the delta-method variance of the ratio,
so the shared mean-based interval helpers remain (asymptotically) valid for them.

All estimators here are functions of four per-event vectors, :class:`EventStats`: the importance
weight ``w_i = action_dist[i, action_i] / pscore_i``, the reward, ``q_hat`` at the logged action
and the target's expected ``q_hat``. Building it once and reusing it (``evaluate_many``, streaming
over chunks of logs with :meth:`EventStats.concatenate`) avoids re-validating and re-reading the
(n, n_actions) matrices for each estimator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from evaluation.types import Estimator
from evaluation.validation import (
    check_action,
    check_action_dist,
    check_finite,
    check_probability_array,
    check_same_length,
    validate_bandit_inputs,
)

__all__ = [
    "DEFAULT_MAX_WEIGHT",
    "DEFAULT_SWITCH_THRESHOLD",
    "ESTIMATORS",
    "EventStats",
    "clipped_ips",
    "dm",
    "dr",
    "effective_sample_size",
    "estimator_ess",
    "importance_weight",
    "ips",
    "self_normalize",
    "sndr",
    "snips",
    "switch_dr",
    "terms_from_stats",
]

FloatArray = NDArray[np.float64]

DEFAULT_MAX_WEIGHT = 100.0
"""Default clipping level of clipped IPS: weights above it are set to it."""

DEFAULT_SWITCH_THRESHOLD = 100.0
"""Default threshold of Switch-DR: the DR correction is dropped for weights above it."""


@dataclass(frozen=True, eq=False)
class EventStats:
    """The per-event vectors every bandit estimator of this module is a function of.

    weight: ``action_dist[i, action_i] / pscore_i``; reward; q_logged: ``q_hat[i, action_i]``;
    q_target: ``sum_a action_dist[i, a] * q_hat[i, a]`` (the DM term). The last two are None
    when no ``q_hat`` was given.
    """

    weight: FloatArray
    reward: FloatArray
    q_logged: FloatArray | None = None
    q_target: FloatArray | None = None

    def __post_init__(self) -> None:
        w = check_finite(self.weight, "weight")
        r = check_finite(self.reward, "reward")
        if w.min() < 0.0:
            raise ValueError(f"weight must be >= 0, got {w.min()}")
        if (self.q_logged is None) != (self.q_target is None):
            raise ValueError("q_logged and q_target must both be given or both be None")
        arrays: dict[str, FloatArray] = {"weight": w, "reward": r}
        if self.q_logged is not None and self.q_target is not None:
            arrays["q_logged"] = check_finite(self.q_logged, "q_logged")
            arrays["q_target"] = check_finite(self.q_target, "q_target")
        check_same_length(**arrays)
        for name, arr in arrays.items():
            object.__setattr__(self, name, arr)

    @classmethod
    def from_arrays(
        cls, *, reward: Any, action: Any, pscore: Any, action_dist: Any, q_hat: Any = None
    ) -> EventStats:
        """Validate the estimator inputs and reduce them to the per-event vectors."""
        x = validate_bandit_inputs(
            reward=reward, action=action, pscore=pscore, action_dist=action_dist, q_hat=q_hat
        )
        rows = np.arange(x.reward.shape[0])
        weight = x.action_dist[rows, x.action] / x.pscore
        if x.q_hat is None:
            return cls(weight, x.reward)
        q_target = np.vecdot(x.action_dist, x.q_hat)
        return cls(weight, x.reward, x.q_hat[rows, x.action], q_target)

    @classmethod
    def concatenate(cls, parts: Iterable[EventStats]) -> EventStats:
        """Join the stats of consecutive chunks of events (all with or all without q_hat)."""
        items = list(parts)
        if not items:
            raise ValueError("parts must hold at least one EventStats, got none")
        with_q = [p.q_logged is not None for p in items]
        if any(with_q) and not all(with_q):
            raise ValueError("parts must all have q_hat or all lack it, got a mix")

        def cat(name: str) -> FloatArray:
            return np.concatenate([getattr(p, name) for p in items])

        if all(with_q):
            return cls(cat("weight"), cat("reward"), cat("q_logged"), cat("q_target"))
        return cls(cat("weight"), cat("reward"))

    @property
    def n(self) -> int:
        """Number of events."""
        return int(self.weight.shape[0])

    def require_q(self, estimator: str) -> tuple[FloatArray, FloatArray]:
        """(q_logged, q_target), or ValueError saying that ``estimator`` needs q_hat."""
        if self.q_logged is None or self.q_target is None:
            raise ValueError(f"q_hat is required by {estimator}, got None")
        return self.q_logged, self.q_target


def importance_weight(*, action: Any, pscore: Any, action_dist: Any) -> FloatArray:
    """Per-event importance weight ``action_dist[i, action_i] / pscore_i``."""
    p = check_probability_array(pscore, "pscore")
    dist = check_action_dist(action_dist)
    a = check_action(action, n_actions=dist.shape[1])
    n = check_same_length(action=a, pscore=p, action_dist=dist)
    return dist[np.arange(n), a] / p


def effective_sample_size(weight: NDArray[np.floating[Any]]) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` (0 when all weights are 0)."""
    w = np.asarray(weight, dtype=np.float64)
    sq = float(np.dot(w, w))
    return 0.0 if sq == 0.0 else min(float(w.sum()) ** 2 / sq, float(w.shape[0]))


def self_normalize(numerator: Any, weight: Any) -> FloatArray:
    """Linearised terms of the ratio estimator ``sum(numerator) / sum(weight)``.

    Returns ``V + (numerator_i - V * weight_i) / mean(weight)``: their mean is exactly V and their
    sample variance is the delta-method (influence-function) variance of the ratio.
    """
    num = check_finite(numerator, "numerator")
    w = check_finite(weight, "weight")
    check_same_length(numerator=num, weight=w)
    mean_w = float(w.mean())
    if mean_w == 0.0:
        raise ValueError(
            "weight must not all be 0 for a self-normalised estimator "
            "(the target policy gives probability 0 to every logged action)"
        )
    value = float(num.mean()) / mean_w
    return value + (num - value * w) / mean_w


# ---- the estimators on EventStats ---------------------------------------------------------


def _ips(s: EventStats) -> FloatArray:
    return s.weight * s.reward


def _clipped_ips(s: EventStats, max_weight: float = DEFAULT_MAX_WEIGHT) -> FloatArray:
    if not max_weight > 0.0:
        raise ValueError(f"max_weight must be > 0, got {max_weight}")
    return np.minimum(s.weight, max_weight) * s.reward


def _snips(s: EventStats) -> FloatArray:
    return self_normalize(s.weight * s.reward, s.weight)


def _dm(s: EventStats) -> FloatArray:
    return s.require_q("dm")[1].copy()


def _dr(s: EventStats) -> FloatArray:
    q_logged, q_target = s.require_q("dr")
    return q_target + s.weight * (s.reward - q_logged)


def _sndr(s: EventStats) -> FloatArray:
    q_logged, q_target = s.require_q("sndr")
    return q_target + self_normalize(s.weight * (s.reward - q_logged), s.weight)


def _switch_dr(s: EventStats, threshold: float = DEFAULT_SWITCH_THRESHOLD) -> FloatArray:
    if not threshold >= 0.0:
        raise ValueError(f"threshold must be >= 0 (inf allowed), got {threshold}")
    q_logged, q_target = s.require_q("switch_dr")
    keep = s.weight <= threshold
    return q_target + np.where(keep, s.weight * (s.reward - q_logged), 0.0)


_TERMS: dict[str, Callable[..., FloatArray]] = {
    "ips": _ips,
    "clipped_ips": _clipped_ips,
    "snips": _snips,
    "dm": _dm,
    "dr": _dr,
    "sndr": _sndr,
    "switch_dr": _switch_dr,
}


_PARAMS: dict[str, set[str]] = {"clipped_ips": {"max_weight"}, "switch_dr": {"threshold"}}


def terms_from_stats(name: str, stats: EventStats, **params: float) -> FloatArray:
    """Per-event terms of the estimator ``name`` computed from precomputed :class:`EventStats`."""
    if name not in _TERMS:
        raise ValueError(f"name must be one of {sorted(_TERMS)}, got {name!r}")
    unknown = sorted(set(params) - _PARAMS.get(name, set()))
    if unknown:
        raise ValueError(
            f"params of {name} must be among {sorted(_PARAMS.get(name, set()))}, got {unknown}"
        )
    return _TERMS[name](stats, **params)


def estimator_ess(name: str, stats: EventStats, **params: float) -> float:
    """Effective sample size reported with estimator ``name``.

    Kish's ESS of the importance weights it uses: the clipped weights for clipped IPS, n for DM
    (no importance weighting), the raw weights for the others.
    """
    if name == "dm":
        return float(stats.n)
    if name == "clipped_ips":
        return effective_sample_size(
            np.minimum(stats.weight, params.get("max_weight", DEFAULT_MAX_WEIGHT))
        )
    return effective_sample_size(stats.weight)


# ---- the public array API -----------------------------------------------------------------


def ips(
    *, reward: Any, action: Any, pscore: Any, action_dist: Any, q_hat: Any = None
) -> FloatArray:
    """Inverse propensity scoring: ``w_i * r_i``. Unbiased when the logging policy covers the
    target's support. ``q_hat`` is ignored."""
    return _ips(
        EventStats.from_arrays(reward=reward, action=action, pscore=pscore, action_dist=action_dist)
    )


def clipped_ips(
    *,
    reward: Any,
    action: Any,
    pscore: Any,
    action_dist: Any,
    q_hat: Any = None,
    max_weight: float = DEFAULT_MAX_WEIGHT,
) -> FloatArray:
    """IPS with weights clipped at ``max_weight``: ``min(w_i, M) * r_i``. Lower variance, biased
    (towards 0 for non-negative rewards) once any weight exceeds M. ``q_hat`` is ignored."""
    s = EventStats.from_arrays(reward=reward, action=action, pscore=pscore, action_dist=action_dist)
    return _clipped_ips(s, max_weight)


def snips(
    *, reward: Any, action: Any, pscore: Any, action_dist: Any, q_hat: Any = None
) -> FloatArray:
    """Self-normalised IPS ``sum(w r) / sum(w)`` as linearised terms. Consistent, bias O(1/n),
    invariant to rescaling the weights. ``q_hat`` is ignored."""
    return _snips(
        EventStats.from_arrays(reward=reward, action=action, pscore=pscore, action_dist=action_dist)
    )


def dm(*, reward: Any, action: Any, pscore: Any, action_dist: Any, q_hat: Any = None) -> FloatArray:
    """Direct method: ``sum_a action_dist[i, a] * q_hat[i, a]``. Low variance; biased by the
    reward model's error. Requires ``q_hat``."""
    s = EventStats.from_arrays(
        reward=reward, action=action, pscore=pscore, action_dist=action_dist, q_hat=q_hat
    )
    return _dm(s)


def dr(*, reward: Any, action: Any, pscore: Any, action_dist: Any, q_hat: Any = None) -> FloatArray:
    """Doubly robust: DM plus the importance-weighted residual ``w_i (r_i - q_hat[i, a_i])``.
    Unbiased when the weights are right, whatever ``q_hat``; with ``q_hat = 0`` it is IPS."""
    s = EventStats.from_arrays(
        reward=reward, action=action, pscore=pscore, action_dist=action_dist, q_hat=q_hat
    )
    return _dr(s)


def sndr(
    *, reward: Any, action: Any, pscore: Any, action_dist: Any, q_hat: Any = None
) -> FloatArray:
    """Self-normalised DR: DM plus ``sum(w (r - q)) / sum(w)``, as linearised terms."""
    s = EventStats.from_arrays(
        reward=reward, action=action, pscore=pscore, action_dist=action_dist, q_hat=q_hat
    )
    return _sndr(s)


def switch_dr(
    *,
    reward: Any,
    action: Any,
    pscore: Any,
    action_dist: Any,
    q_hat: Any = None,
    threshold: float = DEFAULT_SWITCH_THRESHOLD,
) -> FloatArray:
    """Switch-DR (Wang, Agarwal & Dudík 2017, in Open Bandit Pipeline's form): DR where
    ``w_i <= threshold``, DM alone where the weight is larger. ``threshold=0`` gives DM,
    ``threshold=inf`` gives DR."""
    s = EventStats.from_arrays(
        reward=reward, action=action, pscore=pscore, action_dist=action_dist, q_hat=q_hat
    )
    return _switch_dr(s, threshold)


ESTIMATORS: dict[str, Estimator] = {
    "ips": ips,
    "clipped_ips": clipped_ips,
    "snips": snips,
    "dm": dm,
    "dr": dr,
    "sndr": sndr,
    "switch_dr": switch_dr,
}
"""Name -> estimator; every one takes the keyword-only signature of this module."""
