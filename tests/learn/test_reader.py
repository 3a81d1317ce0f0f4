"""Examples read and built by a reader process (`reader="process"`, or "auto" on a large
window): the same model, the same stats, as in-process; the reader is a child of the fork
server, not a fork of the learner; a failing reader registers nothing; an interrupted pass
leaves no reader behind."""

from __future__ import annotations

import dataclasses
import importlib
import os
import threading
from collections.abc import Generator, Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import pytest
from sqlalchemy import Engine, text

import deploy.registry as registry
from evaluation.simulator import Simulator, SimulatorConfig
from learn import EventWindow, WorkerError, learn_once, reader
from learn.events import Order, iter_training_rows
from learn.examples import LineBuilder, prepare_rows
from learn.reader import Frame, iter_forked
from learn.train import AUTO_PROCESS_EVENTS, learn_frames, learn_prepared, resolve_reader
from log.joiner import join_loop
from log.records import DecisionRecord
from log.schema import make_engine
from log.writer import GroupCommitWriter
from policies.vw import VWPolicy
from tests.learn.conftest import LOOP, VW_ARGS
from tests.learn.helpers import deadline, sim_events, write

SIM = Simulator(SimulatorConfig(seed=17))
TRAIN = importlib.import_module("learn.train")  # `learn.train` is also a function's name


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
    """The pids of the readers started during the test."""
    pids: list[int] = []
    real = reader._receive

    def receive(proc: BaseProcess, src: Connection) -> Generator[Frame, None, None]:
        assert proc.pid is not None
        pids.append(proc.pid)
        return real(proc, src)

    monkeypatch.setattr("learn.reader._receive", receive)
    yield pids


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(line for line in fh if line.startswith("PPid:")).split()[1])


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


def test_auto_reads_a_large_window_in_a_reader_started_by_the_fork_server(
    engine: Engine, writer: GroupCommitWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    _log(engine, writer, 400)
    parents: list[int] = []
    real = reader._receive

    def receive(proc: BaseProcess, src: Connection) -> Generator[Frame, None, None]:
        assert proc.pid is not None
        # the reader blocks on its first frame (larger than the pipe's buffer) until read
        parents.append(_parent(proc.pid))
        return real(proc, src)

    monkeypatch.setattr("learn.reader._receive", receive)

    def learn(**kwargs: object) -> bytes:
        result = learn_once(
            engine, LOOP, registry=registry, mode="batch", chunk_size=200, progress=False,
            **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        assert result.version is not None and result.n_events == 499
        return registry.load_artifact(engine, result.version.version)

    monkeypatch.setattr(TRAIN, "free_core", lambda: True)
    small = learn()  # 500 events < AUTO_PROCESS_EVENTS: inline
    assert parents == []
    monkeypatch.setattr(TRAIN, "AUTO_PROCESS_EVENTS", 500)
    # started from a thread while another holds a lock: a fork would copy the held lock
    held = threading.Lock()
    models: list[bytes] = []
    with held:
        thread = threading.Thread(target=lambda: models.append(learn()))
        thread.start()
        thread.join(timeout=120)
    assert models == [small]
    assert len(parents) == 1 and parents[0] != os.getpid()


def test_resolve_reader(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    n = AUTO_PROCESS_EVENTS
    monkeypatch.setattr(TRAIN, "free_core", lambda: True)
    assert resolve_reader("auto", engine, 0, n) == "process"
    assert resolve_reader("auto", engine, 0, n - 1) == "inline"
    assert resolve_reader("auto", engine, 2, n) == "inline"  # workers read
    assert resolve_reader("auto", make_engine("sqlite://"), 0, n) == "inline"
    assert resolve_reader("inline", engine, 0, 10 * n) == "inline"
    assert resolve_reader("process", engine, 0, 1) == "process"
    monkeypatch.setattr(TRAIN, "free_core", lambda: False)  # a busy host reads in-process
    assert resolve_reader("auto", engine, 0, n) == "inline"


@pytest.mark.parametrize(
    ("cores", "load", "free"), [(1, 0.0, False), (2, 0.5, True), (2, 1.2, False), (8, 6.5, True)]
)
def test_a_free_core_is_one_the_load_leaves(
    monkeypatch: pytest.MonkeyPatch, cores: int, load: float, free: bool
) -> None:
    monkeypatch.setattr(TRAIN.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(TRAIN.os, "getloadavg", lambda: (load, load, load))
    assert TRAIN.free_core() is free


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
