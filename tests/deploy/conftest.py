"""Fixtures of the learner's tests: a migrated engine and a running group-commit writer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from log.schema import make_engine, migrate
from log.writer import GroupCommitWriter


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def writer(engine: Engine, tmp_path: Path) -> Iterator[GroupCommitWriter]:
    w = GroupCommitWriter(engine, tmp_path / "spool", delay_s=0.0, max_group=100_000)
    w.start()
    yield w
    w.stop()
