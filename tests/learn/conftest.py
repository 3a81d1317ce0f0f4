"""Fixtures of the training tests: a migrated store with a loop, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from log.loops import LoopConfig, put_loop
from log.schema import make_engine, migrate
from log.writer import GroupCommitWriter

LOOP = "default"
VW_ARGS = "-q ca --cb_type mtr"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    migrate(eng)
    # the learner's tests train plain models: a strategy the service computes, not VW's RegCB
    config = LoopConfig(exploration="epsilon_greedy", vw_args=VW_ARGS, default_reward=0.0)
    put_loop(eng, LOOP, config)
    yield eng
    eng.dispose()


@pytest.fixture
def writer(engine: Engine, tmp_path: Path) -> Iterator[GroupCommitWriter]:
    w = GroupCommitWriter(engine, tmp_path / "spool", delay_s=0.0, max_group=100_000)
    w.start()
    yield w
    w.stop()
