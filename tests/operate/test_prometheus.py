"""/metrics parses as the Prometheus text format with the write path, per-route latency and
the learner's state; the probes; rank latency and errors flow from a worker's memory through
request_stats and the rollup into the loop's figures."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from decision_service import Settings, create_app
from log.learner_state import stop_freshness
from log.metrics import rollup_loop
from log.models import DecisionRow
from log.records import DecisionRecord
from log.spool import Spool
from tests.conftest import ADMIN_HEADERS
from tests.deploy.learner_helpers import SIM
from tests.learn.helpers import sim_events


def families(client: TestClient) -> dict[str, object]:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def test_metrics_parse_and_cover_the_write_path_routes_and_learner(client: TestClient) -> None:
    for i in range(5):
        assert (
            client.post(
                "/v1/loops/default/rank", json={"event_id": f"p{i}", "actions": [{"id": "a"}]}
            ).status_code
            == 201
        )
    service = client.app.state.service  # type: ignore[attr-defined]
    stop_freshness(
        service.engine, "default", at=datetime.now(UTC), reason="test", message="stopped",
        details={},
    )  # fmt: skip
    found = families(client)
    for name in (
        "ds_write_queue_depth", "ds_write_groups", "ds_write_rows", "ds_write_group_size_max",
        "ds_spool_segments", "ds_spool_shipped_rows", "ds_spool_quarantined_segments",
        "ds_http_request_duration_seconds", "ds_learner_freshness_stopped", "ds_alarms_firing",
        "ds_store_up",
    ):  # fmt: skip
        assert name in found, name
    http = found["ds_http_request_duration_seconds"]
    counts = {
        s.labels["route"]: s.value
        for s in http.samples  # type: ignore[attr-defined]
        if s.name.endswith("_count") and s.labels["status"] == "201"
    }
    assert counts["/v1/loops/{loop}/rank"] == 5
    stopped = found["ds_learner_freshness_stopped"].samples  # type: ignore[attr-defined]
    assert [(s.labels["loop"], s.value) for s in stopped] == [("default", 1.0)]
    firing = found["ds_alarms_firing"].samples  # type: ignore[attr-defined]
    assert [(s.labels["kind"], s.value) for s in firing] == [("freshness_stopped", 1.0)]
    sizes = {s.labels.get("le"): s.value for s in found["ds_write_group_size"].samples}  # type: ignore[attr-defined]
    assert sizes["+Inf"] >= 5 and sizes["1"] >= 1  # every rank was a group of its own or more
    rows = [s for s in found["ds_write_rows"].samples if s.name == "ds_write_rows_total"]  # type: ignore[attr-defined]
    assert rows and rows[0].value >= 5


def test_probes(client: TestClient) -> None:
    assert client.get("/livez", headers={"Authorization": ""}).status_code == 200
    r = client.get("/readyz", headers={"Authorization": ""})
    assert r.status_code == 200 and r.json() == {"status": "ready"}


def test_rank_latency_and_errors_reach_the_loop_figures(client: TestClient) -> None:
    for i in range(7):
        assert (
            client.post(
                "/v1/loops/default/rank", json={"event_id": f"q{i}", "actions": [{"id": "a"}]}
            ).status_code
            == 201
        )
    assert client.post("/v1/loops/default/rank", json={"actions": []}).status_code == 422
    assert client.post("/v1/loops/default/events/nope/reward", json={"value": 1}).status_code == 404
    service = client.app.state.service  # type: ignore[attr-defined]
    assert service.flush_metrics() == 1
    rollup_loop(service.engine, "default", now=datetime.now(UTC))
    r = client.get("/v1/loops/default/metrics", params={"window": "1h"})
    assert r.status_code == 200, r.text
    total = r.json()["total"]
    assert total["decisions"] == 7
    assert total["requests"] == 8  # every rank request, the refused one too
    assert total["errors"] == {"event_not_found": 1, "invalid_request": 1}
    assert 0 < total["latency_p50_ms"] <= total["latency_p99_ms"]
    assert r.json()["arms"][0]["figures"]["decisions"] == 7
    # every window reads its grain (5-minute, hourly, daily) and sees the same traffic
    grains = {"1h": "5m", "6h": "5m", "24h": "5m", "7d": "1h", "30d": "1d"}
    for window, grain in grains.items():
        got = client.get("/v1/loops/default/metrics", params={"window": window}).json()
        assert got["grain"] == grain and got["total"]["decisions"] == 7, window
        assert sum(p["decisions"] for p in got["points"]) == 7
        assert got["total"]["errors"] == {"event_not_found": 1, "invalid_request": 1}
    assert client.get("/v1/loops/default/metrics", params={"window": "2h"}).status_code == 422
    assert client.get("/v1/loops/nope/metrics").status_code == 404


def test_readiness_waits_for_the_startup(settings: Settings) -> None:
    """Before the lifespan ran (keys loaded, writer started) the worker is alive but not ready:
    a load balancer keeps it out of rotation."""
    app = create_app(settings)
    cold = TestClient(app)  # no lifespan: not started
    assert cold.get("/livez").status_code == 200
    r = cold.get("/readyz")
    assert r.status_code == 503 and r.json() == {"status": "starting"}
    assert r.headers["retry-after"] == "1"
    with TestClient(app) as started:
        assert started.get("/readyz").status_code == 200


def test_a_shipped_spool_shows_in_the_write_path_metrics(settings: Settings) -> None:
    """A segment left in the spool directory by a dead worker is shipped by this one: the
    spool backlog gauge drops to 0 and the shipped-rows counter counts its rows."""
    spool = Spool(settings.spool_dir, writer_id="dead-worker")
    ops = [op for op in sim_events(SIM, 12, seed=2, prefix="spooled")
           if isinstance(op, DecisionRecord)]  # fmt: skip
    spool.append(ops)
    spool.seal()
    assert len(spool.segments()) == 1
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        deadline = time.monotonic() + 20
        while True:
            found = families(client)
            shipped = [s.value for s in found["ds_spool_shipped_rows"].samples  # type: ignore[attr-defined]
                       if s.name == "ds_spool_shipped_rows_total"]  # fmt: skip
            backlog = found["ds_spool_segments"].samples[0].value  # type: ignore[attr-defined]
            if shipped and shipped[0] >= 12 and backlog == 0:
                break
            assert time.monotonic() < deadline, (shipped, backlog)
            time.sleep(0.1)
        quarantined = found["ds_spool_quarantined_segments"].samples  # type: ignore[attr-defined]
        assert [s.value for s in quarantined if s.name.endswith("_total")] == [0.0]
        engine = client.app.state.service.engine  # type: ignore[attr-defined]
        with engine.connect() as conn:
            stored = conn.execute(
                select(func.count()).where(DecisionRow.event_id.like("spooled%"))
            ).scalar()
        assert stored == 12
