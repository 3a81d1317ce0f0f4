"""Exports of a loop's decision log: the shared streaming read (DESIGN §5).

`iter_decisions` streams a loop's decisions in `decided_at` order together with their joined
outcomes, through one server-side cursor on PostgreSQL (`yield_per` rows at a time; SQLite's
cursor is lazy already), so an export holds one batch in memory, never the whole log.
The formats live beside this module: `log.export_dsjson.export_dsjson` (Vowpal Wabbit's
decision-service JSON) and `log.export_parquet.export_parquet` (one row per decision).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, Connection, Engine, bindparam, select

from log.models import DecisionRow, OutcomeRow

DEFAULT_YIELD_PER = 1000


@dataclass
class ExportStats:
    """What an export wrote: `rows` lines/rows written, of which `joined` carry a reward;
    `skipped` decisions read but not written (DSJSON leaves out decisions without outcomes)."""

    rows: int = 0
    joined: int = 0
    slates: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class SlotOutcome:
    reward: float
    default_applied: bool


@dataclass
class LoggedDecision:
    """One decision as stored, with its outcomes by slot (empty until the joiner ran)."""

    loop: str
    event_id: str
    decided_at: datetime
    model_version: str
    context: dict[str, Any]
    actions: list[dict[str, Any]]
    pmf: list[float]
    excluded: list[str]
    chosen: str
    slots: list[dict[str, Any]]
    n_slots: int
    is_slate: bool
    deferred: bool
    activated_at: datetime | None
    joined_at: datetime | None
    outcomes: dict[int, SlotOutcome] = field(default_factory=dict)

    @property
    def joined(self) -> bool:
        """Joined: the window closed and every slot has its outcome."""
        return self.joined_at is not None and all(k in self.outcomes for k in range(self.n_slots))


def check_window(since: datetime | None, until: datetime | None) -> None:
    """`since`/`until` must be timezone-aware datetimes with since < until. Raises ValueError."""
    for name, value in (("since", since), ("until", until)):
        if value is None:
            continue
        if not isinstance(value, datetime):
            raise ValueError(f"{name} must be a datetime or None, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    if since is not None and until is not None and since >= until:
        raise ValueError(
            f"since must be before until, got since={since.isoformat()} until={until.isoformat()}"
        )


_COLUMNS = (  # in LoggedDecision's field order
    DecisionRow.loop,
    DecisionRow.event_id,
    DecisionRow.decided_at,
    DecisionRow.model_version,
    DecisionRow.context,
    DecisionRow.actions,
    DecisionRow.pmf,
    DecisionRow.excluded,
    DecisionRow.chosen,
    DecisionRow.slots,
    DecisionRow.n_slots,
    DecisionRow.is_slate,
    DecisionRow.deferred,
    DecisionRow.activated_at,
    DecisionRow.joined_at,
)


def iter_decisions(
    engine: Engine,
    loop: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    yield_per: int = DEFAULT_YIELD_PER,
) -> Iterator[LoggedDecision]:
    """Stream the decisions of `loop` with since <= decided_at < until, oldest first (ties by
    event id), each with its outcomes. Arguments are checked at the call (ValueError), before
    anything is read.

    The decisions come from one streamed query (index on (loop, decided_at)). The outcomes of
    each batch of `yield_per` decisions are read by the same index on `outcomes`: the joiner
    copies `decided_at` into every outcome, so one range [first, last decided_at] of the batch
    covers them; a joined decision whose outcomes are not all in it is looked up by key.
    Why not a LEFT JOIN or an IN list: with stale table statistics (right after a bulk load)
    PostgreSQL picks a nested loop for the joined cursor and, once the IN query is prepared, a
    generic plan that filters the loop's every outcome against the list: both are quadratic
    (measured, 20k decisions: 28 s and 12-21 s, against about 1 s for this)."""
    check_window(since, until)
    if isinstance(yield_per, bool) or not isinstance(yield_per, int) or yield_per < 1:
        raise ValueError(f"yield_per must be an int >= 1, got {yield_per!r}")
    return _stream(engine, loop, since, until, yield_per)


_OUTCOME_COLUMNS = (
    OutcomeRow.event_id,
    OutcomeRow.slot,
    OutcomeRow.reward,
    OutcomeRow.default_applied,
)


def _stream(
    engine: Engine, loop: str, since: datetime | None, until: datetime | None, yield_per: int
) -> Iterator[LoggedDecision]:
    stmt = (
        select(*_COLUMNS)
        .where(DecisionRow.loop == loop)
        .order_by(DecisionRow.decided_at, DecisionRow.event_id)
        .execution_options(yield_per=yield_per)
    )
    if since is not None:
        stmt = stmt.where(DecisionRow.decided_at >= since)
    if until is not None:
        stmt = stmt.where(DecisionRow.decided_at < until)
    with engine.connect() as conn:
        result = conn.execute(stmt)
        try:
            for rows in result.partitions():
                batch = [LoggedDecision(*row) for row in rows]
                _attach_outcomes(conn, loop, batch)
                yield from batch
        finally:
            result.close()


def _attach_outcomes(conn: Connection, loop: str, batch: list[LoggedDecision]) -> None:
    by_id = {d.event_id: d for d in batch}
    in_range = conn.execute(
        select(*_OUTCOME_COLUMNS).where(
            OutcomeRow.loop == loop,
            OutcomeRow.decided_at >= batch[0].decided_at,
            OutcomeRow.decided_at <= batch[-1].decided_at,
        )
    )
    for o in in_range:
        if (d := by_id.get(o.event_id)) is not None:
            d.outcomes[o.slot] = SlotOutcome(o.reward, o.default_applied)
    missing = [d.event_id for d in batch if d.joined_at is not None and not d.joined]
    if missing:  # an outcome whose decided_at differs from its decision's: read it by key
        ids: BindParameter[list[str]] = bindparam(
            "ids", missing, expanding=True, literal_execute=True
        )
        for o in conn.execute(
            select(*_OUTCOME_COLUMNS).where(OutcomeRow.loop == loop, OutcomeRow.event_id.in_(ids))
        ):
            by_id[o.event_id].outcomes[o.slot] = SlotOutcome(o.reward, o.default_applied)
