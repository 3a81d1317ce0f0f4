"""Two writer processes sharing one spool directory: every interleaving of create / append /
claim / ship / seal that can be forced, kill -9 of the owner, torn and short writes, fsync."""

from __future__ import annotations

import errno
import multiprocessing
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from log import spool as spool_module
from log.joiner import join_loop
from log.models import DecisionRow, OutcomeRow, WriterRow
from log.ops import Op
from log.records import new_event_id
from log.spool import Spool, SpoolIndex, SpoolWriteError
from log.writer import GroupCommitWriter
from tests.log.faults import database_down
from tests.log.helpers import T0, decision_rec, reward_rec


def test_a_segment_is_never_claimable_before_its_writer_seals_it(tmp_path: Path) -> None:
    """Regression (defect 1): the segment is created under a temporary name, locked, then
    renamed into place, so a shipper can never claim (and unlink) a segment still in use."""
    a, b = Spool(tmp_path, "a"), Spool(tmp_path, "b")
    seen: list[list[Path]] = []
    real_rename = os.rename

    def rename_and_look(src: str | Path, dst: str | Path) -> None:
        seen.append(b.segments())  # a shipper looking just before the rename sees nothing
        real_rename(src, dst)
        seen.append(b.segments())
        assert b.claim(Path(dst)) is None  # ... and just after, finds it locked

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spool_module.os, "rename", rename_and_look)
        a.append([decision_rec("x1")])
    assert seen[0] == [] and len(seen[1]) == 1
    (segment,) = a.segments()
    assert b.claim(segment) is None  # appending: locked
    a.append([decision_rec("x2")])
    assert b.claim(segment) is None
    a.seal()
    fd = b.claim(segment)  # sealed: claimable, exactly once at a time
    assert fd is not None and Spool(tmp_path, "c").claim(segment) is None
    assert [op.event_id for op in Spool.read(segment)] == ["x1", "x2"]  # type: ignore[union-attr]
    Spool.release(fd, segment, shipped=True)
    a.append([decision_rec("x3")])  # the writer moves on to a new segment, never the old inode
    (new,) = a.segments()
    assert new != segment and [op.event_id for op in Spool.read(new)] == ["x3"]  # type: ignore[union-attr]


def _append_and_die(directory: str) -> None:
    s = Spool(directory, "dead")
    s.hold_writer_lock()
    s.append([decision_rec(new_event_id())])
    os._exit(0)  # no seal, no unlock: as kill -9 would leave it


def test_a_dead_writers_segment_is_shipped_and_its_row_forgotten(
    engine: Engine, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    proc = multiprocessing.get_context("fork").Process(
        target=_append_and_die, args=(str(spool_dir),)
    )
    proc.start()
    proc.join(30)
    with engine.begin() as conn:  # the dead writer had registered a watermark
        conn.execute(
            WriterRow.__table__.insert().values(
                writer_id="dead",
                host="h",
                pid=1,
                spool_dir=str(spool_dir),
                watermark=T0,
                heartbeat_at=T0,
                started_at=T0,
            )
        )
    writer = GroupCommitWriter(engine, spool_dir, delay_s=0.0, ship_interval_s=0.05)
    writer.start()
    writer.stop()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(DecisionRow)).scalar_one() == 1
        assert conn.execute(select(WriterRow.writer_id)).all() == []
    assert not list(spool_dir.glob("*.seg")) and not (spool_dir / "writers" / "dead.lock").exists()


def test_a_live_writers_watermark_holds_the_joiner_back(engine: Engine, tmp_path: Path) -> None:
    """A reward acknowledged into a spool keeps its decision's window open until shipped."""
    writer = GroupCommitWriter(
        engine, tmp_path / "spool", delay_s=0.0, ship_interval_s=0.05, watermark_interval_s=0.05
    )
    writer.start()
    now = datetime.now(UTC)
    writer.write_sync([decision_rec("e1", decided_at=now, wait_s=1.0)])

    def reward(at: datetime) -> list[Op]:
        return [reward_rec("e1", 1.0, received_at=at, reward_id="r1")]

    later = now + timedelta(hours=1)
    with database_down(writer, tmp_path):
        assert writer.write_sync(reward).spooled
        time.sleep(1.2)  # the window's deadline passes while the reward is spooled
        stats = join_loop(engine, "default", default_reward=0.0, aggregation="sum", now=later)
        assert (
            stats.decisions == 0
            and stats.cutoff is not None
            and stats.cutoff < now + timedelta(seconds=1)
        )
    deadline = time.monotonic() + 20
    while not join_loop(
        engine, "default", default_reward=0.0, aggregation="sum", now=later
    ).decisions:
        assert time.monotonic() < deadline, "the window never closed"
        time.sleep(0.05)
    with engine.connect() as conn:
        assert conn.execute(select(OutcomeRow.reward, OutcomeRow.n_rewards)).one() == (1.0, 1)
    writer.stop()


def test_short_writes_are_completed_and_failed_writes_cut_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (defect 16): a short os.write was ignored and tore a line mid-segment."""
    s = Spool(tmp_path, "w")
    s.append([decision_rec("first")])
    real_write = os.write
    monkeypatch.setattr(spool_module.os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    s.append([decision_rec("short")])  # written 7 bytes at a time, completely
    state = {"n": 0}

    def fail_midway(fd: int, data: bytes) -> int:
        state["n"] += 1
        if state["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(spool_module.os, "write", fail_midway)
    with pytest.raises(SpoolWriteError):
        s.append([decision_rec("lost")])
    monkeypatch.setattr(spool_module.os, "write", real_write)
    s.append([decision_rec("after")])
    s.seal()
    (segment,) = s.segments()
    assert [op.event_id for op in Spool.read(segment)] == ["first", "short", "after"]  # type: ignore[union-attr]


def test_segment_creation_fsyncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (defect 14): creating the spool directory and each segment is made durable."""
    synced: list[Path] = []
    real = spool_module.fsync_dir
    monkeypatch.setattr(spool_module, "fsync_dir", lambda p: (synced.append(Path(p)), real(p)))
    directory = tmp_path / "a" / "spool"
    Spool(directory, "w").append([decision_rec("x")])
    assert tmp_path in synced and tmp_path / "a" in synced and synced.count(directory) >= 2


def test_the_index_forgets_what_was_shipped(tmp_path: Path) -> None:
    s = Spool(tmp_path, "w")
    s.append([decision_rec("d1"), reward_rec("d1", 1.0, received_at=T0, reward_id="r")])
    index = SpoolIndex(tmp_path)
    assert index.decision(("default", "d1")) is not None and index.reward("r") is not None
    s.seal()
    (segment,) = s.segments()
    fd = Spool(tmp_path, "x").claim(segment)
    assert fd is not None
    Spool.release(fd, segment, shipped=True)
    assert index.decision(("default", "d1")) is None and index.reward("r") is None
