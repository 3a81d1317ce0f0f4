"""The learner's routes: its state, the loop's alarms, resuming a stopped freshness track."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from log.audit import read_audit
from log.learner_state import LearnerRun, record_run, stop_freshness

LOOP_BODY = {"vw_args": "--cb_type mtr", "learner": {"freshness_s": 30, "candidates": []}}


def _engine(client: TestClient) -> Engine:
    engine: Engine = client.app.state.service.engine  # type: ignore[attr-defined]
    return engine


def _stop(client: TestClient, loop: str = "a") -> None:
    stop_freshness(
        _engine(client),
        loop,
        at=datetime.now(UTC),
        reason="collapse of the served distribution",
        message=f"freshness track of loop {loop!r} stopped",
        details={"checks": {"entropy_new": 0.1, "entropy_live": 2.0}},
    )


def test_the_learner_state_of_a_loop(client: TestClient) -> None:
    assert client.put("/v1/loops/a", json=LOOP_BODY).status_code == 201
    body = client.get("/v1/loops/a/learner").json()
    assert body == {
        "loop": "a",
        "freshness": {
            "every_s": 30.0,
            "stopped": False,
            "stopped_at": None,
            "reason": None,
            "last_run_at": None,
        },
        "candidates": {"every_s": 3600.0, "configurations": [], "last_run_at": None},
        "runs": [],
        "alarms": [],
    }
    now = datetime.now(UTC)
    record_run(_engine(client), "a", LearnerRun("candidates", now, "registered", "1 candidate"))
    _stop(client)
    body = client.get("/v1/loops/a/learner").json()
    assert body["freshness"]["stopped"] is True
    assert body["freshness"]["reason"] == "collapse of the served distribution"
    assert body["candidates"]["last_run_at"] == now.isoformat()
    assert [r["track"] for r in body["runs"]] == ["candidates"]
    (alarm,) = body["alarms"]
    assert alarm["kind"] == "freshness_stopped" and alarm["state"] == "firing"
    assert alarm["details"]["checks"]["entropy_new"] == 0.1


def test_resume_clears_the_stop_and_the_alarm_and_is_audited(client: TestClient) -> None:
    client.put("/v1/loops/a", json=LOOP_BODY)
    r = client.post("/v1/loops/a/freshness/resume", json={"reason": "x"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "freshness_not_stopped"
    _stop(client)
    r = client.post("/v1/loops/a/freshness/resume", json={"reason": "looked at the numbers"})
    assert r.status_code == 200, r.text
    assert r.json()["freshness"]["stopped"] is False and r.json()["alarms"] == []
    alarms = client.get("/v1/loops/a/alarms").json()["alarms"]
    assert [a["state"] for a in alarms] == ["cleared"]
    assert client.get("/v1/loops/a/alarms?state=firing").json() == {"alarms": []}
    entry = read_audit(_engine(client), loop="a")[-1]
    assert (entry.action, entry.reason) == ("freshness_resume", "looked at the numbers")
    assert client.post("/v1/loops/a/freshness/resume", json={"reason": "x"}).status_code == 409


def test_bad_requests_write_nothing(client: TestClient) -> None:
    client.put("/v1/loops/a", json=LOOP_BODY)
    _stop(client)
    for body, status in (
        ({}, 422),
        ({"reason": ""}, 422),
        ({"reason": "   "}, 422),
        ({"reason": "x" * 2001}, 422),
        ({"reason": "x", "force": True}, 422),
        ([1], 422),
    ):
        r = client.post("/v1/loops/a/freshness/resume", json=body)
        assert r.status_code == status, (body, r.text)
    r = client.post("/v1/loops/a/freshness/resume", content=b"{", headers={"content-type": "x"})
    assert r.status_code == 400
    assert client.get("/v1/loops/a/learner").json()["freshness"]["stopped"] is True
    for path in ("/learner", "/alarms"):
        r = client.get(f"/v1/loops/nope{path}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "loop_not_found"
    r = client.post("/v1/loops/nope/freshness/resume", json={"reason": "x"})
    assert r.status_code == 404
    assert client.get("/v1/loops/a/alarms?state=bad").status_code == 422
    assert client.get("/v1/loops/a/alarms?limit=0").status_code == 422


def test_a_loop_refuses_candidate_arguments_outside_the_allowlist(client: TestClient) -> None:
    body = {"learner": {"candidates": ["-q ca", "--daemon"]}}
    r = client.put("/v1/loops/a", json=body)
    assert r.status_code == 422 and "learner.candidates[1]" in r.json()["error"]["message"]
    assert client.get("/v1/loops/a").status_code == 404
    r = client.put("/v1/loops/a", json={"learner": {"candidates": ["-qca  --cb_type dr"]}})
    assert r.status_code == 201
    assert r.json()["config"]["learner"]["candidates"] == ["-q ca --cb_type dr"]


def test_a_gatekeeper_clears_an_alarm_with_a_reason(client: TestClient) -> None:
    from log.alarms import raise_alarm_once

    client.put("/v1/loops/a", json=LOOP_BODY)
    alarm = raise_alarm_once(
        _engine(client),
        loop="a",
        kind="canary_rolled_back",
        version="v1",
        message="canary v1 rolled back",
        at=datetime.now(UTC),
    )
    assert alarm is not None
    url = f"/v1/loops/a/alarms/{alarm.id}/clear"
    r = client.post(url, json={"reason": "seen, the config is fixed"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "cleared" and r.json()["kind"] == "canary_rolled_back"
    entry = read_audit(_engine(client), loop="a")[-1]
    assert (entry.action, entry.target) == ("alarm_clear", alarm.id)
    r = client.post(url, json={"reason": "again"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "alarm_not_firing"
    r = client.post("/v1/loops/a/alarms/nope/clear", json={"reason": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "alarm_not_found"
    r = client.post(f"/v1/loops/b/alarms/{alarm.id}/clear", json={"reason": "x"})
    assert r.status_code == 404
    _stop(client)
    (stopped,) = client.get("/v1/loops/a/alarms?state=firing").json()["alarms"]
    r = client.post(f"/v1/loops/a/alarms/{stopped['id']}/clear", json={"reason": "x"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "alarm_needs_resume"
    r = client.post(f"/v1/loops/a/alarms/{stopped['id']}/clear", json={"reason": ""})
    assert r.status_code == 422
