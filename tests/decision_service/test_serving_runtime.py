"""Workers pick up canary and shadow changes on refresh, without a restart.

Versions are put into their states directly in the store (tests/serving_helpers.py). The worker
reads every loop's live, canary and shadow versions in one query (`log.serving_reads`), reuses
a version already loaded, and keeps serving live when a canary or shadow cannot be loaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, select, update

from decision_service import create_app
from deploy.registry import promote
from deploy.rollout import rollback, transition
from log.loops import LoopConfig, put_loop
from log.models import DecisionRow, ModelRow
from log.serving_reads import ServingVersions, loop_serving_versions, serving_versions
from tests.conftest import admin_client, make_settings
from tests.serving_helpers import register_version, set_status, trained_artifact

LOOP = "swaps"
CONTEXT = {"user": "u1"}
ACTIONS: list[dict[str, Any]] = [{"id": f"a{i}", "features": {"kind": f"k{i}"}} for i in range(3)]


@pytest.fixture
def artifacts() -> list[bytes]:
    means = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]]
    return [trained_artifact(CONTEXT, ACTIONS, m, seed=i, n=60) for i, m in enumerate(means)]


def setup(client: TestClient, artifacts: list[bytes]) -> tuple[Any, Engine, list[str]]:
    service = client.app.state.service  # type: ignore[attr-defined]
    engine: Engine = service.engine
    put_loop(engine, LOOP, LoopConfig())
    versions = [register_version(engine, LOOP, art) for art in artifacts]
    promote(engine, versions[0])
    return service, engine, versions


def serving(client: TestClient) -> dict[str, Any]:
    data: dict[str, Any] = client.get("/v1/status").json()["serving"][LOOP]
    return data


def test_serving_versions_is_one_query_for_every_loop(db_url: str, tmp_path: Path) -> None:
    with admin_client(create_app(make_settings(db_url, tmp_path))) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        engine: Engine = service.engine
        put_loop(engine, "other", LoopConfig())
        art = trained_artifact(CONTEXT, ACTIONS, [1.0, 0.0, 0.0], seed=0, n=20)
        a = [register_version(engine, LOOP, art) for _ in range(4)]
        b = register_version(engine, "other", art)
        promote(engine, a[0])
        set_status(engine, a[1], "canary", 12.5)
        set_status(engine, a[2], "shadow")
        set_status(engine, b, "shadow")
        statements: list[str] = []

        def count(*args: Any) -> None:
            statements.append(str(args[2]))

        event.listen(engine, "before_cursor_execute", count)
        try:
            everything = serving_versions(engine)
            assert len(statements) == 1
            one = loop_serving_versions(engine, LOOP)
            assert len(statements) == 2
        finally:
            event.remove(engine, "before_cursor_execute", count)
        assert one == everything[LOOP]
        assert one.to_json() == {
            "live": a[0],
            "canary": a[1],
            "canary_percent": 12.5,
            "shadow": a[2],
        }
        assert everything["other"] == ServingVersions(shadow=everything["other"].shadow)
        assert everything["other"].shadow is not None
        assert everything["other"].shadow.version == b
        assert loop_serving_versions(engine, "nowhere") == ServingVersions()
        # a retired or candidate version serves nothing
        set_status(engine, a[1], "retired")
        assert loop_serving_versions(engine, LOOP).canary is None


def test_canary_and_shadow_swap_on_refresh(client: TestClient, artifacts: list[bytes]) -> None:
    service, engine, v = setup(client, artifacts)
    service.loops.refresh()
    first = service.loops.loops[LOOP]
    assert (first.policy.version, first.canary, first.shadow) == (v[0], None, None)
    assert serving(client) | {"canary_served": 0} == {
        "live": v[0],
        "canary": None,
        "canary_percent": None,
        "shadow": None,
        "canary_served": 0,
        "shadow_scored": 0,
        "shadow_failed": 0,
        "retriever_canary_served": 0,
        "retriever_shadow_retrieved": 0,
        "retriever_shadow_failed": 0,
    }

    set_status(engine, v[1], "canary", 20.0)
    set_status(engine, v[2], "shadow")
    service.loops.refresh()
    rt = service.loops.loops[LOOP]
    assert rt.policy is first.policy  # live unchanged: the loaded policy is reused
    assert rt.canary is not None and rt.canary.version == v[1]
    assert rt.split is not None and rt.split.share == 0.2
    assert rt.shadow is not None and rt.shadow.version == v[2]
    service.loops.refresh()  # nothing changed: the same snapshot
    assert service.loops.loops[LOOP] is rt

    # another canary (another percent); the shadow becomes the canary's... and a new shadow
    set_status(engine, v[2], "canary", 45.0)
    set_status(engine, v[3], "shadow")
    service.loops.refresh()
    rt2 = service.loops.loops[LOOP]
    assert rt2.canary is rt.shadow  # the version already loaded as shadow is reused as canary
    assert rt2.split is not None and (rt2.split.share, rt2.split.salt) == (0.45, v[2])
    assert rt2.shadow is not None and rt2.shadow.version == v[3]
    r = client.post(
        f"/v1/loops/{LOOP}/rank", json={"context": CONTEXT, "actions": ACTIONS, "user_id": "u"}
    )
    assert r.status_code == 201 and r.json()["model_version"] in (v[0], v[2])

    # the canary goes live: the old live is retired; nothing is split, the shadow stays
    set_status(engine, v[2], "live")
    service.loops.refresh()
    rt3 = service.loops.loops[LOOP]
    assert rt3.policy is rt2.canary and rt3.canary is None and rt3.split is None
    assert rt3.shadow is rt2.shadow
    with engine.begin() as conn:
        conn.execute(update(ModelRow).where(ModelRow.version == v[3]).values(status="retired"))
    service.loops.refresh()
    assert service.loops.loops[LOOP].shadow is None
    assert serving(client)["live"] == v[2]


def test_a_canary_or_shadow_that_cannot_load_leaves_live_serving(
    client: TestClient, artifacts: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    service, engine, v = setup(client, artifacts)
    set_status(engine, v[1], "canary", 50.0)
    set_status(engine, v[2], "shadow")
    with engine.begin() as conn:  # both artifacts no longer match their sha256
        conn.execute(
            update(ModelRow).where(ModelRow.version.in_(v[1:3])).values(artifact=b"corrupt")
        )
    with caplog.at_level(logging.ERROR, logger="decision_service.runtime"):
        service.loops.refresh()
        service.loops.refresh()  # retried, logged once per version
    rt = service.loops.loops[LOOP]
    assert rt.policy.version == v[0] and rt.canary is None and rt.shadow is None
    failures = [r for r in caplog.records if "could not be loaded" in r.getMessage()]
    assert len(failures) == 2
    assert {v[1], v[2]} == {r.args[2] for r in failures}  # type: ignore[index]
    for i in range(20):
        r = client.post(
            f"/v1/loops/{LOOP}/rank",
            json={"event_id": f"c{i}", "user_id": f"u{i}", "context": CONTEXT, "actions": ACTIONS},
        )
        assert r.status_code == 201 and r.json()["model_version"] == v[0]

    # a canary whose percent is unusable is not served either
    with engine.begin() as conn:
        conn.execute(update(ModelRow).where(ModelRow.version == v[1]).values(artifact=artifacts[1]))
    set_status(engine, v[1], "canary", None)
    service.loops.refresh()
    assert service.loops.loops[LOOP].canary is None
    set_status(engine, v[1], "canary", 30.0)
    service.loops.refresh()
    assert service.loops.loops[LOOP].canary is not None


@pytest.fixture
def fast_refresh(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    with admin_client(create_app(make_settings(db_url, tmp_path, loop_refresh_s=0.05))) as c:
        yield c


def test_the_background_refresh_picks_up_a_new_canary(
    fast_refresh: TestClient, artifacts: list[bytes]
) -> None:
    """No call of refresh: the worker's periodic task (DS_LOOP_REFRESH_S) finds the change."""
    client = fast_refresh
    client.get("/v1/status")
    _, engine, v = setup(client, artifacts)
    set_status(engine, v[1], "canary", 25.0)
    set_status(engine, v[2], "shadow")
    expected = {"live": v[0], "canary": v[1], "canary_percent": 25.0, "shadow": v[2]}

    def state() -> dict[str, Any]:
        loops = _loops(client)
        return {k: loops[LOOP][k] for k in expected} if LOOP in loops else {}

    deadline = time.monotonic() + 60
    while state() != expected:  # a refresh may fall between the two changes: wait for both
        assert time.monotonic() < deadline, f"the worker never picked them up: {state()}"
        time.sleep(0.05)


def _loops(client: TestClient) -> dict[str, Any]:
    data: dict[str, Any] = client.get("/v1/status").json()["serving"]
    return data


def test_workers_follow_the_rollout_state_machine(
    client: TestClient, artifacts: list[bytes]
) -> None:
    """The versions moved by deploy.rollout (shadow -> canary -> live, a rejected canary, a
    rollback): after each move and a refresh the worker serves, splits and shadows as stored."""
    service, engine, v = setup(client, artifacts)

    def move(version: str, to: str, **kwargs: Any) -> None:
        transition(engine, version, to, actor="test", role="gatekeeper", reason="t", **kwargs)
        service.loops.refresh()

    def decisions(tag: str, n: int = 60) -> list[tuple[str, str, Any]]:
        out = []
        for i in range(n):
            body = {"event_id": f"{tag}{i}", "user_id": f"u{i}", "context": CONTEXT}
            r = client.post(f"/v1/loops/{LOOP}/rank", json=body | {"actions": ACTIONS})
            assert r.status_code == 201, r.text
        with engine.connect() as conn:
            rows = conn.execute(
                select(DecisionRow.model_version, DecisionRow.policy_arm, DecisionRow.shadow).where(
                    DecisionRow.loop == LOOP, DecisionRow.event_id.like(f"{tag}%")
                )
            ).all()
        for version, arm, shadow in rows:
            out.append((version, arm, None if shadow is None else shadow["version"]))
        return out

    move(v[1], "shadow")
    assert {d for d in decisions("a")} == {(v[0], "live", v[1])}
    move(v[1], "canary", canary_percent=50.0)
    seen = set(decisions("b"))
    assert seen == {(v[0], "live", None), (v[1], "canary", None)}
    move(v[1], "live", override=True)
    assert set(decisions("c")) == {(v[1], "live", None)}
    move(v[2], "canary", canary_percent=50.0)
    assert {d[0] for d in decisions("d")} == {v[1], v[2]}
    move(v[2], "rejected")  # stops the canary, live stays
    assert set(decisions("e")) == {(v[1], "live", None)}
    rollback(engine, LOOP, actor="test", role="gatekeeper", reason="worse")
    service.loops.refresh()
    assert set(decisions("f")) == {(v[0], "live", None)}
