"""The report of a loop's retrievers in rollout: its shadow's agreement with what was served,
and its canary's online A/B against live.

**Shadow** (decisions logged with ``retrieval.shadow`` of the loop's shadow retriever, since it
became shadow): the mean overlap@k of its top-k with the served candidate set (``common /
max(n_shadow, n_served)``, 1 when the sets are equal), how often the chosen item is in its set,
and, on joined decisions with a positive reward on a slot, the **hit rate** of that rewarded
item in each set: the served set holds it by construction (it was served from it), so the
shadow's hit rate is the share of rewarded items the shadow retriever would have offered the
ranker too. A shadow that failed logs null and is counted (`n_failed`).

**Canary** (decisions retrieved while the split was on, since it became canary): the same
Horvitz-Thompson A/B as the model canary (:func:`deploy.ab.analyse_stream`), with the
retriever arm and its logged probability (``retrieval.arm``, ``retrieval.arm_probability``) in
place of the policy arm: reward of slot 0, guardrail rates of the loop's ``gate.guardrails``,
the anytime-valid confidence sequence at the loop's ``rollout.confidence``, decision worse /
guardrail / better / undecided. A concurrent model canary splits the units by an independent
hash, so both retriever arms see the same mix of model arms: the difference is the retriever's
effect averaged over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from deploy.ab import ArmStream, analyse_stream
from explore.errors import NotFound
from log.loops import get_loop
from log.retriever_reads import RetrievedEvent, read_retrieved
from log.retrievers import RetrieverVersion, rolled_out
from log.schema import Engine

__all__ = ["DEFAULT_MAX_EVENTS", "RetrieverReport", "canary_section", "shadow_section"]

DEFAULT_MAX_EVENTS = 50_000


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def shadow_section(version: RetrieverVersion, events: list[RetrievedEvent]) -> dict[str, Any]:
    """The shadow's numbers from the retrieved decisions (pure)."""
    summaries = []
    failed = 0
    served_hits: list[float] = []
    shadow_hits: list[float] = []
    for e in events:
        if "shadow" not in e.retrieval:
            continue
        summary = e.retrieval["shadow"]
        if summary is None:
            failed += 1
            continue
        if summary.get("retriever") != version.version:
            continue
        summaries.append(summary)
        if not e.joined:
            continue
        slots_in = summary.get("slots_in") or [summary.get("chosen_in", False)]
        for slot, reward in e.rewards.items():
            if reward > 0 and slot < len(e.served):
                served_hits.append(1.0)  # the rewarded item was served from the served set
                shadow_hits.append(1.0 if slot < len(slots_in) and slots_in[slot] else 0.0)
    return {
        "version": version.version,
        "since": version.updated_at.isoformat(),
        "n_shadowed": len(summaries),
        "n_failed": failed,
        "mean_overlap": _mean([float(s["overlap"]) for s in summaries]),
        "mean_common": _mean([float(s["common"]) for s in summaries]),
        "chosen_in_rate": _mean([1.0 if s.get("chosen_in") else 0.0 for s in summaries]),
        "n_rewarded": len(shadow_hits),
        "hit_rate": {"served": _mean(served_hits), "shadow": _mean(shadow_hits)},
    }


def canary_section(
    version: RetrieverVersion,
    events: list[RetrievedEvent],
    *,
    reward_range: tuple[float, float],
    confidence: float,
    guardrails: dict[str, float],
    min_events: int,
) -> dict[str, Any]:
    """The canary's A/B from the retrieved decisions (pure): the joined decisions served while
    its split was on, in join order."""
    split = [
        e
        for e in events
        if e.joined
        and float(e.retrieval.get("arm_probability", 1.0)) < 1.0
        and (
            e.retrieval.get("arm") == "live"
            or (e.retrieval.get("arm") == "canary" and e.retrieval["retriever"] == version.version)
        )
    ]
    split.sort(key=lambda e: (e.join_seq or 0, e.event_id))
    stream = ArmStream(
        canary=np.array([e.retrieval["arm"] == "canary" for e in split], dtype=bool),
        arm_probability=np.array([float(e.retrieval["arm_probability"]) for e in split]),
        reward=np.clip(np.array([e.rewards.get(0, 0.0) for e in split]), *reward_range),
        guardrails={
            m: np.array([1.0 if e.guardrails.get(m, 0) > 0 else 0.0 for e in split])
            for m in guardrails
        },
    )
    found = analyse_stream(
        stream,
        reward_range=reward_range,
        confidence=confidence,
        guardrails=guardrails,
        min_events=min_events,
    )
    return {
        "version": version.version,
        "since": version.updated_at.isoformat(),
        "canary_percent": version.canary_percent,
        "confidence": confidence,
        "n_canary": found.n_canary,
        "n_live": found.n_live,
        "canary_mean": found.canary_mean,
        "live_mean": found.live_mean,
        "difference": None if found.difference is None else found.difference.to_json(),
        "guardrails": {k: v.to_json() for k, v in found.guardrails.items()},
        "decision": found.decision,
        "reason": found.reason,
    }


@dataclass(frozen=True)
class RetrieverReport:
    loop: str
    live: str | None
    window: int
    truncated: bool
    shadow: dict[str, Any] | None
    canary: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "loop": self.loop,
            "live": self.live,
            "window": self.window,
            "truncated": self.truncated,
            "shadow": self.shadow,
            "canary": self.canary,
        }


def retriever_report(
    engine: Engine, loop: str, *, max_events: int = DEFAULT_MAX_EVENTS
) -> RetrieverReport:
    """The loop's shadow and canary retrievers' report (None for a role nobody holds), over the
    latest `max_events` retrieved decisions since the earlier of the two entered its state.
    NotFound ``loop_not_found``."""
    stored = get_loop(engine, loop)
    if stored is None:
        raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
    config = stored.config
    versions = rolled_out(engine, loop)
    shadow, canary = versions.get("shadow"), versions.get("canary")
    live = versions.get("live")
    held = [v for v in (shadow, canary) if v is not None]
    events: list[RetrievedEvent] = []
    truncated = False
    if held:
        since: datetime = min(v.updated_at for v in held)
        events, truncated = read_retrieved(engine, loop, since=since, limit=max_events)
    return RetrieverReport(
        loop=loop,
        live=None if live is None else live.version,
        window=len(events),
        truncated=truncated,
        shadow=None
        if shadow is None
        else shadow_section(shadow, [e for e in events if e.decided_at >= shadow.updated_at]),
        canary=None
        if canary is None
        else canary_section(
            canary,
            [e for e in events if e.decided_at >= canary.updated_at],
            reward_range=(config.min_reward, config.max_reward),
            confidence=config.rollout.confidence,
            guardrails=dict(config.gate.guardrails),
            min_events=config.rollout.canary_min_events,
        ),
    )
