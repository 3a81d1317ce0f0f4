"""The scheduled learner: each round joins due windows, then learns what has settled."""

from __future__ import annotations

import os
import signal
import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

import deploy.registry as registry
import learn.scheduler
from evaluation.simulator import Simulator, SimulatorConfig
from learn import Stopped, count_training_events, learn_round, make_scheduler, run_learner
from log.loops import LoopConfig, put_loop
from log.writer import GroupCommitWriter
from tests.learn.conftest import LOOP
from tests.learn.helpers import deadline, sim_events, write

SIM = Simulator(SimulatorConfig(seed=11))


def test_a_round_joins_then_learns_settled_events(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    put_loop(engine, "other", LoopConfig())
    write(writer, sim_events(SIM, 50, seed=1))
    results = learn_round(engine, registry=registry, promote=True, settle_s=0.0, now=deadline(49))
    assert set(results) == {LOOP, "other"}
    assert results["other"].version is None
    first = results[LOOP].version
    assert first is not None and first.status == "live" and results[LOOP].n_events == 50

    write(writer, sim_events(SIM, 10, seed=2, prefix="f", start=deadline(49)))
    now = deadline(9, start=deadline(49))
    # their windows closed, but not `settle_s` ago: neither joined nor learned this round
    results = learn_round(engine, [LOOP], registry=registry, settle_s=30.0, now=now)
    assert results[LOOP].version is None and "no new joined events" in results[LOOP].message
    assert count_training_events(engine, LOOP) == 50
    # settled: joined and learned in the same round
    results = learn_round(
        engine, [LOOP], registry=registry, join_grace_s=5.0, now=now + timedelta(seconds=35)
    )
    second = results[LOOP].version
    assert second is not None and results[LOOP].n_events == 10
    assert second.checkpoint == now
    stored = registry.get_version(engine, second.version)
    assert stored is not None and stored.parent == first.version


def test_a_failing_loop_does_not_stop_the_others(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    results = learn_round(engine, ["missing", LOOP], registry=registry)
    assert set(results) == {LOOP}
    assert "learning loop 'missing' failed" in caplog.text
    with pytest.raises(LookupError, match="loop 'missing' does not exist"):
        learn_round(engine, ["missing", LOOP], registry=registry, raise_errors=True)


def test_run_learner_repeats_until_ctrl_c_and_abandons_the_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, Any]] = []
    stopped: list[bool] = []

    def fake_round(engine: object, loops: object, **kwargs: Any) -> dict[str, object]:
        calls.append({"engine": engine, "loops": loops, **kwargs})
        if len(calls) == 3:  # a long training: Ctrl-C arrives while it runs
            os.kill(os.getpid(), signal.SIGINT)
            stopped.append(kwargs["stop"].wait(10))
            raise Stopped
        return {}

    monkeypatch.setattr(learn.scheduler, "learn_round", fake_round)
    engine = object()
    run_learner(engine, ["a"], registry=registry, interval_s=0.05, mode="batch")  # type: ignore[arg-type]
    assert len(calls) == 3 and stopped == [True]
    assert calls[0]["engine"] is engine and calls[0]["loops"] == ["a"]
    assert calls[0]["mode"] == "batch" and calls[0]["registry"] is registry


class StopAfter(threading.Event):
    """Reads as set from the n-th look on: a stop request arriving mid-training."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.looks, self.n = 0, n

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks >= self.n


def test_a_round_stopped_mid_training_registers_nothing(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    write(writer, sim_events(SIM, 30, seed=3))
    stop = StopAfter(10)
    with pytest.raises(Stopped):
        learn_round(engine, [LOOP], registry=registry, settle_s=0, now=deadline(29), stop=stop)
    assert stop.looks == 10  # once before the loop, then after each event learned
    assert registry.list_versions(engine, LOOP) == []


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        make_scheduler(object(), registry=registry, interval_s=0)  # type: ignore[arg-type]
