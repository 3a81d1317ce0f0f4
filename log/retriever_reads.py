"""Reads of retrieved decisions for the retriever rollout report (`deploy.retriever_report`).

A decision whose candidates were retrieved logs ``retrieval = {"retriever", "index", "k",
"filters", "arm", "arm_probability", "shadow"?}`` (`decision_service.decide`): the retriever
that retrieved them, its arm ("live" or "canary") with that arm's probability, and, while the
loop has a shadow retriever, the shadow's summary (or null when it failed). Here: the loop's
retrieved decisions decided at or after `since` (the latest `limit` of them), each with its
served items per slot and, once joined, its rewards per slot and the guardrail signals of
slot 0 (counted inside the window, as the joiner counts them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from log.models import DecisionRow, OutcomeRow

__all__ = ["MAX_RETRIEVED_EVENTS", "RetrievedEvent", "read_retrieved"]

MAX_RETRIEVED_EVENTS = 200_000


@dataclass(frozen=True, slots=True)
class RetrievedEvent:
    """One retrieved decision as logged (`retrieval`, the served item of each slot) with its
    join: `join_seq` (None until joined), rewards per slot, guardrail signals of slot 0."""

    event_id: str
    decided_at: datetime
    retrieval: Mapping[str, Any]
    served: tuple[str, ...]
    join_seq: int | None = None
    rewards: Mapping[int, float] = field(default_factory=dict)
    guardrails: Mapping[str, int] = field(default_factory=dict)

    @property
    def joined(self) -> bool:
        return self.join_seq is not None


def read_retrieved(
    engine: Engine, loop: str, *, since: datetime, limit: int = 50_000
) -> tuple[list[RetrievedEvent], bool]:
    """The latest `limit` retrieved decisions of `loop` decided at or after `since`, oldest
    first, and whether older ones were left out."""
    if not 1 <= limit <= MAX_RETRIEVED_EVENTS:
        raise ValueError(f"limit must be in [1, {MAX_RETRIEVED_EVENTS}], got {limit}")
    d = DecisionRow
    with engine.connect() as conn:
        rows = conn.execute(
            select(d.event_id, d.decided_at, d.retrieval, d.slots, d.joined_at, d.join_seq)
            .where(
                d.loop == loop,
                d.decided_at >= since,
                d.retrieval["retriever"].as_string().is_not(None),
            )
            .order_by(d.decided_at.desc(), d.event_id.desc())
            .limit(limit + 1)
        ).all()
        truncated = len(rows) > limit
        rows = rows[:limit][::-1]
        joined = [r.event_id for r in rows if r.joined_at is not None]
        outcomes: dict[str, list[Any]] = {}
        for start in range(0, len(joined), 1000):
            part = joined[start : start + 1000]
            for o in conn.execute(
                select(
                    OutcomeRow.event_id, OutcomeRow.slot, OutcomeRow.reward, OutcomeRow.guardrails
                ).where(OutcomeRow.loop == loop, OutcomeRow.event_id.in_(part))
            ):
                outcomes.setdefault(o.event_id, []).append(o)
    events = []
    for r in rows:
        found = outcomes.get(r.event_id, [])
        rewards = {int(o.slot): float(o.reward) for o in found}
        slot0 = next((o.guardrails for o in found if o.slot == 0 and o.guardrails), None) or {}
        events.append(
            RetrievedEvent(
                r.event_id,
                r.decided_at,
                r.retrieval,
                tuple(str(s["action_id"]) for s in r.slots),
                None if r.joined_at is None else int(r.join_seq or 0),
                rewards,
                {str(m): int(c or 0) for m, c in slot0.items()},
            )
        )
    return events, truncated
