"""A hostile client against the real app: steering the sampler, oversized and chunked bodies,
hard-to-address event ids, costly configurations, and what a 500 looks like on the wire.

The sampling test plays an attacker who knows everything every route returns (loop
configurations, status, the OpenAPI document, every decision it was served, replays) and chooses
event ids to make the service serve one action more often than it logs. Decisions are sampled
from a keyed hash of the event id with the loop's secret key (256 bits, never returned), so the
served frequencies must still match the logged probabilities (chi-square, p > 0.001).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import uvicorn
from fastapi.testclient import TestClient
from scipy.stats import binomtest, chisquare
from sqlalchemy import func, select

from decision_service import Settings, create_app
from log.models import DecisionRow, RewardRow
from log.schema import make_engine
from tests.conftest import ADMIN_HEADERS, admin_client, make_settings
from tests.decision_service.test_propensity import asgi_post

ACTIONS = [{"id": a} for a in ("a", "b", "c")]
CONFIG = {"exploration": "epsilon_greedy", "epsilon": 0.9}  # untrained: scores tie, p = 1/3
TARGET = "c"  # the action the attacker wants served


def post_many(
    client: TestClient, path: str, bodies: Sequence[dict[str, Any]]
) -> list[tuple[int, dict[str, Any]]]:
    """POST every body through the ASGI app, 32 at a time, in the app's own event loop."""

    async def run() -> list[tuple[int, dict[str, Any]]]:
        gate = asyncio.Semaphore(32)

        async def one(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            async with gate:
                status, raw = await asgi_post(client.app, path, orjson.dumps(body))
            return status, orjson.loads(raw)

        return list(await asyncio.gather(*(one(b) for b in bodies)))

    assert client.portal is not None
    return client.portal.call(run)


def served(client: TestClient, loop: str, ids: Sequence[str]) -> dict[str, str]:
    """Rank each id in `loop`; returns id -> served action (all must be new decisions)."""
    answers = post_many(
        client, f"/v1/loops/{loop}/rank", [{"event_id": i, "actions": ACTIONS} for i in ids]
    )
    assert all(status == 201 for status, _ in answers), answers[:3]
    return {data["event_id"]: data["reward_action_id"] for _, data in answers}


def decision_count(settings: Settings, loop: str) -> int:
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(DecisionRow).where(DecisionRow.loop == loop)
                ).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    # sampling does not depend on the store: SQLite, fast mode (the attacker's requests are many)
    return make_settings(f"sqlite:///{tmp_path / 'store.db'}", tmp_path, durability="fast")


def test_attacker_cannot_raise_an_actions_frequency(sqlite_settings: Settings) -> None:
    with admin_client(create_app(sqlite_settings)) as client:
        for loop in ("victim", "probe"):
            assert client.put(f"/v1/loops/{loop}", json=CONFIG).status_code == 201
        # Everything the routes say about the loops; none of it is the key.
        public = json.dumps(
            [client.get(p).json() for p in ("/v1/loops", "/v1/loops/victim", "/v1/status")]
        )
        assert "sampling_key" not in public and "seed" not in public

        # 1. Probe: the attacker's own loop, with the victim's public configuration, serves
        #    candidate ids; it keeps those that were served the target.
        probe = served(client, "probe", [f"x{i}" for i in range(3000)])
        from_probe = [i for i, action in probe.items() if action == TARGET]
        # 2. The same from the default loop (another key again).
        client.put("/v1/loops/default", json=CONFIG)
        default = served(client, "default", [f"y{i}" for i in range(1500)])
        from_default = [i for i, action in default.items() if action == TARGET]
        chosen = from_probe + from_default
        assert len(chosen) >= 800

        # The attack: only ids that were served the target elsewhere.
        victim = served(client, "victim", chosen)
        # 3. Replays of the victim's own decisions that served the target: the stored decision
        #    comes back, nothing new is logged; a changed body is refused.
        hits = [i for i, action in victim.items() if action == TARGET]
        before = decision_count(sqlite_settings, "victim")
        again = post_many(
            client, "/v1/loops/victim/rank", [{"event_id": i, "actions": ACTIONS} for i in hits]
        )
        assert all(s == 201 and d["reward_action_id"] == TARGET for s, d in again)
        changed = post_many(
            client,
            "/v1/loops/victim/rank",
            [{"event_id": i, "actions": ACTIONS, "context": {"x": 1}} for i in hits[:50]],
        )
        assert {s for s, _ in changed} == {409}
        assert decision_count(sqlite_settings, "victim") == before == len(victim)

        # Fill up to >= 2,000 fresh victim decisions with more probe-selected ids.
        more = served(client, "probe", [f"z{i}" for i in range(3000)])
        extra = [i for i, a in more.items() if a == TARGET][: max(0, 2000 - len(victim))]
        victim.update(served(client, "victim", extra))
        n = len(victim)
        assert n >= 2000 and decision_count(sqlite_settings, "victim") == n

        logged = client.post("/v1/loops/victim/rank", json={"actions": ACTIONS}).json()
        pmf = {x["id"]: x["probability"] for x in logged["ranking"]}
        counts = Counter(victim.values())
        observed = [counts[a["id"]] for a in ACTIONS]
        expected = [n * pmf[a["id"]] for a in ACTIONS]
        p_chi2 = float(chisquare(observed, expected).pvalue)
        p_target = binomtest(counts[TARGET], n, pmf[TARGET], alternative="greater").pvalue
        print(
            f"\nattacker-chosen ids: {n} fresh decisions, target served {counts[TARGET]} "
            f"({counts[TARGET] / n:.3f}) while logging p = {pmf[TARGET]:.3f}; chi-square "
            f"p = {p_chi2:.3f}, one-sided binomial p = {p_target:.3f}"
        )
        assert p_chi2 > 1e-3
        assert p_target > 1e-3


# ------------------------------------------------------------------------ chunked bodies
def test_chunked_body_is_cut_at_the_limit(sqlite_settings: Settings) -> None:
    """A 200 MiB chunked body (no Content-Length) is answered 413 after the server read at most
    the limit plus one chunk; the generator shows how much was consumed."""
    chunk = 64 * 1024
    total_chunks = 200 * 16  # 200 MiB
    limit = sqlite_settings.max_body_bytes
    app = create_app(sqlite_settings)
    consumed = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal consumed
        yield b'{"actions": [{"id": "a"}], "context": {"s": "'
        for _ in range(total_chunks):
            consumed += 1
            yield b"x" * chunk

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.post(
                "/v1/loops/default/rank",
                content=body(),
                headers={"content-type": "application/json", **ADMIN_HEADERS},
            )

    with TestClient(app):  # the lifespan (the service) runs
        response = asyncio.run(run())
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"
    read = consumed * chunk
    print(
        f"\nchunked 200 MiB body: 413 after {read / 2**20:.2f} MiB read (limit {limit / 2**20} MiB)"
    )
    assert read <= limit + chunk


# ------------------------------------------------------------------------ a real server
class Server:
    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.sock = sock
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture
def server(sqlite_settings: Settings) -> Iterator[Server]:
    with Server(sqlite_settings) as running:
        yield running


def test_a_500_is_json_and_keeps_the_connection(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a 500 was plain text and closed the keep-alive connection (5-7% of the
    concurrent requests on that connection then failed client-side)."""

    async def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("simulated bug")

    server.app.state.service.rank = boom
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        body = orjson.dumps({"actions": ACTIONS})
        with caplog.at_level(logging.ERROR, logger="decision_service.errors"):
            conn.request(
                "POST",
                "/v1/loops/default/rank",
                body,
                {"content-type": "application/json", **ADMIN_HEADERS},
            )
            first = conn.getresponse()
            raw = first.read()
        sock = conn.sock
        assert first.status == 500
        assert first.getheader("content-type") == "application/json"
        assert json.loads(raw) == {
            "error": {
                "code": "internal_error",
                "message": "the service failed on this request; the error was logged",
            }
        }
        assert "simulated bug" not in raw.decode()  # internals are logged, not sent
        assert (first.getheader("connection") or "").lower() != "close"
        assert any("simulated bug" in (r.exc_text or "") for r in caplog.records)
        for _ in range(3):  # the same connection keeps serving
            conn.request("GET", "/v1/loops/default", headers=ADMIN_HEADERS)
            again = conn.getresponse()
            again.read()
            assert again.status == 200
            assert conn.sock is sock, "the server closed the connection after the 500"
    finally:
        conn.close()


def test_real_server_stops_reading_a_chunked_body_at_the_limit(server: Server) -> None:
    """Over a socket: the server answers 413 long before a 200 MiB chunked upload is sent."""
    limit = 4 * 2**20
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sent = 0
    try:
        sock.sendall(
            b"POST /v1/loops/default/rank HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            + f"Authorization: {ADMIN_HEADERS['Authorization']}\r\n\r\n".encode()
        )
        chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        try:
            for _ in range(200 * 16):
                sock.sendall(chunk)
                sent += 0x10000
        except OSError:  # the server answered and closed: the rest is refused
            pass
        sock.settimeout(10)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
    finally:
        sock.close()
    print(f"\nraw socket: client managed to send {sent / 2**20:.1f} MiB before the 413")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 200 * 2**20
    assert sent <= limit + 32 * 2**20  # the limit plus what the kernel's socket buffers hold


# ------------------------------------------------------------------------ event ids
EVENT_IDS = [
    "a/b",
    "a/b/c/reward",
    "x/activate",
    "50%",
    "%2F",
    "with space",
    "ünïcødé/✓ ☃",
    "q?x=1#frag",
    "dots/../x",
    "plus+and&amp;=",
    "/leading",
    "trailing/",
]


def test_every_route_addresses_any_event_id(settings: Settings) -> None:
    """Regression: an event_id holding '/' could be ranked but never rewarded. Over a real
    server (the TestClient decodes paths twice), on SQLite and PostgreSQL: each id is ranked,
    rewarded and, deferred, activated, percent-encoded in the path."""
    with (
        Server(settings) as running,
        httpx.Client(base_url=running.url, headers=ADMIN_HEADERS) as http,
    ):
        for event_id in EVENT_IDS:
            r = http.post("/v1/loops/default/rank", json={"event_id": event_id, "actions": ACTIONS})
            assert r.status_code == 201, r.text
            path = f"/v1/loops/default/events/{quote(event_id, safe='')}"
            reward = http.post(f"{path}/reward", json={"value": 1})
            assert reward.status_code == 202, (event_id, reward.text)
            assert reward.json()["event_id"] == event_id
            assert http.post(f"{path}/activate").json()["error"]["code"] == "not_deferred"

            deferred = f"{event_id}#d"
            body = {"event_id": deferred, "actions": ACTIONS, "defer_activation": True}
            assert http.post("/v1/loops/default/rank", json=body).status_code == 201
            dpath = f"/v1/loops/default/events/{quote(deferred, safe='')}"
            activated = http.post(f"{dpath}/activate")
            assert activated.status_code == 202, (event_id, activated.text)
            assert activated.json()["event_id"] == deferred
            assert http.post(f"{dpath}/activate").status_code == 200  # already activated
            assert http.post(f"{dpath}/reward", json={"value": 0.5}).status_code == 202
        # ids with '/' also work unencoded
        assert (
            http.post("/v1/loops/default/events/a/b/reward", json={"value": 0}).status_code == 202
        )

    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            stored = Counter(conn.execute(select(RewardRow.event_id)).scalars())
    finally:
        engine.dispose()
    expected = Counter(EVENT_IDS + [f"{i}#d" for i in EVENT_IDS] + ["a/b"])
    assert stored == expected


# ------------------------------------------------------------------------ costly ranks
def test_a_rank_too_costly_for_the_loops_interactions_is_refused(
    sqlite_settings: Settings,
) -> None:
    """A 3-way interaction of a 256-feature context (half a second of VW per 50-action rank)
    is refused before VW runs, and nothing is written; a modest rank on the loop is served."""
    with admin_client(create_app(sqlite_settings)) as client:
        assert (
            client.put("/v1/loops/cubic", json={"vw_args": "--interactions ccc"}).status_code == 201
        )
        context = {f"c{i}": i * 0.01 + 0.1 for i in range(256)}
        actions = [{"id": f"a{i}"} for i in range(50)]
        t0 = time.perf_counter()
        r = client.post("/v1/loops/cubic/rank", json={"context": context, "actions": actions})
        elapsed = time.perf_counter() - t0
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "limit_exceeded"
        assert "DS_MAX_RANK_FEATURES" in r.json()["error"]["message"]
        print(f"\ncostly rank refused in {elapsed * 1e3:.1f} ms")
        assert elapsed < 0.2
        small = {f"c{i}": 1.0 for i in range(10)}
        ok = client.post("/v1/loops/cubic/rank", json={"context": small, "actions": actions})
        assert ok.status_code == 201, ok.text
    assert decision_count(sqlite_settings, "cubic") == 1


def test_a_client_leaving_mid_body_is_not_an_error(
    sqlite_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that disconnects while sending its body gets no answer (it is gone), and the
    service logs no error for it."""
    app = create_app(sqlite_settings)
    sent: list[dict[str, Any]] = []
    messages = iter(
        [
            {"type": "http.request", "body": b'{"actions": [', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/loops/default/rank",
        "raw_path": b"/v1/loops/default/rank",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"t"),
            (b"content-type", b"application/json"),
            (b"authorization", ADMIN_HEADERS["Authorization"].encode()),
        ],
        "client": ("c", 1),
        "server": ("t", 80),
    }
    with TestClient(app) as client, caplog.at_level(logging.INFO):
        assert client.portal is not None
        client.portal.call(app, scope, receive, send)
    assert sent == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("client disconnected" in r.getMessage() for r in caplog.records)
