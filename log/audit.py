"""The audit log: an append-only record of every state change (who, what, when, why, numbers).

Rows are only ever inserted (the database refuses UPDATE and DELETE on `audit_log`: revision
0006 installs triggers). `append_audit` takes a Connection so that a state change and its audit
row commit in one transaction: a change is never made without its record, nor recorded without
being made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, insert, select

from log.models import AuditRow

__all__ = ["AuditEntry", "append_audit", "audit_entry", "read_audit"]

MAX_READ = 1000


@dataclass(frozen=True)
class AuditEntry:
    """One audited action. `actor`: who (a key's id and name, "learner", "cli:<user>");
    `role`: the actor's role if it used a key; `target`: what it acted on (a model version, a
    key id); `details`: the numbers (a gate verdict's, a canary analysis's...)."""

    at: datetime
    actor: str
    action: str
    loop: str | None = None
    target: str | None = None
    reason: str | None = None
    role: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    seq: int | None = None  # assigned by the database

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "role": self.role,
            "loop": self.loop,
            "action": self.action,
            "target": self.target,
            "reason": self.reason,
            "details": self.details,
        }


def append_audit(conn: Connection, entry: AuditEntry) -> int:
    """Insert `entry` inside the caller's transaction; returns its sequence number."""
    result = conn.execute(
        insert(AuditRow)
        .values(
            at=entry.at,
            actor=entry.actor,
            role=entry.role,
            loop=entry.loop,
            action=entry.action,
            target=entry.target,
            reason=entry.reason,
            details=entry.details,
        )
        .returning(AuditRow.seq)
    )
    return int(result.scalar_one())


def read_audit(
    engine: Engine,
    *,
    loop: str | None = None,
    loops: tuple[str, ...] | None = None,
    after_seq: int = 0,
    limit: int = 100,
) -> list[AuditEntry]:
    """Entries in sequence order after `after_seq` (paging), of one `loop`, or of the loops in
    `loops` (a scoped reader: entries of other loops and loop-less entries are left out)."""
    if not 1 <= limit <= MAX_READ:
        raise ValueError(f"limit must be in [1, {MAX_READ}], got {limit}")
    stmt = select(*AuditRow.__table__.c).where(AuditRow.seq > after_seq)
    if loop is not None:
        stmt = stmt.where(AuditRow.loop == loop)
    if loops is not None:
        stmt = stmt.where(AuditRow.loop.in_(loops))
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(AuditRow.seq).limit(limit)).all()
    return [audit_entry(r) for r in rows]


def audit_entry(row: Row[Any]) -> AuditEntry:
    """The entry of a row selected with every `audit_log` column."""
    return AuditEntry(
        at=row.at,
        actor=row.actor,
        action=row.action,
        loop=row.loop,
        target=row.target,
        reason=row.reason,
        role=row.role,
        details=row.details or {},
        seq=row.seq,
    )
