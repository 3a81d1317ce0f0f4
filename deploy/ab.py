"""Online A/B analysis of a canary against live, from the served decisions themselves.

During a canary split each decision is served by one arm ("canary" or "live") drawn by a stable
keyed hash, and logs the probability of that arm (``arm_probability``: p for the canary, 1 - p
for live). Per event ``t`` the Horvitz-Thompson term of the difference

    z_t = y_t / p_t          if the canary served it,
    z_t = -y_t / (1 - p_t)   if live served it,

has mean (canary mean - live mean) whatever the split was at that event, and lies a priori in
bounds given by the reward range and the smallest arm probability (known before any outcome).
Its anytime-valid confidence sequence (:func:`evaluation.intervals.confidence_sequence`, the
betting sequence of Waudby-Smith & Ramdas) at ``confidence`` is valid at every look, so the
learner may analyse the canary as often as it likes: the chance that an equal canary is ever
flagged stays below ``1 - confidence``. Guardrails are analysed the same way on the indicator
"at least one such negative signal on this event" (rates).

Decision (pure, :func:`decide_canary`), in this order:

- ``guardrail``: some guardrail's rate difference has its LOWER bound above the allowed increase
  (the loop's ``gate.guardrails``): the canary conclusively trips it;
- ``worse``: the reward difference's UPPER bound is below 0 (significantly worse);
- ``better``: its LOWER bound is above 0, the canary served at least ``canary_min_events``
  joined events and no guardrail may have increased by more than allowed;
- ``undecided`` otherwise.

With ``rollout.auto_rollback`` the learner rejects a canary found ``worse`` or ``guardrail``
(:func:`deploy.rollout.transition` to ``rejected``; live is untouched).

Assumptions: the arm of an event is independent of its outcome given the past (the keyed hash of
a user id is random across users). Events of one user share an arm, so with heavily recurring
users the events are not independent and the sequence's guarantee is approximate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from deploy.interval import Interval
from evaluation.intervals import cs_interval
from explore.errors import Conflict, NotFound
from log.canary_reads import read_split_events
from log.deploy_settings import RolloutSettings
from log.loops import get_loop
from log.registry_store import list_models
from log.schema import Engine

__all__ = [
    "DECISIONS",
    "ArmStream",
    "CanaryAnalysis",
    "GuardrailComparison",
    "StreamAnalysis",
    "analyse_canary",
    "analyse_stream",
    "decide_canary",
    "ht_bounds",
    "ht_terms",
]

DECISIONS = ("worse", "guardrail", "better", "undecided")
FloatArray = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class ArmStream:
    """Per event, in logged (join) order: whether the canary served it, the probability of the
    arm that served it, its reward and, per guardrail metric, 1 if it got such a signal."""

    canary: NDArray[np.bool_]
    arm_probability: FloatArray
    reward: FloatArray
    guardrails: Mapping[str, FloatArray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.reward.shape[0]
        arrays = [self.canary, self.arm_probability, *self.guardrails.values()]
        if any(a.shape != (n,) for a in arrays):
            raise ValueError("every array of an ArmStream must have the reward's shape (n,)")
        p = self.arm_probability
        if n and (not np.all(np.isfinite(p)) or p.min() <= 0.0 or p.max() >= 1.0):
            raise ValueError("arm probabilities of a split must lie in (0, 1)")
        if n and not np.all(np.isfinite(self.reward)):
            raise ValueError("rewards must be finite")


def _p_canary(stream: ArmStream) -> FloatArray:
    """The probability the canary serves each event (whichever arm did)."""
    p = stream.arm_probability
    return np.where(stream.canary, p, 1.0 - p)


def ht_terms(stream: ArmStream, outcome: FloatArray) -> FloatArray:
    """Horvitz-Thompson terms of (canary mean - live mean) of `outcome`."""
    pc = _p_canary(stream)
    return np.where(stream.canary, outcome / pc, -outcome / (1.0 - pc))


def ht_bounds(stream: ArmStream, outcome_range: tuple[float, float]) -> tuple[float, float]:
    """A priori bounds on :func:`ht_terms` for outcomes in `outcome_range`: from the arm
    probabilities only (known before the outcomes)."""
    lo, hi = outcome_range
    pc = _p_canary(stream)
    low = min(float(np.min(lo / pc)), float(np.min(-hi / (1.0 - pc))))
    high = max(float(np.max(hi / pc)), float(np.max(-lo / (1.0 - pc))))
    return low, high


def _interval(
    stream: ArmStream, outcome: FloatArray, rng: tuple[float, float], alpha: float
) -> Interval:
    terms = ht_terms(stream, outcome)
    low, high = cs_interval(terms, alpha=alpha, bounds=ht_bounds(stream, rng))
    return Interval(float(terms.mean()), float(low), float(high))


def _mean(x: FloatArray) -> float | None:
    return float(x.mean()) if x.size else None


@dataclass(frozen=True)
class GuardrailComparison:
    """A guardrail's rate per arm (plain means) and the difference's sequence interval."""

    canary_rate: float | None
    live_rate: float | None
    difference: Interval | None
    allowed: float

    def to_json(self) -> dict[str, Any]:
        return {
            "canary_rate": self.canary_rate,
            "live_rate": self.live_rate,
            "difference": None if self.difference is None else self.difference.to_json(),
            "allowed": self.allowed,
        }


@dataclass(frozen=True)
class StreamAnalysis:
    """What :func:`analyse_stream` finds: counts, plain arm means, the difference (HT estimate and
    its sequence interval), per guardrail its comparison, the decision and its reason."""

    n_canary: int
    n_live: int
    canary_mean: float | None
    live_mean: float | None
    difference: Interval | None
    guardrails: Mapping[str, GuardrailComparison]
    decision: str
    reason: str


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def decide_canary(
    difference: Interval | None,
    guardrails: Mapping[str, GuardrailComparison],
    *,
    n_canary: int,
    n_live: int,
    confidence: float,
    min_events: int = 0,
) -> tuple[str, str]:
    """The canary's (decision, reason) from the difference's sequence interval and the
    guardrails' comparisons (see the module docstring for the rules). Pure."""
    conf = f"{confidence:.3g}"
    if difference is None:
        return "undecided", f"{n_canary + n_live} joined events in the split: too few"
    for metric, c in guardrails.items():
        if c.difference is not None and c.difference.ci_low > c.allowed:
            return "guardrail", (
                f"guardrail {metric!r}: the canary's rate is higher by at least "
                f"{_fmt(c.difference.ci_low)} (at confidence {conf}), more than the "
                f"{_fmt(c.allowed)} allowed"
            )
    if difference.ci_high < 0.0:
        return "worse", (
            f"the canary is worse than live: difference at most {_fmt(difference.ci_high)} "
            f"(estimate {_fmt(difference.value)}, confidence {conf}, {n_canary} canary and "
            f"{n_live} live events)"
        )
    missing = []
    if difference.ci_low <= 0.0:
        missing.append(
            f"the difference's interval [{_fmt(difference.ci_low)}, {_fmt(difference.ci_high)}] "
            "contains 0"
        )
    if n_canary < min_events:
        missing.append(f"{n_canary} canary events of the {min_events} needed")
    for metric, c in guardrails.items():
        if c.difference is None:
            missing.append(f"guardrail {metric!r} is not reported")
        elif c.difference.ci_high > c.allowed:
            missing.append(
                f"guardrail {metric!r} may be higher by up to {_fmt(c.difference.ci_high)} "
                f"(allowed {_fmt(c.allowed)})"
            )
    if missing:
        return "undecided", "; ".join(missing)
    return "better", (
        f"the canary is better than live: difference {_fmt(difference.value)} in "
        f"[{_fmt(difference.ci_low)}, {_fmt(difference.ci_high)}] at confidence {conf} on "
        f"{n_canary} canary and {n_live} live events"
    )


def analyse_stream(
    stream: ArmStream,
    *,
    reward_range: tuple[float, float],
    confidence: float,
    guardrails: Mapping[str, float] | None = None,
    min_events: int = 0,
) -> StreamAnalysis:
    """The canary's numbers and decision from its split's events: the sequence intervals at the
    last event, then :func:`decide_canary`. Pure."""
    alpha = 1.0 - confidence
    canary = stream.canary
    n_canary = int(canary.sum())
    n_live = int(canary.size - n_canary)
    enough = canary.size >= 2
    diff = _interval(stream, stream.reward, reward_range, alpha) if enough else None
    comparisons: dict[str, GuardrailComparison] = {}
    for metric, allowed in (guardrails or {}).items():
        g = stream.guardrails.get(metric)
        if g is None:
            comparisons[metric] = GuardrailComparison(None, None, None, allowed)
            continue
        comparisons[metric] = GuardrailComparison(
            _mean(g[canary]),
            _mean(g[~canary]),
            _interval(stream, g, (0.0, 1.0), alpha) if enough else None,
            allowed,
        )
    decision, reason = decide_canary(
        diff,
        comparisons,
        n_canary=n_canary,
        n_live=n_live,
        confidence=confidence,
        min_events=min_events,
    )
    return StreamAnalysis(
        n_canary,
        n_live,
        _mean(stream.reward[canary]),
        _mean(stream.reward[~canary]),
        diff,
        comparisons,
        decision,
        reason,
    )


@dataclass(frozen=True)
class CanaryAnalysis:
    """The online comparison of the loop's canary with live. `live`: the live version now (the
    live arm serves whatever is live, freshness continuations included); `since`: when the
    canary started; `truncated`: the split had more joined events than are read at once."""

    loop: str
    canary: str
    live: str | None
    since: datetime
    canary_percent: float | None
    confidence: float
    n_canary: int
    n_live: int
    canary_mean: float | None
    live_mean: float | None
    difference: Interval | None
    guardrails: Mapping[str, GuardrailComparison]
    decision: str
    reason: str
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "loop": self.loop,
            "canary": self.canary,
            "live": self.live,
            "since": self.since.isoformat(),
            "canary_percent": self.canary_percent,
            "confidence": self.confidence,
            "n_canary": self.n_canary,
            "n_live": self.n_live,
            "canary_mean": self.canary_mean,
            "live_mean": self.live_mean,
            "difference": None if self.difference is None else self.difference.to_json(),
            "guardrails": {k: v.to_json() for k, v in self.guardrails.items()},
            "decision": self.decision,
            "reason": self.reason,
            "truncated": self.truncated,
        }


def analyse_canary(
    engine: Engine, loop: str, *, settings: RolloutSettings | None = None
) -> CanaryAnalysis:
    """Analyse the loop's canary against live on the split's joined decisions (see the module
    docstring). `settings`: the rollout settings to apply (default: the loop's). Raises
    NotFound ``loop_not_found``, Conflict ``no_canary`` (the loop has no canary)."""
    stored = get_loop(engine, loop)
    if stored is None:
        raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
    config = stored.config
    rollout = settings or config.rollout
    current = list_models(engine, loop, statuses=("canary", "live"))
    canary = next((m for m in current if m.status == "canary"), None)
    live = next((m for m in current if m.status == "live"), None)
    if canary is None:
        raise Conflict(f"loop {loop!r} has no canary version", "no_canary")
    guardrails = dict(config.gate.guardrails)
    # a canary row changes only by its transitions, so updated_at is when it became canary
    events = read_split_events(
        engine, loop, canary.version, since=canary.updated_at, metrics=tuple(guardrails)
    )
    reward_range = (config.min_reward, config.max_reward)
    stream = ArmStream(
        canary=np.frombuffer(events.canary, dtype=np.int8).astype(bool),
        arm_probability=np.frombuffer(events.arm_probability, dtype=np.float64),
        # an aggregated reward (a sum) may leave the loop's range: clipped to it
        reward=np.clip(np.frombuffer(events.reward, dtype=np.float64), *reward_range),
        guardrails={
            m: np.frombuffer(a, dtype=np.int8).astype(np.float64)
            for m, a in events.guardrails.items()
        },
    )
    found = analyse_stream(
        stream,
        reward_range=reward_range,
        confidence=rollout.confidence,
        guardrails=guardrails,
        min_events=rollout.canary_min_events,
    )
    return CanaryAnalysis(
        loop=loop,
        canary=canary.version,
        live=None if live is None else live.version,
        since=canary.updated_at,
        canary_percent=canary.canary_percent,
        confidence=rollout.confidence,
        n_canary=found.n_canary,
        n_live=found.n_live,
        canary_mean=found.canary_mean,
        live_mean=found.live_mean,
        difference=found.difference,
        guardrails=found.guardrails,
        decision=found.decision,
        reason=found.reason,
        truncated=events.truncated,
    )
