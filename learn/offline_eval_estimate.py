"""Accumulating per-event terms of an offline evaluation, and the estimates made from them.

:class:`Accumulator` keeps, per event, what the estimators need: shared by every target the
reward, the logging propensity and the reward model's prediction at the logged action; per
target its probability of the logged action, its expected predicted reward (the DM term) and
its probability on actions the logging policy never takes. A target covers a suffix of the
events (they come in decided_at order and its time split is a cutoff time), so per target only
its first index is kept. :func:`policy_result` turns them into estimates with intervals,
diagnostics and the paired difference against the live policy on the same events.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from evaluation import Diagnostics, EventStats, estimate_many, paired_difference
from evaluation.estimators import estimator_ess, terms_from_stats
from learn.offline_eval_spec import EvaluationSpec, PolicySpec
from learn.offline_eval_targets import EvalEvent

__all__ = ["Accumulator", "policy_result"]

FloatArray = NDArray[np.float64]


def _arr(a: array[float]) -> FloatArray:
    return np.frombuffer(a, dtype=np.float64) if len(a) else np.zeros(0)


class _Column:
    def __init__(self) -> None:
        self.start: int | None = None
        self.pi_logged = array("d")
        self.q_target = array("d")
        self.unsupported = array("d")


class Accumulator:
    """Per-event terms of every target, appended event by event (a few floats per event)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.reward = array("d")
        self.pscore = array("d")
        self.q_logged = array("d")
        self.columns = {name: _Column() for name in names}

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
        unsupported = event.logged_pmf == 0.0
        for name, pi in pmfs:
            col = self.columns[name]
            if col.start is None:
                col.start = n
            col.pi_logged.append(float(pi[a]))
            col.q_target.append(float(pi @ q_hat) if q_hat is not None else 0.0)
            col.unsupported.append(float(pi[unsupported].sum()))
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

    def unsupported_mass(self, name: str) -> float:
        return float(_arr(self.columns[name].unsupported).mean())


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
            est = estimate_many(
                {name: terms},
                interval=spec.interval,
                alpha=spec.alpha,
                rng=spec.seed,
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
    return out
