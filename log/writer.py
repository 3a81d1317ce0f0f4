"""The single group-commit write path (docs/architecture.md, "Guarantees").

Requests hand their records to one writer thread per process. The thread gathers what arrives
within a few milliseconds and makes the whole group durable at once: one database transaction
(PostgreSQL: binary COPY), or, while the database is unreachable, one fdatasync'd append to the
host's spool, shipped into the database when it answers again. Every record is keyed, so a
group written twice (a retry, a re-shipped segment) is stored once, and duplicates inside a
group keep the first.

What may go to the spool: rewards, activations, and decisions whose event id the service
generated (unique by construction). A decision with a client-chosen id is written only to the
database, whose primary key is the only place its uniqueness can be checked; if the database
cannot be reached the request fails with `Unavailable` (503) instead of answering a decision
that could later turn out never to have been logged.

The writer publishes a watermark in `writers`: every reward it acknowledged with a
`received_at` at or before it is in the database. The joiner closes no window past the lowest
watermark of all writers, so a reward still in a spool is never passed over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import socket
import threading
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, exc

from explore.errors import Unavailable
from log.action_store import KnownBodies
from log.apply import apply_records
from log.ops import Op
from log.records import DecisionRecord, RewardRecord, is_generated_id
from log.spool import Spool, SpoolIndex, SpoolWriteError
from log.writers import delete_writer, publish_watermark

logger = logging.getLogger(__name__)

_STOP = object()

Waiter = (
    concurrent.futures.Future["WriteResult"]
    | tuple[asyncio.AbstractEventLoop, asyncio.Future["WriteResult"]]
)


@dataclass
class _Item:
    ops: list[Op]
    waiter: Waiter
    ticket: int


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
    """`inserted[i]` is False for a record whose key was already stored (or earlier in the
    same group): the first one stands. `ops` are the records as written."""

    inserted: list[bool]
    spooled: bool = False
    ops: list[Op] | None = None


GROUP_SIZE_EDGES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


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
    refused_unverifiable: int = 0
    last_error: str | None = None
    watermark: datetime | None = None
    # groups by size: counts of groups of at most GROUP_SIZE_EDGES[i] rows (last: above all)
    group_sizes: list[int] = field(default_factory=lambda: [0] * (len(GROUP_SIZE_EDGES) + 1))


class GroupCommitWriter:
    """One writer thread per process. `submit`/`write` are thread-safe."""

    def __init__(
        self,
        engine: Engine,
        spool_dir: str | Path,
        *,
        delay_s: float = 0.002,
        max_group: int = 1024,
        ship_interval_s: float = 0.5,
        watermark_interval_s: float = 0.5,
    ) -> None:
        self.engine = engine
        self.writer_id = uuid.uuid4().hex
        self.spool = Spool(spool_dir, self.writer_id)
        self.index = SpoolIndex(spool_dir)
        self.delay_s = delay_s
        self.max_group = max_group
        self.ship_interval_s = ship_interval_s
        self.watermark_interval_s = watermark_interval_s
        self.stats = WriterStats()
        # queue.Queue, not SimpleQueue: CPython 3.11's SimpleQueue.get(timeout=t) can block
        # forever. When it takes the free lock with the queue empty and its deadline has passed
        # by more than a microsecond (the thread preempted for longer than t, on a loaded
        # host), it recomputes a negative timeout, which its lock call reads as "no timeout",
        # on a lock it now holds itself: it wakes only at the next put. With the writer's
        # 1-2 ms gathering timeout that left a lone request waiting for its commit for good
        # (one full test run hung so). Queue's timed get is a Condition's, whose lock calls
        # never receive a negative timeout (2.3 against 0.14 µs per put and get).
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        # Action bodies this writer committed over its current connection (not written again)
        self._known = KnownBodies()
        self._next_ship = 0.0
        self._next_publish = 0.0
        self._db_down_until = 0.0
        self._lock_fd: int | None = None
        self._started_at = datetime.now(UTC)
        # Watermark bookkeeping (under _lock): the received_at of rewards not yet in the
        # database, by ticket while queued, by segment once spooled.
        self._lock = threading.Lock()
        self._tickets = 0
        self._inflight: dict[int, datetime] = {}
        self._spooled: dict[Path, datetime] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Register this writer (its lock file and its row in `writers`), then start the
        thread. Needs the database: a writer that cannot register must not acknowledge."""
        if self._thread is not None:
            return
        if self._lock_fd is None:
            self._lock_fd = self.spool.hold_writer_lock()
        self._publish(force=True, raise_errors=True)
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain everything queued, ship what can be shipped, then stop."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.stats.lost_fast_ops += self.stats.pending
            self._thread = None
        self.spool.seal()
        with contextlib.suppress(Exception):
            if not self.spool.segments_of(self.writer_id):  # nothing of ours is left
                conn = self._connection()
                with conn.begin():
                    delete_writer(conn, self.writer_id)
        self._close_conn()
        if self._lock_fd is not None:
            if not self.spool.segments_of(self.writer_id):
                self.spool.lock_path(self.writer_id).unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- submitting ------------------------------------------------------------------------
    def _put(self, ops: list[Op] | Callable[[datetime], list[Op]], waiter: Waiter) -> list[Op]:
        if self._thread is None:
            raise Unavailable("the write path is not running", "writer_stopped")
        with self._lock:
            if callable(ops):
                ops = ops(datetime.now(UTC))  # stamped under the lock: see `watermark`
            self._tickets += 1
            ticket = self._tickets
            times = [op.received_at for op in ops if isinstance(op, RewardRecord)]
            if times:
                self._inflight[ticket] = min(times)
            self.stats.pending += len(ops)
        self._queue.put(_Item(ops, waiter, ticket))
        return ops

    def submit(
        self, ops: list[Op] | Callable[[datetime], list[Op]]
    ) -> concurrent.futures.Future[WriteResult]:
        fut: concurrent.futures.Future[WriteResult] = concurrent.futures.Future()
        self._put(ops, fut)
        return fut

    async def write(self, ops: list[Op] | Callable[[datetime], list[Op]]) -> WriteResult:
        """Return once the records are durable (database commit or spool fdatasync).

        `ops` may be a function of the current time that builds them: records stamped so
        (rewards' received_at) are covered by the watermark from the moment they exist."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[WriteResult] = loop.create_future()
        self._put(ops, (loop, fut))
        return await fut

    def enqueue(self, ops: list[Op]) -> None:
        """Fire and forget (fast mode): durable a few milliseconds later."""
        self._put(ops, concurrent.futures.Future())

    def write_sync(
        self, ops: list[Op] | Callable[[datetime], list[Op]], timeout: float = 60.0
    ) -> WriteResult:
        return self.submit(ops).result(timeout)

    # -- the watermark ---------------------------------------------------------------------
    def watermark(self) -> datetime:
        """Every reward this process acknowledged with received_at <= the result is in the
        database. Rewards are stamped under the same lock, so none stamped later is older."""
        with self._lock:
            for path in [p for p in self._spooled if not p.exists()]:
                del self._spooled[path]  # shipped (by us or another process of the host)
            pending = [*self._inflight.values(), *self._spooled.values()]
            now = datetime.now(UTC)
            return min(pending, default=now)

    def _publish(self, *, force: bool = False, raise_errors: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_publish:
            return
        self._next_publish = now + self.watermark_interval_s
        mark = self.watermark()
        try:
            conn = self._connection()
            with conn.begin():
                publish_watermark(
                    conn,
                    writer_id=self.writer_id,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    spool_dir=str(self.spool.directory.resolve()),
                    watermark=mark,
                    started_at=self._started_at,
                )
            self.stats.watermark = mark
        except Exception as err:
            self._close_conn()
            if raise_errors:
                raise
            self._note_error(err)

    # -- the writer thread -----------------------------------------------------------------
    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        items = [first]
        n = len(first.ops)
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
            assert isinstance(item, _Item)
            items.append(item)
            n += len(item.ops)
        return items, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                try:
                    first = self._queue.get(timeout=self.ship_interval_s)
                except queue.Empty:
                    self._housekeeping()
                    continue
                if first is _STOP:
                    break
                assert isinstance(first, _Item)
                group, stop = self._gather(first)
                self._commit_group(group)
                self._housekeeping()
            except Exception as err:  # never let the thread die: every waiter would hang
                logger.exception("writer loop error")
                self._note_error(err)
        leftovers: list[_Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Item):
                leftovers.append(item)
        with contextlib.suppress(Exception):
            if leftovers:
                self._commit_group(leftovers)
            self._ship(force=True)
            self._publish(force=True)

    def _housekeeping(self) -> None:
        self._ship()
        self._publish()

    def _commit_group(self, group: list[_Item]) -> None:
        try:
            outcomes = self._write_group(group)
        except BaseException as err:  # resolve every waiter whatever happens
            self._note_error(err)
            outcomes = [err] * len(group)
        n = sum(len(item.ops) for item in group)
        with self._lock:
            self.stats.pending -= n
            for item in group:
                self._inflight.pop(item.ticket, None)
        self._resolve(group, outcomes)

    def _write_group(self, group: list[_Item]) -> list[WriteResult | BaseException]:
        ops = [op for item in group for op in item.ops]
        self.stats.groups += 1
        self.stats.ops += len(ops)
        self.stats.max_group = max(self.stats.max_group, len(ops))
        self.stats.group_sizes[bisect_left(GROUP_SIZE_EDGES, len(ops))] += 1
        fresh = self._first_occurrences(ops)
        inserted: list[bool] | None = None
        if time.monotonic() >= self._db_down_until:
            try:
                stored = self._commit_db([ops[i] for i in fresh])
                inserted = [False] * len(ops)
                for i, ok in zip(fresh, stored, strict=True):
                    inserted[i] = ok
            except Exception as err:  # any failure to commit: the spool keeps the group safe
                self._note_error(err)
                self._db_down_until = time.monotonic() + self.ship_interval_s
        if inserted is not None:
            return self._results(group, inserted, spooled=False)
        return self._spool_group(group, ops, fresh)

    def _first_occurrences(self, ops: list[Op]) -> list[int]:
        """Indexes of the records to write: the first of each key in the group that the host's
        spool does not already hold (those stand; later ones are reported not inserted)."""
        check_spool = self.index.refresh_if_pending(self.spool)
        seen: set[Any] = set()
        out = []
        for i, op in enumerate(ops):
            key = _key(op)
            if key in seen:
                continue
            seen.add(key)
            if check_spool and self._in_spool(op):
                continue
            out.append(i)
        return out

    def _in_spool(self, op: Op) -> bool:
        if isinstance(op, RewardRecord):
            return op.reward_id in self.index.rewards
        if isinstance(op, DecisionRecord):
            return op.key in self.index.decisions
        return op.key in self.index.activations

    def _spool_group(
        self, group: list[_Item], ops: list[Op], fresh: list[int]
    ) -> list[WriteResult | BaseException]:
        """The database is unreachable: spool what may be spooled; requests holding a new
        decision with a client-chosen id fail with Unavailable (nothing of theirs written)."""
        fresh_set = set(fresh)
        spans: list[range] = []  # the indexes in `ops` of each item's records
        start = 0
        for item in group:
            spans.append(range(start, start + len(item.ops)))
            start += len(item.ops)
        refused = {
            k
            for k, span in enumerate(spans)
            if any(
                i in fresh_set
                and isinstance(ops[i], DecisionRecord)
                and not is_generated_id(ops[i].event_id)
                for i in span
            )
        }
        keep = [
            i for k, span in enumerate(spans) if k not in refused for i in span if i in fresh_set
        ]
        to_spool = [ops[i] for i in keep]
        try:
            if to_spool:
                segment = self.spool.append(to_spool)
                self.index.add(segment, to_spool, self.spool.size)
                times = [op.received_at for op in to_spool if isinstance(op, RewardRecord)]
                if times:
                    with self._lock:
                        old = self._spooled.get(segment)
                        self._spooled[segment] = min(times) if old is None else min(old, *times)
        except SpoolWriteError as err:  # neither database nor disk: fail the requests loudly
            self._note_error(err)
            return [Unavailable(f"the event store is unreachable and the spool failed: {err}")] * (
                len(group)
            )
        self.stats.spooled_ops += len(to_spool)
        inserted = [False] * len(ops)
        for i in keep:
            inserted[i] = True
        results = self._results(group, inserted, spooled=True)
        for k in refused:
            self.stats.refused_unverifiable += 1
            results[k] = Unavailable(
                "the event store is unreachable, so a client-chosen event_id cannot be checked "
                "for reuse; retry, or omit event_id to let the service generate one"
            )
        return results

    @staticmethod
    def _results(
        group: list[_Item], inserted: list[bool], *, spooled: bool
    ) -> list[WriteResult | BaseException]:
        out: list[WriteResult | BaseException] = []
        i = 0
        for item in group:
            out.append(WriteResult(inserted[i : i + len(item.ops)], spooled, item.ops))
            i += len(item.ops)
        return out

    @staticmethod
    def _resolve(group: list[_Item], outcomes: list[WriteResult | BaseException]) -> None:
        """Resolve thread futures directly and wake each event loop once for its whole share."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for item, outcome in zip(group, outcomes, strict=True):
            waiter = item.waiter
            if isinstance(waiter, tuple):
                by_loop.setdefault(waiter[0], []).append((waiter[1], outcome))
            elif waiter.done():
                continue
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
        logger.warning("write path: %s", self.stats.last_error)
        self._close_conn()

    def _close_conn(self) -> None:
        # After any failure, bodies are written again: the database reached next may not hold
        # them (a failover to a replica that had not received them).
        self._known.forget()
        if self._conn is not None:
            with contextlib.suppress(Exception):  # the connection may already be broken
                self._conn.close()
            self._conn = None

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self.engine.connect()
        return self._conn

    def _commit_db(self, ops: list[Op]) -> list[bool]:
        """Commit records that are unique by key within `ops`; returns which were new."""
        if not ops:
            return []
        conn = self._connection()
        known = self._known
        try:
            try:
                with conn.begin():
                    inserted = apply_records(conn, ops, optimistic=True, known=known)
            except exc.IntegrityError:
                # A decision already stored (a retry): redo the group through the
                # insert-if-absent path, which reports which rows were new.
                known.discard()
                with conn.begin():
                    inserted = apply_records(conn, ops, optimistic=False, known=known)
        except BaseException:
            known.discard()
            self._close_conn()
            raise
        known.commit()  # committed: its new bodies are stored
        return inserted

    # -- shipping the spool ----------------------------------------------------------------
    def _ship(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_ship:
            return
        self._next_ship = now + self.ship_interval_s
        if not self.spool.segments():
            self.spool.seal()
            self._forget_dead_writers()
            return
        self.spool.seal()
        for path in self.spool.segments():
            fd = self.spool.claim(path)
            if fd is None:
                continue
            try:
                ops = self.spool.read(path)
                self._commit_db(self._unique(ops))
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
                self._db_down_until = time.monotonic() + self.ship_interval_s
                return
            Spool.release(fd, path, shipped=True)
            self.stats.shipped_ops += len(ops)
        self._db_down_until = 0.0
        self._forget_dead_writers()

    @staticmethod
    def _unique(ops: list[Op]) -> list[Op]:
        seen: set[Any] = set()
        out = []
        for op in ops:
            key = _key(op)
            if key not in seen:
                seen.add(key)
                out.append(op)
        return out

    def _forget_dead_writers(self) -> None:
        """Writers of this host whose process died: once their segments are shipped, their
        row no longer holds the joiner back."""
        for writer_id, fd in list(self.spool.dead_writers()):
            try:
                if self.spool.segments_of(writer_id):
                    os.close(fd)
                    continue
                conn = self._connection()
                with conn.begin():
                    delete_writer(conn, writer_id)
                self.spool.forget_writer(writer_id, fd)
            except Exception as err:
                with contextlib.suppress(OSError):
                    os.close(fd)
                self._note_error(err)
                return


def _key(op: Op) -> tuple[Any, ...]:
    """What makes a record unique: writing two with the same key stores the first."""
    if isinstance(op, RewardRecord):
        return (RewardRecord, op.reward_id)
    return (type(op), *op.key)


def _is_data_error(err: BaseException) -> bool:
    """True when the database rejected the content (not when it could not be reached)."""
    if isinstance(err, exc.DBAPIError) and err.orig is not None:
        err = err.orig
    refused = (psycopg.DataError, psycopg.IntegrityError, exc.DataError, exc.IntegrityError)
    return isinstance(err, (*refused, ValueError, TypeError, KeyError))
