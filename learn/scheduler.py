"""The scheduled learner (DESIGN §6): every interval, join due reward windows, then train.

Each round, for every loop (all loops in the store when none are named): the joiner closes the
windows that ended `settle_s` ago (default: `join_grace_s` + 30 s), then
:func:`learn.train.learn_once` trains a candidate on every join batch committed after the live
version's `checkpoint_seq`: those of this round's join and those of the service's own joiners
running concurrently. Join batches are numbered in commit order (join_seq), so a batch still
committing while the learner reads is simply learned next round, never skipped. Rounds run
one at a time in a worker thread; Ctrl-C stops the learner: a training in progress is
abandoned at its next event and registers nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger

from learn.registry import Registry
from learn.train import LearnResult, Mode, learn_once
from log.joiner import join_loop
from log.loops import get_loop, list_loops
from log.schema import Engine

__all__ = ["Stopped", "learn_round", "make_scheduler", "run_learner"]

logger = logging.getLogger(__name__)


SETTLE_MARGIN_S = 30.0


class Stopped(Exception):
    """The learner was asked to stop during a round."""


def learn_round(
    engine: Engine,
    loops: Sequence[str] | None = None,
    *,
    registry: Registry,
    mode: Mode = "online",
    promote: bool = False,
    join_grace_s: float = 0.0,
    settle_s: float | None = None,
    progress: bool = False,
    workers: int = 0,
    now: datetime | None = None,
    stop: threading.Event | None = None,
    raise_errors: bool = False,
) -> dict[str, LearnResult]:
    """One round: join then learn each loop. A loop that fails is logged and skipped (with
    `raise_errors`, its error is raised instead: for one-shot commands).

    Setting `stop` abandons the training in progress at its next event (nothing is
    registered for it) and raises :class:`Stopped`.
    """
    settle_s = join_grace_s + SETTLE_MARGIN_S if settle_s is None else settle_s
    if join_grace_s < 0 or settle_s < 0:
        raise ValueError("join_grace_s and settle_s must be >= 0")
    now = now or datetime.now(UTC)
    watermark = now - timedelta(seconds=settle_s)
    names = list(loops) if loops is not None else [s.name for s in list_loops(engine)]
    results: dict[str, LearnResult] = {}

    def check_stop(_n: int = 0) -> None:
        if stop is not None and stop.is_set():
            raise Stopped("the learner was stopped")

    for name in names:
        check_stop()
        try:
            stored = get_loop(engine, name)
            if stored is None:
                raise LookupError(f"loop {name!r} does not exist")
            join_loop(
                engine,
                name,
                default_reward=stored.config.default_reward,
                aggregation=stored.config.reward_aggregation,
                now=watermark,
            )
            result = learn_once(
                engine,
                name,
                registry=registry,
                mode=mode,
                promote=promote,
                progress=progress,
                workers=workers,
                on_event=check_stop if stop is not None else None,
            )
        except Stopped:
            logger.warning("learner stopped while learning loop %r: nothing registered", name)
            raise
        except Exception:
            if raise_errors:
                raise
            logger.exception("learning loop %r failed", name)
            continue
        logger.info("%s", result.message)
        results[name] = result
    return results


def make_scheduler(
    engine: Engine,
    loops: Sequence[str] | None = None,
    *,
    registry: Registry,
    interval_s: float,
    mode: Mode = "online",
    promote: bool = False,
    join_grace_s: float = 0.0,
    settle_s: float | None = None,
    progress: bool = False,
    workers: int = 0,
    stop: threading.Event | None = None,
) -> BlockingScheduler:
    """A scheduler (not started) whose one job runs :func:`learn_round` now and then every
    `interval_s` seconds, one round at a time (a round that overruns delays the next)."""
    if not interval_s > 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    scheduler = BlockingScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=1)}, timezone=UTC
    )
    scheduler.add_job(
        learn_round,
        IntervalTrigger(seconds=interval_s, timezone=UTC),
        args=(engine, loops),
        kwargs={
            "registry": registry,
            "mode": mode,
            "promote": promote,
            "join_grace_s": join_grace_s,
            "settle_s": settle_s,
            "progress": progress,
            "workers": workers,
            "stop": stop,
        },
        id="learn",
        name="join and learn",
        next_run_time=datetime.now(UTC),
        coalesce=True,
        max_instances=1,
        misfire_grace_time=None,
    )
    return scheduler


def run_learner(
    engine: Engine,
    loops: Sequence[str] | None = None,
    *,
    registry: Registry,
    interval_s: float,
    mode: Mode = "online",
    promote: bool = False,
    join_grace_s: float = 0.0,
    settle_s: float | None = None,
    progress: bool = False,
    workers: int = 0,
) -> None:
    """Run the learner until Ctrl-C. A killed learner leaves no partial version either:
    registration is one transaction."""
    stop = threading.Event()
    scheduler = make_scheduler(
        engine,
        loops,
        registry=registry,
        interval_s=interval_s,
        mode=mode,
        promote=promote,
        join_grace_s=join_grace_s,
        settle_s=settle_s,
        progress=progress,
        workers=workers,
        stop=stop,
    )
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        stop.set()
        if scheduler.running:
            scheduler.shutdown(wait=True)
