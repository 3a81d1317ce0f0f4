"""The single group-commit write path (DESIGN §5).

Requests hand their ops to one writer thread per process. The thread gathers what arrives
within a few milliseconds and makes the whole group durable at once: one database
transaction (PostgreSQL: binary COPY into a staging table, then one INSERT .. ON CONFLICT),
or, while the database is unreachable, one fdatasync'd append to the local spool, which is
shipped into the database when it answers again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, exc, update
from sqlalchemy.dialects import postgresql, sqlite

from log.models import DecisionRow, RewardRow
from log.ops import Activate, InsertDecision, InsertReward, Op
from log.pgcopy import copy_decisions
from log.spool import Spool

logger = logging.getLogger(__name__)

_STOP = object()

# A queued item: the ops and what to resolve once they are durable (a thread future for
# synchronous callers; an asyncio future and its loop for requests).
Waiter = (
    concurrent.futures.Future["WriteResult"]
    | tuple[asyncio.AbstractEventLoop, asyncio.Future["WriteResult"]]
)
Item = tuple[list["Op"], Waiter]


def _resolve_async(
    pairs: list[tuple[asyncio.Future[WriteResult], WriteResult | BaseException]],
) -> None:
    for fut, outcome in pairs:
        if fut.done():  # the request was cancelled (client went away); the write stands
            continue
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)


@dataclass
class WriteResult:
    """`inserted[i]` is False for a decision whose (loop, event_id) was already stored."""

    inserted: list[bool]
    spooled: bool = False


@dataclass
class WriterStats:
    groups: int = 0
    ops: int = 0
    spooled_ops: int = 0
    shipped_ops: int = 0
    errors: int = 0
    pending: int = 0
    max_group: int = 0
    lost_fast_ops: int = 0
    quarantined_segments: int = 0
    last_error: str | None = None


class GroupCommitWriter:
    """One writer thread per process. `submit` is thread-safe; `write` awaits durability."""

    def __init__(
        self,
        engine: Engine,
        spool_dir: str | Path,
        *,
        delay_s: float = 0.002,
        max_group: int = 1024,
        ship_interval_s: float = 0.5,
    ) -> None:
        self.engine = engine
        self.spool = Spool(spool_dir)
        self.delay_s = delay_s
        self.max_group = max_group
        self.ship_interval_s = ship_interval_s
        self.stats = WriterStats()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        self._next_ship = 0.0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain everything queued, then stop."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.stats.lost_fast_ops += self.stats.pending
            self._thread = None
        self.spool.seal()
        self._close_conn()

    # -- submitting ------------------------------------------------------------------------
    def submit(self, ops: list[Op]) -> concurrent.futures.Future[WriteResult]:
        fut: concurrent.futures.Future[WriteResult] = concurrent.futures.Future()
        self._put(ops, fut)
        return fut

    def _put(self, ops: list[Op], waiter: Waiter) -> None:
        if self._thread is None:
            raise RuntimeError("writer is not running")
        self.stats.pending += len(ops)
        self._queue.put((ops, waiter))

    async def write(self, ops: list[Op]) -> WriteResult:
        """Return once the ops are durable (database commit or spool fdatasync)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[WriteResult] = loop.create_future()
        self._put(ops, (loop, fut))
        return await fut

    def enqueue(self, ops: list[Op]) -> None:
        """Fire and forget (fast mode): durable a few milliseconds later."""
        self._put(ops, concurrent.futures.Future())

    def write_sync(self, ops: list[Op], timeout: float = 60.0) -> WriteResult:
        return self.submit(ops).result(timeout)

    # -- the writer thread -----------------------------------------------------------------
    def _gather(self, first: object) -> tuple[list[Item], bool]:
        items = [first]
        n = len(first[0])  # type: ignore[index]
        deadline = time.monotonic() + self.delay_s
        stop = False
        while n < self.max_group:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            items.append(item)
            n += len(item[0])  # type: ignore[index]
        return items, stop  # type: ignore[return-value]

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=self.ship_interval_s)
            except queue.Empty:
                self._maybe_ship()
                continue
            if first is _STOP:
                break
            group, stop = self._gather(first)
            self._commit_group(group)
            self._maybe_ship()
        # drain anything still queued after the stop marker
        leftovers = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                leftovers.append(item)
        if leftovers:
            self._commit_group(leftovers)  # type: ignore[arg-type]
        self._maybe_ship(force=True)

    def _commit_group(self, group: list[Item]) -> None:
        ops = [op for item_ops, _ in group for op in item_ops]
        self.stats.groups += 1
        self.stats.ops += len(ops)
        self.stats.max_group = max(self.stats.max_group, len(ops))
        spooled = False
        inserted: list[bool] | None = None
        if not self.spool.has_pending():
            try:
                inserted = self._commit_db(ops)
            except Exception as err:  # any failure to commit: the spool keeps the group safe
                self._note_error(err)
        if inserted is None:
            try:
                self.spool.append(ops)
            except OSError as err:  # neither database nor disk: fail the requests loudly
                self._note_error(err)
                self.stats.pending -= len(ops)
                self._resolve(group, [err] * len(group))
                return
            spooled = True
            self.stats.spooled_ops += len(ops)
            inserted = [True] * len(ops)
        self.stats.pending -= len(ops)
        outcomes: list[WriteResult | BaseException] = []
        i = 0
        for item_ops, _ in group:
            outcomes.append(WriteResult(inserted[i : i + len(item_ops)], spooled))
            i += len(item_ops)
        self._resolve(group, outcomes)

    @staticmethod
    def _resolve(group: list[Item], outcomes: list[WriteResult | BaseException]) -> None:
        """Resolve thread futures directly and wake each event loop once for its whole share."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for (_, waiter), outcome in zip(group, outcomes, strict=True):
            if isinstance(waiter, tuple):
                by_loop.setdefault(waiter[0], []).append((waiter[1], outcome))
            elif isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve_async, pairs)

    def _note_error(self, err: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{type(err).__name__}: {err}"[:500]
        logger.warning("group commit failed, using the local spool: %s", self.stats.last_error)
        self._close_conn()

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # the connection may already be broken
                self._conn.close()
            self._conn = None

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self.engine.connect()
        return self._conn

    def _commit_db(self, ops: list[Op]) -> list[bool]:
        conn = self._connection()
        try:
            try:
                with conn.begin():
                    return apply_ops(conn, ops, optimistic=True)
            except exc.IntegrityError:
                # A decision already stored (a retry) or twice in this group: redo the group
                # through the insert-if-absent path, which reports which rows were new.
                with conn.begin():
                    return apply_ops(conn, ops, optimistic=False)
        except BaseException:
            self._close_conn()
            raise

    # -- shipping the spool ----------------------------------------------------------------
    def _maybe_ship(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_ship:
            return
        self._next_ship = now + self.ship_interval_s
        self.spool.seal()
        for path in self.spool.segments():
            fd = self.spool.claim(path)
            if fd is None:
                continue
            shipped = False
            try:
                ops = self.spool.read(path)
                self._commit_db(ops)
                shipped = True
                self.stats.shipped_ops += len(ops)
            except Exception as err:
                self._note_error(err)
                if _is_data_error(err):
                    # The database answered but refuses this segment's content: set it aside
                    # (kept on disk for an operator) so it cannot block everything after it.
                    self.spool.quarantine(path)
                    self.stats.quarantined_segments += 1
                    logger.error("spool segment %s quarantined: %s", path.name, err)
                    Spool.release(fd, path, shipped=False)
                    continue
                Spool.release(fd, path, shipped=False)  # still unreachable: retry later
                return
            Spool.release(fd, path, shipped=shipped)


def _is_data_error(err: BaseException) -> bool:
    """True when the database rejected the content (not when it could not be reached)."""
    if isinstance(err, exc.DBAPIError) and err.orig is not None:
        err = err.orig
    refused = (psycopg.DataError, psycopg.IntegrityError, exc.DataError, exc.IntegrityError)
    return isinstance(err, (*refused, ValueError, TypeError))


def apply_ops(conn: Connection, ops: list[Op], *, optimistic: bool = False) -> list[bool]:
    """Apply ops in order inside the caller's transaction; decisions are insert-if-absent.

    With `optimistic` (PostgreSQL), decisions are COPied straight into the table: an existing
    key raises IntegrityError and the caller retries without it.
    """
    inserted = [True] * len(ops)
    decisions = [(i, op) for i, op in enumerate(ops) if isinstance(op, InsertDecision)]
    if decisions and optimistic and conn.dialect.name == "postgresql":
        copy_decisions(conn, [d.row for _, d in decisions], direct=True)
    elif decisions:
        stored = _insert_decisions(conn, [d.row for _, d in decisions])
        seen: set[tuple[str, str]] = set()
        for i, d in decisions:
            key = d.key
            inserted[i] = key in stored and key not in seen
            seen.add(key)
    rewards = [op.row for op in ops if isinstance(op, InsertReward)]
    if rewards:
        ins = _dialect_insert(conn, RewardRow).on_conflict_do_nothing(index_elements=["reward_id"])
        conn.execute(ins, rewards)
    for op in ops:
        if isinstance(op, Activate):
            conn.execute(
                update(DecisionRow)
                .where(
                    DecisionRow.loop == op.loop,
                    DecisionRow.event_id == op.event_id,
                    DecisionRow.activated_at.is_(None),
                )
                .values(activated_at=op.activated_at, reward_deadline=op.reward_deadline)
            )
    return inserted


def _dialect_insert(conn: Connection, model: type) -> postgresql.Insert | sqlite.Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


def _insert_decisions(conn: Connection, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Insert decisions, skipping keys already stored; returns the keys actually inserted."""
    if conn.dialect.name == "postgresql":
        return copy_decisions(conn, rows)
    stmt = (
        sqlite.insert(DecisionRow)
        .on_conflict_do_nothing(index_elements=["loop", "event_id"])
        .returning(DecisionRow.loop, DecisionRow.event_id)
    )
    out: set[tuple[str, str]] = set()
    for row in rows:
        hit = conn.execute(stmt, row).first()
        if hit is not None:
            out.add((hit[0], hit[1]))
    return out
