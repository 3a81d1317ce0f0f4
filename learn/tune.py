"""Optimization discovery: a grid of VW argument sets x exploration settings, evaluated off-policy
on a loop's own logs by the offline-evaluation runner (each combination trained on the earlier
part of the window and evaluated on the later part; see :mod:`learn.offline_eval_spec`).

`tune_spec` builds the evaluation (the live policy is always a target: every combination is
compared with it, with intervals, in the HTML report); `ranking` orders the combinations by the
lower end of their chosen estimator's interval (the pessimistic choice: a combination with
few supporting events ranks low), and `best` is the first one whose difference with live has a
lower bound above 0, if any. Submitting a winner as a candidate (``decision-service tune
--submit``) adds its VW arguments to the loop's `learner.candidates`: the candidate track trains
it and the gate decides, as for any candidate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from learn.offline_eval_spec import (
    DEFAULT_ESTIMATORS,
    MAX_POLICIES,
    EvaluationSpec,
    PolicySpec,
    SpecError,
)

__all__ = ["MAX_COMBINATIONS", "TunedPolicy", "best", "ranking", "tune_spec"]

MAX_COMBINATIONS = MAX_POLICIES - 1  # the live policy is the other target
DEFAULT_VW_ARGS = ("-q ca --cb_type mtr", "-q ca --cb_type mtr -l 0.1", "-q ca --cb_type dr")


@dataclass(frozen=True)
class TunedPolicy:
    """One combination's result: its name, VW arguments, exploration overrides, estimate with
    interval and difference with live (lower, upper) under `estimator`."""

    name: str
    args: str
    exploration: Mapping[str, Any] | None
    estimator: str
    value: float
    ci_low: float
    ci_high: float
    diff_low: float | None
    diff_high: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "args": self.args,
            "exploration": None if self.exploration is None else dict(self.exploration),
            "estimator": self.estimator,
            "value": self.value,
            "ci": [self.ci_low, self.ci_high],
            "vs_live": None if self.diff_low is None else [self.diff_low, self.diff_high],
        }


def tune_spec(
    vw_args: Sequence[str],
    explorations: Sequence[Mapping[str, Any] | None],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    train_until: datetime | None = None,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    alpha: float = 0.05,
    interval: str = "bootstrap",
    seed: int = 0,
) -> EvaluationSpec:
    """The evaluation of every (VW arguments, exploration) combination (at most
    `MAX_COMBINATIONS`); an exploration of None keeps the loop's. SpecError when it cannot run."""
    args = list(dict.fromkeys(vw_args or DEFAULT_VW_ARGS))
    explores = list(explorations) or [None]
    n = len(args) * len(explores)
    if n > MAX_COMBINATIONS:
        raise SpecError(
            "invalid_request",
            f"the grid has {len(args)} VW argument sets x {len(explores)} explorations = {n} "
            f"combinations; at most {MAX_COMBINATIONS} are evaluated in one run",
        )
    policies = [
        PolicySpec(
            "vw_args",
            name=f"tune{i * len(explores) + j}",
            args=a,
            train_until=train_until,
            exploration=e,
        )
        for i, a in enumerate(args)
        for j, e in enumerate(explores)
    ]
    return EvaluationSpec(
        policies=(PolicySpec("live"), *policies),
        since=since,
        until=until,
        estimators=tuple(estimators),
        alpha=alpha,
        interval=interval,
        seed=seed,
    )


def ranking(result: Mapping[str, Any], estimator: str | None = None) -> list[TunedPolicy]:
    """The grid's combinations in `result` (an evaluation's JSON), best first by the lower end
    of `estimator`'s interval (default: the run's last estimator, dr by default); combinations
    without an estimate are left out."""
    name = estimator or result["estimators"][-1]
    out = []
    for p in result["policies"]:
        if p.get("kind") != "vw_args" or p.get("error"):
            continue
        est = p.get("estimates", {}).get(name)
        if not est or "error" in est:
            continue
        diff = (p.get("vs_live") or {}).get(name) or {}
        d = diff.get("difference") if "error" not in diff else None
        out.append(
            TunedPolicy(
                name=p["name"],
                args=p["args"],
                exploration=p.get("exploration"),
                estimator=name,
                value=float(est["value"]),
                ci_low=float(est["ci_low"]),
                ci_high=float(est["ci_high"]),
                diff_low=None if not d else float(d["ci_low"]),
                diff_high=None if not d else float(d["ci_high"]),
            )
        )
    return sorted(out, key=lambda t: (-t.ci_low, -t.value, t.name))


def best(result: Mapping[str, Any], estimator: str | None = None) -> TunedPolicy | None:
    """The best-ranked combination that is significantly better than live (the lower bound of
    its difference above 0), or None."""
    for tuned in ranking(result, estimator):
        if tuned.diff_low is not None and tuned.diff_low > 0:
            return tuned
    return None
