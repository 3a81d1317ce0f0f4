"""Per-event pieces of an offline evaluation: the logged event, the target policies' pmfs and the
cross-fitted reward model.

A logged event (:class:`EvalEvent`) is a joined single decision: the candidates are the logged
actions that were not excluded, in request order; the logged action is the chosen one, its
propensity ``pmf[chosen]`` and its reward the slot-0 outcome. A slate is skipped, or with
``slates="slot0"`` evaluated as the choice of its first slot (the first slot is sampled from the
logged ``pmf``; its reward is taken to depend on that slot's action only). Its guardrail signals
are slot 0's, like its reward.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from explore import Action, Explorer, make_explorer
from learn.examples import BadEvent, LineBuilder, TrainingEvent
from log.loops import LoopConfig
from policies.vw import VWPolicy
from policies.vw_text import shared_line

__all__ = [
    "REWARD_MODEL_ARGS",
    "EvalEvent",
    "RewardModel",
    "Target",
    "eval_event",
    "explorer_for",
]

FloatArray = NDArray[np.float64]
REWARD_MODEL_ARGS = "-q ca --cb_type mtr -l 0.05"
"""VW arguments of the reward model: a regression of the reward on context x action features.
mtr (importance-weighted): VW's `dm` type shrinks cb_adf predictions far below the rewards; the
small learning rate halved the squared error of the default on simulated logs of a few thousand
events (one pass, no tuning per loop)."""
_PMF_TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True)
class EvalEvent:
    """One logged bandit event, restricted to its candidates."""

    event_id: str
    decided_at: datetime
    context: Mapping[str, Any]
    candidates: tuple[Mapping[str, Any], ...]
    logged_pmf: FloatArray
    action: int
    pscore: float
    reward: float
    # Slot 0's guardrail signals counted inside the window: {metric: count} (none: empty).
    guardrails: Mapping[str, int] = field(default_factory=dict)

    def actions(self) -> list[Action]:
        """The candidates as :class:`explore.Action` (features as logged)."""
        try:
            return [Action(str(a["id"]), a.get("features") or {}) for a in self.candidates]
        except (KeyError, TypeError, ValueError) as err:
            raise BadEvent(f"event {self.event_id!r}: bad action: {err}") from None


def eval_event(event: TrainingEvent, slates: str = "skip") -> EvalEvent | None:
    """The event as a bandit event; None for a slate when `slates` is "skip". Raises BadEvent."""
    record = event.record
    if record.is_slate and slates != "slot0":
        return None
    eid = record.event_id
    try:
        ids = [str(a["id"]) for a in record.actions]
    except (KeyError, TypeError) as err:
        raise BadEvent(f"event {eid!r}: bad action: {err}") from None
    if len(record.pmf) != len(ids):
        raise BadEvent(f"event {eid!r}: pmf and actions differ in length")
    excluded = set(record.excluded)
    allowed = [i for i, action_id in enumerate(ids) if action_id not in excluded]
    try:
        chosen = ids.index(record.chosen)
        action = allowed.index(chosen)
    except ValueError:
        raise BadEvent(
            f"event {eid!r}: chosen action {record.chosen!r} is not a candidate"
        ) from None
    pmf = np.asarray([record.pmf[i] for i in allowed], dtype=np.float64)
    if not np.all(np.isfinite(pmf)) or pmf.min() < 0.0 or abs(pmf.sum() - 1.0) > _PMF_TOLERANCE:
        raise BadEvent(f"event {eid!r}: the logged pmf is not a distribution over the candidates")
    pscore = float(pmf[action])
    if not 0.0 < pscore <= 1.0:
        raise BadEvent(f"event {eid!r}: logged probability must be in (0, 1], got {pscore!r}")
    try:
        reward = float(event.rewards[0])
    except KeyError:
        raise BadEvent(f"event {eid!r} has no joined reward for slot 0") from None
    if not math.isfinite(reward):
        raise BadEvent(f"event {eid!r}: reward must be finite, got {reward!r}")
    return EvalEvent(
        event_id=eid,
        decided_at=record.decided_at,
        context=record.context,
        candidates=tuple(record.actions[i] for i in allowed),
        logged_pmf=pmf / pmf.sum(),
        action=action,
        pscore=pscore,
        reward=reward,
        guardrails=event.guardrails.get(0, {}),
    )


def explorer_for(
    config: LoopConfig, explore: bool = True, policy: VWPolicy | None = None
) -> Explorer:
    """The loop's exploration as served (`explore`) for `policy` (its learned-example count,
    whether it predicts a distribution itself), or greedy (ties split evenly)."""
    if not explore:
        if policy is not None and policy.outputs_pmf:
            return config.explorer(vw_pmf=True)  # its own pmf, without the floor
        return make_explorer("greedy")
    if policy is None:
        return config.explorer()
    return config.explorer(examples_seen=policy.examples_seen, vw_pmf=policy.outputs_pmf)


class Target:
    """A target policy's pmf over an event's candidates, and which events it may be evaluated
    on: those decided after `cutoff` (at or after it with `inclusive`), all when None."""

    def __init__(
        self,
        kind: str,
        *,
        policy: VWPolicy | None = None,
        explorer: Explorer | None = None,
        cutoff: datetime | None = None,
        inclusive: bool = False,
    ) -> None:
        if kind in ("model", "vw_args") and (policy is None or explorer is None):
            raise ValueError(f"a {kind} target needs a policy and an explorer")
        self.kind = kind
        self.policy = policy
        self.explorer = explorer
        self.cutoff = cutoff
        self.inclusive = inclusive

    def covers(self, decided_at: datetime) -> bool:
        if self.cutoff is None:
            return True
        return decided_at >= self.cutoff if self.inclusive else decided_at > self.cutoff

    def pmf(self, event: EvalEvent, actions: Sequence[Action]) -> FloatArray:
        k = len(event.candidates)
        if self.kind == "live":
            return event.logged_pmf
        if self.kind == "uniform":
            return np.full(k, 1.0 / k)
        if self.kind == "first_action":
            out = np.zeros(k)
            out[0] = 1.0
            return out
        assert self.policy is not None and self.explorer is not None
        scores = self.policy.scores(event.context, actions)
        return np.asarray(self.explorer.pmf(scores), dtype=np.float64)

    def close(self) -> None:
        if self.policy is not None:
            self.policy.close()
            self.policy = None


class RewardModel:
    """Cross-fitted reward model for DM/DR: `n_folds` VW regressions, model k learns the events
    outside fold k (folds by a hash of the event id), so an event's own reward never enters its
    prediction. Predictions are clipped to the loop's reward range."""

    def __init__(
        self,
        *,
        bounds: tuple[float, float],
        n_folds: int = 2,
        vw_args: str = REWARD_MODEL_ARGS,
        seed: int = 0,
    ) -> None:
        if n_folds < 2:
            raise ValueError(f"n_folds must be >= 2, got {n_folds}")
        self.bounds = bounds
        self.n_folds = n_folds
        self.vw_args = vw_args
        self.seed = seed
        self.models = [VWPolicy(vw_args) for _ in range(n_folds)]
        self.builder = LineBuilder()
        self.n_learned = 0

    def fold(self, event_id: str) -> int:
        return zlib.crc32(f"{self.seed}:{event_id}".encode()) % self.n_folds

    def learn(self, event: EvalEvent) -> None:
        lines = [shared_line(event.context)]
        try:
            lines.extend(self.builder.action(a) for a in event.candidates)
        except (KeyError, TypeError, ValueError) as err:
            raise BadEvent(f"event {event.event_id!r}: bad action: {err}") from None
        at = event.action + 1
        lines[at] = f"0:{-event.reward:.9g}:{event.pscore:.9g} {lines[at]}"
        fold = self.fold(event.event_id)
        for k, model in enumerate(self.models):
            if k != fold:
                model.learn_lines(lines)
        self.n_learned += 1

    def predict(self, event: EvalEvent, actions: Sequence[Action]) -> FloatArray:
        q = self.models[self.fold(event.event_id)].scores(event.context, actions)
        return np.clip(q, self.bounds[0], self.bounds[1])

    def close(self) -> None:
        for model in self.models:
            model.close()
        self.models = []

    def to_json(self) -> dict[str, Any]:
        return {
            "vw_args": self.vw_args,
            "n_folds": self.n_folds,
            "clip": list(self.bounds),
            "n_learned": self.n_learned,
        }
