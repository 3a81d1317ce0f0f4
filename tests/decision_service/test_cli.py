"""The command line: migrate, join, learn --once, export, and a short demo run."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from decision_service.cli import app
from decision_service.demo import DemoConfig, run_demo
from decision_service.settings import get_settings
from log.api_keys import list_keys
from log.joiner import join_loop
from log.loops import LoopConfig, put_loop
from log.schema import make_engine, migrate
from log.writer import GroupCommitWriter
from tests.log.helpers import T0, decision_rec, reward_rec

runner = CliRunner()


@pytest.fixture
def store(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A store with 300 joined decisions of loop `default`, and DS_DATABASE_URL pointing to it."""
    monkeypatch.setenv("DS_DATABASE_URL", db_url)
    get_settings.cache_clear()
    engine = make_engine(db_url)
    migrate(engine)
    put_loop(engine, "default", LoopConfig())
    writer = GroupCommitWriter(engine, tmp_path / "spool", delay_s=0.0)
    writer.start()
    writer.write_sync([decision_rec(f"e{i}") for i in range(300)])
    writer.write_sync([reward_rec(f"e{i}", 1.0, received_at=T0) for i in range(0, 300, 3)])
    writer.stop()
    join_loop(engine, "default", default_reward=0.0, aggregation="sum", now=T0 + timedelta(hours=1))
    engine.dispose()
    yield db_url
    get_settings.cache_clear()


def test_learn_once_registers_a_version(store: str) -> None:
    result = runner.invoke(
        app,
        [
            "learn",
            "--loop",
            "default",
            "--once",
            "--mode",
            "batch",
            "--since",
            "2026-01-01T00:00:00",
            "--until",
            "2026-01-02",
        ],
    )
    assert result.exit_code == 0, result.output
    line = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert line["n_events"] == 300 and line["version"]["status"] == "candidate"


def test_learn_rejects_bad_options(store: str) -> None:
    result = runner.invoke(app, ["learn", "--once", "--mode", "sideways"])
    assert result.exit_code != 0 and "online or batch" in result.output


def test_export_dsjson_and_parquet(store: str, tmp_path: Path) -> None:
    out = tmp_path / "log.dsjson"
    result = runner.invoke(
        app, ["export", "--loop", "default", "--format", "dsjson", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = out.read_bytes().splitlines()
    assert len(lines) == 300 and orjson.loads(lines[0])["_label_Action"] >= 1
    pq_out = tmp_path / "log.parquet"
    result = runner.invoke(
        app, ["export", "--loop", "default", "--format", "parquet", "-o", str(pq_out)]
    )
    assert result.exit_code == 0, result.output
    assert pq.read_table(pq_out).num_rows == 300
    bad = runner.invoke(app, ["export", "--loop", "default", "--format", "csv"])
    assert bad.exit_code != 0 and "dsjson or parquet" in bad.output


def test_join_and_migrate(store: str) -> None:
    assert runner.invoke(app, ["migrate"]).exit_code == 0
    result = runner.invoke(app, ["join"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout.strip().splitlines()[-1])["default"]["decisions"] == 0


def test_writers_lists_and_forgets(store: str, tmp_path: Path) -> None:
    """A writer that is gone for good holds the joiner back until an operator forgets it."""
    engine = make_engine(store)
    writer = GroupCommitWriter(engine, tmp_path / "other-host-spool", delay_s=0.0)
    writer._publish(force=True, raise_errors=True)  # registered, then the host vanishes
    writer._close_conn()
    listed = [orjson.loads(line) for line in runner.invoke(app, ["writers"]).stdout.splitlines()]
    assert [w["writer_id"] for w in listed] == [writer.writer_id]
    result = runner.invoke(app, ["writers", "--forget", writer.writer_id])
    assert result.exit_code == 0 and result.stdout.strip() == ""
    engine.dispose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_demo_runs_the_loop_over_http(db_url: str, tmp_path: Path) -> None:
    """A short demo: service process, HTTP traffic, joins, online learning, plot, JSON line."""
    lines: list[str] = []
    cfg = DemoConfig(events=600, chunk=300, concurrency=8, eval_contexts=300,
                     database_url=db_url, plot=str(tmp_path / "curve.png"),
                     admin_key_file=str(tmp_path / "admin-key"))  # fmt: skip
    summary = run_demo(cfg, echo=lines.append)
    assert orjson.loads(lines[-1]) == summary
    assert set(summary) == {"events", "learned_reward", "oracle_reward", "uniform_reward", "plot"}
    assert summary["events"] == 600
    assert 0 < summary["uniform_reward"] < summary["oracle_reward"]
    assert Path(summary["plot"]).stat().st_size > 10_000
    # two chunks, each learned and promoted: the table has a row per chunk
    assert sum(1 for line in lines if line.strip().startswith(("300 ", "600 "))) == 2
    # the service made its first admin key in the file; the demo's own key is revoked
    assert (tmp_path / "admin-key").read_text().startswith("dsk_")
    engine = make_engine(db_url)
    try:
        (demo_key,) = [k for k in list_keys(engine) if k.name == "demo"]
    finally:
        engine.dispose()
    assert demo_key.loops is not None and not demo_key.active
