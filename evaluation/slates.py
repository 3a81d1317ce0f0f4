"""Off-policy estimators for slates (rankings of K slots) on the per-slot probabilities logged.

The service samples a slate slot by slot without replacement and logs, for each slot, the
conditional probability of the item it put there given the items above it; the slate's
probability is their product. All estimators share one keyword-only signature::

    name(*, reward, pscore, target_pscore, pscore_marginal=None, target_marginal=None,
         q_hat=None, q_hat_target=None) -> terms

reward (n, K): reward per slot (the slate's reward is the sum; pre-multiply for position weights).
    Slates shorter than K are padded with reward 0, probability 1 (pscore, target_pscore and the
    marginals) and q_hat 0, which leaves every estimate unchanged.
pscore (n, K): logging probability of the logged item at slot k given the logged slots above it,
    in (0, 1]. target_pscore (n, K): the target policy's probability of the same, in [0, 1].
pscore_marginal, target_marginal (n, K): the probability that the logged item appears at slot k at
    all (summed over what is above it). Needed by the independent and pseudo-inverse estimators;
    equal to the conditional ones only when slots are sampled independently.
q_hat (n, K): reward model's prediction of the reward from slot k to the end given the logged
    slots 1..k; q_hat_target (n, K): its expectation over the target's choice at slot k given the
    logged slots above (see :func:`slate_q_hat`). Needed by cascade_dr.

Estimators, their weights and when they are unbiased (logging support assumed):

- ``standard_ips``: slate weight ``prod_k w_k`` times the slate reward. Any reward; high variance.
- ``independent_ips`` (Li et al. 2018): ``sum_k (marginal ratio at k) * r_k``. Reward at slot k
  depends only on the item at slot k.
- ``pseudo_inverse`` (Swaminathan et al. 2017): ``(sum_k marginal ratio_k - K + 1) * slate
  reward``, the closed form of the pseudo-inverse estimator for logging policies that fill the
  slots independently (a product distribution, e.g. one candidate pool per slot). Unbiased for an
  additive slate reward under such logging. Under sampling without replacement it is only an
  approximation: the exact estimator needs the logging policy's pairwise slot marginals, which
  the per-slot probabilities do not determine.
- ``rips`` (reward-interaction IPS, McInerney et al. 2020): ``sum_k (prod_{j<=k} w_j) r_k``.
  Cascade: reward at slot k depends on the slots 1..k only.
- ``cascade_dr`` (Kiyohara et al. 2022): rips with ``q_hat`` as control variate; unbiased under
  the same cascade assumption whatever q_hat, lower variance when q_hat is good.
- ``sn_*``: self-normalised forms (sum over slots of ratio estimators ``sum(W_k r_k)/sum(W_k)``),
  returned as linearised terms like every self-normalised estimator here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from evaluation.estimators import effective_sample_size, self_normalize
from evaluation.intervals import DEFAULT_N_BOOT, Seed
from evaluation.ope import estimate
from evaluation.types import Estimate
from evaluation.validation import check_finite, check_probability_array

__all__ = [
    "SLATE_ESTIMATORS",
    "evaluate_slate",
    "slate_cascade_dr",
    "slate_independent_ips",
    "slate_pseudo_inverse",
    "slate_q_hat",
    "slate_rips",
    "slate_sn_independent_ips",
    "slate_sn_pseudo_inverse",
    "slate_sn_rips",
    "slate_sn_standard_ips",
    "slate_standard_ips",
]

FloatArray = NDArray[np.float64]


class _Slate(NamedTuple):
    reward: FloatArray
    ratio: FloatArray  # target_pscore / pscore per slot
    pscore_marginal: FloatArray | None
    target_marginal: FloatArray | None
    q_hat: FloatArray | None
    q_hat_target: FloatArray | None

    def marginal_ratio(self, estimator: str) -> FloatArray:
        if self.pscore_marginal is None or self.target_marginal is None:
            raise ValueError(
                f"pscore_marginal and target_marginal are required by {estimator} (the marginal "
                "probability of the logged item at each slot), got None"
            )
        return self.target_marginal / self.pscore_marginal

    def cascade(self) -> FloatArray:
        return np.cumprod(self.ratio, axis=1, dtype=np.float64)


def _slate(
    reward: Any,
    pscore: Any,
    target_pscore: Any,
    pscore_marginal: Any,
    target_marginal: Any,
    q_hat: Any,
    q_hat_target: Any,
) -> _Slate:
    r = check_finite(reward, "reward", ndim=2)
    shape = r.shape
    p = check_probability_array(pscore, "pscore", ndim=2, shape=shape)
    t = check_probability_array(
        target_pscore, "target_pscore", ndim=2, shape=shape, allow_zero=True
    )
    pm = tm = q = qt = None
    if (pscore_marginal is None) != (target_marginal is None):
        raise ValueError("pscore_marginal and target_marginal must be given together, got one")
    if pscore_marginal is not None:
        pm = check_probability_array(pscore_marginal, "pscore_marginal", ndim=2, shape=shape)
        tm = check_probability_array(
            target_marginal, "target_marginal", ndim=2, shape=shape, allow_zero=True
        )
    if (q_hat is None) != (q_hat_target is None):
        raise ValueError("q_hat and q_hat_target must be given together, got one")
    if q_hat is not None:
        q = check_finite(q_hat, "q_hat", ndim=2, shape=shape)
        qt = check_finite(q_hat_target, "q_hat_target", ndim=2, shape=shape)
    return _Slate(r, t / p, pm, tm, q, qt)


def _sn_slots(weight: FloatArray, reward: FloatArray) -> FloatArray:
    """Sum over slots of the linearised ratio estimators sum(W_k r_k) / sum(W_k)."""
    out = np.zeros(weight.shape[0])
    for k in range(weight.shape[1]):
        out += self_normalize(weight[:, k] * reward[:, k], weight[:, k])
    return out


def _standard(s: _Slate) -> FloatArray:
    return np.prod(s.ratio, axis=1) * s.reward.sum(axis=1)


def _independent(s: _Slate) -> FloatArray:
    return np.sum(s.marginal_ratio("independent_ips") * s.reward, axis=1)


def _pi_weight(s: _Slate, estimator: str) -> FloatArray:
    ratio = s.marginal_ratio(estimator)
    return ratio.sum(axis=1) - ratio.shape[1] + 1.0


def _pseudo_inverse(s: _Slate) -> FloatArray:
    return _pi_weight(s, "pseudo_inverse") * s.reward.sum(axis=1)


def _rips(s: _Slate) -> FloatArray:
    return np.sum(s.cascade() * s.reward, axis=1)


def _cascade_dr(s: _Slate) -> FloatArray:
    if s.q_hat is None or s.q_hat_target is None:
        raise ValueError("q_hat and q_hat_target are required by cascade_dr, got None")
    cum = s.cascade()
    above = np.hstack([np.ones((cum.shape[0], 1)), cum[:, :-1]])
    return np.sum(cum * (s.reward - s.q_hat) + above * s.q_hat_target, axis=1)


def _sn_standard(s: _Slate) -> FloatArray:
    w = np.prod(s.ratio, axis=1)
    return self_normalize(w * s.reward.sum(axis=1), w)


def _sn_independent(s: _Slate) -> FloatArray:
    return _sn_slots(s.marginal_ratio("sn_independent_ips"), s.reward)


def _sn_pseudo_inverse(s: _Slate) -> FloatArray:
    w = _pi_weight(s, "sn_pseudo_inverse")
    return self_normalize(w * s.reward.sum(axis=1), w)


def _sn_rips(s: _Slate) -> FloatArray:
    return _sn_slots(s.cascade(), s.reward)


_TERMS: dict[str, Callable[[_Slate], FloatArray]] = {
    "standard_ips": _standard,
    "independent_ips": _independent,
    "pseudo_inverse": _pseudo_inverse,
    "rips": _rips,
    "cascade_dr": _cascade_dr,
    "sn_standard_ips": _sn_standard,
    "sn_independent_ips": _sn_independent,
    "sn_pseudo_inverse": _sn_pseudo_inverse,
    "sn_rips": _sn_rips,
}


def _make(name: str) -> Callable[..., FloatArray]:
    def estimator(
        *,
        reward: Any,
        pscore: Any,
        target_pscore: Any,
        pscore_marginal: Any = None,
        target_marginal: Any = None,
        q_hat: Any = None,
        q_hat_target: Any = None,
    ) -> FloatArray:
        s = _slate(
            reward, pscore, target_pscore, pscore_marginal, target_marginal, q_hat, q_hat_target
        )
        return _TERMS[name](s)

    estimator.__name__ = f"slate_{name}"
    estimator.__qualname__ = f"slate_{name}"
    estimator.__doc__ = f"Per-event terms of the slate estimator {name!r} (see the module doc)."
    return estimator


slate_standard_ips = _make("standard_ips")
slate_independent_ips = _make("independent_ips")
slate_pseudo_inverse = _make("pseudo_inverse")
slate_rips = _make("rips")
slate_cascade_dr = _make("cascade_dr")
slate_sn_standard_ips = _make("sn_standard_ips")
slate_sn_independent_ips = _make("sn_independent_ips")
slate_sn_pseudo_inverse = _make("sn_pseudo_inverse")
slate_sn_rips = _make("sn_rips")

SLATE_ESTIMATORS: dict[str, Callable[..., FloatArray]] = {
    "standard_ips": slate_standard_ips,
    "independent_ips": slate_independent_ips,
    "pseudo_inverse": slate_pseudo_inverse,
    "rips": slate_rips,
    "cascade_dr": slate_cascade_dr,
    "sn_standard_ips": slate_sn_standard_ips,
    "sn_independent_ips": slate_sn_independent_ips,
    "sn_pseudo_inverse": slate_sn_pseudo_inverse,
    "sn_rips": slate_sn_rips,
}
"""Name -> slate estimator; every one takes the keyword-only signature of this module."""


def slate_q_hat(*, action: Any, action_dist: Any, q_hat: Any) -> tuple[FloatArray, FloatArray]:
    """Cascade-DR inputs from per-candidate arrays.

    action (n, K) logged item indices; action_dist (n, K, m) the target's pmf at slot k given the
    logged slots above; q_hat (n, K, m) predicted reward from slot k on if item j were put at
    slot k below the logged slots. Returns ``(q_hat, q_hat_target)``, both (n, K): the prediction
    for the logged item and its expectation under the target.
    """
    q = check_finite(q_hat, "q_hat", ndim=3)
    dist = check_probability_array(
        action_dist, "action_dist", ndim=3, shape=q.shape, allow_zero=True
    )
    a = np.asarray(action)
    if a.shape != q.shape[:2] or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"action must be an integer array of shape {q.shape[:2]}, got {a.shape}")
    if a.min() < 0 or a.max() >= q.shape[2]:
        raise ValueError(
            f"action must hold item indices in [0, {q.shape[2]}), got {a.min()}..{a.max()}"
        )
    logged = np.take_along_axis(q, a[:, :, None], axis=2)[:, :, 0]
    return logged, np.vecdot(dist, q)


def _ess(name: str, s: _Slate) -> float:
    if name in ("independent_ips", "sn_independent_ips"):
        return effective_sample_size(s.marginal_ratio(name).mean(axis=1))
    if name in ("pseudo_inverse", "sn_pseudo_inverse"):
        return effective_sample_size(_pi_weight(s, name))
    return effective_sample_size(np.prod(s.ratio, axis=1))


def evaluate_slate(
    name: str,
    *,
    reward: Any,
    pscore: Any,
    target_pscore: Any,
    pscore_marginal: Any = None,
    target_marginal: Any = None,
    q_hat: Any = None,
    q_hat_target: Any = None,
    interval: str = "bootstrap",
    alpha: float = 0.05,
    seed: Seed = None,
    n_boot: int = DEFAULT_N_BOOT,
    bounds: tuple[float, float] | None = None,
) -> Estimate:
    """Estimate a target slate policy's value with slate estimator ``name``."""
    if name not in _TERMS:
        raise ValueError(f"name must be one of {sorted(_TERMS)}, got {name!r}")
    s = _slate(reward, pscore, target_pscore, pscore_marginal, target_marginal, q_hat, q_hat_target)
    return estimate(
        _TERMS[name](s),
        method=f"slate_{name}",
        interval=interval,
        alpha=alpha,
        rng=seed,
        n_boot=n_boot,
        bounds=bounds,
        ess=_ess(name, s),
    )
