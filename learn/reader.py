"""Reading and building training examples in a forked reader process, while VW learns.

VW's learn call holds the GIL, so a thread cannot read the store while it runs; a process can.
With ``reader="process"`` the learner forks one reader before the pass: the reader streams the
window's rows in order (:func:`log.training_reads.iter_training_rows`, its own connection, one
snapshot), builds their VW text (:func:`learn.examples.prepare_rows`, each example's lines
joined into one text) and writes them in frames of ``chunk_size`` events to a pipe; the learner
unpickles each frame and learns it, so on a host with a free core reading and VW's learning
overlap. The examples are the ones the in-process read builds, in the same order: the model is
the same bit for bit. A reader ahead of VW blocks on the pipe, about a frame ahead: memory stays
bounded.

Forking costs a few milliseconds (a spawned worker, :mod:`learn.parallel`, costs a fresh
interpreter's imports, about a second), so it pays from a few thousand events on. The fork
copies the learner's memory but the reader uses only what it opens itself (a new engine from the
database URL; the inherited connections are never touched, and it ends with ``os._exit`` so
nothing inherited is finalised). Fork only from a process whose other threads hold no locks the
reader needs (a single-threaded process, as the benchmark's): a lock held by another thread at
the fork stays held in the reader. If the reader fails or dies, the pass fails
(:class:`learn.parallel.WorkerError`) and nothing is registered; if the learner stops early,
the reader is killed.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import signal
import struct
import traceback
from collections.abc import Generator
from datetime import datetime
from typing import IO, Any

from learn.events import EventWindow, Order, iter_training_rows
from learn.examples import LineBuilder, prepare_rows
from learn.parallel import WorkerError
from log.db import check_shareable, database_url
from log.schema import Engine, make_engine

__all__ = ["Frame", "iter_forked"]

Frame = tuple[list[list[str] | str], int | None, datetime | None, datetime | None, datetime | None]
"""Consecutive events as the reader sends them: (each event's examples as VW texts, [] when
it has none to learn (LoggingOnly) or the reason it cannot be learned; the largest join_seq and
joined_at among them; the smallest and largest decided_at among those with examples). A frame
carries three timestamps, not two per event: pickling a datetime costs more than building
an event's text."""

_HEADER = struct.Struct("<Q")
_ROWS, _DONE, _ERROR = 0, 1, 2


def _send(out: IO[bytes], kind: int, payload: Any) -> None:
    data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_HEADER.pack(len(data)))
    out.write(data)


def _produce(
    url: str, loop: str, window: EventWindow, order: Order, chunk_size: int, out: IO[bytes]
) -> None:
    """The reader's work: every event of the window, prepared, in frames of `chunk_size`."""
    engine = make_engine(url, pool_size=1)
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
    _send(out, _DONE, None)
    out.flush()
    engine.dispose()


def _child(
    url: str, loop: str, window: EventWindow, order: Order, chunk_size: int, fd: int
) -> None:
    code = 1
    try:
        # the inherited objects are the learner's: a collection scanning them would write to
        # every page of the inherited heap and copy it (copy-on-write)
        gc.freeze()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the learner's to handle
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
            try:
                _produce(url, loop, window, order, chunk_size, out)
                code = 0
            except BrokenPipeError:  # the learner stopped reading
                pass
            except BaseException:
                _send(out, _ERROR, traceback.format_exc())
                out.flush()
    except BaseException:
        pass
    finally:
        os._exit(code)


def iter_forked(
    engine: Engine, loop: str, window: EventWindow, *, order: Order, chunk_size: int
) -> Generator[Frame, None, None]:
    """The window's events with their VW examples, in training order and in frames, read and
    built by a forked reader process (see the module docstring). The fork happens at this
    call."""
    try:
        check_shareable(engine)
    except ValueError:
        raise ValueError(
            "a reader process needs a database it can open too: not an in-memory SQLite"
        ) from None
    url = database_url(engine)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the reader; it never returns
        os.close(r)
        _child(url, loop, window, order, chunk_size, w)
    os.close(w)
    return _receive(pid, os.fdopen(r, "rb", buffering=1 << 20))


def _read_frame(src: IO[bytes]) -> tuple[int, Any] | None:
    header = src.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = src.read(size)
    if len(data) < size:
        return None
    frame: tuple[int, Any] = pickle.loads(data)
    return frame


def _receive(pid: int, src: IO[bytes]) -> Generator[Frame, None, None]:
    done = False
    try:
        while True:
            frame = _read_frame(src)
            if frame is None:
                _, status = os.waitpid(pid, 0)
                done = True
                raise WorkerError(f"the training reader died (wait status {status})")
            kind, payload = frame
            if kind == _ROWS:
                yield payload
            elif kind == _ERROR:
                raise WorkerError(f"the training reader failed:\n{payload}")
            else:
                break
        _, status = os.waitpid(pid, 0)
        done = True
        if status != 0:
            raise WorkerError(f"the training reader ended badly (wait status {status})")
    finally:
        src.close()
        if not done:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
