"""Fault injection for log/ tests: make a running writer's database unreachable, and back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from log.schema import make_engine
from log.writer import GroupCommitWriter


@contextmanager
def database_down(writer: GroupCommitWriter, tmp_path: Path) -> Iterator[None]:
    """Inside: every connection the writer opens fails (a database file that cannot exist)."""
    good = writer.engine
    bad = make_engine(f"sqlite:///{tmp_path / 'unreachable' / 'dir' / 'x.db'}")
    writer.engine = bad
    writer._close_conn()
    try:
        yield
    finally:
        writer.engine = good
        writer._close_conn()
        bad.dispose()
