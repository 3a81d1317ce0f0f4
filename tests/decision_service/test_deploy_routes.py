"""The deploy routes: model listing with verdicts and override flags, one model with its
verdicts and history, approve / reject / rollout / rollback, the rollout state, and every
refusal as a 4xx with its stable code (nothing changed)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from deploy import registry
from log.audit import read_audit
from log.loops import LoopConfig, put_loop
from log.verdicts import VerdictRecord, store_verdict

LOOP = "default"
_n = itertools.count()


@pytest.fixture
def engine(client: TestClient) -> Engine:
    eng: Engine = client.app.state.service.engine  # type: ignore[attr-defined]
    put_loop(eng, LOOP, LoopConfig())
    put_loop(eng, "other", LoopConfig())
    return eng


def new(engine: Engine, loop: str = LOOP) -> str:
    return registry.register(
        engine, loop=loop, kind="batch", vw_args="", artifact=b"m%d" % next(_n)
    ).version


def verdict(engine: Engine, version: str, decision: str) -> None:
    store_verdict(
        engine,
        VerdictRecord(
            LOOP,
            version,
            None,
            datetime.now(UTC),
            decision,
            f"because {decision}",
            criteria={"confidence": 0.95},
            numbers={"n": 1234, "difference": {"value": 0.1, "ci_low": 0.05, "ci_high": 0.15}},
        ),
    )


def url(version: str, action: str = "") -> str:
    base = f"/v1/loops/{LOOP}/models/{version}"
    return f"{base}/{action}" if action else base


def error(resp: Any, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code, resp.text


def test_listing_and_detail(client: TestClient, engine: Engine) -> None:
    a, b, c = new(engine), new(engine), new(engine)
    verdict(engine, a, "pending")
    verdict(engine, a, "pass")
    verdict(engine, b, "fail")
    assert client.post(url(a, "approve"), json={"reason": "passed"}).status_code == 200
    resp = client.post(url(b, "approve"), json={"reason": "I know better", "override": True})
    assert resp.status_code == 200 and resp.json()["override"] is True
    new(engine, "other")

    body = client.get(f"/v1/loops/{LOOP}/models").json()
    assert body["loop"] == LOOP
    models = {m["version"]: m for m in body["models"]}
    assert [m["version"] for m in body["models"]] == [c, b, a]  # newest first
    assert models[a]["status"] == "retired" and models[b]["status"] == "live"
    assert models[b]["replaced"] == a and models[b]["override"] is True
    assert models[a]["override"] is False and models[c]["latest_verdict"] is None
    latest = models[a]["latest_verdict"]
    assert (latest["look"], latest["decision"], latest["passed"]) == (2, "pass", True)
    assert latest["numbers"]["n"] == 1234 and latest["reason"] == "because pass"
    assert models[b]["latest_verdict"]["decision"] == "fail"
    only = client.get(f"/v1/loops/{LOOP}/models", params={"status": "candidate"}).json()
    assert [m["version"] for m in only["models"]] == [c]
    assert len(client.get(f"/v1/loops/{LOOP}/models?limit=1").json()["models"]) == 1
    error(client.get(f"/v1/loops/{LOOP}/models?status=weird"), 422, "invalid_request")
    error(client.get(f"/v1/loops/{LOOP}/models?limit=0"), 422, "invalid_request")
    error(client.get("/v1/loops/nope/models"), 404, "loop_not_found")

    detail = client.get(url(a)).json()
    assert [v["look"] for v in detail["verdicts"]] == [2, 1]
    assert [h["action"] for h in detail["history"]] == ["model.live"]
    assert detail["history"][0]["reason"] == "passed"
    history = client.get(url(b)).json()["history"]
    assert history[0]["action"] == "model.live_override"
    assert history[0]["details"]["verdict"]["decision"] == "fail"
    other = registry.list_versions(engine, "other")[0].version
    error(client.get(url(other)), 404, "model_not_found")
    error(client.get(url("v-nope")), 404, "model_not_found")
    error(client.get("/v1/loops/nope/models/" + a), 404, "loop_not_found")


def test_approve_reject_and_their_refusals(client: TestClient, engine: Engine) -> None:
    v = new(engine)
    error(client.post(url(v, "approve"), json={"reason": "ship it"}), 409, "gate_not_passed")
    error(
        client.post(url(v, "approve"), json={"reason": "  ", "override": True}),
        422,
        "invalid_request",
    )
    error(client.post(url(v, "approve"), json={}), 422, "invalid_request")
    error(client.post(url(v, "approve"), json={"reason": "x", "extra": 1}), 422, "invalid_request")
    error(client.post(url(v, "approve"), json={"reason": "x" * 2001}), 422, "invalid_request")
    error(
        client.post(url(v, "approve"), json={"reason": "x", "override": "yes"}),
        422,
        "invalid_request",
    )
    error(client.post(url(v, "approve"), content=b"{nope"), 400, "invalid_json")
    # nothing refused was written (the only entry is the first start's admin key)
    assert [e.action for e in read_audit(engine) if not e.action.startswith("key_")] == []
    verdict(engine, v, "pass")
    resp = client.post(url(v, "approve"), json={"reason": "ship it"})
    assert resp.status_code == 200 and resp.json()["status"] == "live"
    assert resp.json()["override"] is False and resp.json()["live_since"] is not None
    # a second approval of the same version: the first one won
    error(client.post(url(v, "approve"), json={"reason": "ship it"}), 409, "transition_conflict")
    error(client.post(url(v, "reject"), json={"reason": "no"}), 409, "invalid_transition")

    w = new(engine)
    resp = client.post(url(w, "reject"), json={"reason": "worse offline"})
    assert resp.status_code == 200 and resp.json()["status"] == "rejected"
    error(client.post(url(w, "reject"), json={"reason": "again"}), 409, "transition_conflict")
    error(
        client.post(url(w, "approve"), json={"reason": "x", "override": True}),
        409,
        "invalid_transition",
    )
    error(client.post(url("v-nope", "reject"), json={"reason": "x"}), 404, "model_not_found")
    (row,) = [e for e in read_audit(engine) if e.action == "model.rejected"]
    assert (row.target, row.reason, row.actor) == (w, "worse offline", "key:7e57ad000001:bootstrap")


def test_rollout_state_and_rollback(client: TestClient, engine: Engine) -> None:
    error(client.post(f"/v1/loops/{LOOP}/rollback", json={"reason": "bad"}), 409, "no_live_version")
    first = new(engine)
    verdict(engine, first, "pass")
    client.post(url(first, "approve"), json={"reason": "go"})
    error(
        client.post(f"/v1/loops/{LOOP}/rollback", json={"reason": "bad"}), 409, "no_rollback_target"
    )
    second = new(engine)
    verdict(engine, second, "pass")
    client.post(url(second, "approve"), json={"reason": "go"})

    canary, shadow = new(engine), new(engine)
    bad = [
        ({"to": "canary", "reason": "x", "canary_percent": 75}, 422, "invalid_request"),
        ({"to": "canary", "reason": "x", "canary_percent": 0.01}, 422, "invalid_request"),
        ({"to": "shadow", "reason": "x", "canary_percent": 5}, 422, "invalid_request"),
        ({"to": "live", "reason": "x"}, 422, "invalid_request"),
        ({"to": "canary"}, 422, "invalid_request"),
    ]
    for body, status, code in bad:
        error(client.post(url(canary, "rollout"), json=body), status, code)
    resp = client.post(
        url(canary, "rollout"), json={"to": "canary", "reason": "try", "canary_percent": 20}
    )
    assert resp.status_code == 200 and resp.json()["canary_percent"] == 20.0
    resp = client.post(url(shadow, "rollout"), json={"to": "shadow", "reason": "watch"})
    assert resp.status_code == 200 and resp.json()["status"] == "shadow"
    error(
        client.post(url(shadow, "rollout"), json={"to": "canary", "reason": "x"}),
        409,
        "rollout_slot_taken",
    )

    state = client.get(f"/v1/loops/{LOOP}/rollout").json()
    assert state["live"]["version"] == second and state["canary"]["version"] == canary
    assert state["shadow"]["version"] == shadow
    analysis = state["canary_analysis"]
    assert analysis["canary"] == canary and analysis["live"] == second
    assert (analysis["n_canary"], analysis["decision"]) == (0, "undecided")
    error(client.get("/v1/loops/nope/rollout"), 404, "loop_not_found")

    error(
        client.post(f"/v1/loops/{LOOP}/rollback", json={"reason": "x", "expected_live": first}),
        409,
        "transition_conflict",
    )
    error(client.post(f"/v1/loops/{LOOP}/rollback", json={"reason": " "}), 422, "invalid_request")
    error(
        client.post(f"/v1/loops/{LOOP}/rollback", json={"reason": "x", "to": canary}),
        409,
        "invalid_transition",
    )
    resp = client.post(
        f"/v1/loops/{LOOP}/rollback", json={"reason": "conversions fell", "expected_live": second}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["version"] == first and resp.json()["status"] == "live"
    state = client.get(f"/v1/loops/{LOOP}/rollout").json()
    assert state["live"]["version"] == first and state["canary"]["version"] == canary
    rollbacks = [e for e in read_audit(engine) if e.action == "model.rollback"]
    assert len(rollbacks) == 1 and rollbacks[0].details["restored"] == first
    # rejecting the canary stops it and leaves live alone
    assert client.post(url(canary, "reject"), json={"reason": "enough"}).status_code == 200
    state = client.get(f"/v1/loops/{LOOP}/rollout").json()
    assert state["canary"] is None and state["canary_analysis"] is None
    assert state["live"]["version"] == first
