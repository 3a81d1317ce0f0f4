"""Accumulating per-event terms of an offline evaluation, and the estimates made from them.

:class:`Accumulator` keeps, per event, what the estimators need: shared by every target the
reward, the logging propensity and the reward model's prediction at the logged action; per
target its probability of the logged action, its expected predicted reward (the DM term) and
its probability on actions the logging policy never takes. A target covers a suffix of the
events (they come in decided_at order and its time split is a cutoff time), so per target only
its first index is kept. :func:`policy_result` turns them into estimates with intervals,
diagnostics and the paired difference against the live policy on the same events.

The bernstein and cs intervals get a priori bounds on the terms: the loop's reward range (also
the reward model's, whose predictions are clipped to it) and, per target, the largest importance
weight it could get: per event the largest ``pi(a) / p(a)`` over the actions the logging policy
could take, which the logged pmf gives whichever action was drawn and whatever its reward (see
:func:`evaluation.ope.term_bounds`). Self-normalised estimators have no such bounds: with these
intervals they report an error, the others their estimates.

Guardrails: for each metric of the spec, the per-event indicator "at least one signal of the
metric was received inside the window" (slot 0), shared by every target. A target's rate is its
IPS estimate (terms ``w * indicator``, a priori in ``[0, W]`` with the target's weight bound W,
so the bounded intervals apply), compared with the live policy's on the same events (paired).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from evaluation import Diagnostics, Estimate, EventStats, estimate_many, paired_difference
from evaluation.estimators import estimator_ess, terms_from_stats
from evaluation.ope import BOUNDED_INTERVALS, term_bounds
from learn.offline_eval_spec import EvaluationSpec, PolicySpec
from learn.offline_eval_targets import EvalEvent

__all__ = ["GUARDRAIL_ESTIMATOR", "Accumulator", "policy_result"]

GUARDRAIL_ESTIMATOR = "ips"
"""Guardrail rates are IPS estimates of the indicator of >= 1 signal (in [0, 1])."""
_INDICATOR_RANGE = (0.0, 1.0)

FloatArray = NDArray[np.float64]


def _arr(a: array[float]) -> FloatArray:
    return np.frombuffer(a, dtype=np.float64) if len(a) else np.zeros(0)


class _Column:
    def __init__(self) -> None:
        self.start: int | None = None
        self.pi_logged = array("d")
        self.q_target = array("d")
        self.unsupported = array("d")
        self.max_weight = array("d")


class Accumulator:
    """Per-event terms of every target, appended event by event (a few floats per event).

    ``reward_range``: the loop's (min_reward, max_reward), the a priori range of the rewards and
    of the reward model's predictions. ``guardrails``: the metrics whose per-event indicator
    (>= 1 signal) is kept.
    """

    def __init__(
        self,
        names: Sequence[str],
        reward_range: tuple[float, float],
        guardrails: Sequence[str] = (),
    ) -> None:
        self.reward_range = (float(reward_range[0]), float(reward_range[1]))
        self.reward = array("d")
        self.pscore = array("d")
        self.q_logged = array("d")
        self.columns = {name: _Column() for name in names}
        self.signaled = {metric: array("d") for metric in guardrails}

    @property
    def n(self) -> int:
        return len(self.reward)

    def add(
        self,
        event: EvalEvent,
        pmfs: Sequence[tuple[str, FloatArray]],
        q_hat: FloatArray | None,
    ) -> None:
        """One event: the pmfs over its candidates of the targets that cover it, and the reward
        model's predictions for its candidates (None without a reward model)."""
        n = self.n
        a = event.action
        logged = event.logged_pmf
        unsupported = logged == 0.0
        # The weight is pi[a] / pscore; pscore is the logged pmf before normalisation.
        scale = event.pscore / float(logged[a])
        for name, pi in pmfs:
            col = self.columns[name]
            if col.start is None:
                col.start = n
            col.pi_logged.append(float(pi[a]))
            col.q_target.append(float(pi @ q_hat) if q_hat is not None else 0.0)
            col.unsupported.append(float(pi[unsupported].sum()))
            # The largest weight of any action this event could have logged (the taken one's
            # included, so that rounding cannot put the observed weight above the bound).
            ratio = np.divide(pi, logged, out=np.zeros_like(pi), where=~unsupported)
            col.max_weight.append(max(float(ratio.max()) / scale, float(pi[a]) / event.pscore))
        for metric, flags in self.signaled.items():
            flags.append(1.0 if event.guardrails.get(metric, 0) > 0 else 0.0)
        self.reward.append(event.reward)
        self.pscore.append(event.pscore)
        self.q_logged.append(float(q_hat[a]) if q_hat is not None else 0.0)

    def count(self, name: str) -> int:
        return len(self.columns[name].pi_logged)

    def stats(self, name: str, start: int, with_q: bool) -> EventStats:
        """EventStats of target `name` on the events from index `start` on."""
        col = self.columns[name]
        offset = start - (col.start or 0)
        weight = _arr(col.pi_logged)[offset:] / _arr(self.pscore)[start:]
        reward = _arr(self.reward)[start:]
        if not with_q:
            return EventStats(weight, reward)
        return EventStats(weight, reward, _arr(self.q_logged)[start:], _arr(col.q_target)[offset:])

    def indicator(self, metric: str, start: int) -> FloatArray:
        """Per event from index `start` on: 1 when >= 1 signal of `metric` was counted."""
        return _arr(self.signaled[metric])[start:]

    def unsupported_mass(self, name: str) -> float:
        return float(_arr(self.columns[name].unsupported).mean())

    def weight_bound(self, name: str, start: int) -> float:
        """The largest weight target `name` could get on the events from index `start` on."""
        col = self.columns[name]
        return float(_arr(col.max_weight)[start - (col.start or 0) :].max())

    def bounds(self, estimator: str, name: str, start: int) -> tuple[float, float]:
        """A priori bounds on the terms of `estimator` for target `name` from index `start` on.

        ValueError when a reward lies outside the loop's range (then it is no a priori range).
        """
        lo, hi = self.reward_range
        reward = _arr(self.reward)[start:]
        if reward.min() < lo or reward.max() > hi:
            raise ValueError(
                f"rewards must lie in the loop's range [{lo}, {hi}] for a priori bounds of the "
                f"{estimator} terms, got rewards in [{reward.min()}, {reward.max()}] (was the "
                "range changed after they were logged?): use the bootstrap or normal interval"
            )
        return term_bounds(
            estimator, reward_range=self.reward_range, weight_bound=self.weight_bound(name, start)
        )


def policy_result(
    p: PolicySpec,
    acc: Accumulator,
    live: str,
    spec: EvaluationSpec,
    note: dict[str, Any],
) -> dict[str, Any]:
    """The JSON result of target `p`: estimates, diagnostics, problems, difference with `live`."""
    out: dict[str, Any] = {**p.to_json(), "eval_from": None, **note}
    n = acc.count(p.name)
    start = acc.columns[p.name].start
    out.update({"n": n, "estimates": {}, "diagnostics": None, "problems": [], "vs_live": None})
    out["guardrails"] = {}
    out["error"] = None
    if n < 2 or start is None:
        out["error"] = f"{n} events of the window are later than its training data: 2 needed"
        return out
    stats = acc.stats(p.name, start, spec.needs_q)
    live_stats = acc.stats(live, start, spec.needs_q)
    diag = Diagnostics.from_weights(stats.weight, unsupported_mass=acc.unsupported_mass(p.name))
    out["diagnostics"] = diag.to_dict()
    problems = list(diag.problems())
    if note.get("time_split") == "unknown":
        problems.append(
            "the version's training range is unknown: it may be evaluated on its own training data"
        )
    out["problems"] = problems
    vs_live: dict[str, Any] = {}
    for name in spec.estimators:
        try:
            terms = terms_from_stats(name, stats)
            ess = estimator_ess(name, stats)
            bounded = spec.interval in BOUNDED_INTERVALS
            bounds = acc.bounds(name, p.name, start) if bounded else None
            est = estimate_many(
                {name: terms},
                interval=spec.interval,
                alpha=spec.alpha,
                rng=spec.seed,
                bounds=None if bounds is None else {name: bounds},
                ess={name: ess},
            )[name]
            out["estimates"][name] = est.to_dict()
            if p.name == live:
                continue
            paired = paired_difference(
                terms,
                terms_from_stats(name, live_stats),
                method=name,
                interval=spec.interval,
                alpha=spec.alpha,
                rng=spec.seed,
                bounds=bounds,
                incumbent_bounds=acc.bounds(name, live, start) if bounded else None,
                candidate_ess=ess,
                incumbent_ess=estimator_ess(name, live_stats),
            )
            vs_live[name] = {
                "difference": paired.difference.to_dict(),
                "live": paired.incumbent.to_dict(),
            }
        except ValueError as err:
            out["estimates"].setdefault(name, {"error": str(err)})
            vs_live[name] = {"error": str(err)}
    out["vs_live"] = None if p.name == live else vs_live
    out["guardrails"] = _guardrails(p.name, acc, live, spec, start, stats, live_stats)
    return out


def _guardrails(
    name: str,
    acc: Accumulator,
    live: str,
    spec: EvaluationSpec,
    start: int,
    stats: EventStats,
    live_stats: EventStats,
) -> dict[str, Any]:
    """Per guardrail metric: the target's rate ("candidate"), the live policy's on the same
    events ("live") and their paired difference; the live target's own entry has its on-policy
    rate as both and no difference. Each estimate is IPS of the >= 1-signal indicator with the
    spec's interval and alpha; a failure is reported as {"error": ...} for that metric."""
    bounded = spec.interval in BOUNDED_INTERVALS
    est = GUARDRAIL_ESTIMATOR

    def bounds_of(target: str) -> tuple[float, float] | None:
        if not bounded:
            return None
        weight = acc.weight_bound(target, start)
        return term_bounds(est, reward_range=_INDICATOR_RANGE, weight_bound=weight)

    out: dict[str, Any] = {}
    for metric in spec.guardrails:
        signaled = acc.indicator(metric, start)
        try:
            live_terms = terms_from_stats(est, EventStats(live_stats.weight, signaled))
            live_ess = estimator_ess(est, live_stats)
            live_bounds = bounds_of(live)
            if name == live:
                rate: Estimate = estimate_many(
                    {est: live_terms},
                    interval=spec.interval,
                    alpha=spec.alpha,
                    rng=spec.seed,
                    bounds=None if live_bounds is None else {est: live_bounds},
                    ess={est: live_ess},
                )[est]
                own = rate.to_dict()
                out[metric] = {"candidate": own, "live": own, "difference": None}
                continue
            paired = paired_difference(
                terms_from_stats(est, EventStats(stats.weight, signaled)),
                live_terms,
                method=est,
                interval=spec.interval,
                alpha=spec.alpha,
                rng=spec.seed,
                bounds=bounds_of(name),
                incumbent_bounds=live_bounds,
                candidate_ess=estimator_ess(est, stats),
                incumbent_ess=live_ess,
            )
            out[metric] = {
                "candidate": paired.candidate.to_dict(),
                "live": paired.incumbent.to_dict(),
                "difference": paired.difference.to_dict(),
            }
        except ValueError as err:
            out[metric] = {"error": str(err)}
    return out
