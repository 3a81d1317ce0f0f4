"""Streaming joined events from the store: which ones, in which order, chunk by chunk."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine

from evaluation.simulator import Simulator, SimulatorConfig
from learn import EventWindow, count_training_events, iter_training_events
from learn.events import last_join_seq
from log.joiner import join_loop
from log.records import DecisionRecord, RewardRecord
from log.writer import GroupCommitWriter
from tests.learn.conftest import LOOP
from tests.learn.helpers import T0, deadline, sim_events, write

SIM = Simulator(SimulatorConfig(seed=5))


def _join(engine: Engine, now: datetime) -> None:
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=now)


def test_only_joined_events_in_join_seq_then_decision_order(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    ops = sim_events(SIM, 30, seed=1)
    late = sim_events(SIM, 3, seed=2, prefix="late", start=T0 - timedelta(hours=1))
    deferred = sim_events(SIM, 1, seed=3, prefix="deferred")
    assert isinstance(deferred[0], DecisionRecord)
    deferred[0] = dataclasses.replace(deferred[0], deferred=True, reward_deadline=None)
    write(writer, ops + deferred)
    _join(engine, deadline(19))  # events 0..19
    write(writer, late)  # decided an hour earlier, arriving (and joined) later
    _join(engine, deadline(29))

    ids = [e.event_id for e in iter_training_events(engine, LOOP)]
    first = [f"e{i:06d}" for i in range(20)]
    second = sorted(
        [f"e{i:06d}" for i in range(20, 30)] + ["late000000", "late000001", "late000002"]
    )
    assert ids == first + second
    by_decided = [e.event_id for e in iter_training_events(engine, LOOP, order="decided")]
    assert by_decided == ["late000000", "late000001", "late000002"] + [
        f"e{i:06d}" for i in range(30)
    ]
    assert count_training_events(engine, LOOP) == 33

    seqs = {e.event_id: e.join_seq for e in iter_training_events(engine, LOOP)}
    assert {seqs[i] for i in first} == {1} and {seqs[i] for i in second} == {2}
    after_first = EventWindow(after_seq=1)
    assert [e.event_id for e in iter_training_events(engine, LOOP, after_first)] == second
    assert count_training_events(engine, LOOP, after_first) == 13
    through_first = EventWindow(through_seq=1)
    assert [e.event_id for e in iter_training_events(engine, LOOP, through_first)] == first
    assert last_join_seq(engine, LOOP) == 2 and last_join_seq(engine, "other") == 0
    decided = EventWindow(since=T0 + timedelta(seconds=5), until=T0 + timedelta(seconds=8))
    got = [e.event_id for e in iter_training_events(engine, LOOP, decided, order="decided")]
    assert got == ["e000005", "e000006", "e000007"]


def test_events_carry_the_logged_row_and_rewards(engine: Engine, writer: GroupCommitWriter) -> None:
    ops = sim_events(SIM, 40, seed=4, n_slots=3, n_excluded=2)
    write(writer, ops)
    _join(engine, deadline(39))
    rows = {op.event_id: op.row() for op in ops if isinstance(op, DecisionRecord)}
    clicked = {(op.event_id, op.slot) for op in ops if isinstance(op, RewardRecord)}
    small = list(iter_training_events(engine, LOOP, chunk_size=7))
    assert small == list(iter_training_events(engine, LOOP))
    assert len(small) == 40
    for ev in small:
        row = rows[ev.event_id]
        # the record exactly as logged, every field
        assert ev.record.row() == row
        assert ev.decided_at == row["decided_at"] and ev.event_id == row["event_id"]
        assert ev.joined_at == deadline(39) and ev.join_seq == 1
        assert ev.rewards == {s: float((ev.event_id, s) in clicked) for s in range(3)}


def test_window_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="after_seq must be an int >= 0"):
        EventWindow(after_seq=-1)
    with pytest.raises(ValueError, match="since must be a timezone-aware datetime"):
        EventWindow(since=datetime(2026, 1, 1))


def test_order_and_chunk_size_are_checked(engine: Engine) -> None:
    with pytest.raises(ValueError, match="order must be one of"):
        iter_training_events(engine, LOOP, order="joined")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        iter_training_events(engine, LOOP, chunk_size=0)
