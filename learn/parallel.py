"""Preparing training examples in worker processes, so that VW never waits for Python.

Learning itself is sequential (one VW workspace, the events in order), but reading the decision
rows, parsing their JSON and writing the VW text costs the learner process more CPU than VW's
own learning. With ``workers=N``, the learner streams the keys in order (one query, one
snapshot of what is there) and hands chunk ``k`` of keys to worker ``k % N``; each worker
fetches its chunks' rows, builds their examples and sends them back; the learner takes the
chunks back in order and learns them. The examples are the same as in-process, so the model is
the same bit for bit. At most ``2 N`` chunks are in flight: memory stays bounded.

Workers are spawned (a fresh interpreter each: no inherited connections or threads; the main
module must be import-safe, as for any spawned process) and end with the pass; if one fails or
dies, the pass fails and nothing is registered. Each costs about half a second to start: worth
it for large batches on a host with free cores, not for small online increments.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import queue
import traceback
from collections import deque
from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any

from learn.events import EventWindow, JoinedKey, Order, fetch_training_rows, iter_joined_keys
from learn.examples import BadEvent, LineBuilder, Prepared
from log.db import check_shareable, database_url
from log.schema import Engine, make_engine

__all__ = ["WorkerError", "iter_prepared"]

_POLL_S = 1.0
_ORPHAN_CHECK_S = 5.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STOP = None


class WorkerError(RuntimeError):
    """A worker process failed or died; the training pass is abandoned."""


def _worker(url: str, loop: str, tasks: Any, results: Any, parent: int) -> None:
    """Fetch and build each chunk of event ids received; answer {event_id: (decided_at,
    examples | error)}.
    Ends at the stop marker, or when the learner is gone (killed without cleaning up)."""
    try:
        engine = make_engine(url, pool_size=1)
        builder = LineBuilder()
        gc.freeze()  # what exists now lives as long as the worker: never rescan it
        while True:
            try:
                ids = tasks.get(timeout=_ORPHAN_CHECK_S)
            except queue.Empty:
                if os.getppid() != parent:
                    break
                continue
            if ids is _STOP:
                break
            # join_seq/joined_at are the learner's business: the keys stay with it
            rows = fetch_training_rows(engine, loop, [(i, 0, _EPOCH) for i in ids])
            out: dict[str, tuple[datetime, list[list[str]] | str]] = {}
            for row in rows:
                try:
                    out[row.event_id] = (row.decided_at, builder.row_lines(row))
                except BadEvent as err:
                    out[row.event_id] = (row.decided_at, str(err))
            results.put(("ok", out))
        engine.dispose()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the learner cleans up
        pass
    except BaseException:
        results.put(("error", traceback.format_exc()))


def iter_prepared(
    engine: Engine,
    loop: str,
    window: EventWindow,
    *,
    order: Order,
    chunk_size: int,
    workers: int,
) -> Generator[Prepared, None, None]:
    """The window's events with their VW examples, in training order, built by `workers`
    processes (see the module docstring). Rows gone since the keys were read are left out."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    try:
        check_shareable(engine)
    except ValueError:
        raise ValueError(
            "workers need a database they can open too: not an in-memory SQLite"
        ) from None
    ctx = multiprocessing.get_context("spawn")
    url = database_url(engine)
    tasks = [ctx.Queue() for _ in range(workers)]
    results = [ctx.Queue() for _ in range(workers)]
    procs = [
        ctx.Process(
            target=_worker,
            args=(url, loop, tasks[w], results[w], os.getpid()),
            name=f"learn-worker-{w}",
            daemon=True,
        )
        for w in range(workers)
    ]
    for proc in procs:
        proc.start()
    in_flight: deque[tuple[int, list[JoinedKey]]] = deque()

    def receive(k: int, keys: list[JoinedKey]) -> Generator[Prepared, None, None]:
        w = k % workers
        while True:
            try:
                status, payload = results[w].get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not procs[w].is_alive():
                    raise WorkerError(
                        f"training worker {w} died (exit code {procs[w].exitcode})"
                    ) from None
        if status != "ok":
            raise WorkerError(f"training worker {w} failed:\n{payload}")
        for event_id, join_seq, joined_at in keys:
            built = payload.get(event_id)
            if built is not None:
                yield event_id, built[0], join_seq, joined_at, built[1]

    clean = False
    try:
        chunks = iter_joined_keys(engine, loop, window, order=order, chunk_size=chunk_size)
        try:
            for k, keys in enumerate(chunks):
                tasks[k % workers].put([key[0] for key in keys])
                in_flight.append((k, keys))
                if len(in_flight) >= 2 * workers:
                    yield from receive(*in_flight.popleft())
        finally:
            chunks.close()
        while in_flight:
            yield from receive(*in_flight.popleft())
        for q in tasks:
            q.put(_STOP)
        for proc in procs:
            proc.join(timeout=30)
        clean = True
    finally:
        for proc in procs:
            if not clean and proc.is_alive():
                proc.terminate()
            proc.join(timeout=30)
        for q in (*tasks, *results):
            q.cancel_join_thread()
            q.close()
