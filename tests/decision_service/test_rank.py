"""Happy paths of the native API: rank, slates, retries, rewards, activation, joins, loops."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update

from decision_service import Settings
from log.decision_reads import read_decision
from log.loops import PUBLIC_FIELDS, LoopConfig
from log.loops import get_loop as get_stored_loop
from log.loops import put_loop as store_put_loop
from log.models import OutcomeRow, WriterRow
from log.records import DecisionRecord
from log.schema import make_engine

ACTIONS = [{"id": f"a{i}", "features": {"kind": f"k{i}", "price": i + 0.5}} for i in range(5)]
CONTEXT = {"user": "u1", "hour": 9}


def rank(client: TestClient, loop: str = "default", **body: Any) -> dict[str, Any]:
    body.setdefault("context", CONTEXT)
    body.setdefault("actions", ACTIONS)
    r = client.post(f"/v1/loops/{loop}/rank", json=body)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


def counts(client: TestClient, loop: str = "default") -> dict[str, int]:
    r = client.get(f"/v1/loops/{loop}")
    assert r.status_code == 200, r.text
    data: dict[str, int] = r.json()["counts"]
    return data


def put_loop(client: TestClient, loop: str, status: int = 201, **config: Any) -> dict[str, Any]:
    r = client.put(f"/v1/loops/{loop}", json=config)
    assert r.status_code == status, r.text
    data: dict[str, Any] = r.json()
    return data


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_engine(settings.database_url)
    yield eng
    eng.dispose()


def stored(engine: Engine, loop: str, event_id: str) -> DecisionRecord:
    record = read_decision(engine, loop, event_id)
    assert record is not None
    return record


def outcomes(engine: Engine, loop: str, event_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(OutcomeRow)
                .where(OutcomeRow.loop == loop, OutcomeRow.event_id == event_id)
                .order_by(OutcomeRow.slot)
            ).all()
        )


def join_later(client: TestClient, hours: float) -> None:
    """Run the joiner as if `hours` had passed. The writers' watermarks (the joiner never closes
    a window past them) are moved to that time as well: every write of this test is durable."""
    service = client.app.state.service  # type: ignore[attr-defined]
    later = datetime.now(UTC) + timedelta(hours=hours)
    with service.engine.begin() as conn:
        conn.execute(update(WriterRow).values(watermark=later))
    service.join_due(later)


# -------------------------------------------------------------------------------- rank
def test_rank_response_shape(client: TestClient) -> None:
    data = rank(client, event_id="e1")
    assert set(data) == {"event_id", "model_version", "ranking", "reward_action_id"}
    assert data["event_id"] == "e1"
    assert isinstance(data["model_version"], str) and data["model_version"]
    assert sorted(item["id"] for item in data["ranking"]) == [a["id"] for a in ACTIONS]
    assert all(set(item) == {"id", "probability"} for item in data["ranking"])
    assert math.isclose(sum(item["probability"] for item in data["ranking"]), 1.0, abs_tol=1e-12)
    assert data["ranking"][0]["id"] == data["reward_action_id"]
    probs = [item["probability"] for item in data["ranking"][1:]]
    assert probs == sorted(probs, reverse=True)


def test_untrained_epsilon_greedy_is_uniform(client: TestClient) -> None:
    for i in range(20):
        data = rank(client, event_id=f"u{i}")
        assert [item["probability"] for item in data["ranking"]] == [0.2] * 5


def test_probabilities_sum_to_one_and_chosen_is_positive(client: TestClient) -> None:
    for i in range(30):
        data = rank(client, event_id=f"s{i}", actions=ACTIONS[: 1 + i % 5])
        probs = {item["id"]: item["probability"] for item in data["ranking"]}
        assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-12)
        assert probs[data["reward_action_id"]] > 0


def test_excluded_actions_have_probability_zero_and_are_never_chosen(client: TestClient) -> None:
    excluded = ["a0", "a3"]
    chosen = set()
    for i in range(200):
        data = rank(client, event_id=f"x{i}", excluded_actions=excluded)
        probs = {item["id"]: item["probability"] for item in data["ranking"]}
        assert set(probs) == {a["id"] for a in ACTIONS}  # excluded ones are still listed
        assert probs["a0"] == 0.0 and probs["a3"] == 0.0
        assert [item["id"] for item in data["ranking"][-2:]] in (["a0", "a3"], ["a3", "a0"])
        for k in ("a1", "a2", "a4"):
            assert probs[k] == pytest.approx(1 / 3, abs=1e-12)
        chosen.add(data["reward_action_id"])
    assert chosen == {"a1", "a2", "a4"}


def test_single_remaining_action_has_probability_one(client: TestClient) -> None:
    data = rank(client, event_id="one", excluded_actions=["a0", "a1", "a2", "a3"])
    assert data["reward_action_id"] == "a4"
    assert data["ranking"][0] == {"id": "a4", "probability": 1.0}


# -------------------------------------------------------------------------------- slates
def test_slate_shape_and_conditional_probabilities(client: TestClient) -> None:
    seen_first = set()
    for i in range(60):
        data = rank(client, event_id=f"sl{i}", slots=3)
        slots = data["slots"]
        assert [s["slot"] for s in slots] == [0, 1, 2]
        ids = [s["action_id"] for s in slots]
        assert len(set(ids)) == 3
        assert ids[0] == data["reward_action_id"]
        # the ranking starts with the slate, in slot order
        assert [item["id"] for item in data["ranking"][:3]] == ids
        # untrained model, epsilon-greedy over tied scores: uniform over what is left
        assert [s["probability"] for s in slots] == pytest.approx([1 / 5, 1 / 4, 1 / 3])
        # the ranking's probabilities are the slot-0 pmf
        assert [item["probability"] for item in data["ranking"]] == pytest.approx([0.2] * 5)
        seen_first.add(ids[0])
    assert len(seen_first) == 5


def test_slate_with_exclusions(client: TestClient) -> None:
    for i in range(60):
        data = rank(client, event_id=f"sx{i}", slots=3, excluded_actions=["a2"])
        ids = [s["action_id"] for s in data["slots"]]
        assert "a2" not in ids and len(set(ids)) == 3
        assert [s["probability"] for s in data["slots"]] == pytest.approx([1 / 4, 1 / 3, 1 / 2])
        probs = {item["id"]: item["probability"] for item in data["ranking"]}
        assert probs["a2"] == 0.0


def test_full_slate_takes_every_action(client: TestClient) -> None:
    data = rank(client, event_id="full", slots=5)
    assert sorted(s["action_id"] for s in data["slots"]) == [a["id"] for a in ACTIONS]
    assert data["slots"][-1]["probability"] == 1.0


def test_one_slot_slate_has_a_slots_list(client: TestClient) -> None:
    data = rank(client, event_id="k1", slots=1)
    assert data["slots"] == [
        {"slot": 0, "action_id": data["reward_action_id"], "probability": pytest.approx(0.2)}
    ]


# -------------------------------------------------------------------------------- retries
def test_retry_with_event_id_is_identical_and_writes_nothing(client: TestClient) -> None:
    body = {"event_id": "retry1", "context": CONTEXT, "actions": ACTIONS, "slots": 2}
    first = client.post("/v1/loops/default/rank", json=body)
    assert first.status_code == 201
    assert "idempotent-replay" not in first.headers
    before = counts(client)
    for _ in range(3):
        again = client.post("/v1/loops/default/rank", json=body)
        assert again.status_code == 201
        assert again.headers["idempotent-replay"] == "true"
        assert again.json() == first.json()
    # the same request with its keys in another order is the same request
    reordered = {k: body[k] for k in reversed(list(body))}
    assert client.post("/v1/loops/default/rank", json=reordered).json() == first.json()
    assert counts(client) == before
    assert before["decisions"] == 1


def test_without_event_id_every_request_is_a_new_decision(client: TestClient) -> None:
    ids = {rank(client)["event_id"] for _ in range(10)}
    assert len(ids) == 10
    assert counts(client)["decisions"] == 10


def test_same_event_id_in_two_loops_is_two_decisions(client: TestClient, engine: Engine) -> None:
    put_loop(client, "second")
    a = rank(client, "default", event_id="shared")
    b = rank(client, "second", event_id="shared")
    assert a["event_id"] == b["event_id"] == "shared"
    assert counts(client, "default")["decisions"] == 1
    assert counts(client, "second")["decisions"] == 1
    assert stored(engine, "default", "shared").chosen == a["reward_action_id"]
    assert stored(engine, "second", "shared").chosen == b["reward_action_id"]
    # rewards are per loop
    r = client.post("/v1/loops/second/events/shared/reward", json={"value": 1})
    assert r.status_code == 202
    assert counts(client, "second")["rewards"] == 1
    assert counts(client, "default")["rewards"] == 0


# -------------------------------------------------------------------------------- storage
def test_decision_row_stores_context_and_features_exactly(
    client: TestClient, engine: Engine
) -> None:
    context = {
        "user": "ü-ß-€-😀",
        "n": -3,
        "big": 2**63 - 1,
        "x": 0.1,
        "tiny": 1e-300,
        "flag": True,
        "off": False,
        "none": None,
        "tags": ["a", 1, 2.5, True, None],
        "nested": {"a": {"b": "c"}},
        "nul": "a\u0000b",
    }
    actions = [
        {"id": "p1", "features": {"price": 9.99, "cat": "shoes", "new": False}},
        {"id": "p2", "features": {}},
        {"id": "p3", "features": {"dims": {"w": 1, "h": 2.0}, "colors": ["red", "blue"]}},
    ]
    data = rank(client, event_id="exact", context=context, actions=actions, excluded_actions=["p2"])
    row = stored(engine, "default", "exact")

    def canon(x: Any) -> bytes:  # distinguishes True from 1 and 2.0 from 2
        return orjson.dumps(x, option=orjson.OPT_SORT_KEYS)

    assert canon(row.context) == canon(context)
    assert canon(row.actions) == canon(actions)
    assert row.excluded == ["p2"]
    assert row.chosen == data["reward_action_id"]
    probs = {item["id"]: item["probability"] for item in data["ranking"]}
    assert row.pmf == [probs[a["id"]] for a in actions]
    assert row.slots == [
        {"slot": 0, "action_id": data["reward_action_id"], "probability": probs[row.chosen]}
    ]
    assert row.n_slots == 1 and row.is_slate is False and row.deferred is False
    assert row.response == data
    assert row.reward_deadline == row.decided_at + timedelta(seconds=600)


def test_slate_row_stores_slot_probabilities(client: TestClient, engine: Engine) -> None:
    data = rank(client, event_id="slaterow", slots=3)
    row = stored(engine, "default", "slaterow")
    keys = ("slot", "action_id", "probability")
    assert [{k: slot[k] for k in keys} for slot in row.slots] == data["slots"]
    assert row.n_slots == 3 and row.is_slate is True
    assert row.chosen == data["slots"][0]["action_id"]


# -------------------------------------------------------------------------------- rewards
def test_reward_inside_window_is_joined(client: TestClient, engine: Engine) -> None:
    put_loop(client, "ontime", reward_wait_s=3600, default_reward=0.25)
    rank(client, "ontime", event_id="e1")
    r = client.post("/v1/loops/ontime/events/e1/reward", json={"value": 0.5})
    assert r.status_code == 202
    assert r.json() == {
        "event_id": "e1",
        "slot": 0,
        "status": "accepted",
        "joined": True,
        "replayed": False,
    }
    assert counts(client, "ontime") == {
        "decisions": 1,
        "rewards": 1,
        "late_rewards": 0,
        "outcomes": 0,
    }
    join_later(client, hours=2)
    [outcome] = outcomes(engine, "ontime", "e1")
    assert (outcome.reward, outcome.default_applied, outcome.n_rewards) == (0.5, False, 1)
    assert counts(client, "ontime")["outcomes"] == 1


def test_reward_boundaries_and_integers_are_accepted(client: TestClient) -> None:
    rank(client, event_id="b1")
    for value in (-1, 1, 0, -1.0, 1.0, 0.123):
        r = client.post("/v1/loops/default/events/b1/reward", json={"value": value})
        assert r.status_code == 202, r.text
    assert counts(client)["rewards"] == 6


def test_late_reward_is_counted_and_not_joined(client: TestClient, engine: Engine) -> None:
    put_loop(client, "late", reward_wait_s=0, default_reward=0.25)
    rank(client, "late", event_id="e1")
    r = client.post("/v1/loops/late/events/e1/reward", json={"value": 1.0})
    assert r.status_code == 202
    assert r.json() == {
        "event_id": "e1",
        "slot": 0,
        "status": "late",
        "joined": False,
        "replayed": False,
    }
    assert counts(client, "late") == {
        "decisions": 1,
        "rewards": 0,
        "late_rewards": 1,
        "outcomes": 0,
    }
    join_later(client, hours=1)
    [outcome] = outcomes(engine, "late", "e1")
    assert outcome.reward == 0.25
    assert outcome.default_applied is True
    assert outcome.n_rewards == 0
    assert counts(client, "late")["late_rewards"] == 1


def test_slate_rewards_per_slot(client: TestClient, engine: Engine) -> None:
    put_loop(client, "slates", reward_wait_s=3600, default_reward=0.0)
    rank(client, "slates", event_id="s1", slots=3)
    for slot, value in [(1, 1.0), (2, 0.5), (2, 0.75)]:
        r = client.post("/v1/loops/slates/events/s1/reward", json={"value": value, "slot": slot})
        assert r.status_code == 202
        assert r.json()["slot"] == slot
    join_later(client, hours=2)
    got = [
        (o.slot, o.reward, o.default_applied, o.n_rewards) for o in outcomes(engine, "slates", "s1")
    ]
    # aggregation "earliest": the first reward of slot 2 counts
    assert got == [(0, 0.0, True, 0), (1, 1.0, False, 1), (2, 0.5, False, 2)]


def test_reward_slot_zero_on_single_decision(client: TestClient) -> None:
    rank(client, event_id="z")
    r = client.post("/v1/loops/default/events/z/reward", json={"value": 1, "slot": 0})
    assert r.status_code == 202 and r.json()["slot"] == 0


# -------------------------------------------------------------------------------- deferred
def test_deferred_decision_lifecycle(client: TestClient, engine: Engine) -> None:
    put_loop(client, "deferred", reward_wait_s=3600, default_reward=0.0)
    rank(client, "deferred", event_id="d1", defer_activation=True)
    row = stored(engine, "deferred", "d1")
    assert row.deferred is True and row.reward_deadline is None and row.activated_at is None

    r = client.post("/v1/loops/deferred/events/d1/reward", json={"value": 0.7})
    assert r.status_code == 202
    assert r.json() == {
        "event_id": "d1",
        "slot": 0,
        "status": "pending_activation",
        "joined": False,
        "replayed": False,
    }
    join_later(client, hours=5)  # not activated: never joined
    assert outcomes(engine, "deferred", "d1") == []

    act = client.post("/v1/loops/deferred/events/d1/activate")
    assert act.status_code == 202, act.text
    body = act.json()
    assert body["event_id"] == "d1" and body["status"] == "activated"
    deadline = datetime.fromisoformat(body["reward_deadline"])
    row = stored(engine, "deferred", "d1")
    assert row.reward_deadline == deadline
    assert row.activated_at is not None
    assert deadline - row.activated_at == timedelta(seconds=3600)

    again = client.post("/v1/loops/deferred/events/d1/activate")
    assert again.status_code == 200
    assert again.json() == {
        "event_id": "d1",
        "status": "already_activated",
        "reward_deadline": body["reward_deadline"],
    }
    assert stored(engine, "deferred", "d1").activated_at == row.activated_at

    join_later(client, hours=5)
    [outcome] = outcomes(engine, "deferred", "d1")
    assert (outcome.reward, outcome.default_applied, outcome.n_rewards) == (0.7, False, 1)


def test_deferred_retry_is_idempotent(client: TestClient) -> None:
    body = {"event_id": "d2", "context": CONTEXT, "actions": ACTIONS, "defer_activation": True}
    first = client.post("/v1/loops/default/rank", json=body)
    again = client.post("/v1/loops/default/rank", json=body)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert counts(client)["decisions"] == 1


# -------------------------------------------------------------------------------- loops
def test_default_loop_exists(client: TestClient) -> None:
    r = client.get("/v1/loops")
    assert r.status_code == 200
    names = [item["loop"] for item in r.json()["loops"]]
    assert "default" in names
    one = client.get("/v1/loops/default").json()
    assert set(one["config"]) == set(PUBLIC_FIELDS)  # no seed, no sampling key, no extra
    assert one["counts"] == {"decisions": 0, "rewards": 0, "late_rewards": 0, "outcomes": 0}


def test_loop_crud(client: TestClient, engine: Engine) -> None:
    created = put_loop(client, "shop", 201, epsilon=0.5, reward_wait_s=30)
    assert created["loop"] == "shop"
    assert created["config"]["epsilon"] == 0.5
    assert created["config"]["reward_wait_s"] == 30
    assert set(created["config"]) == set(PUBLIC_FIELDS)
    assert created["created_at"] == created["updated_at"]
    key = stored_key(engine, "shop")

    replaced = put_loop(client, "shop", 200, epsilon=0.3)
    assert replaced["config"]["epsilon"] == 0.3
    assert replaced["config"]["reward_wait_s"] == 600.0  # PUT replaces: omitted -> default
    assert replaced["created_at"] == created["created_at"]
    assert replaced["updated_at"] >= created["updated_at"]
    assert stored_key(engine, "shop") == key  # the sampling key persists

    again = put_loop(client, "shop", 200)
    assert again["config"]["epsilon"] == 0.2
    assert stored_key(engine, "shop") == key

    one = client.get("/v1/loops/shop")
    assert one.status_code == 200
    assert one.json()["config"] == again["config"]
    assert one.json()["counts"] == {"decisions": 0, "rewards": 0, "late_rewards": 0, "outcomes": 0}
    rank(client, "shop", event_id="e1")
    assert counts(client, "shop")["decisions"] == 1

    listed = client.get("/v1/loops").json()["loops"]
    assert [item["loop"] for item in listed] == ["default", "shop"]
    assert listed[1]["config"] == again["config"]


def stored_key(engine: Engine, loop: str) -> bytes:
    found = get_stored_loop(engine, loop)
    assert found is not None
    return found.config.sampling_key


def test_each_loop_gets_its_own_secret_key(client: TestClient, engine: Engine) -> None:
    put_loop(client, "k1")
    put_loop(client, "k2")
    keys = [stored_key(engine, name) for name in ("default", "k1", "k2")]
    assert len(set(keys)) == 3 and all(len(k) == 32 for k in keys)
    put_loop(client, "k1", 200, epsilon=0.1)
    assert stored_key(engine, "k1") == keys[1]
    # no route shows a key, in any encoding
    texts = [
        client.get("/v1/loops").text,
        client.get("/v1/loops/k1").text,
        client.get("/v1/status").text,
        client.get("/openapi.json").text,
        client.put("/v1/loops/k1", json={}).text,
        orjson.dumps(rank(client, "k1", event_id="e1")).decode(),
    ]
    for key in keys:
        for text in texts:
            assert key.hex() not in text.lower()
            assert base64.b64encode(key).decode() not in text


def test_sampling_key_drives_sampling_and_persists(client: TestClient, engine: Engine) -> None:
    # Keys cannot be set over HTTP: the operator's store API sets them here.
    k1, k2 = bytes(range(32)), bytes(range(1, 33))
    service = client.app.state.service  # type: ignore[attr-defined]
    for name, key in (("s1", k1), ("s2", k1), ("s3", k2)):
        store_put_loop(engine, name, LoopConfig(epsilon=0.9, sampling_key=key))
    put_loop(client, "s1", 200, epsilon=0.9)  # an HTTP PUT keeps the key
    for name in ("s1", "s2", "s3"):
        service.loops.load(name)

    def choices(loop: str) -> list[str]:
        return [rank(client, loop, event_id=f"e{i}")["reward_action_id"] for i in range(40)]

    assert choices("s1") == choices("s2")
    assert choices("s1") != choices("s3")


def test_put_config_takes_effect(client: TestClient) -> None:
    put_loop(client, "cfg", reward_wait_s=0)
    rank(client, "cfg", event_id="e1")
    r = client.post("/v1/loops/cfg/events/e1/reward", json={"value": 1})
    assert r.json()["status"] == "late"
    put_loop(client, "cfg", 200, reward_wait_s=3600, min_reward=0, max_reward=5)
    rank(client, "cfg", event_id="e2")
    r = client.post("/v1/loops/cfg/events/e2/reward", json={"value": 4})
    assert r.status_code == 202 and r.json()["status"] == "accepted"
