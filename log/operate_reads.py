"""Reads of the operating state across loops (for /metrics, the dashboard and the CLI):
every loop's learner state and its firing alarms, in two queries."""

from __future__ import annotations

from sqlalchemy import Engine, func, select, text

from log.audit import AuditEntry, audit_entry
from log.learner_state import _COLUMNS as _LEARNER_COLUMNS
from log.learner_state import LearnerState, _state
from log.models import AlarmRow, AuditRow

__all__ = ["firing_alarm_counts", "latest_audit", "learner_states", "store_answers"]


def learner_states(engine: Engine) -> list[LearnerState]:
    """The learner state of every loop that has one."""
    with engine.connect() as conn:
        return [_state(row) for row in conn.execute(select(*_LEARNER_COLUMNS))]


def firing_alarm_counts(engine: Engine) -> dict[tuple[str, str], int]:
    """(loop, kind) -> number of firing alarms."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(AlarmRow.loop, AlarmRow.kind, func.count())
            .where(AlarmRow.state == "firing")
            .group_by(AlarmRow.loop, AlarmRow.kind)
        )
        return {(loop, kind): int(n) for loop, kind, n in rows}


def store_answers(engine: Engine) -> None:
    """One round trip to the database (raises when it does not answer)."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def latest_audit(engine: Engine, loop: str, *, limit: int = 50) -> list[AuditEntry]:
    """The loop's newest audit entries, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(*AuditRow.__table__.c)
            .where(AuditRow.loop == loop)
            .order_by(AuditRow.seq.desc())
            .limit(limit)
        ).all()
    return [audit_entry(r) for r in rows]
