"""Reads of shadowed decisions: those logged with a shadow version's pmf beside the served one.

A decision made while loop `L` had a shadow version `v` stores ``shadow = {"version": v,
"pmf": [...]}`` (`decisions.shadow`, JSON; null without a shadow or when the shadow failed to
score). The shadow report (`deploy.shadow`) reads them here: how many there are, and the latest
ones with their joined outcomes. The version is matched inside the JSON (``shadow ->> 'version'``
on PostgreSQL, ``json_extract`` on SQLite) on the loop's rows decided since `since` (index on
(loop, decided_at)): the report passes a time shortly before the version was registered, so
the scan skips the loop's older history.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Engine,
    bindparam,
    func,
    select,
    tuple_,
)

from log.action_store import BodyReader
from log.decision_reads import RECORD_COLUMNS, records_from_rows
from log.models import DecisionRow, OutcomeRow
from log.records import DecisionRecord

__all__ = ["ShadowCounts", "ShadowedDecision", "iter_shadowed", "shadow_counts"]


@dataclass(frozen=True)
class ShadowCounts:
    """Decisions of a loop logged with a version's shadow pmf: how many, how many joined, and
    the first and last decided_at (None when there are none)."""

    n: int
    joined: int
    first_at: datetime | None
    last_at: datetime | None


@dataclass(frozen=True, slots=True)
class ShadowedDecision:
    """A shadowed decision as logged, with its joined reward per slot (empty until joined)."""

    record: DecisionRecord
    joined: bool
    rewards: Mapping[int, float] = field(default_factory=dict)


def _shadowed(loop: str, version: str, since: datetime | None) -> list[ColumnElement[bool]]:
    out = [DecisionRow.loop == loop, DecisionRow.shadow["version"].as_string() == version]
    if since is not None:
        out.append(DecisionRow.decided_at >= since)
    return out


def shadow_counts(
    engine: Engine, loop: str, version: str, *, since: datetime | None = None
) -> ShadowCounts:
    """How many decisions of `loop` (decided at or after `since`) were logged with `version`'s
    shadow pmf (one query)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(
                func.count(),
                func.count(DecisionRow.joined_at),
                func.min(DecisionRow.decided_at),
                func.max(DecisionRow.decided_at),
            ).where(*_shadowed(loop, version, since))
        ).one()
    return ShadowCounts(int(row[0]), int(row[1]), row[2], row[3])


def iter_shadowed(
    engine: Engine,
    loop: str,
    version: str,
    *,
    limit: int,
    since: datetime | None = None,
    yield_per: int = 1000,
) -> Iterator[ShadowedDecision]:
    """The latest `limit` decisions of `loop` (decided at or after `since`) logged with
    `version`'s shadow pmf, oldest first (ties by event id), each with its joined rewards. One
    streamed query after one that finds where the latest `limit` start; outcomes are read by
    key per batch of `yield_per`."""
    for name, value in (("limit", limit), ("yield_per", yield_per)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return _stream(engine, loop, version, limit, since, yield_per)


def _stream(
    engine: Engine,
    loop: str,
    version: str,
    limit: int,
    since: datetime | None,
    yield_per: int,
) -> Iterator[ShadowedDecision]:
    where = _shadowed(loop, version, since)
    key = (DecisionRow.decided_at, DecisionRow.event_id)
    with engine.connect() as conn:
        start = conn.execute(
            select(*key)
            .where(*where)
            .order_by(DecisionRow.decided_at.desc(), DecisionRow.event_id.desc())
            .offset(limit - 1)
            .limit(1)
        ).first()
        stmt = (
            select(*RECORD_COLUMNS, DecisionRow.joined_at)
            .where(*where)
            .order_by(*key)
            .execution_options(yield_per=yield_per)
        )
        if start is not None:
            stmt = stmt.where(tuple_(*key) >= tuple_(start[0], start[1]))
        n = len(RECORD_COLUMNS)
        bodies = BodyReader(conn, loop)
        result = conn.execute(stmt)
        try:
            for rows in result.partitions():
                records = records_from_rows(rows, bodies)
                batch = [(rec, row[n] is not None) for rec, row in zip(records, rows, strict=True)]
                yield from _with_rewards(conn, loop, batch)
        finally:
            result.close()


def _with_rewards(
    conn: Connection, loop: str, batch: list[tuple[DecisionRecord, bool]]
) -> list[ShadowedDecision]:
    found: dict[str, dict[int, float]] = {rec.event_id: {} for rec, _ in batch}
    joined_ids = [rec.event_id for rec, joined in batch if joined]
    if joined_ids:
        ids: BindParameter[list[str]] = bindparam(
            "ids", joined_ids, expanding=True, literal_execute=True
        )
        for o in conn.execute(
            select(OutcomeRow.event_id, OutcomeRow.slot, OutcomeRow.reward).where(
                OutcomeRow.loop == loop, OutcomeRow.event_id.in_(ids)
            )
        ):
            found[o.event_id][int(o.slot)] = float(o.reward)
    out: list[ShadowedDecision] = []
    for rec, joined in batch:
        rewards: dict[int, Any] = found[rec.event_id]
        out.append(ShadowedDecision(rec, joined and len(rewards) >= rec.n_slots, rewards))
    return out
