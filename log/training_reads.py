"""Joined decisions streamed for training and evaluation, in order, with bounded memory.

A decision is joined once the joiner closed its window: `joined_at` is set and its outcomes
exist. Each join batch commits with one `join_seq` per loop, taken from `join_clock` at the
end of the batch's transaction with the row lock held until commit, so join_seq order is
commit order: once a reader sees join_seq `s`, every batch with a smaller seq is visible
too, and a batch committing later gets a larger seq. That is the watermark online
continuation resumes after (:attr:`EventWindow.after_seq`); `joined_at` comes from the
joiner host's clock and is informative only (a batch of one join run, or a host whose clock
is behind, can give later commits an earlier `joined_at`).

The keys (event id, join_seq, joined_at) come in order through one streaming
query (one snapshot; a server-side cursor on PostgreSQL); for each chunk of keys the
decisions and their outcomes are fetched by primary key and built into
:class:`JoinedDecision` values. Nothing holds more than one chunk.

Decisions joined before join_seq existed (revision 0005) carry no seq: they read as seq 0,
come first in seq order, and are never "after" a seq watermark.

Each event also carries, per slot, the guardrail signals the joiner counted inside its window
(`JoinedDecision.guardrails`: {slot: {metric: count}}, only slots with signals; empty for most
events and for outcomes joined before revision 0006). The outcomes' `guardrails` column is NULL
without signals, so the read pays one NULL column per outcome.
"""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    String,
    func,
    select,
    text,
    type_coerce,
)

from log.action_store import BodyReader, ChunkBodies
from log.decision_reads import RECORD_COLUMNS, record_columns_sql, records_from_rows
from log.models import DecisionRow, OutcomeRow
from log.records import DecisionRecord

__all__ = [
    "EventWindow",
    "GuardrailCounts",
    "JoinedDecision",
    "JoinedKey",
    "Order",
    "TrainingRow",
    "count_joined",
    "fetch_joined",
    "fetch_training_rows",
    "iter_joined",
    "iter_joined_keys",
    "iter_training_rows",
    "last_join_seq",
]

Order = Literal["seq", "decided"]
ORDERS: tuple[str, ...] = ("seq", "decided")


GuardrailCounts = Mapping[int, Mapping[str, int]]
"""Per slot, per guardrail metric, how many of its signals were received inside the window
(slots without signals are absent)."""


@dataclass(frozen=True, slots=True)
class JoinedDecision:
    """A joined decision: the record as logged, its joined reward per slot, the join batch
    that closed its window (`join_seq`, commit-ordered; 0 before revision 0005) and, per slot,
    the guardrail signals counted inside the window (`guardrails`, empty when none)."""

    record: DecisionRecord
    rewards: Mapping[int, float]
    join_seq: int
    joined_at: datetime
    guardrails: GuardrailCounts = field(default_factory=dict)

    @property
    def event_id(self) -> str:
        return self.record.event_id

    @property
    def decided_at(self) -> datetime:
        return self.record.decided_at


@dataclass(frozen=True)
class EventWindow:
    """Which joined events to read.

    ``after_seq`` < join_seq <= ``through_seq`` (commit-ordered join watermarks) and
    ``since`` <= decided_at < ``until``; None leaves a side open.
    """

    after_seq: int | None = None
    through_seq: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("after_seq", "through_seq"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(f"{name} must be an int >= 0 or None, got {value!r}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
                raise ValueError(f"{name} must be a timezone-aware datetime or None")

    def clauses(self, loop: str) -> list[ColumnElement[bool]]:
        d = DecisionRow
        out: list[ColumnElement[bool]] = [d.loop == loop, d.joined_at.is_not(None)]
        if self.after_seq is not None:
            out.append(d.join_seq > self.after_seq)
        if self.through_seq is not None:
            out.append(func.coalesce(d.join_seq, 0) <= self.through_seq)
        if self.since is not None:
            out.append(d.decided_at >= self.since)
        if self.until is not None:
            out.append(d.decided_at < self.until)
        return out


def count_joined(engine: Engine, loop: str, window: EventWindow | None = None) -> int:
    """How many joined events of `loop` the window holds."""
    window = window or EventWindow()
    with engine.connect() as conn:
        n = conn.execute(
            select(func.count()).select_from(DecisionRow).where(*window.clauses(loop))
        ).scalar_one()
    return int(n)


def last_join_seq(engine: Engine, loop: str) -> int:
    """The largest join_seq committed for `loop` (0 before its first join): a snapshot that
    every later join batch is after (``EventWindow(through_seq=...)`` reads a fixed set)."""
    with engine.connect() as conn:
        value = conn.execute(
            select(func.max(DecisionRow.join_seq)).where(DecisionRow.loop == loop)
        ).scalar_one_or_none()
    return int(value or 0)


JoinedKey = tuple[str, int, datetime]
"""(event_id, join_seq, joined_at) of one joined decision."""

# Records: the record's columns; outcomes: (event_id, slot, reward, guardrails).
_ROWS = select(*RECORD_COLUMNS)
# guardrails as its stored text (NULL on nearly every row), parsed only where present
_OUTCOMES = select(
    OutcomeRow.event_id,
    OutcomeRow.slot,
    OutcomeRow.reward,
    type_coerce(OutcomeRow.guardrails, String),
)

# PostgreSQL: one primary-key probe per id (LATERAL with an optimisation fence), a plan that
# does not depend on fresh statistics. With `event_id IN (...)` and stale statistics (a bulk
# import, autovacuum off or behind) the planner was seen scanning the loop's every row for
# each chunk: 2 s instead of 7 ms per 1,000 events.
_PG_SELECT, _PG_TYPED = record_columns_sql("d")
_PG_ROWS = text(
    f"SELECT {_PG_SELECT} "
    "FROM unnest(CAST(:ids AS text[])) AS k(event_id) CROSS JOIN LATERAL "
    f"(SELECT * FROM {DecisionRow.__tablename__} "
    "WHERE loop = :loop AND event_id = k.event_id LIMIT 1) AS d"
).columns(*_PG_TYPED)
_PG_OUTCOMES = text(
    "SELECT o.event_id, o.slot, o.reward, o.guardrails "
    "FROM unnest(CAST(:ids AS text[])) AS k(event_id) CROSS JOIN LATERAL "
    f"(SELECT event_id, slot, reward, guardrails FROM {OutcomeRow.__tablename__} "
    "WHERE loop = :loop AND event_id = k.event_id OFFSET 0) AS o"
)

Fetched = tuple[
    dict[str, DecisionRecord], dict[str, dict[int, float]], dict[str, dict[int, dict[str, int]]]
]


def _collect(rows: Iterable[Any], outcomes: Iterable[Any], bodies: BodyReader) -> Fetched:
    records = {record.event_id: record for record in records_from_rows(rows, bodies)}
    rewards: dict[str, dict[int, float]] = defaultdict(dict)
    guardrails: dict[str, dict[int, dict[str, int]]] = {}
    for event_id, slot, reward, counts in outcomes:
        rewards[event_id][slot] = reward
        if counts:  # NULL (no signals) on nearly every row: nothing to build
            if isinstance(counts, str | bytes):  # SQLite: the stored JSON text
                counts = orjson.loads(counts)
            if counts:
                guardrails.setdefault(event_id, {})[slot] = {
                    str(k): int(v) for k, v in counts.items()
                }
    return records, rewards, guardrails


def _fetch(conn: Connection, loop: str, ids: list[str], bodies: BodyReader) -> Fetched:
    if conn.dialect.name == "postgresql":
        params = {"ids": ids, "loop": loop}
        return _collect(
            conn.execute(_PG_ROWS, params).all(), conn.execute(_PG_OUTCOMES, params), bodies
        )
    return _collect(
        conn.execute(_ROWS.where(DecisionRow.loop == loop, DecisionRow.event_id.in_(ids))).all(),
        conn.execute(_OUTCOMES.where(OutcomeRow.loop == loop, OutcomeRow.event_id.in_(ids))),
        bodies,
    )


def _check(order: str, chunk_size: int) -> None:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")


def iter_joined_keys(
    engine: Engine, loop: str, window: EventWindow, *, order: Order, chunk_size: int
) -> Generator[list[JoinedKey], None, None]:
    """The keys of the window's events in order, `chunk_size` at a time, from one streamed
    query (one snapshot). `order` "seq": (join_seq, event_id), the order online continuation
    learns in; "decided": (decided_at, event_id)."""
    _check(order, chunk_size)
    return _keys_of(engine, loop, window, order, chunk_size)


def _keys_of(
    engine: Engine, loop: str, window: EventWindow, order: Order, chunk_size: int
) -> Generator[list[JoinedKey], None, None]:
    with engine.connect() as conn:
        chunks = _keys(conn, loop, window, order, chunk_size)
        try:
            yield from chunks
        finally:
            chunks.close()


def _keys(
    conn: Connection, loop: str, window: EventWindow, order: Order, chunk_size: int
) -> Generator[list[JoinedKey], None, None]:
    d = DecisionRow
    first = d.join_seq.nulls_first() if order == "seq" else d.decided_at
    stmt = (
        select(d.event_id, d.join_seq, d.joined_at)
        .where(*window.clauses(loop))
        .order_by(first, d.event_id)
    )
    keys = conn.execution_options(stream_results=True, yield_per=chunk_size).execute(stmt)
    try:
        for part in keys.partitions():
            yield [(k[0], k[1] or 0, k[2]) for k in part if k[2] is not None]
    finally:
        keys.close()


def fetch_joined(engine: Engine, loop: str, keys: list[JoinedKey]) -> list[JoinedDecision]:
    """The decisions of `keys` (one chunk), in the same order; rows gone since are left out."""
    with engine.connect() as conn:
        return _joined(conn, loop, keys, BodyReader(conn, loop))


def _joined(
    conn: Connection, loop: str, keys: list[JoinedKey], bodies: BodyReader
) -> list[JoinedDecision]:
    records, rewards, guardrails = _fetch(conn, loop, [k[0] for k in keys], bodies)
    out = []
    empty: dict[int, float] = {}
    no_signals: dict[int, dict[str, int]] = {}
    for event_id, join_seq, joined_at in keys:
        record = records.get(event_id)
        if record is not None:
            out.append(
                JoinedDecision(
                    record,
                    rewards.get(event_id, empty),
                    join_seq,
                    joined_at,
                    guardrails.get(event_id, no_signals),
                )
            )
    return out


def iter_joined(
    engine: Engine,
    loop: str,
    window: EventWindow | None = None,
    *,
    order: Order = "seq",
    chunk_size: int = 1000,
) -> Generator[JoinedDecision, None, None]:
    """Stream the joined decisions of `loop` in the window, in `order` (see
    :func:`iter_joined_keys`). Arguments are checked at the call (ValueError)."""
    _check(order, chunk_size)
    return _stream(engine, loop, window or EventWindow(), order, chunk_size)


def _stream(
    engine: Engine, loop: str, window: EventWindow, order: Order, chunk_size: int
) -> Generator[JoinedDecision, None, None]:
    # one connection: the fetches see the snapshot the keys came from (SQLite: the same
    # read transaction; PostgreSQL: rows are never un-joined, so a later snapshot is a superset)
    with engine.connect() as conn:
        chunks = _keys(conn, loop, window, order, chunk_size)
        bodies = BodyReader(conn, loop)
        try:
            for keys in chunks:
                yield from _joined(conn, loop, keys, bodies)
        finally:
            chunks.close()


# ---------------------------------------------------------------------------------------------
# The training read: only what the examples need, each action as its stored JSON text.


class TrainingRow(NamedTuple):
    """A joined decision as training reads it: only the fields its examples need, the JSON
    ones as their stored text (`context_json`, `actions_json`: the reader memoises their VW
    text by that text, catalogs repeat the same actions across events; `pmf`, `excluded`,
    `slots`, `shadow` parse theirs when asked: a single decision needs only `pmf`). A named
    tuple, not a frozen dataclass: building one per event costs a fifth as much."""

    event_id: str
    decided_at: datetime
    join_seq: int
    joined_at: datetime
    context_json: str
    actions_json: str
    pmf_json: str
    excluded_json: str
    chosen: str
    slots_json: str
    is_slate: bool
    shadow_json: str | None
    rewards: Mapping[int, float]
    # the bodies of the actions `actions_json` refers to (log/action_store.py), shared by the
    # rows of a chunk and fetched only when the builder asks for one it has not memoised
    bodies: ChunkBodies

    @property
    def pmf(self) -> list[float]:
        pmf: list[float] = orjson.loads(self.pmf_json)
        return pmf

    @property
    def excluded(self) -> list[str]:
        excluded: list[str] = orjson.loads(self.excluded_json)
        return excluded

    @property
    def slots(self) -> list[dict[str, Any]]:
        slots: list[dict[str, Any]] = orjson.loads(self.slots_json)
        return slots

    @property
    def shadow(self) -> dict[str, Any] | None:
        if self.shadow_json is None:
            return None
        shadow: dict[str, Any] | None = orjson.loads(self.shadow_json)
        return shadow

    @property
    def plain(self) -> bool:
        """A single decision without exclusions or shadow (the common case), read from the
        text without parsing it."""
        shadow = self.shadow_json
        return (
            not self.is_slate
            and self.excluded_json == "[]"
            and (shadow is None or shadow == "null")
        )


_T = DecisionRow.__tablename__
_O = OutcomeRow.__tablename__
_TRAINING_COLUMNS = (
    "d.event_id, d.decided_at, CAST(d.context AS TEXT), CAST(d.actions AS TEXT), "
    "CAST(d.pmf AS TEXT), CAST(d.excluded AS TEXT), d.chosen, CAST(d.slots AS TEXT), "
    "d.is_slate, CAST(d.shadow AS TEXT)"
)
# The chunk fetches go straight to the driver's cursor (sqlite3, psycopg): the values are
# strings, numbers and timestamps that need no SQLAlchemy processing, and per row that
# processing (and compiling an expanding IN per chunk) cost three times the driver's own
# fetch. PostgreSQL probes each id by primary key (LATERAL, see _PG_ROWS).
_LITE_TRAINING = f"SELECT {_TRAINING_COLUMNS} FROM {_T} AS d WHERE d.loop = ? AND d.event_id IN "
_LITE_REWARDS = f"SELECT event_id, slot, reward FROM {_O} WHERE loop = ? AND event_id IN "
_LITE_MAX_IDS = 10_000  # ids per statement (SQLite allows 32,766 parameters)
_PG_TRAINING = (
    f"SELECT {_TRAINING_COLUMNS} "
    "FROM unnest(CAST(%(ids)s AS text[])) AS k(event_id) CROSS JOIN LATERAL "
    f"(SELECT * FROM {_T} WHERE loop = %(loop)s AND event_id = k.event_id LIMIT 1) AS d"
)
_PG_REWARDS = (
    "SELECT o.event_id, o.slot, o.reward "
    "FROM unnest(CAST(%(ids)s AS text[])) AS k(event_id) CROSS JOIN LATERAL "
    f"(SELECT event_id, slot, reward FROM {_O} "
    "WHERE loop = %(loop)s AND event_id = k.event_id OFFSET 0) AS o"
)


_fromisoformat = datetime.fromisoformat


def _utc(value: datetime | str) -> datetime:
    """A stored timestamp as the aware UTC datetime :class:`log.models.UTCDateTime` reads:
    SQLite keeps naive UTC text (parsed with the offset appended: one C call, where
    ``replace(tzinfo=...)`` after the parse costs several times more), PostgreSQL gives aware
    datetimes."""
    if isinstance(value, str):
        try:
            return _fromisoformat(value + "+00:00")
        except ValueError:  # the text carries an offset itself
            value = _fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _driver_rows(conn: Connection, loop: str, ids: list[str]) -> tuple[list[Any], list[Any]]:
    """(decision rows, (event_id, slot, reward) rows) of `ids`, through the driver's cursor."""
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if conn.dialect.name == "postgresql":
            params = {"ids": ids, "loop": loop}
            rows = cur.execute(_PG_TRAINING, params).fetchall()
            return rows, cur.execute(_PG_REWARDS, params).fetchall()
        rows, outcomes = [], []
        for lo in range(0, len(ids), _LITE_MAX_IDS):
            part = ids[lo : lo + _LITE_MAX_IDS]
            marks = "(" + ",".join("?" * len(part)) + ")"
            rows += cur.execute(_LITE_TRAINING + marks, [loop, *part]).fetchall()
            outcomes += cur.execute(_LITE_REWARDS + marks, [loop, *part]).fetchall()
        return rows, outcomes
    finally:
        cur.close()


def _training_rows(
    conn: Connection, loop: str, keys: list[JoinedKey], bodies: BodyReader
) -> list[TrainingRow]:
    rows, outcomes = _driver_rows(conn, loop, [k[0] for k in keys])
    texts = bodies.chunk([r[3] for r in rows])
    rewards: dict[str, dict[int, float]] = defaultdict(dict)
    for event_id, slot, reward in outcomes:
        rewards[event_id][slot] = reward
    found = {r[0]: r for r in rows}
    out: list[TrainingRow] = []
    append = out.append
    empty: dict[int, float] = {}
    get_reward = rewards.get
    for event_id, join_seq, joined_at in keys:
        r = found.get(event_id)
        if r is not None:
            # (event_id, decided_at, context, actions, pmf, excluded, chosen, slots, is_slate,
            # shadow)
            append(
                TrainingRow(
                    event_id,
                    _utc(r[1]),
                    join_seq,
                    joined_at,
                    r[2],
                    r[3],
                    r[4],
                    r[5],
                    r[6],
                    r[7],
                    bool(r[8]),
                    r[9],
                    get_reward(event_id, empty),
                    texts,
                )
            )
    return out


def fetch_training_rows(engine: Engine, loop: str, keys: list[JoinedKey]) -> list[TrainingRow]:
    """The training rows of `keys` (one chunk), in the same order; rows gone are left out."""
    with engine.connect() as conn:
        return _training_rows(conn, loop, keys, BodyReader(None, loop, engine=engine))


def iter_training_rows(
    engine: Engine,
    loop: str,
    window: EventWindow | None = None,
    *,
    order: Order = "seq",
    chunk_size: int = 1000,
) -> Generator[TrainingRow, None, None]:
    """The window's joined decisions as :class:`TrainingRow`, in `order` (the same events, in
    the same order, as :func:`iter_joined`).

    On PostgreSQL the chunks are read ahead by a thread (one connection, the same single
    snapshot; at most two chunks wait besides the caller's) while the caller works on the
    current one: psycopg releases the GIL during the round trips and the server's work, so
    that time overlaps with building and learning examples. SQLite reads in the caller's
    thread: its pages are local and the fetch is mostly turning rows into Python objects,
    which holds the GIL; a thread there only contended with the caller for it (measured:
    the inline pass 3-5 us per event slower with it, 41 against 45 us)."""
    _check(order, chunk_size)
    window = window or EventWindow()
    if engine.dialect.name == "sqlite":
        return _stream_direct(engine, loop, window, order, chunk_size)
    return _stream_rows(engine, loop, window, order, chunk_size)


def _stream_direct(
    engine: Engine, loop: str, window: EventWindow, order: Order, chunk_size: int
) -> Generator[TrainingRow, None, None]:
    chunks = _stream_chunks(engine, loop, window, order, chunk_size)
    try:
        for rows in chunks:
            yield from rows
    finally:
        chunks.close()


_READ_AHEAD_POLL_S = 0.1


def _stream_rows(
    engine: Engine, loop: str, window: EventWindow, order: Order, chunk_size: int
) -> Generator[TrainingRow, None, None]:
    ahead: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=_READ_AHEAD_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            chunks = _stream_chunks(engine, loop, window, order, chunk_size)
            try:
                for rows in chunks:
                    if not put(("rows", rows)):
                        return
            finally:
                chunks.close()
            put(("done", None))
        except BaseException as err:  # handed to the reading caller
            put(("error", err))

    thread = threading.Thread(target=read, name="training-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = ahead.get()
            if kind == "rows":
                yield from payload
            elif kind == "error":
                raise payload
            else:
                return
    finally:
        stop.set()
        thread.join()


def _stream_chunks(
    engine: Engine, loop: str, window: EventWindow, order: Order, chunk_size: int
) -> Generator[list[TrainingRow], None, None]:
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            chunks = _lite_chunks(conn, loop, window, order, chunk_size)
            try:
                yield from chunks
            finally:
                chunks.close()
            return
        keys = _training_keys(conn, loop, window, order, chunk_size)
        bodies = BodyReader(None, loop, engine=engine)
        try:
            for part in keys:
                yield _training_rows(conn, loop, part, bodies)
        finally:
            keys.close()


def _lite_chunks(
    conn: Connection, loop: str, window: EventWindow, order: Order, chunk_size: int
) -> Generator[list[TrainingRow], None, None]:
    """SQLite: the rows in order from one query with every column the examples need and each
    event's outcomes joined to it (each decision row is visited once: the ordering index holds
    the rowid, not the keys, so a keys pass visits every 4.5 KB row as a fetch by primary key
    does again; the outcomes come by their primary key, not by a second statement per chunk).
    The rows are taken from the driver's cursor: SQLAlchemy only compiles the statement and
    binds the window (its per-row processing cost more than SQLite's own fetch). An event's
    outcome rows are consecutive (the decisions are the join's outer loop). PostgreSQL keeps
    keys + primary-key probes (:data:`_PG_ROWS`: a plan that does not depend on fresh
    statistics)."""
    d = DecisionRow
    o = OutcomeRow
    first = d.join_seq.nulls_first() if order == "seq" else d.decided_at
    stmt = (
        select(
            d.event_id,
            d.join_seq,
            d.joined_at,
            d.decided_at,
            d.context,
            d.actions,
            d.pmf,
            d.excluded,
            d.chosen,
            d.slots,
            d.is_slate,
            d.shadow,
            o.slot,
            o.reward,
        )
        .select_from(
            DecisionRow.__table__.outerjoin(
                OutcomeRow.__table__, (o.loop == d.loop) & (o.event_id == d.event_id)
            )
        )
        .where(*window.clauses(loop))
        .order_by(first, d.event_id)
    )
    result = conn.execute(stmt)
    cursor = result.cursor  # the driver's rows: plain tuples, the JSON and timestamps as text
    bodies = BodyReader(None, loop, engine=conn.engine)
    try:
        carry: list[Any] = []
        while True:
            part: list[Any] = list(cursor.fetchmany(chunk_size))
            if not part:
                break
            rows, carry = _lite_rows(carry + part if carry else part, bodies)
            if rows:
                yield rows
        if carry:
            rows, _ = _lite_rows(carry, bodies, last=True)
            yield rows
    finally:
        result.close()


def _lite_rows(
    part: list[Any], bodies: BodyReader, *, last: bool = False
) -> tuple[list[TrainingRow], list[Any]]:
    """The training rows of joined (decision, outcome) rows, and the rows of the last event
    when it may continue in the next fetch (all of it is built when `last`)."""
    # (event_id, join_seq, joined_at, decided_at, context, actions, pmf, excluded, chosen,
    # slots, is_slate, shadow, slot, reward)
    texts = bodies.chunk([r[5] for r in part if r[2] is not None])
    out: list[TrainingRow] = []
    append = out.append
    n = len(part)
    i = 0
    while i < n:
        r = part[i]
        event_id = r[0]
        j = i + 1
        while j < n and part[j][0] == event_id:
            j += 1
        if j == n and not last:
            return out, part[i:]
        if j == i + 1:  # one outcome (a single decision): no slice
            rewards = {} if r[12] is None else {r[12]: r[13]}
        else:
            rewards = {row[12]: row[13] for row in part[i:j] if row[12] is not None}
        if r[2] is not None:
            append(
                TrainingRow(
                    event_id,
                    _utc(r[3]),
                    r[1] or 0,
                    _utc(r[2]),
                    r[4],
                    r[5],
                    r[6],
                    r[7],
                    r[8],
                    r[9],
                    bool(r[10]),
                    r[11],
                    rewards,
                    texts,
                )
            )
        i = j
    return out, []


def _training_keys(
    conn: Connection, loop: str, window: EventWindow, order: Order, chunk_size: int
) -> Generator[list[JoinedKey], None, None]:
    """:func:`_keys` with joined_at converted here (:func:`_utc`), not by SQLAlchemy's
    per-value type processing."""
    d = DecisionRow
    first = d.join_seq.nulls_first() if order == "seq" else d.decided_at
    stmt = (
        select(d.event_id, d.join_seq, type_coerce(d.joined_at, String))
        .where(*window.clauses(loop))
        .order_by(first, d.event_id)
    )
    keys = conn.execution_options(stream_results=True, yield_per=chunk_size).execute(stmt)
    try:
        for part in keys.partitions():
            yield [(k[0], k[1] or 0, _utc(k[2])) for k in part if k[2] is not None]
    finally:
        keys.close()
