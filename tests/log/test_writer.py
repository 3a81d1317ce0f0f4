"""The group-commit writer: grouping, insert-if-absent, the spool and exactly-once shipping."""

from __future__ import annotations

import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, func, select

from log.models import DecisionRow, RewardRow
from log.ops import InsertDecision, InsertReward
from log.schema import make_engine
from log.spool import Spool
from log.store import find_event
from log.writer import GroupCommitWriter
from tests.log.helpers import T0, decision_row, reward_row


def count(engine: Engine, model: type) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def unreachable(tmp_path: Path) -> Engine:
    """An engine whose database cannot be opened (a directory that does not exist)."""
    return make_engine(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}")


def test_concurrent_writes_are_grouped(engine: Engine, tmp_path: Path) -> None:
    writer = GroupCommitWriter(engine, tmp_path / "spool", delay_s=0.005)
    writer.start()
    results = []

    def client(k: int) -> None:
        for i in range(20):
            results.append(writer.write_sync([InsertDecision(decision_row(f"c{k}-{i}"))]))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.stop()
    assert count(engine, DecisionRow) == 320
    assert all(r.inserted == [True] and not r.spooled for r in results)
    assert writer.stats.ops == 320
    assert writer.stats.groups < 320 and writer.stats.max_group > 1


def test_duplicate_event_ids_insert_once(engine: Engine, writer: GroupCommitWriter) -> None:
    row = decision_row("dup")
    first = writer.submit([InsertDecision(row)])
    second = writer.submit([InsertDecision(dict(row, model_version="other"))])
    results = [first.result(10), second.result(10)]
    assert sorted(r.inserted[0] for r in results) == [False, True]
    assert writer.write_sync([InsertDecision(row)]).inserted == [False]
    assert count(engine, DecisionRow) == 1


def test_database_down_spools_then_ships_exactly_once(engine: Engine, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    writer = GroupCommitWriter(unreachable(tmp_path), spool_dir, delay_s=0.0, ship_interval_s=0.05)
    writer.start()
    result = writer.write_sync(
        [InsertDecision(decision_row("s1")), InsertDecision(decision_row("s2"))]
    )
    assert result.spooled and result.inserted == [True, True]
    writer.write_sync([InsertReward(reward_row("s1", 1.0, received_at=T0, reward_id="r1"))])
    assert writer.stats.spooled_ops == 3 and writer.stats.errors >= 1
    # a reward route in another worker finds the spooled decision
    info = find_event(engine, Spool(spool_dir), "default", "s1")
    assert info is not None and not info.in_database
    assert info.reward_deadline == T0 + timedelta(seconds=60)
    writer.stop()  # seals the segment; shipping still fails while the database is down
    segments = sorted(spool_dir.glob("*.seg"))
    assert segments
    backup = tmp_path / "backup.seg"
    shutil.copy(segments[0], backup)

    # the database answers again: a writer ships the spool
    writer = GroupCommitWriter(engine, spool_dir, delay_s=0.0, ship_interval_s=0.05)
    writer.start()
    writer.stop()
    assert count(engine, DecisionRow) == 2 and count(engine, RewardRow) == 1
    assert not list(spool_dir.glob("*.seg"))
    # the same segment shipped again (e.g. a crash after commit, before unlink) writes nothing
    shutil.copy(backup, spool_dir / backup.name)
    writer = GroupCommitWriter(engine, spool_dir, delay_s=0.0)
    writer.start()
    writer.stop()
    assert count(engine, DecisionRow) == 2 and count(engine, RewardRow) == 1
    info = find_event(engine, Spool(spool_dir), "default", "s1")
    assert info is not None and info.in_database


def test_writes_wait_behind_the_spool(engine: Engine, tmp_path: Path) -> None:
    """While anything is spooled, new groups go to the spool too, so order is kept."""
    spool_dir = tmp_path / "spool"
    writer = GroupCommitWriter(unreachable(tmp_path), spool_dir, delay_s=0.0, ship_interval_s=3600)
    writer.start()
    writer.write_sync([InsertDecision(decision_row("first"))])
    deadline = time.monotonic() + 10
    while writer.stats.errors < 2 and time.monotonic() < deadline:  # commit, then a shipping try
        time.sleep(0.01)
    writer.engine = engine  # the database is back, but the spool is not shipped yet
    assert writer.write_sync([InsertDecision(decision_row("second"))]).spooled
    writer.stop()
    writer = GroupCommitWriter(engine, spool_dir, delay_s=0.0)
    writer.start()
    writer.stop()
    assert count(engine, DecisionRow) == 2


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([InsertDecision(decision_row("ok"))])
    spool.seal()
    (segment,) = spool.segments()
    with segment.open("ab") as fh:
        fh.write(b'{"op": "decision", "row": {"loop"')
    ops = Spool.read(segment)
    assert len(ops) == 1 and isinstance(ops[0], InsertDecision)
    assert ops[0].row["decided_at"] == T0


def test_stop_drains_queued_writes(engine: Engine, tmp_path: Path) -> None:
    writer = GroupCommitWriter(engine, tmp_path / "spool", delay_s=0.01)
    writer.start()
    futures = [writer.submit([InsertDecision(decision_row(f"q{i}"))]) for i in range(100)]
    writer.stop()
    assert all(f.result(1).inserted == [True] for f in futures)
    assert count(engine, DecisionRow) == 100


def test_refused_segment_is_quarantined(engine: Engine, tmp_path: Path) -> None:
    """A segment the database refuses (here: malformed) is set aside, the rest still ships."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "00000000000000000001-1-1.seg").write_bytes(b'{"op": "nonsense", "row": {}}\n')
    good = Spool(spool_dir)
    good._seq = 5
    good.append([InsertDecision(decision_row("after"))])
    good.seal()
    writer = GroupCommitWriter(engine, spool_dir, delay_s=0.0)
    writer.start()
    writer.stop()
    assert writer.stats.quarantined_segments == 1
    assert [p.name for p in (spool_dir / "quarantine").iterdir()] == [
        "00000000000000000001-1-1.seg"
    ]
    assert count(engine, DecisionRow) == 1 and not list(spool_dir.glob("*.seg"))
