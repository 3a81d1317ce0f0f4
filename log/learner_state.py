"""The learner's per-loop state (`learner_state`): whether the freshness track is stopped (and
why), when each track last ran, and the last runs' summaries.

Stopping the freshness track writes the state, raises its alarm (kind "freshness_stopped") and
appends its audit row in one transaction; resuming it clears the stop and the alarm and appends
its audit row in one transaction. Of two concurrent resumes exactly one succeeds (the other is a
Conflict): the stop is cleared by a compare-and-set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from explore.errors import Conflict
from log.alarms import Alarm, clear_alarms, raise_alarm
from log.audit import AuditEntry, append_audit
from log.models import LearnerStateRow

__all__ = [
    "FRESHNESS_ALARM",
    "MAX_RUNS",
    "TRACKS",
    "LearnerRun",
    "LearnerState",
    "get_learner_state",
    "record_run",
    "resume_freshness",
    "stop_freshness",
]

FRESHNESS_ALARM = "freshness_stopped"
TRACKS = ("freshness", "candidates", "rollout")
MAX_RUNS = 20
"""How many run summaries the state keeps (newest first)."""
QUIET_OUTCOMES = ("waiting", "idle")
"""Outcomes of runs that did nothing: repeated, only the newest is kept."""


@dataclass(frozen=True)
class LearnerRun:
    """What one run of a track did: `outcome` (e.g. "swapped", "skipped", "stopped",
    "registered", "failed"), a message, the version it produced if any, and its numbers."""

    track: str
    at: datetime
    outcome: str
    message: str
    version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "track": self.track,
            "at": self.at.isoformat(),
            "outcome": self.outcome,
            "message": self.message,
            "version": self.version,
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LearnerRun:
        return cls(
            track=str(data["track"]),
            at=datetime.fromisoformat(data["at"]),
            outcome=str(data["outcome"]),
            message=str(data["message"]),
            version=data.get("version"),
            details=dict(data.get("details") or {}),
        )


@dataclass(frozen=True)
class LearnerState:
    """A loop's learner state; a loop the learner never ran on reads as the empty state."""

    loop: str
    freshness_stopped_at: datetime | None = None
    freshness_reason: str | None = None
    last_freshness_at: datetime | None = None
    last_candidate_at: datetime | None = None
    runs: tuple[LearnerRun, ...] = ()

    @property
    def freshness_stopped(self) -> bool:
        return self.freshness_stopped_at is not None

    def to_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "loop": self.loop,
            "freshness_stopped": self.freshness_stopped,
            "freshness_stopped_at": iso(self.freshness_stopped_at),
            "freshness_reason": self.freshness_reason,
            "last_freshness_at": iso(self.last_freshness_at),
            "last_candidate_at": iso(self.last_candidate_at),
            "runs": [r.to_json() for r in self.runs],
        }


_COLUMNS = tuple(
    LearnerStateRow.__table__.c[name]
    for name in (
        "loop",
        "freshness_stopped_at",
        "freshness_reason",
        "last_freshness_at",
        "last_candidate_at",
        "details",
    )
)


def _state(row: Any) -> LearnerState:
    details = row.details or {}
    runs = tuple(LearnerRun.from_json(r) for r in details.get("runs", []))
    return LearnerState(
        loop=row.loop,
        freshness_stopped_at=row.freshness_stopped_at,
        freshness_reason=row.freshness_reason,
        last_freshness_at=row.last_freshness_at,
        last_candidate_at=row.last_candidate_at,
        runs=runs,
    )


def _read(conn: Connection, loop: str) -> LearnerState:
    row = conn.execute(select(*_COLUMNS).where(LearnerStateRow.loop == loop)).first()
    return LearnerState(loop) if row is None else _state(row)


def get_learner_state(engine: Engine, loop: str) -> LearnerState:
    with engine.connect() as conn:
        return _read(conn, loop)


def _ensure_row(conn: Connection, loop: str) -> None:
    """The loop's row exists and this transaction holds it (PostgreSQL: row lock; SQLite: the
    database write lock, taken by the insert-or-ignore)."""
    values = {"loop": loop, "details": {}}
    if conn.dialect.name == "postgresql":
        conn.execute(postgresql.insert(LearnerStateRow).values(values).on_conflict_do_nothing())
        conn.execute(
            select(LearnerStateRow.loop).where(LearnerStateRow.loop == loop).with_for_update()
        )
    else:
        conn.execute(sqlite.insert(LearnerStateRow).values(values).on_conflict_do_nothing())


def _runs_with(conn: Connection, loop: str, run: LearnerRun) -> dict[str, Any]:
    row = conn.execute(select(LearnerStateRow.details).where(LearnerStateRow.loop == loop)).first()
    details = dict((row[0] if row is not None else None) or {})
    runs = list(details.get("runs", []))
    if (
        run.outcome in QUIET_OUTCOMES
        and runs
        and runs[0].get("track") == run.track
        and runs[0].get("outcome") == run.outcome
    ):
        runs = runs[1:]  # a track that keeps waiting keeps one summary, the newest
    runs = [run.to_json(), *runs][:MAX_RUNS]
    details["runs"] = runs
    return details


def record_run(engine: Engine, loop: str, run: LearnerRun, *, ran: bool = True) -> LearnerState:
    """Keep `run`'s summary; with `ran`, the track's last run time becomes `run.at` (the
    freshness and candidate tracks are due again `freshness_s`/`candidate_interval_s` later)."""
    if run.track not in TRACKS:
        raise ValueError(f"track must be one of {TRACKS}, got {run.track!r}")
    with engine.begin() as conn:
        _ensure_row(conn, loop)
        values: dict[str, Any] = {"details": _runs_with(conn, loop, run)}
        if ran and run.track == "freshness":
            values["last_freshness_at"] = run.at
        elif ran and run.track == "candidates":
            values["last_candidate_at"] = run.at
        conn.execute(update(LearnerStateRow).where(LearnerStateRow.loop == loop).values(values))
        return _read(conn, loop)


def stop_freshness(
    engine: Engine,
    loop: str,
    *,
    at: datetime,
    reason: str,
    message: str,
    details: dict[str, Any],
) -> Alarm | None:
    """Stop the loop's freshness track: the stop, its alarm and its audit row (actor
    "learner") in one transaction. Returns the alarm, or None when the track was already
    stopped (nothing changes then)."""
    with engine.begin() as conn:
        _ensure_row(conn, loop)
        changed = conn.execute(
            update(LearnerStateRow)
            .where(LearnerStateRow.loop == loop, LearnerStateRow.freshness_stopped_at.is_(None))
            .values(
                freshness_stopped_at=at,
                freshness_reason=reason,
                last_freshness_at=at,
            )
        ).rowcount
        if not changed:
            return None
        alarm = raise_alarm(
            conn, loop=loop, kind=FRESHNESS_ALARM, message=message, at=at, details=details
        )
        append_audit(
            conn,
            AuditEntry(
                at=at,
                actor="learner",
                action="freshness_stop",
                loop=loop,
                reason=reason,
                details={**details, "alarm": alarm.id},
            ),
        )
    return alarm


def resume_freshness(
    engine: Engine,
    loop: str,
    *,
    at: datetime,
    actor: str,
    role: str | None,
    reason: str,
) -> LearnerState:
    """Resume a stopped freshness track: clears the stop and its firing alarms and appends the
    audit row (who, why), in one transaction. Raises Conflict (freshness_not_stopped) when the
    track is not stopped, so of two concurrent resumes one succeeds."""
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":  # writer from the start: the read below is current
            conn.execute(text("UPDATE learner_state SET loop = loop WHERE 0 = 1"))
        before = _read(conn, loop)
        changed = conn.execute(
            update(LearnerStateRow)
            .where(LearnerStateRow.loop == loop, LearnerStateRow.freshness_stopped_at.is_not(None))
            .values(freshness_stopped_at=None, freshness_reason=None)
        ).rowcount
        if not changed:
            raise Conflict(
                f"the freshness track of loop {loop!r} is not stopped", "freshness_not_stopped"
            )
        cleared = clear_alarms(conn, loop=loop, kind=FRESHNESS_ALARM, at=at)
        append_audit(
            conn,
            AuditEntry(
                at=at,
                actor=actor,
                role=role,
                action="freshness_resume",
                loop=loop,
                reason=reason,
                details={
                    "stopped_at": None
                    if before.freshness_stopped_at is None
                    else before.freshness_stopped_at.isoformat(),
                    "stop_reason": before.freshness_reason,
                    "cleared_alarms": cleared,
                },
            ),
        )
        return _read(conn, loop)
