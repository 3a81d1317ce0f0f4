"""The `gate_verdicts` table: every verdict of the promotion gate, with its numbers and reason.

What `deploy.gate` stores and the model listing shows. A verdict is written once and never
changed. `look` numbers the checks of one version (1, 2, ...): it is assigned inside the
inserting transaction under the loop's lock (the one transitions take), so concurrent checks of
one version get distinct, consecutive looks. The gate's three-way decision ("pass", "fail",
"pending") is kept in `numbers["decision"]` beside the `passed` column (the table has no column
of its own for it).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select

from log.loop_lock import lock_loop, take_write_lock
from log.models import GateVerdictRow

__all__ = [
    "MAX_VERDICTS_READ",
    "VerdictRecord",
    "latest_verdict",
    "latest_verdict_in",
    "latest_verdicts",
    "list_verdicts",
    "store_verdict",
]

MAX_VERDICTS_READ = 1000


@dataclass(frozen=True)
class VerdictRecord:
    """A stored gate verdict. `decision`: "pass", "fail" or "pending" (`passed` is decision ==
    "pass"); `incumbent`: the live version it was compared with (None: no live version, the
    logging policy); `criteria`: the gate settings it applied; `numbers`: everything measured."""

    loop: str
    version: str
    incumbent: str | None
    at: datetime
    decision: str
    reason: str
    criteria: dict[str, Any] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)
    look: int = 0  # assigned when stored
    id: str = ""  # assigned when stored

    @property
    def passed(self) -> bool:
        return self.decision == "pass"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "loop": self.loop,
            "version": self.version,
            "incumbent": self.incumbent,
            "at": self.at.isoformat(),
            "look": self.look,
            "decision": self.decision,
            "passed": self.passed,
            "reason": self.reason,
            "criteria": self.criteria,
            "numbers": self.numbers,
        }


_COLUMNS = tuple(GateVerdictRow.__table__.c)


def _record(row: Any) -> VerdictRecord:
    numbers = dict(row.numbers or {})
    decision = numbers.get("decision") or ("pass" if row.passed else "fail")
    return VerdictRecord(
        loop=row.loop,
        version=row.version,
        incumbent=row.incumbent,
        at=row.at,
        decision=str(decision),
        reason=row.reason,
        criteria=dict(row.criteria or {}),
        numbers=numbers,
        look=row.look,
        id=row.id,
    )


def store_verdict(engine: Engine, verdict: VerdictRecord) -> VerdictRecord:
    """Insert `verdict` (its `look` the number of stored verdicts of the version plus one, a
    fresh `id`) in one transaction serialised per loop; returns the stored record."""
    if verdict.decision not in ("pass", "fail", "pending"):
        raise ValueError(f"decision must be pass, fail or pending, got {verdict.decision!r}")
    with engine.begin() as conn:
        take_write_lock(conn)
        lock_loop(conn, verdict.loop)
        looks = conn.execute(
            select(func.count())
            .select_from(GateVerdictRow)
            .where(GateVerdictRow.version == verdict.version)
        ).scalar_one()
        stored = replace(
            verdict,
            look=int(looks) + 1,
            id=secrets.token_hex(16),
            numbers={**verdict.numbers, "decision": verdict.decision},
        )
        conn.execute(
            insert(GateVerdictRow).values(
                id=stored.id,
                loop=stored.loop,
                version=stored.version,
                incumbent=stored.incumbent,
                at=stored.at,
                look=stored.look,
                passed=stored.passed,
                reason=stored.reason,
                criteria=stored.criteria,
                numbers=stored.numbers,
            )
        )
    return stored


def latest_verdict_in(conn: Connection, version: str) -> VerdictRecord | None:
    """The version's latest verdict (highest look), read on the caller's connection."""
    row = conn.execute(
        select(*_COLUMNS)
        .where(GateVerdictRow.version == version)
        .order_by(GateVerdictRow.look.desc())
        .limit(1)
    ).first()
    return None if row is None else _record(row)


def latest_verdict(engine: Engine, version: str) -> VerdictRecord | None:
    with engine.connect() as conn:
        return latest_verdict_in(conn, version)


def list_verdicts(engine: Engine, version: str, *, limit: int = 100) -> list[VerdictRecord]:
    """The version's verdicts, latest first (at most `limit`)."""
    if not 1 <= limit <= MAX_VERDICTS_READ:
        raise ValueError(f"limit must be in [1, {MAX_VERDICTS_READ}], got {limit}")
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_COLUMNS)
            .where(GateVerdictRow.version == version)
            .order_by(GateVerdictRow.look.desc())
            .limit(limit)
        ).all()
    return [_record(r) for r in rows]


def latest_verdicts(engine: Engine, loop: str, versions: list[str]) -> dict[str, VerdictRecord]:
    """The latest verdict of each of `versions` (of `loop`) that has one."""
    if not versions:
        return {}
    newest = (
        select(GateVerdictRow.version, func.max(GateVerdictRow.look).label("look"))
        .where(GateVerdictRow.loop == loop, GateVerdictRow.version.in_(versions))
        .group_by(GateVerdictRow.version)
        .subquery()
    )
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_COLUMNS).join(
                newest,
                (GateVerdictRow.version == newest.c.version)
                & (GateVerdictRow.look == newest.c.look),
            )
        ).all()
    return {r.version: _record(r) for r in rows}
