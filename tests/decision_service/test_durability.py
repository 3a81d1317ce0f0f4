"""Durability through the app, fault injected and counted.

Database down: ranks without an event_id are spooled and answered 201; ranks with a
client-chosen id are refused with 503 (their reuse cannot be checked) unless they replay a
spooled decision; rewards and activations are accepted durably (never a 500), verified against
the spool where it can; a window is not closed while a reward of it is still spooled. When the
database is back everything is shipped exactly once and joined. Fast mode: client-chosen ids
take the durable path, so a reused id is always answered with the stored decision or a 409."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from decision_service import create_app
from decision_service.service import Service
from log.models import DecisionRow, OutcomeRow, RewardRow
from log.schema import make_engine
from tests.conftest import admin_client, make_settings

BODY = {"context": {"u": 1}, "actions": [{"id": "a"}, {"id": "b"}, {"id": "c"}]}


def counts(db_url: str) -> tuple[int, int, int]:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        out = tuple(
            int(conn.execute(select(func.count()).select_from(m)).scalar_one())
            for m in (DecisionRow, RewardRow, OutcomeRow)
        )
    engine.dispose()
    return out  # type: ignore[return-value]


def outcomes(db_url: str) -> dict[str, tuple[float, int]]:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(OutcomeRow.event_id, OutcomeRow.reward, OutcomeRow.n_rewards)
        ).all()
    engine.dispose()
    return {r[0]: (r[1], r[2]) for r in rows}


@contextmanager
def database_down(service: Service, tmp_path: Path, *, reads_too: bool = True) -> Iterator[None]:
    """Inside: the writer (and, with reads_too, the request path's reads) cannot connect."""
    bad = make_engine(f"sqlite:///{tmp_path / 'gone' / 'dir' / 'x.db'}")
    good = service.engine
    service.writer.engine = bad
    service.writer._close_conn()
    if reads_too:
        service.engine = bad
    try:
        yield
    finally:
        service.writer.engine = good
        service.engine = good
        service.writer._close_conn()
        bad.dispose()


def wait_shipped(tmp_path: Path) -> None:
    deadline = time.monotonic() + 20
    while list((tmp_path / "spool").glob("*.seg")):
        assert time.monotonic() < deadline, "spool was not shipped"
        time.sleep(0.05)


def test_database_outage_loses_nothing(db_url: str, tmp_path: Path) -> None:
    settings = make_settings(db_url, tmp_path)
    with admin_client(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        assert client.put("/v1/loops/default", json={"reward_wait_s": 4}).status_code == 200
        before = client.post("/v1/loops/default/rank", json={**BODY, "event_id": "stored"})
        deferred_before = client.post(
            "/v1/loops/default/rank", json={**BODY, "event_id": "dstored", "defer_activation": True}
        )
        assert before.status_code == deferred_before.status_code == 201
        with database_down(service, tmp_path):
            answers = [client.post("/v1/loops/default/rank", json=BODY) for _ in range(20)]
            assert [r.status_code for r in answers] == [201] * 20
            ids = [r.json()["event_id"] for r in answers]
            assert all(i.startswith("ds-") for i in ids)
            # a client-chosen id cannot be checked for reuse: 503, nothing written
            refused = client.post("/v1/loops/default/rank", json={**BODY, "event_id": "new"})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "store_unavailable"
            assert refused.headers["retry-after"]
            # replaying a spooled decision is answered from the spool
            again = client.post("/v1/loops/default/rank", json={**BODY, "event_id": ids[7]})
            assert again.status_code == 201 and again.json() == answers[7].json()
            assert again.headers["idempotent-replay"] == "true"
            deferred = client.post(
                "/v1/loops/default/rank", json={**BODY, "defer_activation": True}
            )
            d1 = deferred.json()["event_id"]
            # rewards / activation for spooled events: verified against the spool
            r = client.post(f"/v1/loops/default/events/{ids[3]}/reward", json={"value": 1})
            assert r.status_code == 202 and r.json()["status"] == "accepted"
            assert client.post(f"/v1/loops/default/events/{d1}/activate").status_code == 202
            client.post(f"/v1/loops/default/events/{d1}/reward", json={"value": 0.5})
            # ... and for events only the database knows: accepted unverified, never a 500
            r = client.post("/v1/loops/default/events/stored/reward", json={"value": 0.25})
            assert r.status_code == 202 and r.json()["status"] == "accepted_unverified"
            a = client.post("/v1/loops/default/events/dstored/activate")
            assert a.status_code == 202 and a.json()["status"] == "activated_unverified"
            assert counts(db_url)[:2] == (2, 0)
            assert service.writer.stats.refused_unverifiable == 1
        wait_shipped(tmp_path)
        assert counts(db_url)[:2] == (23, 3)
        again = client.post("/v1/loops/default/rank", json={**BODY, "event_id": ids[7]})
        assert again.json() == answers[7].json() and counts(db_url)[0] == 23
        deadline = time.monotonic() + 30
        while len(outcomes(db_url)) < 23:  # windows close once their deadlines pass
            assert time.monotonic() < deadline, f"joined only {len(outcomes(db_url))}"
            service.join_due(datetime.now(UTC))
            time.sleep(0.2)
        joined = outcomes(db_url)
        assert joined[ids[3]] == (1.0, 1) and joined[d1] == (0.5, 1)
        assert joined["stored"] == (0.25, 1) and "dstored" in joined
        print(f"FAULT outage (app): spooled=21 refused=1 stored=23 joined={len(joined)}")


def test_window_stays_open_while_its_reward_is_spooled(db_url: str, tmp_path: Path) -> None:
    """Regression (defect 4): a reward received inside its window but still in the spool when
    the window's deadline passes is joined, not replaced by the default reward."""
    settings = make_settings(db_url, tmp_path)
    with admin_client(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        client.put("/v1/loops/default", json={"reward_wait_s": 2, "default_reward": 0})
        event = client.post("/v1/loops/default/rank", json=BODY).json()["event_id"]
        with database_down(service, tmp_path, reads_too=False):
            r = client.post(f"/v1/loops/default/events/{event}/reward", json={"value": 1})
            assert r.status_code == 202 and r.json()["status"] == "accepted"
            time.sleep(2.5)  # the deadline passes while the reward is spooled
            held = service.join_due(datetime.now(UTC) + timedelta(hours=1))["default"]
            assert held.decisions == 0, "a window was closed with a reward still spooled"
        wait_shipped(tmp_path)
        deadline = time.monotonic() + 10
        while not outcomes(db_url):
            assert time.monotonic() < deadline, "the window was never closed"
            service.join_due(datetime.now(UTC) + timedelta(hours=1))
            time.sleep(0.1)
        assert outcomes(db_url)[event] == (1.0, 1)


def test_fast_mode_answers_before_commit_and_stores(db_url: str, tmp_path: Path) -> None:
    settings = make_settings(db_url, tmp_path, durability="fast")
    with admin_client(create_app(settings)) as client:
        for _ in range(50):
            assert client.post("/v1/loops/default/rank", json=BODY).status_code == 201
    # shutdown drains the queue: every acknowledged decision is stored
    assert counts(db_url)[0] == 50


def test_fast_mode_keeps_the_answer_for_a_reused_id(db_url: str, tmp_path: Path) -> None:
    """Regression (defect 5): a reused event_id with a different body is a 409, in fast mode
    too, and a replay is the stored decision."""
    settings = make_settings(db_url, tmp_path, durability="fast")
    with admin_client(create_app(settings)) as client:
        first = client.post("/v1/loops/default/rank", json={**BODY, "event_id": "x"})
        other = {**BODY, "event_id": "x", "context": {"u": 2}}
        assert client.post("/v1/loops/default/rank", json=other).status_code == 409
        replay = client.post("/v1/loops/default/rank", json={**BODY, "event_id": "x"})
        assert replay.json() == first.json() and replay.headers["idempotent-replay"] == "true"
        # a client may not invent an id of the service's own form
        fake = client.post("/v1/loops/default/rank", json={**BODY, "event_id": "ds-" + "0" * 32})
        assert fake.status_code == 422 and fake.json()["error"]["code"] == "reserved_event_id"
    assert counts(db_url)[0] == 1


def test_fast_mode_bounds_what_is_at_risk(db_url: str, tmp_path: Path) -> None:
    """Past `fast_max_pending` queued rows, fast mode waits for durability (backpressure)."""
    settings = make_settings(db_url, tmp_path, durability="fast", fast_max_pending=1)
    with admin_client(create_app(settings)) as client:
        for _ in range(30):
            r = client.post("/v1/loops/default/rank", json=BODY)
            assert r.status_code == 201
            assert client.app.state.service.writer.stats.pending <= 1  # type: ignore[attr-defined]
        status = client.get("/v1/status").json()
    assert counts(db_url)[0] == 30
    assert status["durability"] == "fast" and status["writer"]["rows"] >= 29
    assert status["writer"]["spool_segments"] == 0 and status["loops"]["default"] == "untrained"


def test_reward_idempotency_key(db_url: str, tmp_path: Path) -> None:
    settings = make_settings(db_url, tmp_path)
    with admin_client(create_app(settings)) as client:
        event = client.post("/v1/loops/default/rank", json=BODY).json()["event_id"]
        url = f"/v1/loops/default/events/{event}/reward"
        first = client.post(url, json={"value": 1, "reward_id": "k1"})
        retry = client.post(url, json={"value": 1, "reward_id": "k1"})
        assert first.status_code == retry.status_code == 202
        assert retry.json()["replayed"] is True and first.json()["replayed"] is False
        clash = client.post(url, json={"value": 0, "reward_id": "k1"})
        assert clash.status_code == 409 and clash.json()["error"]["code"] == "reward_conflict"
        assert client.post(url, json={"value": 1}).status_code == 202  # no key: a new reward
    assert counts(db_url)[1] == 2


def test_a_worker_started_during_an_outage_waits_for_the_database(
    pg_url: str, tmp_path: Path
) -> None:
    """A worker (re)started while the database is unreachable does not exit (uvicorn would
    then stop every worker): it answers 503 and starts serving once the database answers."""
    closed = "postgresql://postgres@127.0.0.1:9/test?connect_timeout=2"  # nothing listens
    settings = make_settings(closed, tmp_path, start_retry_s=0.1)
    with admin_client(create_app(settings)) as client:
        # every route, /v1/status included: the worker cannot verify a key it never saw
        for method, path in (
            ("POST", "/v1/loops/default/rank"),
            ("GET", "/v1/loops"),
            ("GET", "/v1/status"),
        ):
            r = client.request(method, path, json=BODY if method == "POST" else None)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "store_unavailable" and r.headers["retry-after"]
        service = client.app.state.service  # type: ignore[attr-defined]
        good = make_engine(pg_url)  # the database answers (here: at another address)
        service.engine = service.writer.engine = service.loops.engine = good
        service.keys.engine = good
        deadline = time.monotonic() + 20
        while (r := client.post("/v1/loops/default/rank", json=BODY)).status_code == 503:
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.1)
        assert r.status_code == 201
    assert counts(pg_url)[0] == 1


def test_reads_during_an_outage_answer_503(db_url: str, tmp_path: Path) -> None:
    settings = make_settings(db_url, tmp_path)
    with admin_client(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        with database_down(service, tmp_path):
            for path in ("/v1/loops", "/v1/loops/default"):
                r = client.get(path)
                assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
