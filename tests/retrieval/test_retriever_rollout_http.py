"""Retriever rollout through the HTTP API on both databases: a shadow retriever's overlap logged
with each retrieved decision and reported; a canary retriever serving its share of the users,
its arm logged, its online A/B reported from the joined rewards; the refusals (4xx codes);
reject and rollback; the worker's counts in /v1/status."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient

from decision_service.app import create_app
from decision_service.service import Service
from log.joiner import join_loop
from log.retrievers import register_retriever
from log.store import get_stored_decision
from policies.two_tower import TwoTower, TwoTowerConfig, save_two_tower
from tests.conftest import admin_client, make_settings

BASE = "/v1/loops/default/retrievers"


def _service(client: TestClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


def _register(client: TestClient, seed: int) -> str:
    torch.manual_seed(seed)
    model = TwoTower(TwoTowerConfig(buckets=256, hidden=8, dim=8))
    return register_retriever(
        _service(client).engine, "default", save_two_tower(model), {}, datetime.now(UTC)
    ).version


def _rank(client: TestClient, user: int) -> dict[str, Any]:
    body = {"context": {"user": f"u{user}"}, "retrieve": {"k": 8}, "user_id": f"user-{user}"}
    r = client.post("/v1/loops/default/rank", json=body)
    assert r.status_code == 201, r.text
    service = _service(client)
    record = get_stored_decision(
        service.engine, service.writer.index, "default", r.json()["event_id"]
    )
    assert record is not None and record.retrieval is not None
    return {"response": r.json(), "retrieval": record.retrieval, "chosen": record.chosen}


def _join(client: TestClient, n: int) -> None:
    """Join the loop until `n` more decisions are joined (their 2-second windows close once
    the writer's watermark, published every half second, passes them)."""
    joined, deadline = 0, time.monotonic() + 30
    while joined < n and time.monotonic() < deadline:
        stats = join_loop(_service(client).engine, "default", default_reward=0.0, aggregation="sum")
        joined += stats.decisions
        if joined < n:
            time.sleep(0.2)
    assert joined == n


def _error(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_retriever_rollout_over_http(db_url: str, tmp_path: Path) -> None:
    settings = make_settings(db_url, tmp_path, durability="durable")
    with admin_client(create_app(settings)) as client:
        cfg = client.get("/v1/loops/default").json()["config"]
        cfg["reward_wait_s"] = 2.0
        assert client.put("/v1/loops/default", json=cfg).status_code == 200
        items = [{"id": f"i{j}", "features": {"cat": f"k{j % 9}"}} for j in range(80)]
        assert client.put("/v1/loops/default/items", json={"items": items}).status_code == 200
        live = _register(client, 0)
        r = client.post(f"{BASE}/{live}/promote", json={"override": True, "reason": "first"})
        assert r.status_code == 200, r.text
        shadow = _register(client, 1)
        # refusals: body, version, gate, slot
        _error(client.post(f"{BASE}/{shadow}/rollout", json={"to": "live"}), 422, "invalid_request")
        _error(client.post(f"{BASE}/{shadow}/rollout", json={}), 422, "invalid_request")
        _error(client.post(f"{BASE}/{shadow}/rollout", content=b"{"), 400, "invalid_json")
        body = {"to": "shadow", "canary_percent": 10}
        _error(client.post(f"{BASE}/{shadow}/rollout", json=body), 422, "invalid_request")
        _error(client.post(f"{BASE}/nope/rollout", json={"to": "shadow"}), 404, "not_found")
        _error(
            client.post(f"{BASE}/{shadow}/rollout", json={"to": "canary"}), 409, "gate_not_passed"
        )
        body = {"to": "canary", "override": True}
        _error(client.post(f"{BASE}/{shadow}/rollout", json=body), 422, "reason_required")
        _error(client.get("/v1/loops/nope/retrievers/rollout"), 404, "loop_not_found")
        report = client.get(f"{BASE}/rollout").json()
        assert (report["shadow"], report["canary"], report["live"]) == (None, None, live)

        # shadow: every retrieved decision logs its overlap; nothing served changes
        r = client.post(f"{BASE}/{shadow}/rollout", json={"to": "shadow", "reason": "watch"})
        assert r.status_code == 200 and r.json()["status"] == "shadow"
        _error(
            client.post(f"{BASE}/{_register(client, 2)}/rollout", json={"to": "shadow"}),
            409,
            "rollout_slot_taken",
        )
        shadowed = [_rank(client, u) for u in range(30)]
        for got in shadowed:
            summary = got["retrieval"]["shadow"]
            assert summary["retriever"] == shadow and 0.0 <= summary["overlap"] <= 1.0
            assert got["retrieval"]["retriever"] == live
            assert "shadow" not in got["response"] and "retrieval" not in got["response"]
        rewarded = [g for g in shadowed[::3]]
        for got in rewarded:
            event = got["response"]["event_id"]
            r = client.post(f"/v1/loops/default/events/{event}/reward", json={"value": 1.0})
            assert r.status_code == 202, r.text
        _join(client, 30)
        report = client.get(f"{BASE}/rollout").json()["shadow"]
        assert report["version"] == shadow and report["n_shadowed"] == 30
        assert report["n_failed"] == 0 and report["n_rewarded"] == len(rewarded)
        want = sum(g["retrieval"]["shadow"]["overlap"] for g in shadowed) / 30
        assert abs(report["mean_overlap"] - want) < 1e-9
        hits = sum(g["retrieval"]["shadow"]["chosen_in"] for g in rewarded) / len(rewarded)
        assert report["hit_rate"] == {"served": 1.0, "shadow": hits}

        # canary: half the users retrieve with it; the A/B from the joined rewards
        body = {"to": "canary", "canary_percent": 50, "override": True, "reason": "try it"}
        r = client.post(f"{BASE}/{shadow}/rollout", json=body)
        assert r.status_code == 200 and r.json()["canary_percent"] == 50
        _error(client.post(f"{BASE}/{shadow}/rollout", json=body), 409, "transition_conflict")
        served = [_rank(client, u) for u in range(60)]
        arms = {g["retrieval"]["arm"] for g in served}
        assert arms == {"live", "canary"}
        for got in served:
            retrieval = got["retrieval"]
            assert "shadow" not in retrieval
            assert retrieval["retriever"] == (shadow if retrieval["arm"] == "canary" else live)
            assert retrieval["arm_probability"] == 0.5
            if retrieval["arm"] == "canary":
                event = got["response"]["event_id"]
                r = client.post(f"/v1/loops/default/events/{event}/reward", json={"value": 1.0})
                assert r.status_code == 202
        again = [_rank(client, u) for u in range(10)]  # a user stays in its arm
        assert [g["retrieval"]["arm"] for g in again] == [
            g["retrieval"]["arm"] for g in served[:10]
        ]
        _join(client, 70)
        canary = client.get(f"{BASE}/rollout").json()["canary"]
        n_canary = sum(g["retrieval"]["arm"] == "canary" for g in served + again)
        assert (canary["n_canary"], canary["n_live"]) == (n_canary, 70 - n_canary)
        rewarded_canary = sum(g["retrieval"]["arm"] == "canary" for g in served)
        assert canary["canary_mean"] == rewarded_canary / n_canary and canary["live_mean"] == 0.0
        assert canary["difference"]["value"] > 0 and canary["decision"] in ("better", "undecided")
        status = client.get("/v1/status").json()["serving"]["default"]
        assert status["retriever_canary_served"] == n_canary
        assert status["retriever_shadow_retrieved"] == 30

        # reject the canary: live alone again; then promote another and roll it back
        r = client.post(f"{BASE}/{shadow}/reject", json={"reason": "enough"})
        assert r.status_code == 200 and r.json()["status"] == "rejected"
        assert client.get(f"{BASE}/rollout").json()["canary"] is None
        assert {_rank(client, u)["retrieval"]["arm"] for u in range(10)} == {"live"}
        other = _register(client, 3)
        r = client.post(f"{BASE}/{other}/promote", json={"override": True, "reason": "next"})
        assert r.status_code == 200 and r.json()["replaced"] == live
        _error(client.post(f"{BASE}/rollback", json={}), 422, "invalid_request")
        body = {"reason": "undo", "expected_live": live}
        _error(client.post(f"{BASE}/rollback", json=body), 409, "transition_conflict")
        r = client.post(f"{BASE}/rollback", json={"reason": "undo", "expected_live": other})
        assert r.status_code == 200 and r.json()["version"] == live
        assert _rank(client, 1)["retrieval"]["retriever"] == live
        _error(client.post(f"{BASE}/rollback", json={"reason": "again"}), 409, "no_rollback_target")
