"""The group-commit writer: grouping, first-wins keys, the spool, exactly-once shipping, and
what may (and may not) be acknowledged while the database is unreachable."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from explore.errors import Unavailable
from log.joiner import join_loop
from log.models import DecisionRow, OutcomeRow, RewardRow
from log.records import ActivationRecord, DecisionRecord, new_event_id
from log.spool import Spool, SpoolIndex
from log.store import find_event
from log.writer import GroupCommitWriter
from tests.log.faults import database_down
from tests.log.helpers import T0, decision_rec, reward_rec


def count(engine: Engine, model: type) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def wait_until(cond: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_concurrent_writes_are_grouped(engine: Engine, tmp_path: Path) -> None:
    writer = GroupCommitWriter(engine, tmp_path / "spool", delay_s=0.005)
    writer.start()
    results = []

    def client(k: int) -> None:
        for i in range(20):
            results.append(writer.write_sync([decision_rec(f"c{k}-{i}")]))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.stop()
    assert count(engine, DecisionRow) == 320
    assert all(r.inserted == [True] and not r.spooled for r in results)
    assert writer.stats.ops == 320 and writer.stats.pending == 0
    assert writer.stats.groups < 320 and writer.stats.max_group > 1


def test_duplicates_inside_a_group_keep_the_first(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    """Regression (issue 7, defect 6): 1,000 rows with repeated keys in one group."""
    writer.write_sync([decision_rec("k0000", model_version="pre")])  # forces the staging path
    group = [decision_rec(f"k{i % 300:04d}", model_version=f"m{i}") for i in range(1000)]
    result = writer.write_sync(group)
    first = {}
    for i, rec in enumerate(group):
        first.setdefault(rec.event_id, i)
    assert result.inserted == [
        first[r.event_id] == i and r.event_id != "k0000" for i, r in enumerate(group)
    ]
    with writer.engine.connect() as conn:
        stored = dict(conn.execute(select(DecisionRow.event_id, DecisionRow.model_version)).all())
    wrong = [k for k, i in first.items() if k != "k0000" and stored[k] != f"m{i}"]
    print(f"FAULT in-group duplicates: keys={len(first)} wrong={len(wrong)}")
    assert not wrong and stored["k0000"] == "pre" and count(writer.engine, DecisionRow) == 300


def test_outage_spools_what_is_safe_and_ships_it_once(
    engine: Engine, writer: GroupCommitWriter, tmp_path: Path
) -> None:
    spool_dir = writer.spool.directory
    ids = [new_event_id() for _ in range(3)]
    with database_down(writer, tmp_path):
        result = writer.write_sync([decision_rec(i) for i in ids])
        assert result.spooled and result.inserted == [True, True, True]
        writer.write_sync([reward_rec(ids[0], 1.0, received_at=T0, reward_id="r1")])
        # a client-chosen id cannot be checked for reuse: refused, nothing written
        with pytest.raises(Unavailable):
            writer.write_sync([decision_rec("client-chosen")])
        # ... unless it replays a decision the spool holds (answered from there, not written)
        assert writer.write_sync([decision_rec(ids[1])]).inserted == [False]
        info = find_event(engine, SpoolIndex(spool_dir), "default", ids[0])
        assert info is not None and not info.in_database
        assert writer.stats.spooled_ops == 4 and writer.stats.refused_unverifiable == 1
        segment = next(spool_dir.glob("*.seg"))
        backup = tmp_path / "backup.seg"
        shutil.copy(segment, backup)
    wait_until(lambda: not list(spool_dir.glob("*.seg")))
    assert count(engine, DecisionRow) == 3 and count(engine, RewardRow) == 1
    # the same segment shipped again (a crash after commit, before unlink) writes nothing
    shutil.copy(backup, spool_dir / backup.name)
    wait_until(lambda: not list(spool_dir.glob("*.seg")))
    assert count(engine, DecisionRow) == 3 and count(engine, RewardRow) == 1
    info = find_event(engine, SpoolIndex(spool_dir), "default", ids[0])
    assert info is not None and info.in_database


def test_spooled_activation_shipped_before_its_decision_is_kept(
    engine: Engine, writer: GroupCommitWriter, tmp_path: Path
) -> None:
    """Regression (defect 2): an activation that reaches the database before its decision."""
    spool_dir = writer.spool.directory
    event = new_event_id()
    activated = T0
    other = Spool(spool_dir, "older")
    other.append([ActivationRecord.at("default", event, activated, 60)])  # older segment
    other.seal()
    later = Spool(spool_dir, "newer")
    later.append([decision_rec(event, deferred=True)])
    later.seal()
    wait_until(lambda: not list(spool_dir.glob("*.seg")))
    stats = join_loop(
        engine,
        "default",
        default_reward=0.0,
        aggregation="earliest",
        now=T0 + __import__("datetime").timedelta(seconds=61),
    )
    assert stats.decisions == 1 and count(engine, OutcomeRow) == 1


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([decision_rec("ok")])
    spool.seal()
    (segment,) = spool.segments()
    with segment.open("ab") as fh:
        fh.write(b'{"op": "decision", "row": {"loop"')
    ops = Spool.read(segment)
    assert len(ops) == 1 and isinstance(ops[0], DecisionRecord)
    assert ops[0].decided_at == T0


def test_stop_drains_queued_writes(engine: Engine, tmp_path: Path) -> None:
    writer = GroupCommitWriter(engine, tmp_path / "spool", delay_s=0.01)
    writer.start()
    futures = [writer.submit([decision_rec(f"q{i}")]) for i in range(100)]
    writer.stop()
    assert all(f.result(1).inserted == [True] for f in futures)
    assert count(engine, DecisionRow) == 100


def test_refused_segment_is_quarantined(engine: Engine, tmp_path: Path) -> None:
    """A segment the database refuses (here: malformed) is set aside, the rest still ships."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "00000000000000000001-x-1.seg").write_bytes(b'{"op": "nonsense", "row": {}}\n')
    good = Spool(spool_dir, "y")
    good.append([decision_rec(new_event_id())])
    good.seal()
    writer = GroupCommitWriter(engine, spool_dir, delay_s=0.0)
    writer.start()
    writer.stop()
    assert writer.stats.quarantined_segments == 1
    assert [p.name for p in (spool_dir / "quarantine").iterdir()] == [
        "00000000000000000001-x-1.seg"
    ]
    assert count(engine, DecisionRow) == 1 and not list(spool_dir.glob("*.seg"))


def test_the_writer_thread_survives_an_unexpected_error(
    engine: Engine, writer: GroupCommitWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (defect 16): an error in the thread fails that group, never the thread."""
    real = writer._write_group
    calls = {"n": 0}

    def flaky(group: list) -> list:  # type: ignore[type-arg]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(group)

    monkeypatch.setattr(writer, "_write_group", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        writer.write_sync([decision_rec("a")])
    assert writer.write_sync([decision_rec("b")]).inserted == [True]
    assert writer.running and writer.stats.pending == 0


def test_replayed_reward_id_is_stored_once(engine: Engine, writer: GroupCommitWriter) -> None:
    writer.write_sync([decision_rec("e1")])
    rec = reward_rec("e1", 1.0, received_at=T0, reward_id="same")
    assert writer.write_sync([rec, rec]).inserted == [True, False]
    assert writer.write_sync([dataclasses.replace(rec, value=0.0)]).inserted == [False]
    assert count(engine, RewardRow) == 1


def test_a_refused_client_id_repeated_in_one_group_is_refused_twice(
    engine: Engine, writer: GroupCommitWriter, tmp_path: Path
) -> None:
    """During an outage two requests with the same new client-chosen id land in one group:
    nothing is written; the first is refused, the second is not inserted (the service then
    finds nothing stored and answers 503 too)."""
    writer.delay_s = 0.2  # both submissions gather into one group
    with database_down(writer, tmp_path):
        futures = [writer.submit([decision_rec("twice")]) for _ in range(2)]
        with pytest.raises(Unavailable):
            futures[0].result(10)
        assert futures[1].result(10).inserted == [False]
    assert count(engine, DecisionRow) == 0
