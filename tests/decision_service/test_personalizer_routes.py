"""The Personalizer routes in-process (both databases): which loop a key selects, the served
probabilities (chi-square), Apprentice and LoggingOnly as logged and as learned, throttling."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from scipy.stats import chisquare

from decision_service import create_app, routes_evaluations
from learn.examples import slot_examples
from learn.train import train
from log.joiner import join_loop
from log.personalizer_reads import apprentice_metrics
from log.schema import make_engine
from log.training_reads import EventWindow, iter_joined
from policies import VWPolicy
from tests.conftest import admin_client, make_settings
from tests.decision_service.test_durability import database_down

V1 = "/personalizer/v1.0"
ACTIONS = [{"id": x, "features": [{"k": x}]} for x in ("a", "b", "c", "d")]


def key(client: TestClient, role: str, loops: list[str] | None) -> dict[str, str]:
    body: dict[str, Any] = {"name": "k", "role": role}
    if loops is not None:
        body["loops"] = loops
    r = client.post("/v1/keys", json=body)
    assert r.status_code == 201, r.text
    return {"Authorization": "", "Ocp-Apim-Subscription-Key": r.json()["key"]}


def test_the_key_selects_the_loop(client: TestClient) -> None:
    for loop in ("news", "sports"):
        assert client.put(f"/v1/loops/{loop}", json={}).status_code == 201
    body = {"contextFeatures": [{"x": 1}], "actions": ACTIONS, "eventId": "same-id"}
    news = key(client, "app", ["news"])
    assert client.post(f"{V1}/rank", json=body, headers=news).status_code == 201
    # the unscoped admin key acts on `default`: the same event id is another event there
    r = client.post(f"{V1}/rank", json=body)
    assert r.status_code == 201
    counts = {
        loop: client.get(f"/v1/loops/{loop}").json()["counts"]["decisions"]
        for loop in ("news", "sports", "default")
    }
    assert counts == {"news": 1, "sports": 0, "default": 1}
    both = key(client, "app", ["news", "sports"])
    r = client.post(f"{V1}/rank", json=body, headers=both)
    assert r.status_code == 403 and "exactly one loop" in r.json()["error"]["message"]
    # the 2022 base path needs its api-version
    r = client.post("/personalizer/rank", json=body, headers=news)
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidRankRequest"
    assert r.json()["error"]["innerError"]["code"] == "unsupported_api_version"


def test_served_frequencies_match_the_probabilities(tmp_path: Path) -> None:
    """Online mode through the v1.0 route: each answer's probabilities are the law of what it
    serves (the excluded action never served, listed with 0). The route only translates the
    native path's answer (whose chi-square tests run on both databases): SQLite here."""
    settings = make_settings(f"sqlite:///{tmp_path / 'store.db'}", tmp_path)
    with admin_client(create_app(settings)) as client:
        frequencies(client, 600)


def frequencies(client: TestClient, n: int) -> None:
    counts: Counter[str] = Counter()
    expected: Counter[str] = Counter()
    for i in range(n):
        r = client.post(
            f"{V1}/rank",
            json={"contextFeatures": [{"u": i % 2}], "actions": ACTIONS, "excludedActions": ["d"]},
        )
        assert r.status_code == 201, r.text
        out = r.json()
        probabilities = {x["id"]: x["probability"] for x in out["ranking"]}
        assert probabilities["d"] == 0 and out["rewardActionId"] != "d"
        counts[out["rewardActionId"]] += 1
        for action, p in probabilities.items():
            expected[action] += p
    ids = ["a", "b", "c"]
    stat = chisquare([counts[x] for x in ids], [expected[x] for x in ids])
    assert stat.pvalue > 1e-3, (counts, expected)


@pytest.mark.parametrize("mode", ["Apprentice", "LoggingOnly"])
def test_baseline_modes_as_logged_and_learned(db_url: str, tmp_path: Path, mode: str) -> None:
    """The baseline is served with probability 1; the model's pmf is logged beside it with the
    mode; Apprentice decisions are learned as imitation (reward 1 on the baseline whatever the
    true reward), LoggingOnly ones not at all; the joined reward stays the true one."""
    settings = make_settings(db_url, tmp_path)
    with admin_client(create_app(settings)) as c:
        config = c.get("/personalizer/v1.0/configurations/service").json()
        config = {**config, "rewardWaitTime": "PT1S"}
        assert c.put(f"{V1}/configurations/service", json=config).status_code == 200
        r = c.put(f"{V1}/configurations/service", json={**config, "learningMode": mode})
        assert r.status_code == 200 and r.json()["learningMode"] == mode
        for i in range(6):
            out = c.post(
                f"{V1}/rank", json={"contextFeatures": [{"u": i}], "actions": ACTIONS}
            ).json()
            assert out["rewardActionId"] == "a" and out["ranking"][0] == {
                "id": "a",
                "probability": 1.0,
            }
            r = c.post(f"{V1}/events/{out['eventId']}/reward", json={"value": 0.0})
            assert r.status_code == 204 and r.content == b""
        time.sleep(1.2)
    engine = make_engine(db_url)
    try:
        join_loop(engine, "default", default_reward=0.0, aggregation="earliest")
        events = list(iter_joined(engine, "default", EventWindow()))
        assert len(events) == 6
        for event in events:
            shadow = event.record.shadow
            assert shadow is not None and shadow["mode"] == mode
            assert sum(shadow["pmf"]) == pytest.approx(1.0)
            assert event.record.pmf == [1.0, 0.0, 0.0, 0.0]
            assert event.rewards[0] == 0.0
            examples = slot_examples(event)
            if mode == "LoggingOnly":
                assert examples == []
            else:
                assert [(e.label, e.cost, e.probability) for e in examples] == [(0, -1.0, 1.0)]
        policy = VWPolicy("-q ca --cb_type mtr")
        try:
            stats = train(policy, events)
        finally:
            policy.close()
        assert stats.n_events == (0 if mode == "LoggingOnly" else 6)
        metrics = apprentice_metrics(engine, "default", datetime(2000, 1, 1, tzinfo=UTC))
        n = 6 if mode == "Apprentice" else 0  # only Apprentice decisions count
        assert (metrics.events, metrics.imitated, metrics.sum_rewards) == (n, n, 0.0)
    finally:
        engine.dispose()


def test_throttled_answers_429_with_retry_after(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # accepted runs stay queued (as in the OpenAPI contract test): the second one is over quota
    monkeypatch.setattr(routes_evaluations, "spawn_job", lambda *_a, **_k: True)
    settings = make_settings(db_url, tmp_path, max_evaluations_per_loop=1)
    now = datetime.now(UTC).isoformat()
    body = {"name": "e", "startTime": "2024-01-01T00:00:00+00:00", "endTime": now}
    with admin_client(create_app(settings)) as c:
        first = c.post("/personalizer/v1.1-preview.3/evaluations", json=body)
        assert first.status_code == 201, first.text
        second = c.post("/personalizer/v1.1-preview.3/evaluations", json=body)
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "TooManyRequests"
        assert int(second.headers["Retry-After"]) >= 0


def test_limits_and_content_types(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'store.db'}", tmp_path)
    p3 = "/personalizer/v1.1-preview.3"
    actions = [{"id": f"a{i}", "features": [{"i": i}]} for i in range(51)]
    with admin_client(create_app(settings)) as c:
        slots = [{"id": f"s{i}", "baselineAction": f"a{i}"} for i in range(51)]
        cases = [
            (f"{V1}/rank", {"actions": actions}, "BadRequest"),
            (f"{p3}/rank", {"actions": actions}, "InvalidRankRequest"),
            (f"{p3}/rank", {"actions": ACTIONS, "eventId": "e" * 257}, "InvalidRankRequest"),
            (f"{p3}/multislot/rank", {"actions": actions[:50], "slots": slots}, None),
            (f"{p3}/multislot/rank", {"actions": ACTIONS, "slots": [{"id": "x" * 257}]}, None),
        ]
        for path, body, code in cases:
            r = c.post(path, json=body)
            assert r.status_code == 400, (path, r.text)
            assert r.json()["error"]["code"] == (code or "InvalidMultiSlotRankRequest")
        # at the limits: 50 actions, 50 slots, ids of 256 characters are accepted
        long_id = "i" * 256
        at_limit = [{"id": long_id, "features": [{"i": 0}]}, *actions[1:50]]
        r = c.post(f"{p3}/rank", json={"actions": at_limit, "eventId": "e" * 256})
        assert r.status_code == 201, r.text
        probabilities = {x["id"]: x["probability"] for x in r.json()["ranking"]}
        assert len(probabilities) == 50 and long_id in probabilities
        slots50 = [
            {"id": f"s{i:02d}".ljust(256, "x"), "baselineAction": f"a{i}"} for i in range(50)
        ]
        r = c.post(f"{p3}/multislot/rank", json={"actions": actions[:50], "slots": slots50})
        assert r.status_code == 201, r.text
        assert [s["id"] for s in r.json()["slots"]] == [s["id"] for s in slots50]
        ok = {"actions": ACTIONS[:2], "contextFeatures": [{"x": 1}], "eventId": "ct"}
        for content_type in ("application/json", "application/json; charset=utf-8"):
            r = c.post(
                f"{V1}/rank", content=orjson.dumps(ok), headers={"Content-Type": content_type}
            )
            assert r.status_code == 201 and r.headers["content-type"] == "application/json"
        r = c.post(f"{V1}/rank", content=b"{nope", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "BadRequest"


def test_concurrent_configuration_puts_lose_no_update(db_url: str, tmp_path: Path) -> None:
    """Three writers PUT different parts of the configuration at once (each PUT is a
    read-modify-write of the whole loop config): every writer's last value is what stays."""
    settings = make_settings(db_url, tmp_path)
    base, rounds = "/personalizer/v1.1-preview.3/configurations", 12
    bodies = {
        "wait": lambda i: ("service", {"rewardWaitTime": f"PT{60 + i}S"}),
        "epsilon": lambda i: ("service", {"explorationPercentage": round(0.01 * (i + 1), 2)}),
        "policy": lambda i: ("policy", {"name": f"p{i}", "arguments": "--cb_explore_adf"}),
    }
    failures: list[str] = []
    with admin_client(create_app(settings)) as c:
        start = threading.Barrier(len(bodies))

        def writer(name: str) -> None:
            start.wait()
            for i in range(rounds):
                path, body = bodies[name](i)
                r = c.put(f"{base}/{path}", json=body)
                if r.status_code != 200:
                    failures.append(r.text)

        threads = [threading.Thread(target=writer, args=(n,)) for n in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures
        service = c.get(f"{base}/service").json()
        assert service["rewardWaitTime"] == f"PT1M{rounds - 1}S"
        assert service["explorationPercentage"] == pytest.approx(0.01 * rounds)
        assert c.get(f"{base}/policy").json()["name"] == f"p{rounds - 1}"


def test_store_unreachable_answers_503(db_url: str, tmp_path: Path) -> None:
    """The store down: Personalizer's 503 `ServiceUnavailable` with `Retry-After` (the SDKs
    retry it), nothing written; the same calls succeed once the store answers again."""
    settings = make_settings(db_url, tmp_path)
    p22 = "/personalizer"
    version = {"api-version": "2022-09-01-preview"}
    rank = {"actions": ACTIONS, "contextFeatures": [{"x": 1}], "eventId": "down-1"}
    with admin_client(create_app(settings)) as c:
        assert c.get(f"{V1}/configurations/service").status_code == 200  # the key is verified
        service = c.app.state.service  # type: ignore[attr-defined]
        with database_down(service, tmp_path):
            answers = [
                c.post(f"{V1}/rank", json=rank),
                c.post(f"{p22}/rank", json=rank, params=version),
                c.get(f"{V1}/configurations/service"),
                c.put(f"{V1}/configurations/service", json={"explorationPercentage": 0.5}),
                c.put(
                    f"{p22}/configurations/policy",
                    json={"name": "x", "arguments": ""},
                    params=version,
                ),
                c.get(f"{p22}/evaluations", params=version),
                c.get(f"{V1}/model/properties"),
            ]
            for r in answers:
                assert r.status_code == 503, (r.request.url, r.text)
                error = r.json()["error"]
                assert error["code"] == "ServiceUnavailable", r.text
                assert error["innerError"]["code"] == "store_unavailable"
                assert int(r.headers["Retry-After"]) >= 0
        assert c.get(f"{V1}/configurations/service").json()["explorationPercentage"] != 0.5
        assert c.get(f"{V1}/configurations/policy").json()["name"] == "default"
        deadline = time.monotonic() + 20  # the writer reconnects after its back-off
        while (r := c.post(f"{V1}/rank", json=rank)).status_code == 503:
            assert time.monotonic() < deadline, "the store never came back"
            time.sleep(0.1)
        assert r.status_code == 201, r.text
        assert c.get("/v1/loops/default").json()["counts"]["decisions"] == 1
