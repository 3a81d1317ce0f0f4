"""Reward model for DM / DR: per-action ridge regression, cross-fitted on the logs.

The model predicts ``q_hat[i, a]``, the expected reward of action ``a`` in event ``i``'s
context, with one ridge regression per action on the standardised context features plus an
intercept (no context: the per-action mean reward shrunk towards the overall mean; ``l2`` acts as
that many pseudo-events at the overall mean). It is deliberately simple and numpy-only.

Cross-fitting (as in double machine learning): the events are split into ``n_folds`` random folds
and the predictions for a fold come from a model fitted on the other folds, so no event's own
reward enters its ``q_hat``. This keeps DR's correction term unbiased and its intervals honest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from evaluation.intervals import Seed, as_generator
from evaluation.validation import check_action, check_finite, check_same_length

__all__ = ["RidgeRewardModel", "cross_fit_q_hat"]

FloatArray = NDArray[np.float64]


def _features(context: Any, n: int) -> FloatArray:
    if context is None:
        return np.zeros((n, 0))
    return check_finite(context, "context", ndim=2)


@dataclass(frozen=True, eq=False)
class RidgeRewardModel:
    """Fitted per-action ridge regression; build it with :meth:`fit`."""

    offset: float
    feature_mean: FloatArray
    feature_scale: FloatArray
    coef: FloatArray  # (n_actions, 1 + n_features): intercept first

    @property
    def n_actions(self) -> int:
        """Number of actions the model predicts for."""
        return int(self.coef.shape[0])

    @classmethod
    def fit(
        cls,
        *,
        reward: Any,
        action: Any,
        n_actions: int,
        context: Any = None,
        l2: float = 1.0,
    ) -> RidgeRewardModel:
        """Fit on logged (context, action, reward); actions never logged predict the mean."""
        if isinstance(n_actions, bool) or not isinstance(n_actions, int) or n_actions < 1:
            raise ValueError(f"n_actions must be an integer >= 1, got {n_actions!r}")
        if not l2 > 0.0:
            raise ValueError(f"l2 must be > 0, got {l2}")
        r = check_finite(reward, "reward")
        a = check_action(action, n_actions=n_actions)
        x = _features(context, r.shape[0])
        check_same_length(reward=r, action=a, context=x)
        return cls._fit(r, a, x, n_actions, float(l2))

    @classmethod
    def _fit(
        cls, r: FloatArray, a: NDArray[np.int64], x: FloatArray, n_actions: int, l2: float
    ) -> RidgeRewardModel:
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale == 0.0] = 1.0
        phi = np.hstack([np.ones((r.shape[0], 1)), (x - mean) / scale])
        offset = float(r.mean())
        target = r - offset
        order = np.argsort(a, kind="stable")
        edges = np.searchsorted(a[order], np.arange(n_actions + 1))
        d = phi.shape[1]
        gram = np.broadcast_to(l2 * np.eye(d), (n_actions, d, d)).copy()
        moment = np.zeros((n_actions, d))
        for act in range(n_actions):  # never-logged actions keep coef 0: the overall mean
            p = phi[order[edges[act] : edges[act + 1]]]
            gram[act] += p.T @ p
            moment[act] = p.T @ target[order[edges[act] : edges[act + 1]]]
        coef = np.linalg.solve(gram, moment[:, :, None])[:, :, 0].astype(np.float64)
        return cls(offset, mean, scale, coef)

    def predict(self, context: Any = None, *, n_rounds: int | None = None) -> FloatArray:
        """(n, n_actions) predicted rewards; without context give ``n_rounds``."""
        if context is None:
            if self.feature_mean.shape[0] != 0:
                raise ValueError("context is required: the model was fitted with features")
            if n_rounds is None or n_rounds < 1:
                raise ValueError(f"n_rounds must be >= 1 when context is None, got {n_rounds}")
            return self._predict(np.zeros((n_rounds, 0)))
        x = check_finite(context, "context", ndim=2)
        if x.shape[1] != self.feature_mean.shape[0]:
            raise ValueError(
                f"context must have {self.feature_mean.shape[0]} features, got {x.shape[1]}"
            )
        return self._predict(x)

    def _predict(self, x: FloatArray) -> FloatArray:
        phi = np.hstack([np.ones((x.shape[0], 1)), (x - self.feature_mean) / self.feature_scale])
        return self.offset + phi @ self.coef.T


def cross_fit_q_hat(
    *,
    reward: Any,
    action: Any,
    n_actions: int,
    context: Any = None,
    n_folds: int = 5,
    l2: float = 1.0,
    seed: Seed = None,
) -> FloatArray:
    """(n, n_actions) ``q_hat`` where each event's row comes from a model not fitted on it."""
    r = check_finite(reward, "reward")
    n = r.shape[0]
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or not 2 <= n_folds <= n:
        raise ValueError(f"n_folds must be an integer in [2, n={n}], got {n_folds!r}")
    a = check_action(action, n_actions=n_actions)
    x = _features(context, n)
    check_same_length(reward=r, action=a, context=x)
    if not l2 > 0.0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    fold = as_generator(seed).permutation(n) % n_folds
    q_hat = np.empty((n, n_actions))
    for f in range(n_folds):
        test = fold == f
        model = RidgeRewardModel._fit(r[~test], a[~test], x[~test], n_actions, float(l2))
        q_hat[test] = model._predict(x[test])
    return q_hat
