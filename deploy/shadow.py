"""The shadow report: how a shadow version would have done on the traffic it watched.

While a version is a loop's shadow, every decision logs its pmf beside the served one
(``decisions.shadow = {"version", "pmf"}``, see `decision_service.decide`). On the latest
`max_events` of those decisions the report gives:

* **agreement**: the share of decisions where the shadow's top choice (the action of largest
  shadow probability; the first in request order on ties) is the served arm's top choice
  (likewise, from the logged pmf; for a slate, of the first slot);
* the shadow's **off-policy value** on the joined ones: the logged pmf is the propensity (it is
  exactly the probability the served action had, whichever arm served it), the shadow's pmf the
  target, the slot-0 joined reward the outcome: IPS, and DR with a reward model (a VW
  regression on context x action features, ``-q ca --cb_type mtr -l 0.05``, fitted
  progressively: each event's prediction comes from the events before it, so its own reward
  never enters it and DR stays unbiased; predictions clipped to the loop's reward range);
* the served policy's **on-policy value** on the same events (their mean reward) and the
  paired difference shadow - served for each estimator, with intervals (normal by default:
  the CLT interval of the mean of the per-event terms, at level 1 - alpha);
* importance-weight diagnostics of the shadow against the logged pmf (ESS, max weight...).

Slates are counted in the agreement; their value is left out (``slates="skip"``) or evaluated
as the choice of their first slot (``slates="slot0"``: the shadow's logged pmf is its first-slot
pmf, and the slot-0 reward is taken to depend on that slot's action only).

Reads go through `log.shadow_reads`; nothing is written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from evaluation import Diagnostics, Estimate, EventStats, estimate_many, paired_difference
from evaluation.estimators import estimator_ess, terms_from_stats
from explore import Action
from explore.errors import InvalidInput, NotFound
from log.loops import get_loop
from log.registry_store import get_model
from log.schema import Engine
from log.serving_reads import loop_serving_versions
from log.shadow_reads import ShadowedDecision, iter_shadowed, shadow_counts
from policies import VWPolicy

__all__ = [
    "DEFAULT_MAX_EVENTS",
    "MAX_EVENTS",
    "REWARD_MODEL_ARGS",
    "ShadowReport",
    "shadow_report",
]

DEFAULT_MAX_EVENTS = 50_000
MAX_EVENTS = 200_000
REWARD_MODEL_ARGS = "-q ca --cb_type mtr -l 0.05"
ESTIMATORS = ("ips", "dr")
SLATES = ("skip", "slot0")
REPORT_INTERVALS = ("normal", "bootstrap")
CLOCK_MARGIN = timedelta(hours=1)


def _estimate_json(e: Estimate | None) -> dict[str, Any] | None:
    return None if e is None else dict(e.to_dict())


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


@dataclass(frozen=True)
class ShadowReport:
    """A shadow version's report on a loop (see the module docstring).

    `n_shadowed`/`n_joined`: every decision logged with its pmf / of which joined, over its
    whole time as a shadow; `window`: the latest decisions read (at most `max_events`), over
    which `agreement` is computed and `served_by_arm` counts the serving arms; `n_evaluated`:
    the joined ones of the window the values are computed on; `n_slates_skipped`: joined slates
    left out of the values. `served`: the served decisions' mean reward; `shadow` and
    `difference` (shadow - served, paired): per estimator; None below 2 evaluated events.
    `problems`: reasons not to trust the estimates (empty when none)."""

    loop: str
    version: str
    status: str
    n_shadowed: int
    n_joined: int
    first_at: datetime | None
    last_at: datetime | None
    window: int
    agreement: float | None
    served_by_arm: Mapping[str, int]
    n_evaluated: int
    n_slates_skipped: int
    served: Estimate | None
    shadow: Mapping[str, Estimate]
    difference: Mapping[str, Estimate]
    diagnostics: Diagnostics | None
    interval: str
    alpha: float
    max_events: int
    problems: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "loop": self.loop,
            "version": self.version,
            "status": self.status,
            "n_shadowed": self.n_shadowed,
            "n_joined": self.n_joined,
            "first_at": _iso(self.first_at),
            "last_at": _iso(self.last_at),
            "window": self.window,
            "max_events": self.max_events,
            "agreement": self.agreement,
            "served_by_arm": dict(self.served_by_arm),
            "n_evaluated": self.n_evaluated,
            "n_slates_skipped": self.n_slates_skipped,
            "served": _estimate_json(self.served),
            "shadow": {k: _estimate_json(v) for k, v in self.shadow.items()},
            "difference": {k: _estimate_json(v) for k, v in self.difference.items()},
            "diagnostics": None if self.diagnostics is None else self.diagnostics.to_dict(),
            "interval": self.interval,
            "alpha": self.alpha,
            "problems": list(self.problems),
        }


def top_choice(pmf: np.ndarray) -> int:
    """The index of the largest probability (the first one on ties)."""
    return int(np.argmax(pmf))


class _Terms:
    """Per-event numbers of the value estimates, appended event by event."""

    def __init__(self) -> None:
        self.weight: list[float] = []
        self.reward: list[float] = []
        self.q_logged: list[float] = []
        self.q_target: list[float] = []

    def stats(self) -> EventStats:
        return EventStats(
            np.asarray(self.weight),
            np.asarray(self.reward),
            np.asarray(self.q_logged),
            np.asarray(self.q_target),
        )


class _RewardModel:
    """Progressive reward model: predicts an event from the events learned before it."""

    def __init__(self, bounds: tuple[float, float]) -> None:
        self.bounds = bounds
        self.model = VWPolicy(REWARD_MODEL_ARGS)
        self.n_learned = 0

    def predict(self, context: Mapping[str, Any], actions: list[Action]) -> np.ndarray:
        if self.n_learned == 0:
            return np.zeros(len(actions))
        try:
            q = self.model.scores(context, actions)
        except InvalidInput:  # beyond the feature budget: no prediction (DR stays unbiased)
            return np.zeros(len(actions))
        return np.clip(np.nan_to_num(q), self.bounds[0], self.bounds[1])

    def learn(
        self,
        context: Mapping[str, Any],
        actions: list[Action],
        chosen: int,
        reward: float,
        probability: float,
    ) -> None:
        try:
            self.model.learn(
                context, actions, chosen=chosen, reward=reward, probability=probability
            )
        except InvalidInput:
            return
        self.n_learned += 1

    def close(self) -> None:
        self.model.close()


def _check(max_events: int, slates: str, interval: str, alpha: float) -> None:
    if isinstance(max_events, bool) or not isinstance(max_events, int):
        raise InvalidInput(f"max_events must be an integer in [1, {MAX_EVENTS}]")
    if not 1 <= max_events <= MAX_EVENTS:
        raise InvalidInput(f"max_events must be an integer in [1, {MAX_EVENTS}]")
    if slates not in SLATES:
        raise InvalidInput(f"slates must be one of {list(SLATES)}, got {slates!r}")
    if interval not in REPORT_INTERVALS:
        raise InvalidInput(f"interval must be one of {list(REPORT_INTERVALS)}, got {interval!r}")
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and 0.0 < alpha < 0.5):
        raise InvalidInput(f"alpha must be a number in (0, 0.5), got {alpha!r}")


def _allowed(d: ShadowedDecision) -> list[int]:
    excluded = set(d.record.excluded)
    return [i for i, a in enumerate(d.record.actions) if a["id"] not in excluded]


def _evaluate(
    d: ShadowedDecision,
    allowed: list[int],
    served: np.ndarray,
    shadow: np.ndarray,
    model: _RewardModel,
    terms: _Terms,
) -> None:
    """Add one joined event's terms (slot 0), then let the reward model learn it."""
    record = d.record
    ids = [str(record.actions[i]["id"]) for i in allowed]
    a = ids.index(record.chosen)
    logged = served[allowed]
    logged = logged / logged.sum()
    target = shadow[allowed]
    target = target / target.sum()
    pscore = float(logged[a])
    reward = float(d.rewards[0])
    actions = [
        Action(ids[j], record.actions[i].get("features") or {}) for j, i in enumerate(allowed)
    ]
    q = model.predict(record.context, actions)
    terms.weight.append(float(target[a]) / pscore)
    terms.reward.append(reward)
    terms.q_logged.append(float(q[a]))
    terms.q_target.append(float(target @ q))
    model.learn(record.context, actions, a, reward, pscore)


def _values(
    terms: _Terms, interval: str, alpha: float
) -> tuple[Estimate, dict[str, Estimate], dict[str, Estimate], Diagnostics]:
    stats = terms.stats()
    reward = stats.reward
    served = estimate_many({"on_policy": reward}, interval=interval, alpha=alpha, rng=0)[
        "on_policy"
    ]
    shadow: dict[str, Estimate] = {}
    difference: dict[str, Estimate] = {}
    for name in ESTIMATORS:
        paired = paired_difference(
            terms_from_stats(name, stats),
            reward,
            method=name,
            interval=interval,
            alpha=alpha,
            rng=0,
            candidate_ess=estimator_ess(name, stats),
        )
        shadow[name] = paired.candidate
        difference[name] = paired.difference
    return served, shadow, difference, Diagnostics.from_weights(stats.weight)


def shadow_report(
    engine: Engine,
    loop: str,
    version: str | None = None,
    *,
    max_events: int = DEFAULT_MAX_EVENTS,
    slates: str = "skip",
    interval: str = "normal",
    alpha: float = 0.05,
) -> ShadowReport:
    """The report of `version` (default: the loop's current shadow) as the shadow of `loop`,
    on the latest `max_events` decisions it shadowed.

    Raises NotFound (`loop_not_found`; `shadow_not_found` when no version is given and the loop
    has no shadow; `model_not_found` for a version that is not one of the loop's), InvalidInput
    for arguments out of their bounds."""
    _check(max_events, slates, interval, alpha)
    stored = get_loop(engine, loop)
    if stored is None:
        raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
    if version is None:
        current = loop_serving_versions(engine, loop).shadow
        if current is None:
            raise NotFound(
                f"loop {loop!r} has no shadow version; name a past one with `version`",
                "shadow_not_found",
            )
        record = current
    else:
        found = get_model(engine, version)
        if found is None or found.loop != loop:
            raise NotFound(
                f"model version {version!r} does not exist in loop {loop!r}", "model_not_found"
            )
        record = found
    # No decision can carry a version's pmf before it was registered; the margin covers the
    # clocks of the registering and the serving hosts.
    since = record.created_at - CLOCK_MARGIN
    counts = shadow_counts(engine, loop, record.version, since=since)
    config = stored.config
    model = _RewardModel((config.min_reward, config.max_reward))
    terms = _Terms()
    window = agree = skipped = 0
    by_arm: dict[str, int] = {}
    try:
        for d in iter_shadowed(engine, loop, record.version, limit=max_events, since=since):
            shadow_json = d.record.shadow
            assert shadow_json is not None
            shadow = np.asarray(shadow_json["pmf"], dtype=np.float64)
            served = np.asarray(d.record.pmf, dtype=np.float64)
            window += 1
            by_arm[d.record.policy_arm] = by_arm.get(d.record.policy_arm, 0) + 1
            agree += top_choice(shadow) == top_choice(served)
            if not d.joined or 0 not in d.rewards:
                continue
            if d.record.is_slate and slates == "skip":
                skipped += 1
                continue
            _evaluate(d, _allowed(d), served, shadow, model, terms)
    finally:
        model.close()
    problems: list[str] = []
    n = len(terms.reward)
    served_value: Estimate | None = None
    shadow_values: dict[str, Estimate] = {}
    difference: dict[str, Estimate] = {}
    diag: Diagnostics | None = None
    if n >= 2:
        served_value, shadow_values, difference, diag = _values(terms, interval, alpha)
        problems.extend(diag.problems())
    else:
        problems.append(f"{n} joined shadowed events: at least 2 are needed for the values")
    return ShadowReport(
        loop=loop,
        version=record.version,
        status=record.status,
        n_shadowed=counts.n,
        n_joined=counts.joined,
        first_at=counts.first_at,
        last_at=counts.last_at,
        window=window,
        agreement=agree / window if window else None,
        served_by_arm=by_arm,
        n_evaluated=n,
        n_slates_skipped=skipped,
        served=served_value,
        shadow=shadow_values,
        difference=difference,
        diagnostics=diag,
        interval=interval,
        alpha=alpha,
        max_events=max_events,
        problems=tuple(problems),
    )
