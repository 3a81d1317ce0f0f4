"""The freshness track of one loop: continue the live model on the events joined since its
checkpoint (same configuration), check it against the live one (:mod:`deploy.learner.safety`),
and swap it in, or stop the track and raise an alarm.

- Due every `learner.freshness_s` seconds (0: off) after its last run; a stopped track does not
  run until a gatekeeper resumes it (:func:`resume`).
- Needs a live version to continue: a loop without one is idle here (its first version comes
  from the candidate track through the gate, or from `decision-service learn --promote`).
- Waits (registers nothing) until at least `learner.freshness_min_events` events were joined
  after the live version's `checkpoint_seq`.
- Pass: the continuation is registered (kind "online", parent = the live version) and made
  live, the parent retired, with its audit row (actor "learner", the check numbers), in one
  transaction, which refuses if the live version changed meanwhile (then nothing is stored and
  the track runs again next time).
- Fail: nothing is registered; the track stops (`learner_state.freshness_stopped_at`/reason),
  a "freshness_stopped" alarm fires with the numbers, and an audit row records it, in one
  transaction; logged at ERROR.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from datetime import datetime

import numpy as np

import deploy.registry as registry
from deploy.learner.faults import Faults
from deploy.learner.safety import SafetyVerdict, SampleEvent, check_safety
from deploy.learner.versions import LiveVersionChanged, swap_in
from deploy.registry import ModelVersion, live_version, load_artifact
from explore.errors import Conflict
from learn.events import EventWindow, JoinedKey, count_training_events, fetch_joined
from learn.examples import BadEvent
from learn.offline_eval_targets import eval_event, explorer_for
from learn.train import Trained, resume_after, train_version
from log.learner_state import LearnerRun, LearnerState, resume_freshness, stop_freshness
from log.loops import StoredLoop
from log.schema import Engine
from log.training_reads import iter_joined_keys
from policies.vw import VWPolicy

__all__ = ["SAMPLE_SIZE", "freshness_due", "resume", "run_freshness"]

logger = logging.getLogger(__name__)

SAMPLE_SIZE = 1000
"""How many of the newest learned events the safety checks score (both versions)."""


def freshness_due(stored: StoredLoop, state: LearnerState, now: datetime) -> bool:
    """Whether the loop's freshness track should run now."""
    every = stored.config.learner.freshness_s
    if every <= 0 or state.freshness_stopped:
        return False
    last = state.last_freshness_at
    return last is None or (now - last).total_seconds() >= every


def _sample_keys(engine: Engine, loop: str, window: EventWindow) -> list[JoinedKey]:
    newest: deque[JoinedKey] = deque(maxlen=SAMPLE_SIZE)
    for chunk in iter_joined_keys(engine, loop, window, order="seq", chunk_size=SAMPLE_SIZE):
        newest.extend(chunk)
    return list(newest)


def _sample(
    engine: Engine, stored: StoredLoop, trained: Trained, new: VWPolicy, live: VWPolicy
) -> list[SampleEvent]:
    """Both versions' scores on the newest events the continuation learned (live arm only)."""
    window = EventWindow(
        after_seq=resume_after(trained.parent), through_seq=trained.stats.checkpoint_seq
    )
    out = []
    for joined in fetch_joined(engine, stored.name, _sample_keys(engine, stored.name, window)):
        if joined.record.policy_arm != "live":
            continue
        try:
            event = eval_event(joined, slates="slot0")
            if event is None:
                continue
            actions = event.actions()
            new_scores = np.asarray(new.scores(event.context, actions), dtype=np.float64)
            live_scores = np.asarray(live.scores(event.context, actions), dtype=np.float64)
        except (BadEvent, ValueError):
            continue
        out.append(SampleEvent(new_scores, live_scores, event.action, event.pscore, event.reward))
    return out


def check_continuation(
    engine: Engine, stored: StoredLoop, trained: Trained, parent: ModelVersion
) -> SafetyVerdict:
    """The safety checks of `trained` against `parent`, the live version it continues."""
    assert trained.artifact is not None
    new = VWPolicy(trained.vw_args, model=trained.artifact)
    live = VWPolicy(parent.vw_args, model=load_artifact(engine, parent.version))
    try:
        sample = _sample(engine, stored, trained, new, live)
    finally:
        new.close()
        live.close()
    return check_safety(
        sample,
        explorer_for(stored.config, policy=live),
        collapse_ratio=stored.config.learner.collapse_ratio,
        confidence=stored.config.gate.confidence,
        reward_range=(stored.config.min_reward, stored.config.max_reward),
    )


def run_freshness(
    engine: Engine,
    stored: StoredLoop,
    *,
    now: datetime,
    faults: Faults,
    on_event: Callable[[int], None] | None = None,
) -> tuple[LearnerRun, bool]:
    """One run of the loop's freshness track (assumed due). Returns its summary and whether it
    counts as a run (False while waiting for events: the track looks again next tick)."""
    loop = stored.name
    settings = stored.config.learner
    parent = live_version(engine, loop)
    if parent is None:
        message = (
            "idle: no live version to continue (the first one goes through the candidate track "
            "and the gate, or `decision-service learn --promote`)"
        )
        return LearnerRun("freshness", now, "idle", message), False
    new_events = count_training_events(engine, loop, EventWindow(after_seq=resume_after(parent)))
    if new_events < settings.freshness_min_events:
        message = (
            f"waiting: {new_events} new joined events, the track needs "
            f"{settings.freshness_min_events}"
        )
        return LearnerRun("freshness", now, "waiting", message, details={"new": new_events}), False
    trained = train_version(
        engine,
        loop,
        registry=registry,
        mode="online",
        progress=False,
        on_event=faults.training("freshness-train", on_event),
    )
    faults.trained("freshness-train")
    if trained.artifact is None:
        message = f"no learnable event among {new_events} new joined events"
        return LearnerRun("freshness", now, "waiting", message), False
    verdict = check_continuation(engine, stored, trained, parent)
    numbers = verdict.numbers.to_json()
    learned = {
        "n_events": trained.stats.n_events,
        "n_skipped": trained.stats.n_skipped,
        "checkpoint_seq": trained.checkpoint_seq,
    }
    if not verdict.passed:
        message = f"freshness track of loop {loop!r} stopped: {verdict.reason}"
        details = {
            "parent": parent.version,
            "checks": numbers,
            **learned,
        }
        stop_freshness(
            engine, loop, at=now, reason=verdict.reason, message=message, details=details
        )
        logger.error("%s (numbers: %s)", message, numbers)
        return LearnerRun("freshness", now, "stopped", message, details=details), True
    try:
        with faults.writing(engine, "freshness-register"):
            version = swap_in(
                engine,
                trained,
                parent=parent,
                now=now,
                reason=f"freshness checks passed: {verdict.reason}",
                details={"checks": numbers, **learned},
            )
    except (LiveVersionChanged, Conflict) as err:
        message = f"not swapped in: {err}"
        logger.warning("loop %s: freshness continuation %s", loop, message)
        return LearnerRun("freshness", now, "skipped", message), False
    message = (
        f"{version.version} is live: {trained.stats.n_events} new events learned on top of "
        f"{parent.version}"
    )
    logger.info("loop %s: %s", loop, message)
    details = {"checks": numbers, **learned}
    return LearnerRun("freshness", now, "swapped", message, version.version, details), True


def resume(
    engine: Engine, loop: str, *, actor: str, role: str | None, reason: str, now: datetime
) -> LearnerState:
    """A gatekeeper resumes the loop's stopped freshness track (clears its alarm; audited).
    Raises Conflict (freshness_not_stopped) when it is not stopped."""
    return resume_freshness(engine, loop, at=now, actor=actor, role=role, reason=reason)
