"""The candidate track of one loop: every `learner.candidate_interval_s`, train each VW argument
set of `learner.candidates` in batch and register it as a candidate for the gate.

- The window: the events decided in the last `train_window_s` seconds and joined. Its newest
  `holdout_fraction` (by decided_at) is left out of training, so the gate has events the
  candidate was not trained on as soon as it is registered (it evaluates a version only on
  events decided after its `trained_until`).
- Each argument set is validated like a loop's (`policies.check_vw_args`, and with the loop's
  exploration reduction: `policies.check_model_args`); one that is refused is reported in the
  run and skipped.
- An argument set with a version still in rollout (candidate, shadow or canary) is not trained
  again until that version is decided (rejected, live or retired): repeated candidates of one
  configuration would restart the gate's sequential evidence every interval, and a restart
  after a kill does not register a second copy.
- Registration is one transaction with its audit row (`model.register`, actor "learner").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import deploy.registry as registry
from deploy.learner.faults import Faults
from deploy.learner.versions import register_candidate
from learn.events import EventWindow, count_training_events
from learn.train import train_version
from log.evaluations import joined_decided_at
from log.learner_state import LearnerRun, LearnerState
from log.loops import StoredLoop
from log.registry_store import list_models
from log.schema import Engine
from policies import check_model_args, check_vw_args

__all__ = ["IN_ROLLOUT", "candidates_due", "run_candidates", "training_window"]

logger = logging.getLogger(__name__)

IN_ROLLOUT = ("candidate", "shadow", "canary")
"""Statuses of a version whose rollout is not decided yet."""


def candidates_due(stored: StoredLoop, state: LearnerState, now: datetime) -> bool:
    settings = stored.config.learner
    if not settings.candidates:
        return False
    last = state.last_candidate_at
    return last is None or (now - last).total_seconds() >= settings.candidate_interval_s


def training_window(
    engine: Engine, stored: StoredLoop, now: datetime
) -> tuple[datetime, datetime, int, int] | None:
    """(since, until, n_train, n_holdout): train on joined events decided in [since, until),
    the gate holds out those at or after `until`. None when the window has too few events to
    split (fewer than 2)."""
    settings = stored.config.learner
    since = now - timedelta(seconds=settings.train_window_s)
    n = count_training_events(engine, stored.name, EventWindow(since=since))
    n_train = int(n * (1.0 - settings.holdout_fraction))
    if n_train < 1 or n_train >= n:
        return None
    until = joined_decided_at(engine, stored.name, n_train, since=since)
    if until is None or until <= since:
        return None
    trained = count_training_events(engine, stored.name, EventWindow(since=since, until=until))
    if trained < 1:
        return None
    return since, until, trained, n - trained


def run_candidates(
    engine: Engine,
    stored: StoredLoop,
    *,
    now: datetime,
    faults: Faults,
    on_event: Callable[[int], None] | None = None,
) -> LearnerRun:
    """One run of the loop's candidate track (assumed due)."""
    loop = stored.name
    settings = stored.config.learner
    window = training_window(engine, stored, now)
    if window is None:
        return LearnerRun("candidates", now, "idle", "too few joined events in the window")
    since, until, n_train, n_holdout = window
    busy = {v.vw_args for v in list_models(engine, loop, statuses=IN_ROLLOUT)}
    registered: list[str] = []
    refused: dict[str, str] = {}
    waiting: list[str] = []
    for raw in settings.candidates:
        try:
            args = check_vw_args(raw)
            check_model_args(stored.config.with_explore_args(args))
        except ValueError as err:
            refused[raw] = str(err)
            logger.error("loop %s: candidate VW arguments %r refused: %s", loop, raw, err)
            continue
        # a loop whose strategy explores inside the model trains (and stores) its candidates
        # with the strategy's VW reduction appended
        if args in busy or stored.config.with_explore_args(args) in busy:
            waiting.append(args)
            continue
        trained = train_version(
            engine,
            loop,
            registry=registry,
            mode="batch",
            vw_args=args,
            since=since,
            until=until,
            progress=False,
            on_event=faults.training("candidate-train", on_event),
        )
        faults.trained("candidate-train")
        if trained.artifact is None:
            refused[raw] = "no event of the window could be learned"
            continue
        with faults.writing(engine, "candidate-register"):
            version = register_candidate(
                engine,
                trained,
                now=now,
                reason=f"candidate configuration {args!r}, batch on the training window",
                details={
                    "vw_args": args,
                    "window_since": since.isoformat(),
                    "holdout_since": until.isoformat(),
                    "n_events": trained.stats.n_events,
                    "n_holdout": n_holdout,
                },
            )
        busy.add(args)
        registered.append(version.version)
        logger.info(
            "loop %s: candidate %s registered (%s, %d events)",
            loop,
            version.version,
            args,
            trained.stats.n_events,
        )
    outcome = "registered" if registered else ("failed" if refused else "idle")
    message = (
        f"{len(registered)} candidate(s) registered on {n_train} events "
        f"({n_holdout} held out for the gate)"
    )
    if waiting:
        message += f"; {len(waiting)} configuration(s) still in rollout"
    if refused:
        message += f"; {len(refused)} refused"
    return LearnerRun(
        "candidates",
        now,
        outcome,
        message,
        registered[-1] if registered else None,
        {"registered": registered, "refused": refused, "in_rollout": waiting},
    )
