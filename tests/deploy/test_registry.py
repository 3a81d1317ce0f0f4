"""Model registry: atomic registration, promotion, integrity, and hot switch in serving workers."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy import exc as sa_exc

import log.registry_store
from decision_service import create_app
from deploy.registry import (
    IntegrityError,
    LiveVersionConflict,
    get_version,
    list_versions,
    live_version,
    load_artifact,
    promote,
    register,
)
from explore import Action
from log.models import DecisionRow, ModelRow
from policies import VWPolicy
from tests.conftest import admin_client, make_settings
from tests.deploy.race import race as _race

HOUR = timedelta(hours=1)


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


def test_interrupted_registration_leaves_nothing(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = register(engine, loop="default", kind="batch", vw_args="", artifact=b"v1")
    promote(engine, live.version)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("interrupted")

    # the row is inserted, then the transaction fails before it commits
    monkeypatch.setattr(log.registry_store, "_set_live", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        register(engine, loop="default", kind="batch", vw_args="", artifact=b"v2", promote_now=True)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ModelRow)).scalar_one() == 1
    assert live_version(engine, "default") == get_version(engine, live.version)


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
    with admin_client(create_app(settings)) as client:
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


# --- lineage: an online version's training window covers its ancestors' (defect 8) ---------


def test_training_window_covers_the_lineage(engine: Engine) -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    args: dict[str, Any] = {"loop": "default", "vw_args": "-q ca"}
    v1 = register(
        engine, kind="online", artifact=b"1", trained_from=t, trained_until=t + HOUR, **args
    )
    assert (v1.trained_from, v1.trained_until) == (t, t + HOUR)
    # an increment of events joined late: decided before everything its parent learned
    v2 = register(
        engine,
        kind="online",
        artifact=b"2",
        parent=v1.version,
        trained_from=t - 2 * HOUR,
        trained_until=t - HOUR,
        **args,
    )
    assert (v2.trained_from, v2.trained_until) == (t - 2 * HOUR, t + HOUR)
    v3 = register(
        engine,
        kind="online",
        artifact=b"3",
        parent=v2.version,
        trained_from=t + 2 * HOUR,
        trained_until=t + 3 * HOUR,
        **args,
    )
    assert (v3.trained_from, v3.trained_until) == (t - 2 * HOUR, t + 3 * HOUR)
    assert get_version(engine, v3.version) == v3
    with pytest.raises(LookupError, match="parent version 'nope' does not exist"):
        register(engine, kind="online", artifact=b"4", parent="nope", **args)
    other = register(engine, loop="other", kind="batch", vw_args="", artifact=b"5")
    with pytest.raises(LookupError, match="does not exist in loop 'default'"):
        register(engine, kind="online", artifact=b"6", parent=other.version, **args)


# --- at most one live version per loop (defect 9) ---------------------------------------------


def _live(engine: Engine, loop: str = "default") -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(ModelRow.version).where(ModelRow.loop == loop, ModelRow.status == "live")
            ).scalars()
        )


def test_concurrent_promotions_leave_one_live_version(engine: Engine) -> None:
    n = 6
    versions = [
        register(engine, loop="default", kind="batch", vw_args="", artifact=bytes([i + 1]))
        for i in range(n)
    ]
    register(engine, loop="other", kind="batch", vw_args="", artifact=b"o", promote_now=True)
    for _ in range(3):
        results, errors = _race(n, lambda i: promote(engine, versions[i].version))
        # promotions of one loop are serialised: each succeeds in turn, the last one wins
        assert not errors, errors
        assert all(r.status == "live" for r in results)  # type: ignore[attr-defined]
        live = _live(engine)
        assert len(live) == 1
        statuses = {v.status for v in list_versions(engine, "default")}
        assert statuses == {"live", "retired"}
        assert len(_live(engine, "other")) == 1
    # registering live concurrently: the same
    results, errors = _race(
        n,
        lambda i: register(
            engine,
            loop="default",
            kind="online",
            vw_args="",
            artifact=bytes([100 + i]),
            promote_now=True,
        ),
    )
    assert not errors, errors
    assert len(_live(engine)) == 1


def test_the_database_refuses_a_second_live_version(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the promotion lock the unique index still holds: a promotion that loses the
    race fails with a clear error and changes nothing; never two live versions."""
    a = register(engine, loop="default", kind="batch", vw_args="", artifact=b"a")
    b = register(engine, loop="default", kind="batch", vw_args="", artifact=b"b")
    promote(engine, a.version)
    with pytest.raises(sa_exc.IntegrityError), engine.begin() as conn:
        conn.execute(update(ModelRow).where(ModelRow.version == b.version).values(status="live"))
    assert _live(engine) == [a.version]

    # two promotions racing without the lock (more would also deadlock on PostgreSQL)
    monkeypatch.setattr(log.registry_store, "_lock_loop", lambda conn, loop: None)
    versions = [
        register(engine, loop="default", kind="batch", vw_args="", artifact=bytes([i + 1]))
        for i in range(20)
    ]
    conflicts = 0
    for k in range(0, 20, 2):
        results, errors = _race(2, lambda i, k=k: promote(engine, versions[k + i].version))
        assert all(isinstance(e, LiveVersionConflict) for e in errors), errors
        assert all("became live concurrently" in str(e) for e in errors)
        assert len(results) + len(errors) == 2 and results
        assert len(_live(engine)) == 1
        conflicts += len(errors)
    print(f"unlocked promotion races: {conflicts} of 10 refused by the unique index")
