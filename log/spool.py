"""Local append-only log used when the database is unreachable.

Each process appends whole commit groups to its own segment file (one fdatasync per group).
Segments are shipped into the database oldest first; every op is keyed (decision: loop +
event_id, reward: reward_id, activation: idempotent update), so shipping twice writes once.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from log.ops import Op, op_from_json, op_to_json


class Spool:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._segment: Path | None = None
        self._fd: int | None = None
        self._seq = 0

    def _open_segment(self) -> int:
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._seq += 1
            name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq}.seg"
            self._segment = self.directory / name
            self._fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            # Held while we append: other processes' shippers skip a segment still being written.
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self._fd

    def append(self, ops: list[Op]) -> None:
        """Append one group and make it durable with a single fdatasync."""
        fd = self._open_segment()
        payload = b"".join(orjson.dumps(op_to_json(op)) + b"\n" for op in ops)
        os.write(fd, payload)
        os.fdatasync(fd)

    def seal(self) -> None:
        """Close the current segment so it can be shipped."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._segment = None

    def segments(self) -> list[Path]:
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob("*.seg"))

    def has_pending(self) -> bool:
        return self._fd is not None or bool(self.segments())

    @staticmethod
    def read(path: Path) -> list[Op]:
        ops: list[Op] = []
        with path.open("rb") as fh:
            for line in fh:
                if line.endswith(b"\n"):  # a torn last line was never acknowledged
                    ops.append(op_from_json(orjson.loads(line)))
        return ops

    def iter_ops(self) -> Iterator[Op]:
        for path in self.segments():
            try:
                yield from self.read(path)
            except FileNotFoundError:
                continue

    def claim(self, path: Path) -> int | None:
        """Lock a sealed segment for shipping; None if another process holds it or it is gone."""
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
        if not path.exists():
            os.close(fd)
            return None
        return fd

    def quarantine(self, path: Path) -> None:
        """Move a segment the database refuses out of the shipping queue (kept for inspection)."""
        target = self.directory / "quarantine"
        target.mkdir(parents=True, exist_ok=True)
        path.rename(target / path.name)

    @staticmethod
    def release(fd: int, path: Path, *, shipped: bool) -> None:
        if shipped:
            path.unlink(missing_ok=True)
        os.close(fd)
