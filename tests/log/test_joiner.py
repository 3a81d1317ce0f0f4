"""The joiner: windows, default reward, aggregations, deferred/activated, late, idempotence."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from log.joiner import aggregate, join_loop
from log.models import DecisionRow, OutcomeRow
from log.records import ActivationRecord, RewardRecord
from log.writer import GroupCommitWriter
from tests.log.helpers import T0, decision_rec, reward_rec, reward_row


def outcomes(engine: Engine) -> dict[tuple[str, int], tuple[float, bool, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                OutcomeRow.event_id,
                OutcomeRow.slot,
                OutcomeRow.reward,
                OutcomeRow.default_applied,
                OutcomeRow.n_rewards,
            )
        ).all()
    return {(r.event_id, r.slot): (r.reward, r.default_applied, r.n_rewards) for r in rows}


def join(engine: Engine, now_s: float, *, how: str = "earliest", default: float = 0.0):  # type: ignore[no-untyped-def]
    return join_loop(
        engine,
        "default",
        default_reward=default,
        aggregation=how,
        now=T0 + timedelta(seconds=now_s),
    )


@pytest.mark.parametrize(
    ("how", "expected"),
    [("earliest", 0.5), ("sum", 1.25), ("mean", 1.25 / 3), ("max", 1.0), ("min", -0.25)],
)
def test_aggregate(how: str, expected: float) -> None:
    assert aggregate([0.5, 1.0, -0.25], how) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("values", "how", "match"), [([], "sum", "non-empty"), ([1.0], "median", "unknown")]
)
def test_aggregate_rejects(values: list[float], how: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        aggregate(values, how)


@pytest.mark.parametrize("how", ["earliest", "sum", "mean", "max", "min"])
def test_window_aggregation_and_default(
    engine: Engine, writer: GroupCommitWriter, how: str
) -> None:
    writer.write_sync([decision_rec("e1"), decision_rec("e2")])
    # arrivals out of order of value: earliest is the first received, not the first written
    writer.write_sync(
        [
            reward_rec("e1", 0.2, received_at=T0 + timedelta(seconds=30)),
            reward_rec("e1", 0.8, received_at=T0 + timedelta(seconds=10)),
            reward_rec("e1", 0.5, received_at=T0 + timedelta(seconds=20)),
        ]
    )
    # the window (60 s) has not closed yet: nothing is joined
    assert join(engine, 59, how=how).decisions == 0
    assert outcomes(engine) == {}
    stats = join(engine, 60, how=how, default=-0.5)
    assert (stats.decisions, stats.outcomes, stats.defaulted, stats.rewards_joined) == (2, 2, 1, 3)
    expected = {"earliest": 0.8, "sum": 1.5, "mean": 0.5, "max": 0.8, "min": 0.2}[how]
    got = outcomes(engine)
    assert got[("e1", 0)][0] == pytest.approx(expected)
    assert got[("e1", 0)][1:] == (False, 3)
    assert got[("e2", 0)] == (-0.5, True, 0)


def test_late_rewards_are_never_joined(engine: Engine, writer: GroupCommitWriter) -> None:
    writer.write_sync([decision_rec("e1")])
    writer.write_sync(
        [
            RewardRecord.from_row(
                reward_row("e1", 1.0, received_at=T0 + timedelta(seconds=61), late=True)
            )
        ]
    )
    join(engine, 120)
    assert outcomes(engine)[("e1", 0)] == (0.0, True, 0)


def test_join_is_idempotent(engine: Engine, writer: GroupCommitWriter) -> None:
    writer.write_sync([decision_rec(f"e{i}") for i in range(5)])
    writer.write_sync([reward_rec("e0", 1.0, received_at=T0)])
    first = join(engine, 100)
    before = outcomes(engine)
    second = join(engine, 200)
    assert first.decisions == 5 and second.decisions == 0
    assert outcomes(engine) == before


def test_batches_cover_everything(engine: Engine, writer: GroupCommitWriter) -> None:
    writer.write_sync([decision_rec(f"e{i:03d}") for i in range(23)])
    stats = join_loop(
        engine,
        "default",
        default_reward=0.0,
        aggregation="sum",
        now=T0 + timedelta(seconds=100),
        batch_size=5,
    )
    assert stats.decisions == 23 and len(outcomes(engine)) == 23


def test_slates_join_per_slot(engine: Engine, writer: GroupCommitWriter) -> None:
    writer.write_sync([decision_rec("s1", n_slots=3)])
    writer.write_sync(
        [
            reward_rec("s1", 1.0, slot=0, received_at=T0),
            reward_rec("s1", 0.5, slot=2, received_at=T0),
            RewardRecord.from_row(
                reward_row("s1", 0.25, slot=2, received_at=T0 + timedelta(seconds=1))
            ),
        ]
    )
    join(engine, 100, how="sum", default=0.1)
    got = outcomes(engine)
    assert got == {
        ("s1", 0): (1.0, False, 1),
        ("s1", 1): (0.1, True, 0),
        ("s1", 2): (0.75, False, 2),
    }


def test_deferred_joins_only_when_activated(engine: Engine, writer: GroupCommitWriter) -> None:
    writer.write_sync(
        [
            decision_rec("d1", deferred=True),
            decision_rec("d2", deferred=True),
        ]
    )
    writer.write_sync([reward_rec("d1", 1.0, received_at=T0 + timedelta(seconds=5))])
    # never activated: never joined, however late
    assert join(engine, 10_000).decisions == 0
    activated = T0 + timedelta(seconds=100)
    writer.write_sync(
        [ActivationRecord("default", "d1", activated, activated + timedelta(seconds=60))]
    )
    # activating twice keeps the first activation
    writer.write_sync(
        [
            ActivationRecord(
                "default",
                "d1",
                activated + timedelta(seconds=5),
                activated + timedelta(seconds=999),
            )
        ]
    )
    with engine.connect() as conn:
        row = conn.execute(
            select(DecisionRow.activated_at, DecisionRow.reward_deadline).where(
                DecisionRow.event_id == "d1"
            )
        ).one()
    assert row.activated_at == activated
    assert row.reward_deadline == activated + timedelta(seconds=60)
    assert join(engine, 159).decisions == 0
    assert join(engine, 160).decisions == 1
    assert outcomes(engine) == {("d1", 0): (1.0, False, 1)}


def test_loops_are_separate(engine: Engine, writer: GroupCommitWriter) -> None:
    writer.write_sync(
        [
            decision_rec("e1"),
            decision_rec("e1", loop="other"),
        ]
    )
    writer.write_sync([reward_rec("e1", 1.0, received_at=T0, loop="other")])
    join(engine, 100)
    assert outcomes(engine) == {("e1", 0): (0.0, True, 0)}
    join_loop(
        engine, "other", default_reward=0.0, aggregation="sum", now=T0 + timedelta(seconds=100)
    )
    with engine.connect() as conn:
        rows = conn.execute(select(OutcomeRow.loop, OutcomeRow.reward)).all()
    assert sorted(rows) == [("default", 0.0), ("other", 1.0)]


def test_concurrent_joiners_join_each_decision_once(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    """Every serving worker and the learner run the joiner: batches must not overlap, and a
    decision's join watermark (`joined_at`, which online training reads) never moves."""
    import threading

    writer.write_sync([decision_rec(f"c{i:03d}") for i in range(200)])
    results = []

    def run(seconds: int) -> None:
        results.append(
            join_loop(
                engine,
                "default",
                default_reward=0.0,
                aggregation="sum",
                now=T0 + timedelta(seconds=seconds),
                batch_size=20,
            )
        )

    threads = [threading.Thread(target=run, args=(100 + k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.decisions for r in results) >= 200
    with engine.connect() as conn:
        stamps = dict(conn.execute(select(DecisionRow.event_id, DecisionRow.joined_at)).all())
    assert len(outcomes(engine)) == 200 and all(v is not None for v in stamps.values())
    join(engine, 10_000)  # a later run changes nothing
    with engine.connect() as conn:
        assert (
            dict(conn.execute(select(DecisionRow.event_id, DecisionRow.joined_at)).all()) == stamps
        )


def test_each_batch_gets_the_next_join_seq(engine: Engine, writer: GroupCommitWriter) -> None:
    """join_seq is per batch, increasing, and the same on a decision and its outcomes: the
    watermark online learning resumes after (never a wall-clock time)."""
    writer.write_sync([decision_rec(f"s{i:02d}") for i in range(23)])
    stats = join_loop(
        engine,
        "default",
        default_reward=0.0,
        aggregation="earliest",
        now=T0 + timedelta(hours=1),
        batch_size=5,
    )
    assert stats.decisions == 23 and stats.last_seq == 5
    with engine.connect() as conn:
        seqs = dict(conn.execute(select(DecisionRow.event_id, DecisionRow.join_seq)).all())
        outcome_seqs = dict(conn.execute(select(OutcomeRow.event_id, OutcomeRow.join_seq)).all())
    assert seqs == outcome_seqs
    assert sorted(Counter(seqs.values()).items()) == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 3)]
    again = join_loop(
        engine, "default", default_reward=0.0, aggregation="earliest", now=T0 + timedelta(hours=2)
    )
    assert again.decisions == 0


def test_huge_rewards_aggregate_to_finite_values() -> None:
    assert aggregate([1e308, 1e308], "sum") == 1.7976931348623157e308
    assert aggregate([1e308, 1e308], "mean") == 1e308
