"""Examples read and built by a forked reader process (`reader="process"`): the same model,
the same stats, as in-process; a failing reader registers nothing; an interrupted pass leaves
no reader behind."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

import deploy.registry as registry
from evaluation.simulator import Simulator, SimulatorConfig
from learn import EventWindow, WorkerError, learn_once
from learn.events import Order, iter_training_rows
from learn.examples import LineBuilder, prepare_rows
from learn.reader import iter_forked
from learn.train import learn_frames, learn_prepared
from log.joiner import join_loop
from log.records import DecisionRecord
from log.schema import make_engine
from log.writer import GroupCommitWriter
from policies.vw import VWPolicy
from tests.learn.conftest import LOOP, VW_ARGS
from tests.learn.helpers import deadline, sim_events, write

SIM = Simulator(SimulatorConfig(seed=17))


def _log(engine: Engine, writer: GroupCommitWriter, n: int) -> None:
    ops = sim_events(SIM, n, seed=3) + sim_events(SIM, n // 4, seed=4, n_slots=2, prefix="s")
    # one event that cannot be learned (its chosen action was excluded)
    i, bad = next((i, op) for i, op in enumerate(ops) if isinstance(op, DecisionRecord))
    ops[i] = dataclasses.replace(bad, excluded=[bad.chosen])
    write(writer, ops)
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=deadline(n // 2))
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=deadline(n))


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The pids of the readers forked during the test."""
    pids: list[int] = []
    real = os.fork

    def fork() -> int:
        pid = real()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr("learn.reader.os.fork", fork)
    yield pids


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("order", ["seq", "decided"])
def test_frames_learn_what_the_inline_read_learns(
    engine: Engine, writer: GroupCommitWriter, forks: list[int], order: Order
) -> None:
    _log(engine, writer, 300)
    window = EventWindow(after_seq=0)
    inline, forked = VWPolicy(VW_ARGS), VWPolicy(VW_ARGS)
    rows = iter_training_rows(engine, LOOP, window, order=order, chunk_size=29)
    expected = learn_prepared(inline, prepare_rows(rows, LineBuilder()))
    frames = iter_forked(engine, LOOP, window, order=order, chunk_size=29)
    got = learn_frames(forked, frames)
    assert expected.n_events > 200 and expected.n_skipped == 1
    assert got == expected
    assert forked.save() == inline.save()
    assert len(forks) == 1 and _gone(forks[0])


def test_learn_once_registers_the_same_model(
    engine: Engine, writer: GroupCommitWriter, forks: list[int]
) -> None:
    _log(engine, writer, 400)
    results = [
        learn_once(
            engine, LOOP, registry=registry, mode="batch", chunk_size=37, progress=False, reader=r
        )
        for r in ("inline", "process")
    ]
    a, b = (r.version for r in results)
    assert a is not None and b is not None
    assert (results[0].n_events, results[0].n_examples, results[0].n_skipped) == (499, 599, 1)
    for name in ("n_events", "n_examples", "n_skipped"):
        assert getattr(results[0], name) == getattr(results[1], name)
    for name in ("trained_from", "trained_until", "checkpoint", "checkpoint_seq", "sha256"):
        assert getattr(a, name) == getattr(b, name), name
    assert registry.load_artifact(engine, a.version) == registry.load_artifact(engine, b.version)
    assert len(forks) == 1 and _gone(forks[0])


def test_a_failing_reader_registers_nothing(
    engine: Engine, writer: GroupCommitWriter, forks: list[int]
) -> None:
    _log(engine, writer, 40)
    with engine.begin() as conn:  # the reader reads keys, then fails on outcomes
        conn.execute(text("DROP TABLE outcomes"))
    with pytest.raises(WorkerError, match="the training reader failed"):
        learn_once(engine, LOOP, registry=registry, progress=False, reader="process")
    assert registry.list_versions(engine, LOOP) == []
    assert len(forks) == 1 and _gone(forks[0])


def test_interrupting_stops_the_reader(
    engine: Engine, writer: GroupCommitWriter, forks: list[int]
) -> None:
    _log(engine, writer, 400)

    def interrupt(n: int) -> None:
        if n == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        learn_once(
            engine,
            LOOP,
            registry=registry,
            chunk_size=10,
            on_event=interrupt,
            progress=False,
            reader="process",
        )
    assert registry.list_versions(engine, LOOP) == []
    assert len(forks) == 1 and _gone(forks[0])


def test_the_reader_needs_a_shared_database_and_no_workers(engine: Engine) -> None:
    memory = make_engine("sqlite://")
    with pytest.raises(ValueError, match="not an in-memory SQLite"):
        iter_forked(memory, LOOP, EventWindow(), order="seq", chunk_size=10)
    with pytest.raises(ValueError, match="pick one"):
        learn_once(engine, LOOP, registry=registry, workers=1, reader="process")
    with pytest.raises(ValueError, match="reader must be one of"):
        learn_once(engine, LOOP, registry=registry, reader="thread")  # type: ignore[arg-type]
