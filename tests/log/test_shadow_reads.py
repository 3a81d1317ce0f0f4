"""Reads of shadowed decisions: counted and streamed by the shadow's version, on both stores."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from log.joiner import join_loop
from log.records import DecisionRecord
from log.shadow_reads import iter_shadowed, shadow_counts
from log.writer import GroupCommitWriter
from tests.log.helpers import T0, decision_row, reward_rec


def test_counts_and_latest_window(engine: Engine, writer: GroupCommitWriter) -> None:
    records = []
    for i in range(30):
        row = decision_row(f"e{i:02d}", decided_at=T0 + timedelta(seconds=i))
        version = "s-1" if i % 3 else ("s-2" if i % 2 else None)
        row["shadow"] = None if version is None else {"version": version, "pmf": [0.5, 0.5, 0.0]}
        records.append(DecisionRecord.from_row(row))
    other = decision_row("o1", loop="other", decided_at=T0)
    other["shadow"] = {"version": "s-1", "pmf": [1.0, 0.0, 0.0]}
    writer.write_sync([*records, DecisionRecord.from_row(other)])
    ids = [r.event_id for r in records if r.shadow and r.shadow["version"] == "s-1"]
    # half of them get a reward; then every window closes
    writer.write_sync(
        [reward_rec(e, 1.0, received_at=T0 + timedelta(seconds=40)) for e in ids[::2]]
    )
    join_loop(engine, "default", default_reward=0.0, aggregation="sum", now=T0 + timedelta(days=1))

    counts = shadow_counts(engine, "default", "s-1")
    assert (counts.n, counts.joined) == (len(ids), len(ids))
    assert counts.first_at == T0 + timedelta(seconds=1)
    assert counts.last_at == T0 + timedelta(seconds=29)
    assert shadow_counts(engine, "default", "s-2").n == 5
    assert shadow_counts(engine, "default", "s-3").n == 0
    assert shadow_counts(engine, "default", "s-3").first_at is None
    later = shadow_counts(engine, "default", "s-1", since=T0 + timedelta(seconds=20))
    assert later.n == sum(int(e[1:]) >= 20 for e in ids)

    every = list(iter_shadowed(engine, "default", "s-1", limit=1000, yield_per=4))
    assert [d.record.event_id for d in every] == ids
    assert all(d.joined for d in every)
    assert [d.rewards[0] for d in every] == [1.0 if k % 2 == 0 else 0.0 for k in range(len(ids))]
    latest = list(iter_shadowed(engine, "default", "s-1", limit=5, yield_per=2))
    assert [d.record.event_id for d in latest] == ids[-5:]
    since = list(iter_shadowed(engine, "default", "s-1", limit=5, since=T0 + timedelta(hours=1)))
    assert since == []
