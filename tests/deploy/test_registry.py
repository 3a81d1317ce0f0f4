"""Model registry: atomic registration, promotion, integrity, and hot switch in serving workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, update

from decision_service import create_app
from deploy.registry import (
    IntegrityError,
    get_version,
    list_versions,
    live_version,
    load_artifact,
    promote,
    register,
)
from explore import Action
from log.models import DecisionRow, ModelRow
from log.schema import make_engine, migrate
from policies import VWPolicy
from tests.conftest import make_settings


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    migrate(eng)
    yield eng
    eng.dispose()


def trained_model(favourite: str = "a1") -> bytes:
    policy = VWPolicy("-q ca")
    actions = [Action(f"a{i}", {"k": i}) for i in range(3)]
    for i in range(200):
        chosen = i % 3
        reward = 1.0 if actions[chosen].id == favourite else 0.0
        policy.learn({"u": 1}, actions, chosen=chosen, reward=reward, probability=1 / 3)
    return policy.save()


def test_register_promote_retire(engine: Engine) -> None:
    art = trained_model()
    v1 = register(engine, loop="default", kind="batch", vw_args="-q ca", artifact=art, n_events=200)
    assert v1.status == "candidate" and v1.parent is None and len(v1.sha256) == 64
    assert load_artifact(engine, v1.version) == art
    assert live_version(engine, "default") is None
    promote(engine, v1.version)
    v2 = register(
        engine,
        loop="default",
        kind="online",
        vw_args="-q ca",
        artifact=trained_model("a2"),
        parent=v1.version,
        promote_now=True,
    )
    assert live_version(engine, "default") == get_version(engine, v2.version)
    statuses = {v.version: v.status for v in list_versions(engine, "default")}
    assert statuses == {v1.version: "retired", v2.version: "live"}
    assert get_version(engine, v2.version).parent == v1.version  # type: ignore[union-attr]
    with pytest.raises(LookupError, match="does not exist"):
        promote(engine, "nope")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"kind": "weird"}, "kind must be one of"), ({"artifact": b""}, "artifact must be non-empty")],
)
def test_register_rejects(engine: Engine, kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"loop": "default", "kind": "batch", "vw_args": "", "artifact": b"x"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        register(engine, **args)  # type: ignore[arg-type]


def test_interrupted_registration_leaves_nothing(engine: Engine) -> None:
    with pytest.raises(RuntimeError, match="interrupted"), engine.begin() as conn:
        register(engine, loop="default", kind="batch", vw_args="", artifact=b"abc", conn=conn)
        raise RuntimeError("interrupted")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ModelRow)).scalar_one() == 0


def test_corrupted_artifact_is_refused(engine: Engine) -> None:
    v = register(engine, loop="default", kind="manual", vw_args="", artifact=b"abc")
    with engine.begin() as conn:
        conn.execute(update(ModelRow).values(artifact=b"abd"))
    with pytest.raises(IntegrityError, match="sha256"):
        load_artifact(engine, v.version)


def test_hot_switch_under_concurrent_requests(db_url: str, tmp_path: Path) -> None:
    settings = make_settings(db_url, tmp_path, loop_refresh_s=0.1)
    body = {
        "context": {"u": 1},
        "actions": [{"id": f"a{i}", "features": {"k": i}} for i in range(3)],
    }
    results: list[tuple[int, str, str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    with TestClient(create_app(settings)) as client:
        engine = client.app.state.service.engine  # type: ignore[attr-defined]

        def hammer(worker: int) -> None:
            i = 0
            try:
                while not stop.is_set() or i < 20:
                    r = client.post(
                        "/v1/loops/default/rank", json={**body, "event_id": f"w{worker}-{i}"}
                    )
                    results.append((r.status_code, r.json()["event_id"], r.json()["model_version"]))
                    i += 1
            except BaseException as err:  # pragma: no cover - reported below
                errors.append(err)

        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        v1 = register(
            engine,
            loop="default",
            kind="batch",
            vw_args="-q ca",
            artifact=trained_model("a1"),
            promote_now=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(v == v1.version for _, _, v in results):
            time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        with engine.connect() as conn:
            logged = dict(
                conn.execute(select(DecisionRow.event_id, DecisionRow.model_version)).all()
            )
    assert not errors
    assert all(status == 201 for status, _, _ in results)
    versions = [v for _, _, v in results]
    assert "untrained" in versions and v1.version in versions
    # each decision logs the version that served it
    assert {e: v for _, e, v in results} == logged
    # once switched, a worker never goes back
    first_new = versions.index(v1.version)
    assert set(versions[first_new + 4 * 2 :]) <= {v1.version}
