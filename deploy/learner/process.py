"""The learner process (`decision-service learner`): per loop, join, the freshness track, the
candidate track, and the rollout of candidates (gate, shadow, canary, live, rollback).

One APScheduler job ticks every `tick_s` seconds (one tick at a time; a tick that overruns
delays the next). Each tick reads the loops and their settings afresh (loops created or changed
while the learner runs are picked up at the next tick) and, for every loop with something due,
joins its due windows and runs what is due, in this order:

1. freshness (every `learner.freshness_s`, see :mod:`deploy.learner.freshness`);
2. candidates (every `learner.candidate_interval_s`, :mod:`deploy.learner.candidates`);
3. rollout (every `rollout_every_s` of the process, :mod:`deploy.learner.progress`).

With `LearnerOptions.operate` (the CLI sets it), a second job on its own executor runs the
operate round (metrics rollup, alarm rules, webhook; deploy/operate.py) every `operate.every_s`,
and `rounds` mode runs it after each tick.

The times of the last freshness and candidate runs are stored (`learner_state`), so a restart
keeps the schedule; a track that was killed before it finished has no stored run and runs
again. A failure in one track of one loop is logged, recorded as a "failed" run and does not
stop the others. Ctrl-C or SIGTERM stop the process cleanly: a training in progress is
abandoned at its next event (nothing is registered for it) and the current transaction, if any,
completes or rolls back whole.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger

from deploy.learner.candidates import candidates_due, run_candidates
from deploy.learner.faults import Faults
from deploy.learner.freshness import freshness_due, run_freshness
from deploy.operate import OperateOptions, run_operate
from learn.scheduler import SETTLE_MARGIN_S, Stopped
from log.joiner import join_loop
from log.learner_state import LearnerRun, get_learner_state, record_run
from log.loops import StoredLoop, get_loop, list_loops
from log.schema import Engine

__all__ = ["Learner", "LearnerOptions", "run_learner_process"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnerOptions:
    """`loops`: the loops to work on (None: every loop in the store, re-read every tick).
    `join_grace_s`: windows are closed this long after their deadline (the service's
    DS_JOIN_GRACE_S); `settle_s`: the learner joins windows that closed this long ago (default
    join_grace_s + 30 s, like `decision-service learn`)."""

    loops: tuple[str, ...] | None = None
    tick_s: float = 1.0
    rollout_every_s: float = 10.0
    join_grace_s: float = 5.0
    settle_s: float | None = None
    fault: str | None = None
    # the operate job (metrics rollup, alarm rules, webhook; deploy/operate.py): None = off
    operate: OperateOptions | None = None

    def __post_init__(self) -> None:
        if not self.tick_s > 0 or not self.rollout_every_s >= 0:
            raise ValueError("tick_s must be > 0 and rollout_every_s >= 0")
        if self.join_grace_s < 0 or (self.settle_s is not None and self.settle_s < 0):
            raise ValueError("join_grace_s and settle_s must be >= 0")

    @property
    def settle(self) -> float:
        return self.join_grace_s + SETTLE_MARGIN_S if self.settle_s is None else self.settle_s


class Learner:
    """The learner's work, one tick at a time (:meth:`tick`); `stop` abandons a tick."""

    def __init__(
        self,
        engine: Engine,
        options: LearnerOptions | None = None,
        *,
        stop: threading.Event | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.engine = engine
        self.options = options or LearnerOptions()
        self.stop = stop or threading.Event()
        self.faults = faults or Faults(self.options.fault)
        self._last_rollout: dict[str, datetime] = {}

    def _check_stop(self, _n: int = 0) -> None:
        if self.stop.is_set():
            raise Stopped("the learner was stopped")

    def _loops(self) -> list[StoredLoop]:
        if self.options.loops is None:
            return list_loops(self.engine)
        found = []
        for name in self.options.loops:
            stored = get_loop(self.engine, name)
            if stored is None:
                logger.warning("loop %r does not exist (yet): skipped", name)
            else:
                found.append(stored)
        return found

    def tick(self, now: datetime | None = None) -> dict[str, list[LearnerRun]]:
        """Run what is due for every loop. Returns the runs per loop. Raises Stopped."""
        out: dict[str, list[LearnerRun]] = {}
        for stored in self._loops():
            self._check_stop()
            try:
                runs = self.loop_tick(stored, now or datetime.now(UTC))
            except Stopped:
                logger.warning("learner stopped while working on loop %r", stored.name)
                raise
            except Exception:
                logger.exception("learner: loop %r failed", stored.name)
                continue
            if runs:
                out[stored.name] = runs
        return out

    def _rollout_due(self, loop: str, now: datetime) -> bool:
        last = self._last_rollout.get(loop)
        return last is None or (now - last).total_seconds() >= self.options.rollout_every_s

    def loop_tick(self, stored: StoredLoop, now: datetime) -> list[LearnerRun]:
        """Join, then the tracks that are due, for one loop."""
        loop = stored.name
        state = get_learner_state(self.engine, loop)
        fresh = freshness_due(stored, state, now)
        batch = candidates_due(stored, state, now)
        rollout = self._rollout_due(loop, now)
        if not (fresh or batch or rollout):
            return []
        with self.faults.writing(self.engine, "join", nth=2):
            join_loop(
                self.engine,
                loop,
                default_reward=stored.config.default_reward,
                aggregation=stored.config.reward_aggregation,
                now=now - timedelta(seconds=self.options.settle),
            )
        runs: list[LearnerRun] = []
        if fresh:
            runs.append(self._track(stored, "freshness", now, self._freshness))
        if batch:
            runs.append(self._track(stored, "candidates", now, self._candidates))
        if rollout:
            runs.append(self._track(stored, "rollout", now, self._rollout))
            self._last_rollout[loop] = now
        return runs

    def _freshness(self, stored: StoredLoop, now: datetime) -> tuple[LearnerRun, bool]:
        return run_freshness(
            self.engine, stored, now=now, faults=self.faults, on_event=self._check_stop
        )

    def _candidates(self, stored: StoredLoop, now: datetime) -> tuple[LearnerRun, bool]:
        run = run_candidates(
            self.engine, stored, now=now, faults=self.faults, on_event=self._check_stop
        )
        return run, True

    def _rollout(self, stored: StoredLoop, now: datetime) -> tuple[LearnerRun, bool]:
        from deploy.learner.progress import run_rollout

        return run_rollout(self.engine, stored, now=now, faults=self.faults), False

    def _track(
        self,
        stored: StoredLoop,
        track: str,
        now: datetime,
        fn: Callable[[StoredLoop, datetime], tuple[LearnerRun, bool]],
    ) -> LearnerRun:
        self._check_stop()
        try:
            run, ran = fn(stored, now)
        except Stopped:
            raise
        except Exception as err:
            logger.exception("learner: %s track of loop %r failed", track, stored.name)
            run, ran = LearnerRun(track, now, "failed", f"{type(err).__name__}: {err}"), False
        # (a stop itself was stored with its alarm and audit row in one transaction; this is
        # its summary among the last runs)
        record_run(self.engine, stored.name, run, ran=ran)
        return run


def _operate(learner: Learner) -> None:
    options = learner.options
    if options.operate is not None:
        run_operate(learner.engine, options.operate, now=datetime.now(UTC), loops=options.loops)


def _make_scheduler(learner: Learner, tick_s: float) -> BlockingScheduler:
    scheduler = BlockingScheduler(
        executors={
            "default": ThreadPoolExecutor(max_workers=1),
            "operate": ThreadPoolExecutor(max_workers=1),  # never waits behind a training
        },
        timezone=UTC,
    )
    if learner.options.operate is not None:
        scheduler.add_job(
            _operate,
            IntervalTrigger(seconds=learner.options.operate.every_s, timezone=UTC),
            args=(learner,),
            id="operate",
            name="metrics rollup, alarms, webhook",
            executor="operate",
            next_run_time=datetime.now(UTC),
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )

    def tick() -> None:
        with contextlib.suppress(Stopped):
            learner.tick()

    scheduler.add_job(
        tick,
        IntervalTrigger(seconds=tick_s, timezone=UTC),
        id="learner",
        name="learner tick",
        next_run_time=datetime.now(UTC),
        coalesce=True,
        max_instances=1,
        misfire_grace_time=None,
    )
    return scheduler


def run_learner_process(
    engine: Engine,
    options: LearnerOptions,
    *,
    rounds: int | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the learner until Ctrl-C or SIGTERM (or, with `rounds`, for that many ticks one
    after the other, then return). Killing it at any point leaves no partial version and no
    half-done transition: every change is one transaction."""
    stop = stop or threading.Event()
    learner = Learner(engine, options, stop=stop, faults=Faults(options.fault))
    previous = _on_sigterm()
    try:
        if rounds is not None:
            for _ in range(rounds):
                learner.tick()
                _operate(learner)
            return
        scheduler = _make_scheduler(learner, options.tick_s)
        try:
            scheduler.start()
        except (KeyboardInterrupt, SystemExit):
            stop.set()
            if scheduler.running:
                scheduler.shutdown(wait=True)
    except (KeyboardInterrupt, SystemExit, Stopped):
        stop.set()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    logger.info("learner stopped")


def _on_sigterm() -> Callable[[int, FrameType | None], object] | int | None:
    """SIGTERM raises SystemExit in the main thread, like Ctrl-C's KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    return signal.signal(signal.SIGTERM, handler)
