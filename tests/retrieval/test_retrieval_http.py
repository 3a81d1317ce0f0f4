"""Retrieval through the HTTP API on both databases: the catalog routes, a retriever promoted
(the catalog re-embedded), cold start of a new item, rank with `retrieve` (candidates and
retriever logged with the decision, rules applied, deterministic given the index version),
deactivation swapped in, and an index hot swap under concurrent load with no failed request."""

from __future__ import annotations

import io
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from decision_service.app import create_app
from decision_service.service import Service
from log.export_parquet import export_parquet
from log.retrievers import register_retriever
from log.store import get_stored_decision
from policies.two_tower import TwoTower, TwoTowerConfig, save_two_tower
from tests.conftest import admin_client, make_settings

RULES = {"blocked_creators": ["c3"], "creator_cap": 1, "overfetch": 3}


def _item(j: int) -> dict[str, Any]:
    return {"id": f"item/{j:04d}", "features": {"creator": f"c{j % 7}", "cat": f"k{j % 11}"}}


def _service(client: TestClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


def _retriever(client: TestClient) -> tuple[str, TwoTower]:
    """A registered (untrained, seeded) retriever promoted over HTTP."""
    import torch

    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(buckets=256, hidden=8, dim=8))
    engine = _service(client).engine
    record = register_retriever(
        engine, "default", save_two_tower(model), {"val_auc": 0.5}, datetime.now(UTC)
    )
    r = client.post(
        f"/v1/loops/default/retrievers/{record.version}/promote",
        json={"override": True, "reason": "an untrained retriever for the test"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "live"
    return record.version, model


def _rank(client: TestClient, user: int, **extra: Any) -> dict[str, Any]:
    body = {"context": {"user": f"u{user}"}, "retrieve": {"k": 12}, "slots": 3, **extra}
    r = client.post("/v1/loops/default/rank", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_catalog_and_retrieval_end_to_end(client: TestClient) -> None:
    # no retriever yet: retrieval is refused, the catalog works
    r = client.post("/v1/loops/default/rank", json={"retrieve": {"k": 5}})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_retriever"
    cfg = client.get("/v1/loops/default").json()["config"]
    cfg["retrieval"] = RULES
    assert client.put("/v1/loops/default", json=cfg).status_code == 200
    r = client.put("/v1/loops/default/items", json={"items": [_item(j) for j in range(150)]})
    assert r.status_code == 200 and r.json() == {
        "loop": "default",
        "upserted": 150,
        "inserted": 150,
        "embedded": 0,
    }
    # list: paged by id, stable cursor
    seen, after = [], None
    while True:
        page = client.get(
            "/v1/loops/default/items", params={"limit": 40, **({"after": after} if after else {})}
        ).json()
        seen += [i["id"] for i in page["items"]]
        assert page["total"] == 150
        after = page["next_after"]
        if after is None:
            break
    assert seen == sorted(_item(j)["id"] for j in range(150))
    # bad input writes nothing
    dup = {"items": [_item(1), _item(1)]}
    r = client.put("/v1/loops/default/items", json=dup)
    assert r.status_code == 422 and r.json()["error"]["code"] == "duplicate_item"
    assert client.put("/v1/loops/nope/items", json={"items": [_item(1)]}).status_code == 404
    too_many = {"items": [_item(j) for j in range(1001)]}
    assert client.put("/v1/loops/default/items", json=too_many).status_code == 422
    both = {"actions": [{"id": "a"}], "retrieve": {"k": 3}}
    assert client.post("/v1/loops/default/rank", json=both).status_code == 422

    version, model = _retriever(client)
    one = client.get("/v1/loops/default/items/item%2F0005").json()
    assert one["embedding_model"] == version  # the promotion embedded the catalog
    assert np.allclose(one["embedding"], model.embed_items([_item(5)["features"]])[0], atol=1e-6)
    # cold start: a new item gets the live item tower's embedding at upsert
    new = {"id": "fresh", "features": {"creator": "c1", "cat": "k2"}}
    r = client.put("/v1/loops/default/items", json={"items": [new]})
    assert r.json()["embedded"] == 1
    fresh = client.get("/v1/loops/default/items/fresh").json()
    assert fresh["embedding_model"] == version
    assert np.allclose(fresh["embedding"], model.embed_items([new["features"]])[0], atol=1e-6)

    service = _service(client)
    index = service.retrieval.rebuild("default")
    assert index is not None and index.ann.n == 151
    listing = client.get("/v1/loops/default/retrievers").json()
    assert listing["serving"]["index"] == index.version
    assert listing["indexes"][0]["recall_at_k"] == 1.0  # exact below the threshold
    served_before: set[str] = set()
    candidates_by_user: dict[int, list[str]] = {}
    for i in range(30):
        body = _rank(client, i % 5)
        record = get_stored_decision(
            service.engine, service.writer.index, "default", body["event_id"]
        )
        assert record is not None
        assert record.retrieval == {
            "retriever": version,
            "index": index.version,
            "k": 12,
            "filters": [],
            "arm": "live",
            "arm_probability": 1.0,
        }
        ids = [a["id"] for a in record.actions]
        assert len(ids) == 12
        assert all(
            a["features"] == _item(int(a["id"][5:]))["features"] or a["id"] == "fresh"
            for a in record.actions
        )
        assert {r["id"] for r in body["ranking"]} == set(ids)
        creators = [a["features"]["creator"] for a in record.actions]
        assert "c3" not in creators  # blocked creator: never a candidate
        served = [s["action_id"] for s in body["slots"]]
        served_creators = [record.actions[ids.index(s)]["features"]["creator"] for s in served]
        assert len(set(served_creators)) == len(served_creators)  # creator cap 1 per slate
        served_before.update(served)
        # deterministic given the context and the index version
        candidates_by_user.setdefault(i % 5, ids)
        assert candidates_by_user[i % 5] == ids
    # a request filter and excluded ids are never retrieved
    body = _rank(
        client,
        1,
        retrieve={"k": 12, "filters": [{"feature": "cat", "op": "eq", "value": "k2"}]},
        excluded_actions=["fresh"],
    )
    record = get_stored_decision(service.engine, service.writer.index, "default", body["event_id"])
    assert record is not None
    assert all(a["features"]["cat"] == "k2" and a["id"] != "fresh" for a in record.actions)
    # deactivate what was served: after the swap it is never retrieved again
    gone = sorted(served_before)
    r = client.post("/v1/loops/default/items/deactivate", json={"ids": gone})
    assert r.json()["changed"] == len(gone)
    swapped = service.retrieval.rebuild("default")
    assert swapped is not None and swapped.version != index.version
    for i in range(20):
        body = _rank(client, i % 5)
        assert not set(gone) & {r["id"] for r in body["ranking"]}
    # exports carry the retriever and index of each retrieved decision
    buffer = io.BytesIO()
    export_parquet(service.engine, "default", buffer)
    table = pq.read_table(io.BytesIO(buffer.getvalue())).to_pylist()
    assert {r["retriever_version"] for r in table} == {version}
    assert {r["index_version"] for r in table} == {index.version, swapped.version}
    assert client.delete("/v1/loops/default/items/fresh").status_code == 200
    assert client.delete("/v1/loops/default/items/fresh").status_code == 404
    assert client.get("/v1/loops/default/items/fresh").status_code == 404


def test_index_hot_swap_under_load(client: TestClient) -> None:
    """Ranks keep succeeding while the catalog changes and the index is rebuilt and swapped."""
    client.put("/v1/loops/default/items", json={"items": [_item(j) for j in range(300)]})
    _retriever(client)
    service = _service(client)
    first = service.retrieval.rebuild("default")
    assert first is not None
    failures: list[str] = []
    versions: set[str] = set()
    stop = threading.Event()

    def load(user: int) -> None:
        n = 0
        while not stop.is_set() or n < 5:
            r = client.post(
                "/v1/loops/default/rank",
                json={"context": {"user": f"u{user}"}, "retrieve": {"k": 10}},
            )
            if r.status_code != 201:
                failures.append(r.text)
            n += 1

    threads = [threading.Thread(target=load, args=(u,)) for u in range(4)]
    for t in threads:
        t.start()
    for round_ in range(4):
        batch = [_item(j) for j in range(300 + 20 * round_, 320 + 20 * round_)]
        client.put("/v1/loops/default/items", json={"items": batch})
        built = service.retrieval.rebuild("default")
        assert built is not None
        versions.add(built.version)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures[:3]
    assert len(versions) == 4 and service.retrieval.indexes["default"].ann.n == 380


def test_workers_swap_the_index_by_themselves(db_url: str, tmp_path: Path) -> None:
    """Without any call but the catalog's: the worker's refresh rebuilds and swaps the index
    within DS_LOOP_REFRESH_S of a change, and ranks serve the new item."""
    settings = make_settings(db_url, tmp_path, loop_refresh_s=0.2)
    with admin_client(create_app(settings)) as client:
        client.put("/v1/loops/default/items", json={"items": [_item(j) for j in range(40)]})
        _retriever(client)
        service = _service(client)
        deadline = time.monotonic() + 30
        while "default" not in service.retrieval.indexes and time.monotonic() < deadline:
            time.sleep(0.05)
        before = service.retrieval.indexes["default"]
        new = {"id": "brand-new", "features": {"creator": "c1", "cat": "k1"}}
        client.put("/v1/loops/default/items", json={"items": [new]})
        while service.retrieval.indexes["default"] is before and time.monotonic() < deadline:
            time.sleep(0.05)
        after = service.retrieval.indexes["default"]
        assert after is not before and after.ann.n == 41 and "brand-new" in after.ids
        body = client.post(
            "/v1/loops/default/rank", json={"context": {"user": "u1"}, "retrieve": {"k": 41}}
        ).json()
        assert "brand-new" in {r["id"] for r in body["ranking"]}
