"""The reward route's guardrail signals: `metric` declared in the loop's gate.guardrails, value
bounds, idempotency with a metric, what is stored, and what the joiner makes of them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, update

from decision_service import Settings, create_app
from decision_service.cli_evaluate import build_spec
from log.joiner import join_loop
from log.models import EvaluationRow, OutcomeRow, RewardRow, WriterRow
from log.schema import make_engine
from tests.conftest import admin_client, make_settings
from tests.decision_service.test_durability import database_down, wait_shipped
from tests.decision_service.test_evaluations_api import _wait as wait_for_job
from tests.learn.helpers import deadline, write
from tests.learn.test_offline_eval_guardrails import guarded_log

ACTIONS = [{"id": f"a{i}", "features": {"price": i}} for i in range(3)]
GATE = {"guardrails": {"report": 0.01, "hide": 0.05}}


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_engine(settings.database_url)
    yield eng
    eng.dispose()


def setup_loop(client: TestClient, loop: str = "guarded", **config: Any) -> None:
    config.setdefault("gate", GATE)
    config.setdefault("reward_wait_s", 3600)
    r = client.put(f"/v1/loops/{loop}", json=config)
    assert r.status_code in (200, 201), r.text


def rank(client: TestClient, event_id: str, loop: str = "guarded", **body: Any) -> None:
    r = client.post(
        f"/v1/loops/{loop}/rank", json={"event_id": event_id, "actions": ACTIONS, **body}
    )
    assert r.status_code == 201, r.text


def reward(client: TestClient, event_id: str, loop: str = "guarded", **body: Any) -> Any:
    return client.post(f"/v1/loops/{loop}/events/{event_id}/reward", json=body)


def stored(engine: Engine) -> list[tuple[str, str, float, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(RewardRow.event_id, RewardRow.metric, RewardRow.value, RewardRow.slot)
        ).all()
    return sorted((r[0], r[1], r[2], r[3]) for r in rows)


def join_later(client: TestClient, hours: float) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    later = datetime.now(UTC) + timedelta(hours=hours)
    with service.engine.begin() as conn:
        conn.execute(update(WriterRow).values(watermark=later))
    service.join_due(later)


def test_a_declared_metric_is_stored_and_counted_apart_from_the_reward(
    client: TestClient, engine: Engine
) -> None:
    setup_loop(client, default_reward=0.25)
    rank(client, "e1")
    r = reward(client, "e1", value=1, metric="report")
    assert r.status_code == 202, r.text
    assert r.json() == {
        "event_id": "e1",
        "slot": 0,
        "status": "accepted",
        "joined": True,
        "replayed": False,
    }
    assert reward(client, "e1", value=3.5, metric="report").status_code == 202
    assert reward(client, "e1", value=0, metric="hide").status_code == 202
    assert reward(client, "e1", value=0.5).status_code == 202  # the reward itself
    assert stored(engine) == [
        ("e1", "", 0.5, 0),
        ("e1", "hide", 0.0, 0),
        ("e1", "report", 1.0, 0),
        ("e1", "report", 3.5, 0),
    ]
    # the loop's counts are of rewards: guardrail signals are not rewards
    counts = client.get("/v1/loops/guarded").json()["counts"]
    assert (counts["rewards"], counts["late_rewards"]) == (1, 0)
    join_later(client, hours=2)
    with engine.connect() as conn:
        row = conn.execute(
            select(OutcomeRow.reward, OutcomeRow.n_rewards, OutcomeRow.guardrails)
        ).one()
    assert tuple(row) == (0.5, 1, {"hide": 1, "report": 2})


def test_a_late_signal_is_stored_and_not_counted(client: TestClient, engine: Engine) -> None:
    setup_loop(client, "late", reward_wait_s=0, default_reward=0.25)
    rank(client, "e1", loop="late")
    r = reward(client, "e1", loop="late", value=1, metric="hide")
    assert r.status_code == 202 and r.json()["status"] == "late" and not r.json()["joined"]
    join_later(client, hours=1)
    with engine.connect() as conn:
        row = conn.execute(select(OutcomeRow.reward, OutcomeRow.guardrails)).one()
        late = conn.execute(select(RewardRow.late)).scalar_one()
    assert tuple(row) == (0.25, None) and late is True


@pytest.mark.parametrize(
    ("loop", "body", "status", "code"),
    [
        ("guarded", {"value": 1, "metric": "spam"}, 422, "unknown_metric"),
        ("guarded", {"value": 1, "metric": "Report"}, 422, "unknown_metric"),
        ("default", {"value": 1, "metric": "report"}, 422, "unknown_metric"),  # none declared
        ("guarded", {"value": 1, "metric": ""}, 422, "invalid_request"),
        ("guarded", {"value": 1, "metric": "r" * 65}, 422, "invalid_request"),
        ("guarded", {"value": 1, "metric": 7}, 422, "invalid_request"),
        ("guarded", {"value": -0.5, "metric": "report"}, 422, "reward_out_of_range"),
        ("guarded", {"value": 1e9 + 1, "metric": "report"}, 422, "reward_out_of_range"),
        ("guarded", {"value": 2, "metric": None}, 422, "reward_out_of_range"),  # the reward's range
    ],
)
def test_refused_signals_write_nothing(
    client: TestClient, engine: Engine, loop: str, body: dict[str, Any], status: int, code: str
) -> None:
    setup_loop(client)
    rank(client, "e1", loop=loop)
    r = reward(client, "e1", loop=loop, **body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert stored(engine) == []


def test_signal_values_cover_zero_to_1e9_whatever_the_reward_range(
    client: TestClient, engine: Engine
) -> None:
    setup_loop(client, min_reward=-1, max_reward=1)
    rank(client, "e1")
    for value in (0, 1e9, 2, 123456.5):
        assert reward(client, "e1", value=value, metric="report").status_code == 202
    assert [v for _, _, v, _ in stored(engine)] == [0.0, 2.0, 123456.5, 1e9]


def test_idempotency_key_covers_the_metric(client: TestClient, engine: Engine) -> None:
    """A client key names one signal: a retry with the same value, slot and metric is stored
    once; the same key with another metric (or none: the reward) is a different reward, 409."""
    setup_loop(client)
    rank(client, "e1")
    first = reward(client, "e1", value=1, metric="report", reward_id="k1")
    retry = reward(client, "e1", value=1, metric="report", reward_id="k1")
    assert first.status_code == retry.status_code == 202
    assert (first.json()["replayed"], retry.json()["replayed"]) == (False, True)
    for clash in (
        {"value": 1, "metric": "hide"},
        {"value": 1},
        {"value": 0, "metric": "report"},
    ):
        r = reward(client, "e1", reward_id="k1", **clash)
        assert r.status_code == 409, clash
        assert r.json()["error"]["code"] == "reward_conflict"
    # and the other way round: a key first used for the reward
    assert reward(client, "e1", value=1, reward_id="k2").status_code == 202
    r = reward(client, "e1", value=1, metric="report", reward_id="k2")
    assert r.status_code == 409 and r.json()["error"]["code"] == "reward_conflict"
    assert stored(engine) == [("e1", "", 1.0, 0), ("e1", "report", 1.0, 0)]


def test_signals_of_a_slate_go_to_their_slot(client: TestClient, engine: Engine) -> None:
    setup_loop(client)
    rank(client, "s1", slots=2)
    assert reward(client, "s1", value=1, metric="hide", slot=1).status_code == 202
    r = reward(client, "s1", value=1, metric="hide", slot=2)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_slot"
    join_later(client, hours=2)
    with engine.connect() as conn:
        rows = conn.execute(
            select(OutcomeRow.slot, OutcomeRow.guardrails).order_by(OutcomeRow.slot)
        ).all()
    assert [tuple(r) for r in rows] == [(0, None), (1, {"hide": 1})]


def test_signals_during_an_outage_are_accepted_unverified_with_their_metric(
    db_url: str, tmp_path: Path
) -> None:
    with admin_client(create_app(make_settings(db_url, tmp_path))) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        setup_loop(client)
        rank(client, "e1")
        with database_down(service, tmp_path):
            r = reward(client, "e1", value=1, metric="report", reward_id="k1")
            assert r.status_code == 202 and r.json()["status"] == "accepted_unverified"
            again = reward(client, "e1", value=1, metric="report", reward_id="k1")
            assert again.status_code == 202 and again.json()["replayed"] is True
            # the spooled signal is checked like a stored one: same key, other metric -> 409
            clash = reward(client, "e1", value=1, metric="hide", reward_id="k1")
            assert clash.status_code == 409
            # the loop's declared metrics need no store: an unknown one is refused
            refused = reward(client, "e1", value=1, metric="spam")
            assert refused.status_code == 422
            assert refused.json()["error"]["code"] == "unknown_metric"
        wait_shipped(tmp_path)
        engine = make_engine(db_url)
        try:
            assert stored(engine) == [("e1", "report", 1.0, 0)]
        finally:
            engine.dispose()


# --------------------------------------------------------------------- evaluations over HTTP
def test_an_evaluation_request_with_guardrails(client: TestClient, engine: Engine) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    n = 400
    ops, reported = guarded_log(n, seed=3)
    write(service.writer, ops)
    join_loop(engine, "default", default_reward=0.0, aggregation="earliest", now=deadline(n + 10))
    for body in (
        {"guardrails": ["Report"]},
        {"guardrails": "report"},
        {"guardrails": [f"m{i}" for i in range(9)]},
        {"guardrails": ["report", "report"]},
    ):
        r = client.post("/v1/loops/default/evaluations", json=body)
        assert r.status_code == 422, body
        assert r.json()["error"]["code"] == "invalid_request"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(EvaluationRow)).scalar_one() == 0
    body = {"policies": [{"kind": "first_action"}], "estimators": ["ips"], "guardrails": ["report"]}
    r = client.post("/v1/loops/default/evaluations", json=body)
    assert r.status_code == 202, r.text
    assert r.json()["request"]["guardrails"] == ["report"]
    done = wait_for_job(client, r.headers["location"])
    assert done["status"] == "succeeded", done["error"]
    policies = {p["name"]: p for p in done["result"]["policies"]}
    live = policies["live"]["guardrails"]["report"]
    assert live["difference"] is None
    assert live["candidate"]["value"] == pytest.approx(reported / n, rel=1e-12)
    first = policies["first_action"]["guardrails"]["report"]
    assert set(first) == {"candidate", "live", "difference"}
    assert first["live"] == live["candidate"] | {"method": "ips:incumbent/bootstrap"}


def test_the_cli_takes_guardrails() -> None:
    options: dict[str, Any] = {
        "policies": ["uniform"],
        "versions": [],
        "vw_args": [],
        "train_since": None,
        "train_until": None,
        "since": None,
        "until": None,
        "estimators": ["ips"],
        "alpha": 0.05,
        "interval": "normal",
        "slates": "skip",
        "greedy": False,
        "seed": 0,
    }
    assert build_spec(**options).guardrails == ()
    assert build_spec(**options, guardrails=["report", "hide"]).guardrails == ("report", "hide")
    with pytest.raises(typer.BadParameter, match="metric names"):
        build_spec(**options, guardrails=["Report"])
