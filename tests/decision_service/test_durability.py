"""Durability through the app: database down -> decisions spooled and acknowledged; rewards and
activations for spooled events accepted; everything shipped exactly once and joined when the
database is back. Fast mode: answered before commit, still stored."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from decision_service import create_app
from log.models import DecisionRow, OutcomeRow, RewardRow
from log.schema import make_engine
from tests.conftest import make_settings

BODY = {"context": {"u": 1}, "actions": [{"id": "a"}, {"id": "b"}, {"id": "c"}]}


def counts(db_url: str) -> tuple[int, int, int]:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        out = tuple(
            int(conn.execute(select(func.count()).select_from(m)).scalar_one())
            for m in (DecisionRow, RewardRow, OutcomeRow)
        )
    engine.dispose()
    return out  # type: ignore[return-value]


def test_database_outage_loses_nothing(db_url: str, tmp_path: Path) -> None:
    settings = make_settings(db_url, tmp_path)
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        client.put("/v1/loops/default", json={"reward_wait_s": 3600, "seed": 5})
        good_engine = service.writer.engine
        # the database becomes unreachable for the writer
        service.writer.engine = make_engine(f"sqlite:///{tmp_path / 'gone' / 'x.db'}")
        service.writer._close_conn()
        answers = [
            client.post("/v1/loops/default/rank", json={**BODY, "event_id": f"o{i}"})
            for i in range(20)
        ]
        assert all(r.status_code == 201 for r in answers)
        deferred = client.post(
            "/v1/loops/default/rank", json={**BODY, "event_id": "d1", "defer_activation": True}
        )
        assert deferred.status_code == 201
        assert service.writer.stats.spooled_ops == 21
        assert list((tmp_path / "spool").glob("*.seg"))
        # rewards and activation for events that are durable (spooled) but not in the database
        r = client.post("/v1/loops/default/events/o3/reward", json={"value": 1})
        assert r.status_code == 202 and r.json()["status"] == "accepted"
        assert client.post("/v1/loops/default/events/d1/activate").status_code == 202
        client.post("/v1/loops/default/events/d1/reward", json={"value": 0.5})
        assert counts(db_url)[0] == 0
        # the database is back: the spool is shipped, in order, exactly once
        service.writer.engine = good_engine
        deadline = time.monotonic() + 20
        while (tmp_path / "spool").exists() and list((tmp_path / "spool").glob("*.seg")):
            assert time.monotonic() < deadline, "spool was not shipped"
            time.sleep(0.1)
        assert counts(db_url)[:2] == (21, 2)
        # replaying the same requests now returns the stored decisions, writes nothing
        again = client.post("/v1/loops/default/rank", json={**BODY, "event_id": "o7"})
        assert again.json() == answers[7].json()
        assert counts(db_url)[0] == 21
        service.join_due(datetime.now(UTC) + timedelta(hours=2))
        engine = make_engine(db_url)
        with engine.connect() as conn:
            joined = dict(conn.execute(select(OutcomeRow.event_id, OutcomeRow.reward)).all())
        engine.dispose()
        assert len(joined) == 21 and joined["o3"] == 1.0 and joined["d1"] == 0.5


def test_fast_mode_answers_before_commit_and_stores(db_url: str, tmp_path: Path) -> None:
    settings = make_settings(db_url, tmp_path, durability="fast")
    with TestClient(create_app(settings)) as client:
        for i in range(50):
            r = client.post("/v1/loops/default/rank", json={**BODY, "event_id": f"f{i}"})
            assert r.status_code == 201
    # shutdown drains the queue: every acknowledged decision is stored
    assert counts(db_url)[0] == 50


def test_fast_mode_bounds_what_is_at_risk(db_url: str, tmp_path: Path) -> None:
    """Past `fast_max_pending` queued rows, fast mode waits for durability (backpressure)."""
    settings = make_settings(db_url, tmp_path, durability="fast", fast_max_pending=1)
    with TestClient(create_app(settings)) as client:
        for i in range(30):
            r = client.post("/v1/loops/default/rank", json={**BODY, "event_id": f"b{i}"})
            assert r.status_code == 201
            assert client.app.state.service.writer.stats.pending <= 1  # type: ignore[attr-defined]
        status = client.get("/v1/status").json()
    assert counts(db_url)[0] == 30
    assert status["durability"] == "fast" and status["writer"]["rows"] >= 29
    assert status["writer"]["spool_segments"] == 0 and status["loops"]["default"] == "untrained"
