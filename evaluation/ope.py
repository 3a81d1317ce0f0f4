"""From per-event terms to an Estimate, and one-call evaluation (estimator + interval + ESS).

The ``bernstein`` and ``cs`` intervals need a priori bounds on the per-event terms.
:func:`term_bounds` derives them for each estimator from what is known before the rewards are
seen: the reward range (and the reward model's range for the DM part) and the largest importance
weight the target can get, :func:`max_importance_weight`, which comes from the logging
propensities and the target's pmf.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evaluation.estimators import (
    DEFAULT_MAX_WEIGHT,
    DEFAULT_SWITCH_THRESHOLD,
    ESTIMATORS,
    EventStats,
    estimator_ess,
    terms_from_stats,
)
from evaluation.intervals import DEFAULT_N_BOOT, INTERVALS, Seed, dispatch_interval
from evaluation.types import Estimate
from evaluation.validation import check_action_dist, check_finite, check_probability_array

__all__ = [
    "BOUNDED_INTERVALS",
    "estimate",
    "estimate_many",
    "evaluate",
    "evaluate_many",
    "max_importance_weight",
    "term_bounds",
]

_NEEDS_Q = frozenset({"dm", "dr", "sndr", "switch_dr"})
_SELF_NORMALISED = frozenset({"snips", "sndr"})

BOUNDED_INTERVALS = frozenset({"bernstein", "cs"})
"""Interval kinds that need a priori bounds on the terms."""


def _check_range(value: Any, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be finite (low, high) with low <= high, got {value!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"{name} must be finite (low, high) with low <= high, got {value!r}")
    return lo, hi


def max_importance_weight(
    *, pscore: Any = None, action_dist: Any = None, logging_dist: Any = None
) -> float:
    """A bound on the importance weights ``pi(a|x) / p(a|x)`` known from the propensities alone.

    With ``logging_dist`` (n, n_actions), the logging pmf of every event, and the target's
    ``action_dist`` of the same shape: the largest ``action_dist / logging_dist`` over the events
    and the actions the logging policy can take (an action of logging probability 0 is never
    logged, so never weighted): the largest weight each event could have got, whichever action
    had been logged. Otherwise from ``pscore``, the logged propensities: the target's largest
    probability (1 without ``action_dist``) over the smallest logged propensity, which stands for
    the logging policy's floor (every action of every context has at least that probability, as
    with epsilon-greedy once an exploratory action is logged); it is at most
    ``1 / min(pscore)`` and bounds every observed weight. Rewards are never looked at.

    Prefer ``logging_dist`` (or a known floor as ``weight_bound`` of :func:`term_bounds`) when
    the logging propensities take many values: the smallest *logged* propensity can miss small
    propensities that were not logged, and then the bound is too small for the terms the
    sample could have had (with heavy-tailed weights that costs coverage; see
    tests/evaluation/test_interval_coverage.py).
    """
    if logging_dist is not None:
        if action_dist is None:
            raise ValueError("action_dist must be given with logging_dist, got None")
        logging = check_action_dist(logging_dist, "logging_dist")
        target = check_action_dist(action_dist, n_rounds=logging.shape[0])
        if target.shape != logging.shape:
            raise ValueError(
                f"action_dist must have the shape of logging_dist {logging.shape}, "
                f"got {target.shape}"
            )
        supported = logging > 0.0
        ratio = np.divide(target, logging, out=np.zeros_like(target), where=supported)
        return float(ratio.max())
    if pscore is None:
        raise ValueError("pscore (or logging_dist with action_dist) must be given, got None")
    p = check_probability_array(pscore, "pscore")
    top = 1.0 if action_dist is None else float(check_action_dist(action_dist).max())
    return top / float(p.min())


def term_bounds(
    name: str,
    *,
    reward_range: tuple[float, float],
    weight_bound: float | None = None,
    pscore: Any = None,
    action_dist: Any = None,
    logging_dist: Any = None,
    q_range: tuple[float, float] | None = None,
    **params: float,
) -> tuple[float, float]:
    """A priori (low, high) bounds on the per-event terms of estimator ``name``.

    ``reward_range``: the rewards' range (a loop's ``(min_reward, max_reward)``); ``q_range``:
    the reward model's range (defaults to ``reward_range``); the importance weights lie in
    ``[0, W]`` with ``W`` either ``weight_bound`` or :func:`max_importance_weight` of
    ``pscore`` / ``action_dist`` / ``logging_dist``. ``params`` are the estimator's
    hyperparameters (``max_weight`` of clipped_ips and ``threshold`` of switch_dr cap ``W``).
    For IPS the terms ``w r`` lie in ``[min(0, W r_min), max(0, W r_max)]``; DM's in ``q_range``;
    DR's ``q_target + w (r - q_logged)`` add to that ``W`` times the range of ``r - q``.
    Self-normalised estimators (snips, sndr) have none: their linearised terms depend on the
    sample's mean weight, so they raise.
    """
    if name not in ESTIMATORS:
        raise ValueError(f"name must be one of {sorted(ESTIMATORS)}, got {name!r}")
    if name in _SELF_NORMALISED:
        raise ValueError(
            f"{name} has no a priori bounds on its terms (self-normalised: its linearised terms "
            "depend on the sample's mean weight), which the bernstein and cs intervals need: "
            "use the bootstrap or normal interval, or the non-normalised estimator"
        )
    allowed = {"clipped_ips": {"max_weight"}, "switch_dr": {"threshold"}}.get(name, set())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"params of {name} must be among {sorted(allowed)}, got {unknown}")
    r_lo, r_hi = _check_range(reward_range, "reward_range")
    q_lo, q_hi = _check_range(reward_range if q_range is None else q_range, "q_range")
    if weight_bound is None:
        w = max_importance_weight(pscore=pscore, action_dist=action_dist, logging_dist=logging_dist)
    elif any(x is not None for x in (pscore, action_dist, logging_dist)):
        raise ValueError("weight_bound must be given alone, got it together with propensities")
    else:
        w = float(weight_bound)
        if not (math.isfinite(w) and w >= 0.0):
            raise ValueError(f"weight_bound must be a finite number >= 0, got {weight_bound!r}")
    if name == "clipped_ips":
        w = min(w, float(params.get("max_weight", DEFAULT_MAX_WEIGHT)))
    if name == "switch_dr":
        w = min(w, float(params.get("threshold", DEFAULT_SWITCH_THRESHOLD)))
    w = max(w, 0.0)
    if name in ("ips", "clipped_ips"):
        return min(0.0, w * r_lo), max(0.0, w * r_hi)
    if name == "dm":
        return q_lo, q_hi
    # dr, switch_dr: q_target + w (r - q_logged), with the correction 0 when w is 0 (or switched)
    return q_lo + w * min(0.0, r_lo - q_hi), q_hi + w * max(0.0, r_hi - q_lo)


def estimate(
    terms: Any,
    *,
    method: str,
    interval: str = "bootstrap",
    alpha: float = 0.05,
    rng: Seed = None,
    n_boot: int = DEFAULT_N_BOOT,
    bounds: tuple[float, float] | None = None,
    ess: float | None = None,
) -> Estimate:
    """Turn per-event terms into an :class:`Estimate` (value = mean of the terms).

    ``method`` names the estimator; the Estimate's method is ``"<method>/<interval>"``. ``ess``
    defaults to n (no importance weighting). ``bounds``: a priori bounds on the terms, required
    by the bernstein and cs intervals (see :func:`term_bounds`).
    """
    t = check_finite(terms, "terms")
    return estimate_many(
        {method: t},
        interval=interval,
        alpha=alpha,
        rng=rng,
        n_boot=n_boot,
        bounds=None if bounds is None else {method: bounds},
        ess=None if ess is None else {method: ess},
    )[method]


def estimate_many(
    terms: Mapping[str, Any],
    *,
    interval: str = "bootstrap",
    alpha: float = 0.05,
    rng: Seed = None,
    n_boot: int = DEFAULT_N_BOOT,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    ess: Mapping[str, float] | None = None,
) -> dict[str, Estimate]:
    """Estimates of several term vectors on the same events, one interval computation for all.

    With the bootstrap every method shares the same resampling weights (paired replicates).
    ``bounds`` maps every method to a priori bounds on its terms: required by the bernstein and
    cs intervals (see :func:`term_bounds`), ignored by the others.
    """
    if not terms:
        raise ValueError("terms must map at least one method name to its terms, got none")
    names = list(terms)
    rows = [check_finite(terms[name], f"terms[{name!r}]") for name in names]
    n = rows[0].shape[0]
    for name, row in zip(names, rows, strict=True):
        if row.shape[0] != n:
            raise ValueError(
                f"terms[{name!r}] must have one entry per event like terms[{names[0]!r}] "
                f"({n}), got {row.shape[0]}"
            )
    if n < 2:
        raise ValueError(f"terms must hold at least 2 events to form an interval, got {n}")
    matrix = np.stack(rows)  # (k, n)
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {list(INTERVALS)}, got {interval!r}")
    if interval in BOUNDED_INTERVALS:
        missing = [name for name in names if bounds is None or name not in bounds]
        if missing or bounds is None:
            raise ValueError(
                f"bounds must map every method to a priori (low, high) bounds on its terms for "
                f"interval {interval!r} (see evaluation.ope.term_bounds), got none for {missing}"
            )
        pairs = [
            dispatch_interval(matrix[j : j + 1], interval, alpha, rng, n_boot, bounds[name])
            for j, name in enumerate(names)
        ]
        low = np.array([float(p[0][0]) for p in pairs])
        high = np.array([float(p[1][0]) for p in pairs])
    else:
        low, high = dispatch_interval(matrix, interval, alpha, rng, n_boot, None)
    values = matrix.mean(axis=1)
    out: dict[str, Estimate] = {}
    for j, name in enumerate(names):
        out[name] = Estimate(
            value=float(values[j]),
            ci_low=float(low[j]),
            ci_high=float(high[j]),
            n=n,
            ess=float(n) if ess is None or name not in ess else float(ess[name]),
            method=f"{name}/{interval}",
        )
    return out


def evaluate(
    name: str,
    *,
    reward: Any,
    action: Any,
    pscore: Any,
    action_dist: Any,
    q_hat: Any = None,
    interval: str = "bootstrap",
    alpha: float = 0.05,
    seed: Seed = None,
    n_boot: int = DEFAULT_N_BOOT,
    bounds: tuple[float, float] | None = None,
    reward_range: tuple[float, float] | None = None,
    q_range: tuple[float, float] | None = None,
    weight_bound: float | None = None,
    logging_dist: Any = None,
    **params: float,
) -> Estimate:
    """Estimate the target policy's value with estimator ``name`` (a key of ``ESTIMATORS``).

    ``params`` are the estimator's hyperparameters (``max_weight`` of clipped_ips, ``threshold``
    of switch_dr). The bernstein and cs intervals need a priori bounds on the terms: ``bounds``,
    or ``reward_range`` (with ``q_range`` and ``weight_bound`` as in :func:`term_bounds`; the
    weight bound defaults to :func:`max_importance_weight` of ``action_dist`` and
    ``logging_dist``, the full logging pmf per event, or else ``pscore``).
    """
    return evaluate_many(
        [name],
        reward=reward,
        action=action,
        pscore=pscore,
        action_dist=action_dist,
        q_hat=q_hat,
        interval=interval,
        alpha=alpha,
        seed=seed,
        n_boot=n_boot,
        params={name: params},
        bounds=None if bounds is None else {name: bounds},
        reward_range=reward_range,
        q_range=q_range,
        weight_bound=weight_bound,
        logging_dist=logging_dist,
    )[name]


def evaluate_many(
    names: Sequence[str] | None = None,
    *,
    stats: EventStats | None = None,
    reward: Any = None,
    action: Any = None,
    pscore: Any = None,
    action_dist: Any = None,
    q_hat: Any = None,
    interval: str = "bootstrap",
    alpha: float = 0.05,
    seed: Seed = None,
    n_boot: int = DEFAULT_N_BOOT,
    params: Mapping[str, Mapping[str, float]] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    reward_range: tuple[float, float] | None = None,
    q_range: tuple[float, float] | None = None,
    weight_bound: float | None = None,
    logging_dist: Any = None,
) -> dict[str, Estimate]:
    """Several estimators on the same events, validating the inputs and resampling once.

    Give either ``stats`` (an :class:`EventStats`, e.g. concatenated from chunks of logs) or the
    arrays. ``names`` defaults to every estimator the inputs allow (those needing ``q_hat`` only
    when it is given; for the bernstein and cs intervals not the self-normalised ones, which have
    no a priori bounds). With the bootstrap all estimators share the resampling weights.

    The bernstein and cs intervals need a priori bounds on the terms of every estimator:
    ``bounds`` (name -> (low, high)), or ``reward_range`` from which :func:`term_bounds` derives
    them, with ``q_range`` (defaults to ``reward_range``) and ``weight_bound`` (defaults to
    :func:`max_importance_weight` of ``action_dist`` and ``logging_dist``, the full logging pmf
    per event, or else of ``pscore``; required with ``stats``).
    """
    if stats is None:
        stats = EventStats.from_arrays(
            reward=reward, action=action, pscore=pscore, action_dist=action_dist, q_hat=q_hat
        )
    elif any(x is not None for x in (reward, action, pscore, action_dist, q_hat)):
        raise ValueError("stats must be given alone, got stats together with arrays")
    has_q = stats.q_logged is not None
    bounded = interval in BOUNDED_INTERVALS
    chosen = (
        list(names)
        if names is not None
        else [
            n
            for n in ESTIMATORS
            if (has_q or n not in _NEEDS_Q) and not (bounded and n in _SELF_NORMALISED)
        ]
    )
    unknown = [n for n in chosen if n not in ESTIMATORS]
    if unknown or not chosen:
        raise ValueError(f"names must be among {sorted(ESTIMATORS)}, got {chosen!r}")
    settings = params or {}
    if bounded and bounds is None:
        if reward_range is None:
            raise ValueError(
                f"reward_range (or bounds) must be given for interval {interval!r}: it needs "
                "a priori bounds on the terms, derived from the reward range and the largest "
                "possible importance weight, got None"
            )
        if weight_bound is None:
            if pscore is None:
                raise ValueError(
                    f"weight_bound must be given with stats for interval {interval!r}: the "
                    "largest possible importance weight (see max_importance_weight), got None"
                )
            weight_bound = max_importance_weight(
                pscore=pscore, action_dist=action_dist, logging_dist=logging_dist
            )
        bounds = {
            n: term_bounds(
                n,
                reward_range=reward_range,
                weight_bound=weight_bound,
                q_range=q_range,
                **settings.get(n, {}),
            )
            for n in chosen
        }
    terms = {n: terms_from_stats(n, stats, **settings.get(n, {})) for n in chosen}
    ess = {n: estimator_ess(n, stats, **settings.get(n, {})) for n in chosen}
    return estimate_many(
        terms, interval=interval, alpha=alpha, rng=seed, n_boot=n_boot, bounds=bounds, ess=ess
    )
