"""Reads of the event store used on the request path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from log.models import DecisionRow, OutcomeRow, RewardRow
from log.ops import InsertDecision
from log.spool import Spool


@dataclass(frozen=True)
class EventInfo:
    """What the reward and activation routes need to know about a decision."""

    loop: str
    event_id: str
    n_slots: int
    is_slate: bool
    deferred: bool
    activated_at: datetime | None
    reward_deadline: datetime | None
    decided_at: datetime
    in_database: bool


def _info(row: Any, in_database: bool) -> EventInfo:
    return EventInfo(
        loop=row["loop"],
        event_id=row["event_id"],
        n_slots=row["n_slots"],
        is_slate=row["is_slate"],
        deferred=row["deferred"],
        activated_at=row["activated_at"],
        reward_deadline=row["reward_deadline"],
        decided_at=row["decided_at"],
        in_database=in_database,
    )


_INFO_COLUMNS = (
    DecisionRow.loop,
    DecisionRow.event_id,
    DecisionRow.n_slots,
    DecisionRow.is_slate,
    DecisionRow.deferred,
    DecisionRow.activated_at,
    DecisionRow.reward_deadline,
    DecisionRow.decided_at,
)


def find_event(engine: Engine, spool: Spool, loop: str, event_id: str) -> EventInfo | None:
    """Look a decision up in the database, then in the not-yet-shipped local spool."""
    with engine.connect() as conn:
        row = conn.execute(
            select(*_INFO_COLUMNS).where(DecisionRow.loop == loop, DecisionRow.event_id == event_id)
        ).first()
    if row is not None:
        return _info(row._mapping, True)
    return find_spooled_event(spool, loop, event_id)


def find_spooled_event(spool: Spool, loop: str, event_id: str) -> EventInfo | None:
    found: EventInfo | None = None
    for op in spool.iter_ops():
        if isinstance(op, InsertDecision) and op.key == (loop, event_id):
            found = _info(op.row, False)
    return found


def get_stored_decision(engine: Engine, loop: str, event_id: str) -> dict[str, Any] | None:
    """The stored request digest and response of a decision (for idempotent retries)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(DecisionRow.request_digest, DecisionRow.response).where(
                DecisionRow.loop == loop, DecisionRow.event_id == event_id
            )
        ).first()
    return None if row is None else {"request_digest": row[0], "response": row[1]}


def loop_counts(engine: Engine, loop: str) -> dict[str, int]:
    """Counts for a loop's status: decisions, rewards (late ones apart), joined outcomes."""
    with engine.connect() as conn:
        decisions = conn.execute(
            select(func.count()).select_from(DecisionRow).where(DecisionRow.loop == loop)
        ).scalar_one()
        rewards = conn.execute(
            select(RewardRow.late, func.count())
            .where(RewardRow.loop == loop)
            .group_by(RewardRow.late)
        ).all()
        outcomes = conn.execute(
            select(func.count()).select_from(OutcomeRow).where(OutcomeRow.loop == loop)
        ).scalar_one()
    by_late = {bool(late): n for late, n in rewards}
    return {
        "decisions": int(decisions),
        "rewards": int(by_late.get(False, 0)),
        "late_rewards": int(by_late.get(True, 0)),
        "outcomes": int(outcomes),
    }
