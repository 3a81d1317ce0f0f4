"""Guardrail signals (rewards with a `metric`) through the log: the writer, the spool (also a
line spooled before the metric existed), the joiner's per-window counts and the training reads.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select

from log.joiner import join_loop
from log.models import OutcomeRow, RewardRow
from log.ops import op_from_json
from log.records import RewardRecord, new_event_id
from log.spool import Spool, SpoolIndex
from log.training_reads import JoinedDecision, iter_joined
from log.writer import GroupCommitWriter
from tests.log.faults import database_down
from tests.log.helpers import T0, decision_rec, reward_rec

AGGREGATIONS = ("earliest", "sum", "mean", "max", "min")


def signal(
    event_id: str, metric: str, at_s: float, *, slot: int = 0, n: int = 0, rid: str | None = None
) -> RewardRecord:
    """A guardrail signal received `at_s` seconds after T0 (value 1)."""
    rec = reward_rec(
        event_id,
        1.0,
        received_at=T0 + timedelta(seconds=at_s),
        slot=slot,
        reward_id=rid or f"{event_id}-{metric}-{slot}-{at_s}-{n}",
    )
    return dataclasses.replace(rec, metric=metric)


def join(engine: Engine, now_s: float, how: str = "earliest", loop: str = "default") -> Any:
    return join_loop(
        engine, loop, default_reward=-0.5, aggregation=how, now=T0 + timedelta(seconds=now_s)
    )


def outcome_rows(engine: Engine) -> dict[tuple[str, int], tuple[float, bool, int, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                OutcomeRow.event_id,
                OutcomeRow.slot,
                OutcomeRow.reward,
                OutcomeRow.default_applied,
                OutcomeRow.n_rewards,
                OutcomeRow.guardrails,
            )
        ).all()
    return {(r[0], r[1]): (r[2], r[3], r[4], r[5]) for r in rows}


def stored_metrics(engine: Engine) -> dict[str, tuple[str, bool]]:
    with engine.connect() as conn:
        rows = conn.execute(select(RewardRow.reward_id, RewardRow.metric, RewardRow.late)).all()
    return {r[0]: (r[1], r[2]) for r in rows}


# ----------------------------------------------------------------------------- writer, spool
def test_a_signal_is_stored_with_its_metric(engine: Engine, writer: GroupCommitWriter) -> None:
    writer.write_sync([decision_rec("e1")])
    result = writer.write_sync([signal("e1", "report", 5), reward_rec("e1", 0.5, received_at=T0)])
    assert result.inserted == [True, True]
    metrics = stored_metrics(engine)
    assert sorted(m for m, _ in metrics.values()) == ["", "report"]
    # a retry of the same signal (same reward_id) stores nothing new
    assert writer.write_sync([signal("e1", "report", 5)]).inserted == [False]
    assert len(stored_metrics(engine)) == 2


def test_a_spooled_signal_ships_with_its_metric(
    engine: Engine, writer: GroupCommitWriter, tmp_path: Path
) -> None:
    event = new_event_id()
    with database_down(writer, tmp_path):
        assert writer.write_sync([decision_rec(event)]).spooled
        sent = signal(event, "hide", 10, rid="spooled-hide")
        assert writer.write_sync([sent]).spooled
        # the request path reads it back from the host's spool with its metric
        spooled = SpoolIndex(writer.spool.directory)
        spooled.refresh()
        assert spooled.reward(sent.reward_id) == sent
    deadline = time.monotonic() + 20
    while list(writer.spool.directory.glob("*.seg")):
        assert time.monotonic() < deadline, "the spool was never shipped"
        time.sleep(0.02)
    assert stored_metrics(engine) == {sent.reward_id: ("hide", False)}


def test_a_reward_spooled_before_metrics_existed_reads_as_the_reward(
    engine: Engine, tmp_path: Path
) -> None:
    """A line spooled by a version before revision 0006 has no `metric`: it is the reward."""
    spool_dir = tmp_path / "spool"
    old = Spool(spool_dir, "old")
    old.append([decision_rec("e1"), reward_rec("e1", 0.75, received_at=T0, reward_id="r-old")])
    old.seal()
    (segment,) = old.segments()
    lines = [orjson.loads(line) for line in segment.read_bytes().splitlines()]
    for line in lines:
        line["row"].pop("metric", None)
    segment.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    assert b"metric" not in segment.read_bytes()
    parsed = op_from_json(lines[1])
    assert isinstance(parsed, RewardRecord) and parsed.metric == ""
    assert Spool.read(segment)[1] == parsed
    writer = GroupCommitWriter(engine, spool_dir, delay_s=0.0, ship_interval_s=0.05)
    writer.start()
    writer.stop()
    assert not list(spool_dir.glob("*.seg"))
    assert stored_metrics(engine) == {"r-old": ("", False)}
    join(engine, 100)
    assert outcome_rows(engine) == {("e1", 0): (0.75, False, 1, None)}


# ----------------------------------------------------------------------------------- joiner
def test_signals_inside_the_window_are_counted_late_ones_are_not(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    writer.write_sync([decision_rec("e1"), decision_rec("e2"), decision_rec("e3")])
    writer.write_sync(
        [
            signal("e1", "report", 1),
            signal("e1", "report", 2),
            signal("e1", "hide", 60),  # at the deadline: inside
            signal("e1", "hide", 61),  # after it: late, not counted
            signal("e2", "report", 61),  # late
            reward_rec("e2", 1.0, received_at=T0 + timedelta(seconds=3)),
            signal("missing", "report", 1),  # no such decision: ignored
        ]
    )
    stats = join(engine, 120)
    assert (stats.decisions, stats.guardrail_signals, stats.late_guardrail_signals) == (3, 3, 2)
    assert (stats.rewards_joined, stats.late_rewards, stats.defaulted) == (1, 0, 2)
    assert outcome_rows(engine) == {
        ("e1", 0): (-0.5, True, 0, {"hide": 1, "report": 2}),
        ("e2", 0): (1.0, False, 1, None),
        ("e3", 0): (-0.5, True, 0, None),
    }
    # no signal: SQL NULL, not a JSON null
    with engine.connect() as conn:
        nulls = conn.execute(
            select(OutcomeRow.event_id).where(OutcomeRow.__table__.c.guardrails.is_(None))
        ).all()
    assert sorted(r[0] for r in nulls) == ["e2", "e3"]
    # the stored late flags follow the window, for signals as for rewards
    late = {rid: flag for rid, (_, flag) in stored_metrics(engine).items()}
    assert late == {
        "e1-report-0-1-0": False,
        "e1-report-0-2-0": False,
        "e1-hide-0-60-0": False,
        "e1-hide-0-61-0": True,
        "e2-report-0-61-0": True,
        f"e2-0-{(T0 + timedelta(seconds=3)).timestamp()}-1.0": False,
        "missing-report-0-1-0": False,
    }


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_signals_never_change_the_reward(
    engine: Engine, writer: GroupCommitWriter, how: str
) -> None:
    """The same rewards with and without guardrail signals (earlier, between and after them)
    join to the same rewards, defaults and counts."""
    rewards = [(30, 0.2), (10, 0.8), (20, -0.5)]
    for prefix, with_signals in (("a", False), ("b", True)):
        writer.write_sync([decision_rec(f"{prefix}1"), decision_rec(f"{prefix}2")])
        ops = [
            reward_rec(f"{prefix}1", v, received_at=T0 + timedelta(seconds=s)) for s, v in rewards
        ]
        if with_signals:
            ops += [signal(f"{prefix}1", "report", s) for s in (0, 15, 25, 59)]
            ops += [signal(f"{prefix}2", "hide", 5)]
        writer.write_sync(ops)
    join(engine, 100, how)
    got = outcome_rows(engine)
    for k in ("1", "2"):
        assert got[(f"a{k}", 0)][:3] == got[(f"b{k}", 0)][:3]
    expected = {"earliest": 0.8, "sum": 0.5, "mean": 0.5 / 3, "max": 0.8, "min": -0.5}[how]
    assert got[("b1", 0)][0] == pytest.approx(expected)
    assert got[("b1", 0)][1:] == (False, 3, {"report": 4})
    assert got[("b2", 0)] == (-0.5, True, 0, {"hide": 1})
    assert got[("a1", 0)][3] is None and got[("a2", 0)][3] is None


def test_slates_count_signals_per_slot_and_reads_expose_them(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    writer.write_sync([decision_rec("s1", n_slots=3), decision_rec("p1")])
    writer.write_sync(
        [
            signal("s1", "report", 1, slot=0),
            signal("s1", "report", 2, slot=2),
            signal("s1", "report", 2, slot=2, n=1),
            signal("s1", "hide", 3, slot=2),
            signal("s1", "hide", 3, slot=7),  # no such slot (accepted unverified): ignored
        ]
    )
    join(engine, 100)
    got = outcome_rows(engine)
    assert [got[("s1", k)][3] for k in range(3)] == [
        {"report": 1},
        None,
        {"hide": 1, "report": 2},
    ]
    events: dict[str, JoinedDecision] = {e.event_id: e for e in iter_joined(engine, "default")}
    assert events["s1"].guardrails == {0: {"report": 1}, 2: {"hide": 1, "report": 2}}
    assert events["p1"].guardrails == {}
    assert events["s1"].rewards == {0: -0.5, 1: -0.5, 2: -0.5}
    # built without guardrails, a JoinedDecision has none
    plain = JoinedDecision(events["p1"].record, {0: 1.0}, 1, events["p1"].joined_at)
    assert plain.guardrails == {}
