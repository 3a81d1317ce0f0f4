"""Examples built in worker processes: the same model as in-process; failures register nothing."""

from __future__ import annotations

import dataclasses
import multiprocessing

import pytest
from sqlalchemy import Engine, text

import deploy.registry as registry
from evaluation.simulator import Simulator, SimulatorConfig
from learn import EventWindow, WorkerError, learn_once
from learn.parallel import iter_prepared
from log.joiner import join_loop
from log.records import DecisionRecord
from log.schema import make_engine
from log.writer import GroupCommitWriter
from tests.learn.conftest import LOOP
from tests.learn.helpers import deadline, sim_events, write

SIM = Simulator(SimulatorConfig(seed=13))


def _log(engine: Engine, writer: GroupCommitWriter, n: int) -> None:
    ops = sim_events(SIM, n, seed=1) + sim_events(SIM, n // 4, seed=2, n_slots=2, prefix="s")
    # one event that cannot be learned (its chosen action was excluded)
    i, bad = next((i, op) for i, op in enumerate(ops) if isinstance(op, DecisionRecord))
    ops[i] = dataclasses.replace(bad, excluded=[bad.chosen])
    write(writer, ops)
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=deadline(n))


def test_workers_build_the_same_model(engine: Engine, writer: GroupCommitWriter) -> None:
    _log(engine, writer, 400)
    results = [
        learn_once(
            engine,
            LOOP,
            registry=registry,
            mode="batch",
            chunk_size=37,
            workers=workers,
            progress=False,
        )
        for workers in (0, 2)
    ]
    a, b = (r.version for r in results)
    assert a is not None and b is not None
    assert (results[0].n_events, results[0].n_examples, results[0].n_skipped) == (499, 599, 1)
    for name in ("n_events", "n_examples", "n_skipped"):
        assert getattr(results[0], name) == getattr(results[1], name)
    for name in ("trained_from", "trained_until", "checkpoint", "sha256"):
        assert getattr(a, name) == getattr(b, name), name
    assert registry.load_artifact(engine, a.version) == registry.load_artifact(engine, b.version)
    assert multiprocessing.active_children() == []


def test_a_failing_worker_registers_nothing(engine: Engine, writer: GroupCommitWriter) -> None:
    _log(engine, writer, 40)
    with engine.begin() as conn:  # the learner reads keys; the workers then fail on outcomes
        conn.execute(text("DROP TABLE outcomes"))
    with pytest.raises(WorkerError, match="training worker 0 failed"):
        learn_once(engine, LOOP, registry=registry, workers=1, progress=False)
    assert registry.list_versions(engine, LOOP) == []
    assert multiprocessing.active_children() == []


def test_interrupting_stops_the_workers(engine: Engine, writer: GroupCommitWriter) -> None:
    _log(engine, writer, 200)

    def interrupt(n: int) -> None:
        if n == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        learn_once(
            engine,
            LOOP,
            registry=registry,
            workers=2,
            chunk_size=10,
            on_event=interrupt,
            progress=False,
        )
    assert registry.list_versions(engine, LOOP) == []
    assert multiprocessing.active_children() == []


def test_workers_need_a_shared_database() -> None:
    engine = make_engine("sqlite://")
    with pytest.raises(ValueError, match="not an in-memory SQLite"):
        next(iter_prepared(engine, LOOP, EventWindow(), order="seq", chunk_size=10, workers=1))
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        next(iter_prepared(engine, LOOP, EventWindow(), order="seq", chunk_size=10, workers=0))
