"""Reading and building training examples in a reader process, while VW learns.

VW's learn call holds the GIL, so a thread cannot read the store while it runs; a process can.
With ``reader="process"`` (or ``"auto"`` on a large window, :func:`learn.train.resolve_reader`)
the learner starts one reader before the pass: the reader streams the window's rows in order
(:func:`log.training_reads.iter_training_rows`, its own engine from the database URL, one
snapshot), builds their VW text (:func:`learn.examples.prepare_rows`, each example's lines
joined into one text) and sends them in frames of ``chunk_size`` events over a pipe; the
learner unpickles each frame and learns it, so on a host with a free core reading and VW's
learning overlap. The examples are the ones the in-process read builds, in the same order: the
model is the same bit for bit. A reader ahead of VW blocks on the pipe, about a frame ahead:
memory stays bounded.

The reader is a child of multiprocessing's *forkserver*, not a fork of the learner: the learner
process runs a scheduler and its threads (a fork would copy any lock one of them holds, held for
good in the child, and the learner's whole heap), while the fork server is a small
single-threaded process started once per learner process (about a second of imports, paid by
the first pass that uses it) that forks each reader from a clean state, in milliseconds. If the
reader fails or dies, the pass fails (:class:`learn.parallel.WorkerError`) and nothing is
registered; if the learner stops early, the reader is killed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import resource
import signal
import sys
import threading
import traceback
from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any

from learn.events import EventWindow, Order, iter_training_rows
from learn.examples import LineBuilder, prepare_rows
from learn.parallel import WorkerError
from log.db import check_shareable, database_url
from log.schema import Engine, make_engine

__all__ = ["Frame", "ReaderUsage", "iter_forked", "last_reader_usage"]

Frame = tuple[list[list[str] | str], int | None, datetime | None, datetime | None, datetime | None]
"""Consecutive events as the reader sends them: (each event's examples as VW texts, [] when
it has none to learn (LoggingOnly) or the reason it cannot be learned; the largest join_seq and
joined_at among them; the smallest and largest decided_at among those with examples). A frame
carries three timestamps, not two per event: pickling a datetime costs more than building
an event's text."""

_ROWS, _DONE, _ERROR = 0, 1, 2
# The reader's GIL switch interval. Its read-ahead thread (log.training_reads) needs the GIL after
# each server round trip, while the reader's main thread builds examples; with CPython's default
# of 5 ms the thread waits up to that long behind the builder each time. Measured, the reader
# alone on PostgreSQL (60,000 events): 34.5 us per event at 5 ms, 28 at 1 ms, for the same CPU.
READER_SWITCH_INTERVAL_S = 0.001


@dataclass(frozen=True)
class ReaderUsage:
    """What a finished reader process used: CPU seconds (user + system) and peak RSS (MiB).
    The reader is not the learner's child (the fork server's), so the learner's
    ``RUSAGE_CHILDREN`` never counts it: the reader reports its own with its last frame."""

    cpu_s: float
    peak_rss_mb: float


_last_usage: ReaderUsage | None = None


def last_reader_usage() -> ReaderUsage | None:
    """The usage of the last reader that finished in this process (None before any)."""
    return _last_usage


def _own_usage() -> ReaderUsage:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return ReaderUsage(usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


_PRELOAD = ["learn.reader"]  # imported once by the fork server; each reader forks with it
_context_lock = threading.Lock()
_context: ForkServerContext | None = None


def _forkserver() -> ForkServerContext:
    """This process's forkserver context (the server itself starts with the first reader)."""
    global _context
    with _context_lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(_PRELOAD)
            _context = ctx
        return _context


def _send(out: Connection, kind: int, payload: Any) -> None:
    out.send_bytes(pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL))


def _produce(
    url: str, loop: str, window: EventWindow, order: Order, chunk_size: int, out: Connection
) -> None:
    """The reader's work: every event of the window, prepared, in frames of `chunk_size`."""
    engine = make_engine(url, pool_size=1)
    try:
        rows = iter_training_rows(engine, loop, window, order=order, chunk_size=chunk_size)
        events: list[list[str] | str] = []
        seq_max: int | None = None
        joined_max = decided_min = decided_max = None
        for _event_id, decided, seq, joined, blocks in prepare_rows(rows, LineBuilder()):
            if isinstance(blocks, str):
                events.append(blocks)
            else:
                events.append(["\n".join(lines) for lines in blocks])
                if blocks:
                    if decided_min is None or decided < decided_min:
                        decided_min = decided
                    if decided_max is None or decided > decided_max:
                        decided_max = decided
            if seq_max is None or seq > seq_max:
                seq_max = seq
            if joined_max is None or joined > joined_max:
                joined_max = joined
            if len(events) >= chunk_size:
                _send(out, _ROWS, (events, seq_max, joined_max, decided_min, decided_max))
                events, seq_max, joined_max, decided_min, decided_max = [], None, None, None, None
        if events:
            _send(out, _ROWS, (events, seq_max, joined_max, decided_min, decided_max))
        _send(out, _DONE, _own_usage())
    finally:
        engine.dispose()


def _reader_main(
    url: str, loop: str, window: EventWindow, order: Order, chunk_size: int, out: Connection
) -> None:
    """The reader process (a child of the fork server)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the learner's to handle
    sys.setswitchinterval(READER_SWITCH_INTERVAL_S)  # the reader's own process only
    try:
        _produce(url, loop, window, order, chunk_size, out)
    except (BrokenPipeError, ConnectionResetError):  # the learner stopped reading
        pass
    except BaseException:
        with contextlib.suppress(OSError):
            _send(out, _ERROR, traceback.format_exc())
        raise SystemExit(1) from None
    finally:
        out.close()


def iter_forked(
    engine: Engine, loop: str, window: EventWindow, *, order: Order, chunk_size: int
) -> Generator[Frame, None, None]:
    """The window's events with their VW examples, in training order and in frames, read and
    built by a reader process (see the module docstring). The reader starts at this call."""
    try:
        check_shareable(engine)
    except ValueError:
        raise ValueError(
            "a reader process needs a database it can open too: not an in-memory SQLite"
        ) from None
    ctx = _forkserver()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_reader_main,
        args=(database_url(engine), loop, window, order, chunk_size, send),
        name=f"training-reader-{loop}",
        daemon=True,
    )
    try:
        proc.start()
    finally:
        send.close()
    return _receive(proc, receive)


def _receive(proc: BaseProcess, src: Connection) -> Generator[Frame, None, None]:
    global _last_usage
    done = False
    try:
        while True:
            try:
                data = src.recv_bytes()
            except EOFError:
                proc.join()
                done = True
                raise WorkerError(f"the training reader died (exit code {proc.exitcode})") from None
            kind, payload = pickle.loads(data)
            if kind == _ROWS:
                yield payload
            elif kind == _ERROR:
                raise WorkerError(f"the training reader failed:\n{payload}")
            else:
                _last_usage = payload
                break
        proc.join()
        done = True
        if proc.exitcode != 0:
            raise WorkerError(f"the training reader ended badly (exit code {proc.exitcode})")
    finally:
        src.close()
        if not done:
            proc.kill()
            proc.join()
        proc.close()
