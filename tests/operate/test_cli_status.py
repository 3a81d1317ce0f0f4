"""`decision-service operate` then `decision-service status --loop L`: the headline figures of a
simulated run in the terminal."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from decision_service.cli import app
from decision_service.settings import get_settings
from log.joiner import join_loop
from log.schema import make_engine, migrate
from log.writer import GroupCommitWriter
from tests.deploy.learner_helpers import SIM, configure
from tests.learn.helpers import sim_events, write

runner = CliRunner()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("DS_DATABASE_URL", url)
    get_settings.cache_clear()
    engine = make_engine(url)
    migrate(engine)
    configure(engine)
    writer = GroupCommitWriter(engine, tmp_path / "spool", delay_s=0.0)
    writer.start()
    start = datetime.now(UTC) - timedelta(minutes=30)
    write(writer, sim_events(SIM, 240, seed=5, start=start, prefix="s", spacing_s=5))
    writer.stop()
    join_loop(engine, "default", default_reward=0.0, aggregation="earliest", now=datetime.now(UTC))
    engine.dispose()
    yield url
    get_settings.cache_clear()


def test_status_prints_the_headline_figures(store: str) -> None:
    done = runner.invoke(app, ["operate"])
    assert done.exit_code == 0, done.output
    assert orjson.loads(done.output)["buckets"]["default"] > 0
    result = runner.invoke(app, ["status", "--loop", "default", "--json"])
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.output)
    assert data["total"]["decisions"] == 240
    joined = data["total"]["joined"]
    assert joined > 0
    text = runner.invoke(app, ["status", "--loop", "default"])
    assert text.exit_code == 0, text.output
    assert "decisions           240" in text.output
    assert f"joined {joined}" in text.output
    assert "reward rate" in text.output and "firing alarms" in text.output
    again = runner.invoke(app, ["operate", "--since", "2026-01-01"])  # a full recompute
    assert again.exit_code == 0, again.output
    assert (
        orjson.loads(again.output)["buckets"]["default"]
        > orjson.loads(done.output)["buckets"]["default"]
    )
    missing = runner.invoke(app, ["status", "--loop", "nope"])
    assert missing.exit_code == 1
