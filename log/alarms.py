"""Alarms: per loop, raised (state "firing") by whatever found a problem, cleared by whoever
resolved it. The functions that change alarms take a Connection, so that an alarm is raised or
cleared in the same transaction as the state change it belongs to (a stopped freshness track
and its alarm, a rollback and its alarm): neither is ever stored without the other.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, text, update

from explore.errors import Conflict, NotFound
from log.audit import AuditEntry, append_audit
from log.models import AlarmRow

__all__ = [
    "ALARM_STATES",
    "Alarm",
    "clear_alarm",
    "clear_alarms",
    "list_alarms",
    "raise_alarm",
    "raise_alarm_once",
]

ALARM_STATES = ("firing", "cleared")
MAX_LIST = 500


@dataclass(frozen=True)
class Alarm:
    """One alarm. `kind`: what tripped ("freshness_stopped", "canary_rolled_back"...);
    `details`: the numbers behind it."""

    id: str
    loop: str
    kind: str
    state: str
    raised_at: datetime
    cleared_at: datetime | None
    message: str
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "loop": self.loop,
            "kind": self.kind,
            "state": self.state,
            "raised_at": self.raised_at.isoformat(),
            "cleared_at": None if self.cleared_at is None else self.cleared_at.isoformat(),
            "message": self.message,
            "details": self.details,
        }


_COLUMNS = tuple(AlarmRow.__table__.c[name] for name in Alarm.__dataclass_fields__)


def _alarm(row: Any) -> Alarm:
    return Alarm(
        id=row.id,
        loop=row.loop,
        kind=row.kind,
        state=row.state,
        raised_at=row.raised_at,
        cleared_at=row.cleared_at,
        message=row.message,
        details=row.details or {},
    )


def raise_alarm(
    conn: Connection,
    *,
    loop: str,
    kind: str,
    message: str,
    at: datetime,
    details: dict[str, Any] | None = None,
) -> Alarm:
    """Insert a firing alarm inside the caller's transaction."""
    alarm = Alarm(
        id=secrets.token_hex(16),
        loop=loop,
        kind=kind,
        state="firing",
        raised_at=at,
        cleared_at=None,
        message=message,
        details=dict(details or {}),
    )
    conn.execute(
        insert(AlarmRow).values(
            id=alarm.id,
            loop=loop,
            kind=kind,
            state="firing",
            raised_at=at,
            cleared_at=None,
            message=message,
            details=alarm.details,
        )
    )
    return alarm


def clear_alarms(conn: Connection, *, loop: str, kind: str, at: datetime) -> list[str]:
    """Clear the loop's firing alarms of `kind` inside the caller's transaction; returns their
    ids."""
    ids = [
        str(r[0])
        for r in conn.execute(
            select(AlarmRow.id).where(
                AlarmRow.loop == loop, AlarmRow.kind == kind, AlarmRow.state == "firing"
            )
        )
    ]
    if ids:
        conn.execute(
            update(AlarmRow)
            .where(AlarmRow.id.in_(ids), AlarmRow.state == "firing")
            .values(state="cleared", cleared_at=at)
        )
    return ids


def list_alarms(
    engine: Engine, loop: str, *, state: str | None = None, limit: int = 100
) -> list[Alarm]:
    """The loop's alarms, newest first; only those in `state` when given."""
    if state is not None and state not in ALARM_STATES:
        raise ValueError(f"state must be one of {ALARM_STATES}, got {state!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
        raise ValueError(f"limit must be an int in [1, {MAX_LIST}], got {limit!r}")
    stmt = select(*_COLUMNS).where(AlarmRow.loop == loop)
    if state is not None:
        stmt = stmt.where(AlarmRow.state == state)
    with engine.connect() as conn:
        rows = conn.execute(
            stmt.order_by(AlarmRow.raised_at.desc(), AlarmRow.id).limit(limit)
        ).all()
    return [_alarm(r) for r in rows]


def raise_alarm_once(
    engine: Engine,
    *,
    loop: str,
    kind: str,
    version: str,
    message: str,
    at: datetime,
    details: dict[str, Any] | None = None,
) -> Alarm | None:
    """Raise an alarm of `kind` about model `version` unless one is already firing (the same
    problem seen again at the next look, or after a restart). Returns the new alarm or None."""
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":  # writer from the start: the check below holds
            conn.execute(text("UPDATE alarms SET state = state WHERE 0 = 1"))
        firing = conn.execute(
            select(AlarmRow.details).where(
                AlarmRow.loop == loop, AlarmRow.kind == kind, AlarmRow.state == "firing"
            )
        ).all()
        if any((row[0] or {}).get("version") == version for row in firing):
            return None
        return raise_alarm(
            conn,
            loop=loop,
            kind=kind,
            message=message,
            at=at,
            details={**(details or {}), "version": version},
        )


def clear_alarm(
    engine: Engine,
    loop: str,
    alarm_id: str,
    *,
    at: datetime,
    actor: str,
    role: str | None,
    reason: str,
    keep_kinds: tuple[str, ...] = (),
) -> Alarm:
    """Clear one firing alarm of `loop` (a gatekeeper acknowledged it) with its audit row
    ("alarm_clear"), in one transaction. Raises NotFound (alarm_not_found), Conflict
    (alarm_not_firing; alarm_needs_resume for the kinds in `keep_kinds`, which only the action
    that fixes them clears)."""
    with engine.begin() as conn:
        row = conn.execute(
            select(*_COLUMNS).where(AlarmRow.loop == loop, AlarmRow.id == alarm_id)
        ).first()
        if row is None:
            raise NotFound(f"no alarm {alarm_id!r} in loop {loop!r}", "alarm_not_found")
        alarm = _alarm(row)
        if alarm.kind in keep_kinds:
            raise Conflict(
                f"a {alarm.kind} alarm is cleared by resuming what it stopped", "alarm_needs_resume"
            )
        done = conn.execute(
            update(AlarmRow)
            .where(AlarmRow.id == alarm_id, AlarmRow.state == "firing")
            .values(state="cleared", cleared_at=at)
        ).rowcount
        if not done:
            raise Conflict(f"alarm {alarm_id!r} is not firing", "alarm_not_firing")
        append_audit(
            conn,
            AuditEntry(
                at=at,
                actor=actor,
                role=role,
                action="alarm_clear",
                loop=loop,
                target=alarm_id,
                reason=reason,
                details={"kind": alarm.kind, "message": alarm.message},
            ),
        )
    return replace(alarm, state="cleared", cleared_at=at)
