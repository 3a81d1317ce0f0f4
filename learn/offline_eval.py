"""Offline evaluation of target policies on a loop's joined logs (DESIGN §6).

:func:`run_evaluation` streams the loop's joined events decided in the window (bounded memory:
one chunk of events at a time; per target a few floats per event are kept for the estimators)
and estimates each target policy's value with the requested estimators, their 1 - alpha
intervals, the importance-weight diagnostics and the paired difference against the live
(logging) policy on the same events. See :mod:`learn.offline_eval_spec` for the targets.

Time split: a registered version is evaluated only on events decided after its
``trained_until`` (for an online continuation, the end of its whole lineage's training data);
a VW argument set is trained on ``[train_since, train_until)`` and evaluated on events decided
at or after ``train_until``. Each target reports its own ``n``; when the evaluation window
overlaps a target's training data, the events it was trained on are not scored for it and the
result says so (``trained_on_in_window`` and ``warnings``); with fewer than 2 events left the
target gets an ``error`` instead of estimates. A version without a recorded training window
(``time_split: "unknown"``) is scored on every event, with a warning.

Passes over the window: with DM/DR-type estimators, a first pass fits the cross-fitted reward
model (:class:`learn.offline_eval_targets.RewardModel`); the last pass computes every target's
pmf per event. Join batches committed after the run started are left out (the join_seq
snapshot ``as_of_seq``), so every pass reads the same events.
:func:`learn.offline_eval_job.run_job` runs a stored `evaluations` row (the background job).

`learn` may not import `deploy` (DESIGN §2): the registry is passed in (``deploy.registry``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from learn.events import EventWindow, count_training_events, iter_training_events, last_join_seq
from learn.examples import BadEvent, TrainingEvent
from learn.offline_eval_estimate import Accumulator, policy_result
from learn.offline_eval_spec import (
    EvaluationSpec,
    PolicySpec,
    SpecError,
    check_eval_vw_args,
    explored_config,
)
from learn.offline_eval_targets import EvalEvent, RewardModel, Target, eval_event, explorer_for
from learn.train import train
from log.evaluations import joined_decided_at
from log.loops import LoopConfig, get_loop
from log.schema import Engine
from policies.vw import VWPolicy, check_model_args

__all__ = [
    "EvaluationError",
    "ProgressFn",
    "VersionInfo",
    "VersionRegistry",
    "resolve_spec",
    "run_evaluation",
]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]
"""on_progress(done, total, phase): events processed so far over all passes."""
_PROGRESS_EVERY = 64


class VersionInfo(Protocol):
    """A registered model version (``deploy.registry.ModelVersion``)."""

    @property
    def version(self) -> str: ...

    @property
    def loop(self) -> str: ...

    @property
    def vw_args(self) -> str: ...

    @property
    def trained_from(self) -> datetime | None: ...

    @property
    def trained_until(self) -> datetime | None: ...


class VersionRegistry(Protocol):
    """What evaluation reads from the registry; the module ``deploy.registry`` satisfies it."""

    def get_version(self, engine: Engine, version: str) -> VersionInfo | None: ...

    def load_artifact(self, engine: Engine, version: str) -> bytes: ...


class EvaluationError(RuntimeError):
    """The run cannot produce a result (e.g. no joined events in the window)."""


def resolve_spec(
    engine: Engine, loop: str, spec: EvaluationSpec, *, registry: VersionRegistry
) -> EvaluationSpec:
    """The checks that need the store: the loop exists (LookupError), each model version exists
    in this loop and VW arguments are accepted, also with the target's exploration reduction
    (SpecError). Returns the spec with the arguments normalised."""
    stored = get_loop(engine, loop)
    if stored is None:
        raise LookupError(f"loop {loop!r} does not exist")
    policies: list[PolicySpec] = []
    for p in spec.policies:
        if p.kind == "model":
            assert p.version is not None
            info = registry.get_version(engine, p.version)
            if info is None or info.loop != loop:
                raise SpecError(
                    "unknown_version",
                    f"model version {p.version!r} does not exist in loop {loop!r}",
                )
        if p.kind == "vw_args":
            assert p.args is not None
            args = check_eval_vw_args(p.args)
            p = replace(p, args=args)
            # with the target's exploration reduction (VW's cover refuses --cb_type dm)
            config = explored_config(stored.config, p.exploration)
            try:
                check_model_args(config.with_explore_args(args))
            except ValueError as err:
                raise SpecError("invalid_vw_args", f"policy {p.name!r}: {err}") from None
        policies.append(p)
    return replace(spec, policies=tuple(policies))


class _Progress:
    def __init__(self, fn: ProgressFn | None, total: int) -> None:
        self.fn = fn
        self.total = max(total, 1)
        self.done = 0
        self._pending = 0

    def step(self, phase: str) -> None:
        self._pending += 1
        if self._pending >= _PROGRESS_EVERY:
            self.flush(phase)

    def flush(self, phase: str) -> None:
        self.done = min(self.done + self._pending, self.total)
        self._pending = 0
        if self.fn is not None:
            self.fn(self.done, self.total, phase)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def run_evaluation(
    engine: Engine,
    loop: str,
    spec: EvaluationSpec,
    *,
    registry: VersionRegistry,
    on_progress: ProgressFn | None = None,
    chunk_size: int = 1000,
) -> dict[str, Any]:
    """Evaluate `spec` on `loop`'s joined events; returns the JSON-ready result.

    Raises LookupError (unknown loop), SpecError (unknown version, bad VW arguments) and
    EvaluationError (fewer than 2 joined events in the window).
    """
    started = time.perf_counter()
    as_of = datetime.now(UTC)
    stored = get_loop(engine, loop)
    if stored is None:
        raise LookupError(f"loop {loop!r} does not exist")
    config = stored.config
    spec = resolve_spec(engine, loop, spec, registry=registry)
    as_of_seq = last_join_seq(engine, loop)
    window = EventWindow(through_seq=as_of_seq, since=spec.since, until=spec.until)
    n_window = count_training_events(engine, loop, window)
    if n_window < 2:
        raise EvaluationError(
            f"loop {loop!r} has {n_window} joined events in the window: at least 2 are needed"
        )
    split: datetime | None = None
    trainings: dict[str, EventWindow] = {}
    for p in spec.policies:
        if p.kind == "vw_args":
            until = p.train_until or spec.since
            if until is None:
                if split is None:
                    split = joined_decided_at(
                        engine,
                        loop,
                        n_window // 2,
                        since=spec.since,
                        until=spec.until,
                        joined_before=as_of,
                    )
                until = split
            trainings[p.name] = EventWindow(through_seq=as_of_seq, since=p.train_since, until=until)
    n_train = {name: count_training_events(engine, loop, w) for name, w in trainings.items()}
    passes = 2 if spec.needs_q else 1
    progress = _Progress(on_progress, sum(n_train.values()) + passes * n_window)
    targets: dict[str, Target] = {}
    notes: dict[str, dict[str, Any]] = {}
    reward_model: RewardModel | None = None
    try:
        for p in spec.policies:
            targets[p.name], notes[p.name] = _target(
                engine, loop, p, config, registry, trainings.get(p.name), progress, chunk_size
            )
        if spec.needs_q:
            reward_model = RewardModel(
                bounds=(config.min_reward, config.max_reward), seed=spec.seed
            )
            for ev in _events(
                engine, loop, window, spec.slates, chunk_size, progress, "reward model"
            ):
                if ev is not None:
                    reward_model.learn(ev)
        result = _score_and_estimate(
            engine,
            loop,
            window,
            spec,
            targets,
            notes,
            reward_model,
            progress,
            chunk_size,
            reward_range=(config.min_reward, config.max_reward),
        )
    finally:
        for target in targets.values():
            target.close()
        if reward_model is not None:
            reward_model.close()
    result.update(
        {
            "loop": loop,
            "as_of": as_of.isoformat(),
            "as_of_seq": as_of_seq,
            "exploration": {
                "kind": config.exploration,
                "epsilon": config.epsilon,
                "softmax_lambda": config.softmax_lambda,
            },
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return result


def _target(
    engine: Engine,
    loop: str,
    p: PolicySpec,
    config: LoopConfig,
    registry: VersionRegistry,
    training: EventWindow | None,
    progress: _Progress,
    chunk_size: int,
) -> tuple[Target, dict[str, Any]]:
    """The target of a policy spec and what to report about its training and time split."""
    if p.kind in ("live", "uniform", "first_action"):
        return Target(p.kind), {"time_split": "none"}
    config = explored_config(config, p.exploration)
    if p.kind == "model":
        assert p.version is not None
        info = registry.get_version(engine, p.version)
        if info is None:
            raise SpecError("unknown_version", f"model version {p.version!r} does not exist")
        model = registry.load_artifact(engine, p.version)
        policy = VWPolicy(info.vw_args, model=model, version=info.version)
        explorer = explorer_for(config, p.explore, policy)
        note: dict[str, Any] = {
            "training": {
                "trained_from": _iso(info.trained_from),
                "trained_until": _iso(info.trained_until),
                "vw_args": info.vw_args,
            },
            "time_split": "unknown" if info.trained_until is None else "after_trained_until",
            "eval_from": _iso(info.trained_until),
        }
        return Target(p.kind, policy=policy, explorer=explorer, cutoff=info.trained_until), note
    assert p.args is not None and training is not None and training.until is not None
    policy = VWPolicy(config.with_explore_args(p.args), version=p.name)
    t0 = time.perf_counter()
    try:
        events = iter_training_events(
            engine, loop, training, order="decided", chunk_size=chunk_size
        )
        with contextlib.closing(events):
            stats = train(policy, _ticking(events, progress, f"train {p.name}"))
    except BaseException:
        policy.close()
        raise
    progress.flush(f"train {p.name}")
    note = {
        "training": {
            "since": _iso(training.since),
            "until": _iso(training.until),
            "n_events": stats.n_events,
            "n_skipped": stats.n_skipped,
            "seconds": round(time.perf_counter() - t0, 3),
        },
        "time_split": "after_train_until",
        "eval_from": _iso(training.until),
    }
    explorer = explorer_for(config, p.explore, policy)
    target = Target(p.kind, policy=policy, explorer=explorer, cutoff=training.until, inclusive=True)
    return target, note


def _note_time_split(note: dict[str, Any], trained_on: int) -> None:
    """Say in a target's note how its training data and the evaluation window overlap."""
    warnings: list[str] = []
    split = note.get("time_split")
    if split == "unknown":
        warnings.append(
            "the version has no recorded training window: it may have been trained on the "
            "events it is evaluated on (no time split)"
        )
    elif split in ("after_trained_until", "after_train_until"):
        note["trained_on_in_window"] = trained_on
        if trained_on:
            warnings.append(
                f"the evaluation window overlaps the training data: {trained_on} events are not "
                f"later than its time split ({note.get('eval_from')}) and are not scored"
            )
    if warnings:
        note["warnings"] = warnings


def _ticking(
    events: Iterator[TrainingEvent], progress: _Progress, phase: str
) -> Iterator[TrainingEvent]:
    for event in events:
        progress.step(phase)
        yield event


class _Skipped:
    def __init__(self) -> None:
        self.slates = 0
        self.bad = 0
        self.warned = 0


def _events(
    engine: Engine,
    loop: str,
    window: EventWindow,
    slates: str,
    chunk_size: int,
    progress: _Progress,
    phase: str,
    skipped: _Skipped | None = None,
) -> Iterator[EvalEvent | None]:
    """The window's events as EvalEvents in (decided_at, event_id) order; None for one skipped."""
    events = iter_training_events(engine, loop, window, order="decided", chunk_size=chunk_size)
    with contextlib.closing(events):
        for event in events:
            progress.step(phase)
            try:
                ev = eval_event(event, slates)
            except BadEvent as err:
                if skipped is not None:
                    skipped.bad += 1
                    if skipped.warned < 10:
                        skipped.warned += 1
                        logger.warning("skipping event: %s", err)
                yield None
                continue
            if ev is None and skipped is not None:
                skipped.slates += 1
            yield ev
    progress.flush(phase)


def _score_and_estimate(
    engine: Engine,
    loop: str,
    window: EventWindow,
    spec: EvaluationSpec,
    targets: dict[str, Target],
    notes: dict[str, dict[str, Any]],
    reward_model: RewardModel | None,
    progress: _Progress,
    chunk_size: int,
    *,
    reward_range: tuple[float, float],
) -> dict[str, Any]:
    acc = Accumulator(list(targets), reward_range, spec.guardrails)
    skipped = _Skipped()
    first: datetime | None = None
    last: datetime | None = None
    scored = any(t.policy is not None for t in targets.values()) or reward_model is not None
    for ev in _events(engine, loop, window, spec.slates, chunk_size, progress, "evaluate", skipped):
        if ev is None:
            continue
        try:
            actions = ev.actions() if scored else []
            q_hat = reward_model.predict(ev, actions) if reward_model is not None else None
            pmfs = [
                (name, target.pmf(ev, actions))
                for name, target in targets.items()
                if target.covers(ev.decided_at)
            ]
        except BadEvent as err:
            skipped.bad += 1
            logger.warning("skipping event: %s", err)
            continue
        acc.add(ev, pmfs, q_hat)
        first = first or ev.decided_at
        last = ev.decided_at
    n = acc.n
    if n < 2:
        raise EvaluationError(
            f"loop {loop!r} has {n} usable events in the window (skipped: {skipped.slates} "
            f"slates, {skipped.bad} unusable): at least 2 are needed"
        )
    live = next(p.name for p in spec.policies if p.kind == "live")
    for p in spec.policies:
        _note_time_split(notes[p.name], n - acc.count(p.name))
    policies = [policy_result(p, acc, live, spec, notes[p.name]) for p in spec.policies]
    progress.flush("estimate")
    return {
        "window": {
            "since": _iso(spec.since),
            "until": _iso(spec.until),
            "first_decided_at": _iso(first),
            "last_decided_at": _iso(last),
        },
        "n_events": n,
        "skipped": {"slates": skipped.slates, "bad": skipped.bad},
        "slates": spec.slates,
        "estimators": list(spec.estimators),
        "interval": spec.interval,
        "alpha": spec.alpha,
        "seed": spec.seed,
        "reward_model": None if reward_model is None else reward_model.to_json(),
        "live": live,
        "policies": policies,
        "request": spec.to_json(),
    }
