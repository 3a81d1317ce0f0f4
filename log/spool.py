"""The local append-only log used while the database is unreachable (one per host).

Layout of the spool directory, shared by the writer processes of one host:

    writers/<writer_id>.lock   held (flock) by a live writer process for its whole life
    <ns>-<writer_id>-<seq>.seg segments: whole commit groups, one JSON line per record
    quarantine/                segments the database refused (kept for an operator)

Rules that make it safe (each is tested in tests/log/test_spool.py):
- A segment is created under a temporary name, locked, then renamed into place and the
  directory fsynced: no other process can ever see (and "ship") a segment its writer has not
  locked. The writer holds the lock while it appends; sealing closes (unlocks) it for good.
- An append is one write of whole lines followed by one fdatasync; a failed or short write is
  cut back to the last whole line (or the segment sealed), so a torn line can only be the last
  one, and a torn last line was never acknowledged (it is skipped).
- Shipping claims a sealed segment with a non-blocking lock, commits its records (each keyed:
  shipping twice stores once), then unlinks it. A segment whose writer died (kill -9) is
  unlocked, hence claimable: another process of the host ships it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from log.ops import Op, op_from_json, op_to_line
from log.records import ActivationRecord, DecisionRecord, RewardRecord

SEGMENT_GLOB = "*.seg"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """mkdir -p, fsyncing each directory created and its parent (an OS crash keeps them)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        fsync_dir(d.parent)
    if missing:
        fsync_dir(path)


def writer_of(segment: Path) -> str:
    """The writer id in a segment's name."""
    parts = segment.stem.split("-")
    return parts[1] if len(parts) >= 3 else ""


class SpoolWriteError(OSError):
    """The spool could not make a group durable (disk full, I/O error)."""


class Spool:
    """One writer process's handle on the host's spool directory."""

    def __init__(self, directory: str | Path, writer_id: str = "w") -> None:
        self.directory = Path(directory)
        self.writer_id = writer_id
        self._segment: Path | None = None
        self._fd: int | None = None
        self._size = 0
        self._seq = 0

    # -- appending (the writer thread only) --------------------------------------------------
    def _open_segment(self) -> int:
        if self._fd is None:
            make_dirs(self.directory)
            self._seq += 1
            name = f"{time.time_ns():020d}-{self.writer_id}-{self._seq}"
            tmp = self.directory / f".{name}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                final = self.directory / f"{name}.seg"
                os.rename(tmp, final)
                fsync_dir(self.directory)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            self._fd, self._segment, self._size = fd, final, 0
        return self._fd

    def append(self, ops: list[Op]) -> Path:
        """Append one group and make it durable with a single fdatasync; returns the segment.

        Raises SpoolWriteError if it could not; then nothing of the group counts as written
        (the segment is cut back, or sealed so the torn tail stays its last line)."""
        try:
            fd = self._open_segment()
        except OSError as err:
            raise SpoolWriteError(f"cannot open a spool segment: {err}") from err
        assert self._segment is not None
        segment = self._segment
        payload = b"".join(op_to_line(op) for op in ops)
        start = self._size
        try:
            view = memoryview(payload)
            while view:
                n = os.write(fd, view)
                if n <= 0:
                    raise OSError("short write to the spool")
                view = view[n:]
            os.fdatasync(fd)
        except OSError as err:
            try:
                os.ftruncate(fd, start)
                os.fdatasync(fd)
            except OSError:
                self.seal()  # the torn tail stays the segment's last line: skipped on read
            raise SpoolWriteError(f"spool append failed: {err}") from err
        self._size = start + len(payload)
        return segment

    def seal(self) -> None:
        """Close (unlock) the current segment so it can be shipped; the next append opens a
        new one."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            self._segment = None

    @property
    def current(self) -> Path | None:
        return self._segment

    @property
    def size(self) -> int:
        """Bytes appended to the current segment."""
        return self._size

    # -- reading and shipping ---------------------------------------------------------------
    def segments(self) -> list[Path]:
        """Every segment of the host, oldest first (open ones included)."""
        try:
            return sorted(self.directory.glob(SEGMENT_GLOB))
        except FileNotFoundError:
            return []

    def has_pending(self) -> bool:
        return self._fd is not None or bool(self.segments())

    @staticmethod
    def read(path: Path) -> list[Op]:
        return [op for op, _ in read_lines(path, 0)[0]]

    def claim(self, path: Path) -> int | None:
        """Lock a sealed segment for shipping; None if a live process holds it or it is gone."""
        if path == self._segment:
            return None
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if not path.exists():  # shipped and unlinked by another process meanwhile
            os.close(fd)
            return None
        return fd

    def quarantine(self, path: Path) -> None:
        """Move a segment the database refuses out of the shipping queue (kept for inspection)."""
        target = self.directory / "quarantine"
        make_dirs(target)
        path.rename(target / path.name)
        fsync_dir(target)
        fsync_dir(self.directory)

    @staticmethod
    def release(fd: int, path: Path, *, shipped: bool) -> None:
        if shipped:
            path.unlink(missing_ok=True)
        os.close(fd)

    # -- writer liveness ---------------------------------------------------------------------
    def lock_path(self, writer_id: str) -> Path:
        return self.directory / "writers" / f"{writer_id}.lock"

    def hold_writer_lock(self) -> int:
        """Create and lock this writer's lock file: held until the process ends. Created
        locked under a temporary name, then renamed into place, so no other process can ever
        find it unlocked (and take this writer for dead) while it lives."""
        directory = self.directory / "writers"
        make_dirs(directory)
        tmp = directory / f".{self.writer_id}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(tmp, self.lock_path(self.writer_id))
            fsync_dir(directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return fd

    def dead_writers(self) -> Iterator[tuple[str, int]]:
        """(writer id, locked fd) of every writer of this host whose process is gone: its lock
        file is unlocked. The caller closes the fd (or removes the file with `forget_writer`)."""
        try:
            files = sorted((self.directory / "writers").glob("*.lock"))
        except FileNotFoundError:
            return
        for path in files:
            writer_id = path.stem
            if writer_id == self.writer_id:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            yield writer_id, fd

    def segments_of(self, writer_id: str) -> list[Path]:
        return [p for p in self.segments() if writer_of(p) == writer_id]

    def forget_writer(self, writer_id: str, fd: int) -> None:
        self.lock_path(writer_id).unlink(missing_ok=True)
        os.close(fd)


def read_lines(path: Path, offset: int) -> tuple[list[tuple[Op, int]], int]:
    """The whole lines of `path` from `offset`: (record, end offset) pairs and the offset after
    the last whole line. A torn last line (never acknowledged) is left unread."""
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    out: list[tuple[Op, int]] = []
    pos = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            break
        out.append((op_from_json(orjson.loads(data[pos:end])), offset + end + 1))
        pos = end + 1
    return out, offset + pos


@dataclass
class _Tail:
    offset: int = 0
    decisions: list[tuple[str, str]] = field(default_factory=list)
    rewards: list[str] = field(default_factory=list)
    activations: list[tuple[str, str]] = field(default_factory=list)


class SpoolIndex:
    """What the host's spool holds that the database may not have yet: decisions and
    activations by key, rewards by id. Refreshed incrementally (new bytes of each segment);
    a segment that disappeared was shipped, so its records are in the database."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._tails: dict[Path, _Tail] = {}
        self.decisions: dict[tuple[str, str], DecisionRecord] = {}
        self.rewards: dict[str, RewardRecord] = {}
        self.activations: dict[tuple[str, str], ActivationRecord] = {}

    def __len__(self) -> int:
        return len(self._tails)

    def refresh(self) -> None:
        try:
            present = set(self.directory.glob(SEGMENT_GLOB))
        except FileNotFoundError:
            present = set()
        with self._lock:
            if not present and not self._tails:
                return
            for gone in set(self._tails) - present:
                self._drop(self._tails.pop(gone))
            for path in sorted(present):
                tail = self._tails.setdefault(path, _Tail())
                try:
                    lines, tail.offset = read_lines(path, tail.offset)
                except FileNotFoundError:
                    self._drop(self._tails.pop(path))
                    continue
                except (ValueError, KeyError, TypeError):
                    continue  # a corrupt segment: the shipper quarantines it
                for op, _ in lines:
                    self._add(tail, op)

    def add(self, path: Path, ops: list[Op], end: int) -> None:
        """Record what this process just appended to `path` (up to byte `end`)."""
        with self._lock:
            tail = self._tails.setdefault(path, _Tail())
            if tail.offset >= end:
                return
            for op in ops:
                self._add(tail, op)
            tail.offset = end

    def _add(self, tail: _Tail, op: Op) -> None:
        if isinstance(op, DecisionRecord):
            self.decisions.setdefault(op.key, op)
            tail.decisions.append(op.key)
        elif isinstance(op, RewardRecord):
            self.rewards.setdefault(op.reward_id, op)
            tail.rewards.append(op.reward_id)
        else:
            self.activations.setdefault(op.key, op)
            tail.activations.append(op.key)

    def _drop(self, tail: _Tail) -> None:
        for key in tail.decisions:
            self.decisions.pop(key, None)
        for rid in tail.rewards:
            self.rewards.pop(rid, None)
        for key in tail.activations:
            self.activations.pop(key, None)

    def refresh_if_pending(self, spool: Spool) -> bool:
        """Refresh if the host's spool holds anything; False (nothing to check) otherwise."""
        if not self._tails and not spool.segments():
            return False
        self.refresh()
        return bool(self._tails)

    def decision(self, key: tuple[str, str]) -> DecisionRecord | None:
        self.refresh()
        return self.decisions.get(key)

    def activation(self, key: tuple[str, str]) -> ActivationRecord | None:
        return self.activations.get(key)

    def reward(self, reward_id: str) -> RewardRecord | None:
        self.refresh()
        return self.rewards.get(reward_id)
