"""Stored state of the rule-based alarms (deploy/operate.py) and their webhook outbox.

A rule's alarm is raised when its rule fires and none of its kind is firing, and cleared when
the rule no longer fires; both in one transaction per loop under the rollup's lock, so two
checkers cannot raise the same alarm twice. `alarms.notified` is the outbox: the last state
delivered to the webhook; an alarm whose state differs is delivered (again) until it is marked.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, or_, select, update

from log.alarms import _COLUMNS, Alarm, _alarm, clear_alarms, raise_alarm
from log.metrics import _lock
from log.models import AlarmRow

__all__ = ["mark_notified", "pending_notifications", "sync_rule_alarms"]


def sync_rule_alarms(
    engine: Engine,
    loop: str,
    findings: Mapping[str, tuple[str, dict[str, Any]] | None],
    *,
    now: datetime,
) -> tuple[list[Alarm], list[str]]:
    """Make the loop's firing alarms of each kind in `findings` match it: (message, details)
    -> one firing alarm of that kind (raised if none is); None -> none firing (cleared).
    Returns (raised, cleared ids)."""
    raised: list[Alarm] = []
    cleared: list[str] = []
    with engine.begin() as conn:
        _lock(conn, loop)
        firing = {
            str(kind)
            for (kind,) in conn.execute(
                select(AlarmRow.kind).where(AlarmRow.loop == loop, AlarmRow.state == "firing")
            )
        }
        for kind, finding in findings.items():
            if finding is not None and kind not in firing:
                message, details = finding
                raised.append(
                    raise_alarm(
                        conn, loop=loop, kind=kind, message=message, at=now, details=details
                    )
                )
            elif finding is None and kind in firing:
                cleared += clear_alarms(conn, loop=loop, kind=kind, at=now)
    return raised, cleared


def pending_notifications(engine: Engine, *, limit: int = 100) -> list[Alarm]:
    """Alarms whose current state was not delivered to the webhook yet, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_COLUMNS)
            .where(or_(AlarmRow.notified.is_(None), AlarmRow.notified != AlarmRow.state))
            .order_by(AlarmRow.raised_at, AlarmRow.id)
            .limit(limit)
        ).all()
    return [_alarm(r) for r in rows]


def mark_notified(engine: Engine, alarm_id: str, state: str) -> bool:
    """Record that `state` of the alarm was delivered (only while it is still its state)."""
    with engine.begin() as conn:
        done = conn.execute(
            update(AlarmRow)
            .where(AlarmRow.id == alarm_id, AlarmRow.state == state)
            .values(notified=state)
        ).rowcount
    return bool(done)
