"""The `evaluations` table: offline evaluation runs of a loop (DESIGN §5, §6).

A run is inserted `queued` by whoever asks for it (the HTTP route, the CLI with `--record`),
claimed once (`queued` -> `running`, atomically, so two processes never run the same job),
updates its `progress` (0..1) while it runs, and ends `succeeded` with its result JSON or
`failed` with an error text. Ending is conditional on `running`: a run already ended is never
overwritten.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, cast, func, insert, literal, select, update

from explore.errors import TooManyRequests
from log.models import DecisionRow, EvaluationRow, Loop

__all__ = [
    "ACTIVE_STATUSES",
    "STATUSES",
    "EvaluationRecord",
    "claim_evaluation",
    "create_evaluation",
    "fail_evaluation",
    "finish_evaluation",
    "get_evaluation",
    "joined_decided_at",
    "list_evaluations",
    "set_progress",
]

STATUSES = ("queued", "running", "succeeded", "failed")
ACTIVE_STATUSES = ("queued", "running")
MAX_ERROR_CHARS = 8000


@dataclass(frozen=True)
class EvaluationRecord:
    """One row of `evaluations`."""

    id: str
    loop: str
    status: str
    request: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    progress: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    def to_json(self, *, with_result: bool = True) -> dict[str, Any]:
        """JSON-ready dict; `with_result=False` leaves the (large) result out."""
        out: dict[str, Any] = {
            "id": self.id,
            "loop": self.loop,
            "status": self.status,
            "progress": self.progress,
            "request": self.request,
            "error": self.error,
            "created_at": self.created_at.isoformat(),
            "started_at": None if self.started_at is None else self.started_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
        }
        if with_result:
            out["result"] = self.result
        return out


_COLUMNS = (
    EvaluationRow.id,
    EvaluationRow.loop,
    EvaluationRow.status,
    EvaluationRow.request,
    EvaluationRow.result,
    EvaluationRow.error,
    EvaluationRow.progress,
    EvaluationRow.created_at,
    EvaluationRow.started_at,
    EvaluationRow.finished_at,
)


def _record(row: Any) -> EvaluationRecord:
    return EvaluationRecord(**row._mapping)


def create_evaluation(
    engine: Engine,
    loop: str,
    request: dict[str, Any],
    *,
    max_active: int | None = None,
    active_since: datetime | None = None,
) -> EvaluationRecord:
    """Insert a `queued` run of `loop` for `request` (JSON-ready); returns it.

    With `max_active`, the run is inserted only while fewer than `max_active` runs of the loop
    are queued or running (counting those created at or after `active_since`: older ones are
    stale); otherwise `TooManyRequests` (code `too_many_evaluations`) and nothing is written.
    The check and the insert are one statement (SQLite serialises writers); on PostgreSQL the
    loop's row is locked first, so concurrent requests of any worker cannot exceed the limit.
    """
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "loop": loop,
        "status": "queued",
        "request": request,
        "result": None,
        "error": None,
        "progress": 0.0,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
    }
    with engine.begin() as conn:
        if max_active is None:
            conn.execute(insert(EvaluationRow), row)
            return EvaluationRecord(**row)
        if conn.dialect.name == "postgresql":  # serialise the creators of this loop's runs
            conn.execute(select(Loop.loop).where(Loop.loop == loop).with_for_update())
        e = EvaluationRow
        active = (
            select(func.count()).select_from(e).where(e.loop == loop, e.status.in_(ACTIVE_STATUSES))
        )
        if active_since is not None:
            active = active.where(e.created_at >= active_since)
        columns = [c for c in e.__table__.columns if row[c.name] is not None]
        # PostgreSQL types the parameters of INSERT ... SELECT by their casts (not the target
        # columns); SQLite must not cast (CAST(x AS JSON) would make a number of x).
        pg = conn.dialect.name == "postgresql"
        exprs = [literal(row[c.name], type_=c.type) for c in columns]
        values = select(*(cast(x, x.type) if pg else x for x in exprs)).where(
            active.scalar_subquery() < max_active
        )
        conn.execute(insert(e).from_select([c.name for c in columns], values))
        # (rowcount is not reliable for INSERT ... SELECT across drivers: look the row up)
        inserted = conn.execute(select(e.id).where(e.id == row["id"])).first() is not None
    if not inserted:
        raise TooManyRequests(
            f"loop {loop!r} already has {max_active} evaluation(s) queued or running; retry once "
            "one of them ends",
            "too_many_evaluations",
            retry_after_s=30,
        )
    return EvaluationRecord(**row)


def get_evaluation(
    engine: Engine, evaluation_id: str, *, loop: str | None = None
) -> EvaluationRecord | None:
    """The run `evaluation_id` (None if absent, or if it belongs to another loop than `loop`)."""
    stmt = select(*_COLUMNS).where(EvaluationRow.id == evaluation_id)
    if loop is not None:
        stmt = stmt.where(EvaluationRow.loop == loop)
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    return None if row is None else _record(row)


def list_evaluations(engine: Engine, loop: str, *, limit: int = 50) -> list[EvaluationRecord]:
    """The latest `limit` runs of `loop`, newest first."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_COLUMNS)
            .where(EvaluationRow.loop == loop)
            .order_by(EvaluationRow.created_at.desc(), EvaluationRow.id)
            .limit(limit)
        ).all()
    return [_record(r) for r in rows]


def claim_evaluation(engine: Engine, evaluation_id: str) -> EvaluationRecord | None:
    """Mark a `queued` run `running` (started now) and return it; None when it is not queued."""
    with engine.begin() as conn:
        claimed = conn.execute(
            update(EvaluationRow)
            .where(EvaluationRow.id == evaluation_id, EvaluationRow.status == "queued")
            .values(status="running", started_at=datetime.now(UTC), progress=0.0)
        ).rowcount
    return get_evaluation(engine, evaluation_id) if claimed == 1 else None


def set_progress(engine: Engine, evaluation_id: str, progress: float) -> None:
    """Record the progress (clipped to [0, 1]) of a running run."""
    value = min(max(float(progress), 0.0), 1.0)
    with engine.begin() as conn:
        conn.execute(
            update(EvaluationRow)
            .where(EvaluationRow.id == evaluation_id, EvaluationRow.status == "running")
            .values(progress=value)
        )


def _end(
    engine: Engine, evaluation_id: str, values: dict[str, Any], statuses: tuple[str, ...]
) -> bool:
    with engine.begin() as conn:
        n = conn.execute(
            update(EvaluationRow)
            .where(EvaluationRow.id == evaluation_id, EvaluationRow.status.in_(statuses))
            .values(finished_at=datetime.now(UTC), **values)
        ).rowcount
    return bool(n == 1)


def finish_evaluation(engine: Engine, evaluation_id: str, result: dict[str, Any]) -> bool:
    """A running run succeeded with `result`. False when it was not running."""
    return _end(
        engine,
        evaluation_id,
        {"status": "succeeded", "result": result, "progress": 1.0},
        ("running",),
    )


def fail_evaluation(
    engine: Engine, evaluation_id: str, error: str, *, include_queued: bool = False
) -> bool:
    """A running run (or a queued one with `include_queued`: it never started) failed.
    False when it had already ended."""
    statuses = ACTIVE_STATUSES if include_queued else ("running",)
    text = error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 3] + "..."
    return _end(engine, evaluation_id, {"status": "failed", "error": text}, statuses)


def joined_decided_at(
    engine: Engine,
    loop: str,
    position: int,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    joined_before: datetime | None = None,
) -> datetime | None:
    """decided_at of the `position`-th (0-based) joined decision of `loop` with
    since <= decided_at < until (and joined_at <= joined_before), in (decided_at, event_id)
    order; None past the end.
    Used to split a window into an earlier (training) and a later (evaluation) part."""
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise ValueError(f"position must be an int >= 0, got {position!r}")
    d = DecisionRow
    stmt = select(d.decided_at).where(d.loop == loop, d.joined_at.is_not(None))
    if since is not None:
        stmt = stmt.where(d.decided_at >= since)
    if until is not None:
        stmt = stmt.where(d.decided_at < until)
    if joined_before is not None:
        stmt = stmt.where(d.joined_at <= joined_before)
    with engine.connect() as conn:
        value = conn.execute(
            stmt.order_by(d.decided_at, d.event_id).offset(position).limit(1)
        ).scalar_one_or_none()
    return value
