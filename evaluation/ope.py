"""From per-event terms to an Estimate, and one-call evaluation (estimator + interval + ESS)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evaluation.estimators import ESTIMATORS, EventStats, estimator_ess, terms_from_stats
from evaluation.intervals import DEFAULT_N_BOOT, INTERVALS, Seed, dispatch_interval
from evaluation.types import Estimate
from evaluation.validation import check_finite

__all__ = ["estimate", "estimate_many", "evaluate", "evaluate_many"]

_NEEDS_Q = frozenset({"dm", "dr", "sndr", "switch_dr"})


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
    defaults to n (no importance weighting).
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
    if interval in ("bernstein", "cs") and bounds is not None:
        pairs = [
            dispatch_interval(matrix[j : j + 1], interval, alpha, rng, n_boot, bounds.get(name))
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
    **params: float,
) -> Estimate:
    """Estimate the target policy's value with estimator ``name`` (a key of ``ESTIMATORS``).

    ``params`` are the estimator's hyperparameters (``max_weight`` of clipped_ips, ``threshold``
    of switch_dr); ``bounds`` are a priori bounds on the terms for the bernstein and cs intervals.
    """
    stats = EventStats.from_arrays(
        reward=reward, action=action, pscore=pscore, action_dist=action_dist, q_hat=q_hat
    )
    return evaluate_many(
        [name],
        stats=stats,
        interval=interval,
        alpha=alpha,
        seed=seed,
        n_boot=n_boot,
        params={name: params},
        bounds=None if bounds is None else {name: bounds},
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
) -> dict[str, Estimate]:
    """Several estimators on the same events, validating the inputs and resampling once.

    Give either ``stats`` (an :class:`EventStats`, e.g. concatenated from chunks of logs) or the
    arrays. ``names`` defaults to every estimator the inputs allow (those needing ``q_hat`` only
    when it is given). With the bootstrap all estimators share the resampling weights.
    """
    if stats is None:
        stats = EventStats.from_arrays(
            reward=reward, action=action, pscore=pscore, action_dist=action_dist, q_hat=q_hat
        )
    elif any(x is not None for x in (reward, action, pscore, action_dist, q_hat)):
        raise ValueError("stats must be given alone, got stats together with arrays")
    has_q = stats.q_logged is not None
    chosen = (
        list(names) if names is not None else [n for n in ESTIMATORS if has_q or n not in _NEEDS_Q]
    )
    unknown = [n for n in chosen if n not in ESTIMATORS]
    if unknown or not chosen:
        raise ValueError(f"names must be among {sorted(ESTIMATORS)}, got {chosen!r}")
    settings = params or {}
    terms = {n: terms_from_stats(n, stats, **settings.get(n, {})) for n in chosen}
    ess = {n: estimator_ess(n, stats, **settings.get(n, {})) for n in chosen}
    return estimate_many(
        terms, interval=interval, alpha=alpha, rng=seed, n_boot=n_boot, bounds=bounds, ess=ess
    )
