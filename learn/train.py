"""Vowpal Wabbit training from joined events: online continuation and batch retraining.

Online: the loop's live model continued on the events joined after its `checkpoint_seq` (the
commit-ordered join watermark, see :mod:`log.training_reads`), in (join_seq, event_id) order;
without a live model, a fresh workspace with the loop's VW arguments. The new version's
`checkpoint_seq` is the largest join_seq it read, so consecutive versions learn disjoint runs
of join batches and none is ever skipped, whatever the hosts' clocks say; its training window
covers its whole lineage (the registry widens it by the parent's). Batch: a fresh workspace
trained on the events decided in [since, until), in (decided_at, event_id) order. Either way
the result is registered as a candidate in one transaction (live directly with `promote`), or
nothing is registered when there was nothing new. Interrupting training (an exception,
Ctrl-C) registers nothing.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from tqdm import tqdm

from learn.events import (
    EventWindow,
    Order,
    count_training_events,
    iter_training_rows,
)
from learn.examples import LineBuilder, Prepared, TrainingEvent, prepare, prepare_rows
from learn.parallel import iter_prepared
from learn.reader import Frame, iter_forked
from learn.registry import ModelInfo, Registry
from log.db import check_shareable
from log.loops import get_loop
from log.schema import Engine
from policies.vw import VWPolicy

__all__ = [
    "LearnResult",
    "Mode",
    "TrainStats",
    "Trained",
    "learn_once",
    "resume_after",
    "train",
    "train_version",
]

logger = logging.getLogger(__name__)

Mode = Literal["online", "batch"]
MODES: tuple[str, ...] = ("online", "batch")
Reader = Literal["auto", "inline", "process"]
READERS: tuple[str, ...] = ("auto", "inline", "process")
# "auto" reads in a reader process (learn.reader) from this many events in the window, when a
# core is free (load average below the number of cores minus one) and another process can open
# the database: the process pays the fork server's start (about a second, once per process)
# and only helps on a core nothing else wants; on a busy host reading in-process measured
# faster (benchmarks/learn.py; README "Benchmarks").
AUTO_PROCESS_EVENTS = 50_000
_PROGRESS_EVERY = 512
_MAX_WARNINGS = 10


@dataclass
class TrainStats:
    """What one training pass saw: events learned, examples (slots), events skipped, ranges."""

    n_events: int = 0
    n_examples: int = 0
    n_skipped: int = 0
    decided_from: datetime | None = None
    decided_until: datetime | None = None
    # The largest join_seq seen (skipped events included: they are never retried), and the
    # largest joined_at (informative: host clocks).
    checkpoint_seq: int | None = None
    checkpoint: datetime | None = None


def train(
    policy: VWPolicy,
    events: Iterable[TrainingEvent],
    *,
    progress: bool = False,
    total: int | None = None,
    desc: str = "learn",
    on_event: Callable[[int], None] | None = None,
    builder: LineBuilder | None = None,
) -> TrainStats:
    """Learn `events` in the order given. `on_event(n)` is called after the n-th event learned.

    Events that cannot be learned (chosen action missing, probability out of range...) are
    skipped, counted and logged.
    """
    return learn_prepared(
        policy,
        prepare(events, builder or LineBuilder()),
        progress=progress,
        total=total,
        desc=desc,
        on_event=on_event,
    )


def _event_bar(total: int | None, desc: str, progress: bool) -> tqdm:
    """The training pass's progress bar (events, on stderr; off without `progress`)."""
    return tqdm(
        total=total,
        desc=desc,
        unit="event",
        file=sys.stderr,
        disable=not progress,
        mininterval=0.5,
        smoothing=0.1,
    )


def learn_prepared(
    policy: VWPolicy,
    prepared: Iterable[Prepared],
    *,
    progress: bool = False,
    total: int | None = None,
    desc: str = "learn",
    on_event: Callable[[int], None] | None = None,
) -> TrainStats:
    """Learn prepared events in the order given (see :func:`train`)."""
    stats = TrainStats()
    learn = policy.learn_lines
    pending = 0
    with _event_bar(total, desc, progress) as bar:
        for _event_id, decided, seq, joined, blocks in prepared:
            if stats.checkpoint_seq is None or seq > stats.checkpoint_seq:
                stats.checkpoint_seq = seq
            if stats.checkpoint is None or joined > stats.checkpoint:
                stats.checkpoint = joined
            pending += 1
            if pending >= _PROGRESS_EVERY:
                bar.update(pending)
                pending = 0
            if isinstance(blocks, str):
                stats.n_skipped += 1
                if stats.n_skipped <= _MAX_WARNINGS:
                    logger.warning("skipping event: %s", blocks)
                continue
            if not blocks:  # served in LoggingOnly mode: nothing to learn, not a learned event
                continue
            for lines in blocks:
                learn(lines)
            stats.n_examples += len(blocks)
            stats.n_events += 1
            if stats.decided_from is None or decided < stats.decided_from:
                stats.decided_from = decided
            if stats.decided_until is None or decided > stats.decided_until:
                stats.decided_until = decided
            if on_event is not None:
                on_event(stats.n_events)
        bar.update(pending)
    if stats.n_skipped > _MAX_WARNINGS:
        logger.warning("skipped %d events that could not be learned", stats.n_skipped)
    return stats


def learn_frames(
    policy: VWPolicy,
    frames: Iterable[Frame],
    *,
    progress: bool = False,
    total: int | None = None,
    desc: str = "learn",
    on_event: Callable[[int], None] | None = None,
) -> TrainStats:
    """Learn the reader's frames in the order given (:mod:`learn.reader`): the same learning
    and the same stats as :func:`learn_prepared` on the same events."""
    stats = TrainStats()
    learn = policy.learn_text
    with _event_bar(total, desc, progress) as bar:
        for events, seq, joined, decided_from, decided_until in frames:
            for texts in events:
                if isinstance(texts, str):
                    stats.n_skipped += 1
                    if stats.n_skipped <= _MAX_WARNINGS:
                        logger.warning("skipping event: %s", texts)
                    continue
                if not texts:  # served in LoggingOnly mode: nothing to learn
                    continue
                for text in texts:
                    learn(text)
                stats.n_examples += len(texts)
                stats.n_events += 1
                if on_event is not None:
                    on_event(stats.n_events)
            if seq is not None and (stats.checkpoint_seq is None or seq > stats.checkpoint_seq):
                stats.checkpoint_seq = seq
            if joined is not None and (stats.checkpoint is None or joined > stats.checkpoint):
                stats.checkpoint = joined
            if decided_from is not None and (
                stats.decided_from is None or decided_from < stats.decided_from
            ):
                stats.decided_from = decided_from
            if decided_until is not None and (
                stats.decided_until is None or decided_until > stats.decided_until
            ):
                stats.decided_until = decided_until
            bar.update(len(events))
    if stats.n_skipped > _MAX_WARNINGS:
        logger.warning("skipped %d events that could not be learned", stats.n_skipped)
    return stats


@dataclass(frozen=True)
class LearnResult:
    """The outcome of one training job: the registered version, or None with the reason."""

    loop: str
    mode: str
    version: ModelInfo | None
    n_events: int
    n_examples: int
    n_skipped: int
    seconds: float
    message: str

    @property
    def events_per_s(self) -> float:
        return self.n_events / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "loop": self.loop,
            "mode": self.mode,
            "version": None if self.version is None else self.version.to_json(),
            "n_events": self.n_events,
            "n_examples": self.n_examples,
            "n_skipped": self.n_skipped,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s, 1),
            "message": self.message,
        }


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """Leave the objects that exist now out of the garbage collector's scans while the block
    runs (`gc.freeze`), then hand them back. A training pass allocates a few objects per event,
    and every full collection it triggers rescans the whole long-lived heap: in a process that
    already holds a lot (a long-running learner, a third pass in one process) that was a
    quarter of the reading and example-building time; in a fresh process it is a few percent."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def resolve_reader(reader: Reader, engine: Engine, workers: int, n_events: int) -> Reader:
    """Where a pass reads: `reader` unless it is "auto", which picks "process" for a window
    of at least `AUTO_PROCESS_EVENTS` events when no `workers` are asked for, a core is free
    (:func:`free_core`) and another process can open the database; "inline" otherwise."""
    if reader != "auto":
        return reader
    if workers > 0 or n_events < AUTO_PROCESS_EVENTS or not free_core():
        return "inline"
    try:
        check_shareable(engine)
    except ValueError:
        return "inline"
    return "process"


def free_core() -> bool:
    """Whether the host has a core nothing else is using: more than one core and a one-minute
    load average below their number minus one (False where the load is unknown)."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return False
    return cores > 1 and load < cores - 1


def _resume_after(parent: ModelInfo | None) -> int | None:
    """The join_seq online continuation of `parent` resumes after (None: from the start)."""
    if parent is None:
        return None
    if parent.checkpoint_seq is not None:
        return parent.checkpoint_seq
    # registered before join_seq existed: it learned what was joined then, which carries no
    # seq (reads as 0); everything with a seq is new to it
    return 0 if parent.checkpoint is not None else None


def _checkpoint_seq(parent: ModelInfo | None, stats: TrainStats) -> int | None:
    """The largest join_seq the new version's lineage learned."""
    parent_seq = None if parent is None else parent.checkpoint_seq
    seqs = [s for s in (stats.checkpoint_seq, parent_seq) if s is not None]
    return max(seqs) if seqs else None


@dataclass(frozen=True)
class Trained:
    """A trained model, not registered: its artifact (None when no event was learned), the
    arguments it was trained with, the live version it continues (online mode) and what it
    learned (`stats`, `checkpoint_seq` = the largest join_seq of its lineage)."""

    loop: str
    mode: str
    vw_args: str
    artifact: bytes | None
    parent: ModelInfo | None
    stats: TrainStats
    checkpoint_seq: int | None
    seconds: float


def resume_after(parent: ModelInfo | None) -> int | None:
    """The join_seq online continuation of `parent` resumes after (None: from the start)."""
    return _resume_after(parent)


def _check_arguments(
    mode: str,
    since: datetime | None,
    until: datetime | None,
    workers: int,
    vw_args: str | None,
    reader: str = "auto",
) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "online" and (since is not None or until is not None):
        raise ValueError("since/until apply to batch mode only (online resumes at the checkpoint)")
    if mode == "online" and vw_args is not None:
        raise ValueError("vw_args apply to batch mode only (online continues the live model)")
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise ValueError(f"{name} must be a timezone-aware datetime, got {value.isoformat()}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    if reader == "process" and workers > 0:
        raise ValueError("reader='process' and workers > 0 are two ways to read: pick one")
    if since is not None and until is not None and since >= until:
        raise ValueError(f"since ({since.isoformat()}) must be before until ({until.isoformat()})")


def train_version(
    engine: Engine,
    loop: str,
    *,
    registry: Registry,
    mode: Mode = "online",
    vw_args: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    through_seq: int | None = None,
    progress: bool = True,
    chunk_size: int = 1000,
    workers: int = 0,
    on_event: Callable[[int], None] | None = None,
    reader: Reader = "auto",
) -> Trained:
    """Train a model for `loop` without registering it (see :func:`learn_once`).

    `vw_args` (batch mode only): train these VW arguments instead of the loop's (a candidate
    configuration; the caller validates them). Raises LookupError for an unknown loop,
    ValueError for bad arguments.
    """
    _check_arguments(mode, since, until, workers, vw_args, reader)
    stored = get_loop(engine, loop)
    if stored is None:
        raise LookupError(f"loop {loop!r} does not exist")
    started = time.perf_counter()

    parent: ModelInfo | None = None
    if mode == "online":
        parent = registry.live_version(engine, loop)
        window = EventWindow(after_seq=_resume_after(parent), through_seq=through_seq)
    else:
        window = EventWindow(through_seq=through_seq, since=since, until=until)
    total = count_training_events(engine, loop, window) if progress or reader == "auto" else None
    reader = resolve_reader(reader, engine, workers, total or 0)
    if parent is not None:
        policy = VWPolicy(parent.vw_args, model=registry.load_artifact(engine, parent.version))
    else:
        # a loop whose strategy explores inside the model trains with its VW reduction
        config = stored.config
        args = config.model_args if vw_args is None else config.with_explore_args(vw_args)
        policy = VWPolicy(args)
    try:
        order: Order = "seq" if mode == "online" else "decided"
        desc = f"learn {loop} ({mode})"
        if reader == "process":
            frames = iter_forked(engine, loop, window, order=order, chunk_size=chunk_size)
            with contextlib.closing(frames), frozen_gc():
                stats = learn_frames(
                    policy, frames, progress=progress, total=total, desc=desc, on_event=on_event
                )
        else:
            prepared: Generator[Prepared, None, None]
            if workers > 0:
                prepared = iter_prepared(
                    engine, loop, window, order=order, chunk_size=chunk_size, workers=workers
                )
            else:
                rows = iter_training_rows(engine, loop, window, order=order, chunk_size=chunk_size)
                prepared = prepare_rows(rows, LineBuilder())
            with contextlib.closing(prepared), frozen_gc():
                stats = learn_prepared(
                    policy,
                    prepared,
                    progress=progress,
                    total=total,
                    desc=desc,
                    on_event=on_event,
                )
        artifact = policy.save() if stats.n_events else None
        trained_args = policy.vw_args
    finally:
        policy.close()
    return Trained(
        loop=loop,
        mode=mode,
        vw_args=trained_args,
        artifact=artifact,
        parent=parent,
        stats=stats,
        checkpoint_seq=_checkpoint_seq(parent, stats),
        seconds=time.perf_counter() - started,
    )


def learn_once(
    engine: Engine,
    loop: str,
    *,
    registry: Registry,
    mode: Mode = "online",
    promote: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
    through_seq: int | None = None,
    progress: bool = True,
    chunk_size: int = 1000,
    workers: int = 0,
    on_event: Callable[[int], None] | None = None,
    reader: Reader = "auto",
) -> LearnResult:
    """Train one candidate for `loop` and register it (live directly with `promote`).

    `registry` is ``deploy.registry`` (passed in: `learn` does not import `deploy`).

    `since`/`until` bound decided_at in batch mode (default: everything joined).
    `through_seq` leaves out the join batches after that join_seq (a fixed snapshot; without
    it, everything committed when the keys are read). `workers` > 0 reads and builds the
    examples in that many processes (:mod:`learn.parallel`; the same model, faster where cores
    are free). `reader="process"` reads and builds them in a reader process while VW learns
    (:mod:`learn.reader`; the same model); "auto" (the default) does so on large windows
    (:func:`resolve_reader`), "inline" never. Raises LookupError for an unknown loop,
    ValueError for bad arguments.
    """
    started = time.perf_counter()
    trained = train_version(
        engine,
        loop,
        registry=registry,
        mode=mode,
        since=since,
        until=until,
        through_seq=through_seq,
        progress=progress,
        chunk_size=chunk_size,
        workers=workers,
        on_event=on_event,
        reader=reader,
    )
    stats, parent = trained.stats, trained.parent
    version = None
    if trained.artifact is None:
        if mode == "batch":
            where = " in the window"
        elif parent is not None:
            where = f" after version {parent.version}'s checkpoint"
        else:
            where = ""
        message = f"no new joined events for loop {loop!r}{where}: nothing registered"
        if stats.n_skipped:
            message += f" ({stats.n_skipped} events could not be learned)"
    else:
        version = registry.register(
            engine,
            loop=loop,
            kind=mode,
            vw_args=trained.vw_args,
            artifact=trained.artifact,
            parent=None if parent is None else parent.version,
            trained_from=stats.decided_from,
            trained_until=stats.decided_until,
            n_events=stats.n_events,
            checkpoint=stats.checkpoint,
            checkpoint_seq=trained.checkpoint_seq,
            promote_now=promote,
        )
        message = (
            f"registered {version.version} ({version.status}) for loop {loop!r}: "
            f"{stats.n_events} events"
        )
    return LearnResult(
        loop=loop,
        mode=mode,
        version=version,
        n_events=stats.n_events,
        n_examples=stats.n_examples,
        n_skipped=stats.n_skipped,
        seconds=time.perf_counter() - started,
        message=message,
    )
