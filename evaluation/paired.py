"""Paired differences: candidate minus incumbent, evaluated on the same logged events.

Both policies are evaluated on the same events, so the per-event terms of the difference are
``candidate_terms - incumbent_terms`` and the interval of the difference accounts for the
correlation between the two estimates (much narrower than combining two separate intervals when
the policies agree on most events). For the bootstrap all three estimates share the resampling
weights. For self-normalised estimators the difference of the linearised terms is the linearised
difference of the two ratios, so the same helpers apply. This is the input of the promotion gate:
promote only when ``difference.ci_low`` exceeds the loop's margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evaluation.estimators import EventStats, estimator_ess, terms_from_stats
from evaluation.intervals import DEFAULT_N_BOOT, Seed
from evaluation.ope import BOUNDED_INTERVALS, estimate_many, max_importance_weight, term_bounds
from evaluation.types import Estimate
from evaluation.validation import check_action_dist, check_finite, check_same_length

__all__ = ["PairedEstimate", "evaluate_paired", "paired_difference"]


@dataclass(frozen=True)
class PairedEstimate:
    """Candidate and incumbent values and their difference (candidate - incumbent)."""

    candidate: Estimate
    incumbent: Estimate
    difference: Estimate

    def exceeds(self, margin: float = 0.0) -> bool:
        """True when the lower bound of the difference is above ``margin``."""
        return self.difference.ci_low > margin


def paired_difference(
    candidate_terms: Any,
    incumbent_terms: Any,
    *,
    method: str = "paired",
    interval: str = "bootstrap",
    alpha: float = 0.05,
    rng: Seed = None,
    n_boot: int = DEFAULT_N_BOOT,
    bounds: tuple[float, float] | None = None,
    incumbent_bounds: tuple[float, float] | None = None,
    candidate_ess: float | None = None,
    incumbent_ess: float | None = None,
) -> PairedEstimate:
    """Estimates of two term vectors over the same events and of their difference.

    ``bounds``: a priori bounds on the candidate's terms, ``incumbent_bounds`` on the
    incumbent's (defaults to ``bounds``); required by the bernstein and cs intervals (see
    :func:`evaluation.ope.term_bounds`). The difference then lies in
    ``(c_low - i_high, c_high - i_low)``. The difference's ess is the smaller of the two.
    """
    cand = check_finite(candidate_terms, "candidate_terms")
    inc = check_finite(incumbent_terms, "incumbent_terms")
    check_same_length(candidate_terms=cand, incumbent_terms=inc)
    n = cand.shape[0]
    c_ess = float(n) if candidate_ess is None else float(candidate_ess)
    i_ess = float(n) if incumbent_ess is None else float(incumbent_ess)
    by_key = None
    if bounds is None and interval in BOUNDED_INTERVALS:
        raise ValueError(
            f"bounds must be given for interval {interval!r}: a priori (low, high) bounds on the "
            "candidate's terms (and incumbent_bounds on the incumbent's when they differ), "
            "got None"
        )
    if bounds is not None:
        c_lo, c_hi = (float(b) for b in bounds)
        i_lo, i_hi = (float(b) for b in (bounds if incumbent_bounds is None else incumbent_bounds))
        by_key = {
            "candidate": (c_lo, c_hi),
            "incumbent": (i_lo, i_hi),
            "difference": (c_lo - i_hi, c_hi - i_lo),
        }
    out = estimate_many(
        {"candidate": cand, "incumbent": inc, "difference": cand - inc},
        interval=interval,
        alpha=alpha,
        rng=rng,
        n_boot=n_boot,
        bounds=by_key,
        ess={"candidate": c_ess, "incumbent": i_ess, "difference": min(c_ess, i_ess)},
    )
    renamed = {
        key: Estimate(
            value=e.value,
            ci_low=e.ci_low,
            ci_high=e.ci_high,
            n=e.n,
            ess=e.ess,
            method=f"{method}:{key}/{interval}",
        )
        for key, e in out.items()
    }
    return PairedEstimate(renamed["candidate"], renamed["incumbent"], renamed["difference"])


def evaluate_paired(
    name: str,
    *,
    reward: Any,
    action: Any,
    pscore: Any,
    candidate_dist: Any,
    incumbent_dist: Any,
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
) -> PairedEstimate:
    """Candidate minus incumbent with estimator ``name`` on the same events.

    ``candidate_dist`` and ``incumbent_dist`` are the two policies' ``action_dist``; one reward
    model ``q_hat`` serves both. The bernstein and cs intervals need a priori bounds on the terms:
    ``bounds`` (the same for both policies), or ``reward_range`` from which
    :func:`evaluation.ope.term_bounds` derives each policy's, with ``q_range`` and
    ``weight_bound`` (defaults to each policy's :func:`evaluation.ope.max_importance_weight` of
    its pmf and ``logging_dist``, the full logging pmf per event, or else ``pscore``).
    """
    c_dist = check_action_dist(candidate_dist, "candidate_dist")
    i_dist = check_action_dist(incumbent_dist, "incumbent_dist", n_rounds=c_dist.shape[0])
    if i_dist.shape != c_dist.shape:
        raise ValueError(
            f"incumbent_dist must have the shape of candidate_dist {c_dist.shape}, "
            f"got {i_dist.shape}"
        )
    stats_c, stats_i = (
        EventStats.from_arrays(
            reward=reward, action=action, pscore=pscore, action_dist=dist, q_hat=q_hat
        )
        for dist in (c_dist, i_dist)
    )
    c_bounds = i_bounds = bounds
    if bounds is None and interval in BOUNDED_INTERVALS:
        if reward_range is None:
            raise ValueError(
                f"reward_range (or bounds) must be given for interval {interval!r}: it needs "
                "a priori bounds on the terms, derived from the reward range and the largest "
                "possible importance weight, got None"
            )
        c_bounds, i_bounds = (
            term_bounds(
                name,
                reward_range=reward_range,
                q_range=q_range,
                weight_bound=(
                    max_importance_weight(
                        pscore=pscore, action_dist=dist, logging_dist=logging_dist
                    )
                    if weight_bound is None
                    else weight_bound
                ),
                **params,
            )
            for dist in (c_dist, i_dist)
        )
    return paired_difference(
        terms_from_stats(name, stats_c, **params),
        terms_from_stats(name, stats_i, **params),
        method=name,
        interval=interval,
        alpha=alpha,
        rng=seed,
        n_boot=n_boot,
        bounds=c_bounds,
        incumbent_bounds=i_bounds,
        candidate_ess=estimator_ess(name, stats_c, **params),
        incumbent_ess=estimator_ess(name, stats_i, **params),
    )
