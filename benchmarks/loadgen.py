"""A cheap closed-loop HTTP/1.1 load generator for the rank endpoint.

Client and servers share the machine's cores, so the client is kept as thin as possible: raw
asyncio protocols (uvloop when installed), keep-alive connections, request bytes pre-encoded
around a fixed-width event id (every request is a new decision), and a response parser that
reads only the status line and Content-Length.

Run it in its own process (``python -m benchmarks.loadgen --port ...``): it prints one JSON
object with the measured figures on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import resource
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

RANK_PATH = "/v1/loops/default/rank"
# The key every request sends (the benchmarks register it as DS_ADMIN_KEY; the ceiling app
# ignores it): the service's rank path checks it like any client's.
BENCH_KEY = "dsk_be9c4000000a_" + "b" * 43
_PLACEHOLDER = "\x00EVENT\x00"
_CATEGORIES = ("news", "sports", "music", "movies", "games", "food", "travel", "tech")
_DEVICES = ("mobile", "desktop", "tablet")
_COUNTRIES = ("DE", "FR", "US", "GB", "JP", "BR", "IN", "ES")


def rank_body(n_actions: int, rng: random.Random, event_id: str) -> dict[str, Any]:
    """A realistic rank request: 5 context features, 4 features per action."""
    items = rng.sample(range(100_000), n_actions)
    return {
        "event_id": event_id,
        "context": {
            "user_segment": f"seg_{rng.randrange(20)}",
            "device": rng.choice(_DEVICES),
            "country": rng.choice(_COUNTRIES),
            "hour": rng.randrange(24),
            "recency_days": round(rng.expovariate(0.2), 3),
        },
        "actions": [
            {
                "id": f"item_{item:06d}",
                "features": {
                    "category": rng.choice(_CATEGORIES),
                    "price": round(rng.uniform(1, 100), 2),
                    "popularity": round(rng.random(), 4),
                    "fresh": rng.random() < 0.3,
                },
            }
            for item in items
        ],
    }


@dataclass(frozen=True)
class RequestTemplate:
    """Request bytes around the event id: head + before + event id + after."""

    head: bytes
    before: bytes
    after: bytes

    def build(self, event_id: bytes) -> bytes:
        return self.head + self.before + event_id + self.after


def make_templates(
    host: str,
    port: int,
    path: str,
    n_actions: int,
    variants: int,
    seed: int,
    id_width: int,
    key: str = BENCH_KEY,
    retrieve: int = 0,
) -> list[RequestTemplate]:
    rng = random.Random(seed)
    out = []
    for _ in range(variants):
        request = rank_body(n_actions, rng, _PLACEHOLDER)
        if retrieve:  # candidates from the loop's catalog instead of the request
            del request["actions"]
            request["retrieve"] = {"k": retrieve}
        body = orjson.dumps(request)
        before, after = body.split(orjson.dumps(_PLACEHOLDER)[1:-1])
        length = len(before) + id_width + len(after)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        ).encode()
        out.append(RequestTemplate(head, before, after))
    return out


class _Client(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's transports do not subclass asyncio.Transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:  # no Content-Length (chunked): not produced by the servers measured
            self._fail(ConnectionError("response without Content-Length"))
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(buf) < total:
            return
        status = int(buf[9:12])
        del buf[:total]
        waiter = self.waiter
        self.waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(status)

    def _fail(self, err: Exception) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(err)
        self.waiter = None
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection lost: {exc}"))


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    errors: int = 0
    ok_total: int = 0
    errors_total: int = 0
    unfinished: int = 0
    connect_errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


async def _connection(
    ci: int,
    host: str,
    port: int,
    templates: list[RequestTemplate],
    tag: str,
    t_start: float,
    t_end: float,
    tally: _Tally,
    clients: set[_Client],
) -> None:
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    proto: _Client | None = None
    n_templates = len(templates)
    seq = 0
    while clock() < t_end:
        if proto is None or proto.closed:
            try:
                transport, proto = await loop.create_connection(_Client, host, port)
            except OSError:
                tally.connect_errors += 1
                await asyncio.sleep(0.05)
                continue
            proto.transport = transport  # uvloop may call connection_made later
            clients.add(proto)
        template = templates[(ci + seq) % n_templates]
        event_id = f"{tag}-{ci:04d}-{seq:010d}".encode()
        seq += 1
        fut: asyncio.Future[int] = loop.create_future()
        proto.waiter = fut
        t0 = clock()
        transport.write(template.build(event_id))
        try:
            status = await fut
        except ConnectionError:
            tally.unfinished += 1
            continue
        t1 = clock()
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        good = 200 <= status < 300
        if good:
            tally.ok_total += 1
        else:
            tally.errors_total += 1
        if t_start <= t1 <= t_end:
            if good:
                tally.ok += 1
                tally.latencies.append(t1 - t0)
            else:
                tally.errors += 1
    if proto is not None and proto.transport is not None:
        proto.transport.close()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


async def run_load(
    *,
    host: str = "127.0.0.1",
    port: int,
    path: str = RANK_PATH,
    actions: int = 50,
    connections: int = 64,
    duration: float = 10.0,
    warmup: float = 2.0,
    seed: int = 0,
    variants: int = 64,
    grace: float = 30.0,
    retrieve: int = 0,
) -> dict[str, Any]:
    """Drive `connections` closed-loop clients; figures cover the `duration` after `warmup`."""
    tag = secrets.token_hex(4)
    id_width = len(f"{tag}-{0:04d}-{0:010d}")
    templates = make_templates(
        host, port, path, actions, variants, seed, id_width, retrieve=retrieve
    )
    tally = _Tally()
    clients: set[_Client] = set()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    now = time.perf_counter()
    t_start = now + warmup
    t_end = t_start + duration
    tasks = [
        asyncio.create_task(
            _connection(ci, host, port, templates, tag, t_start, t_end, tally, clients)
        )
        for ci in range(connections)
    ]
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, t_end - time.perf_counter()) + grace)
    for client in clients:  # requests still unanswered after the grace period fail now
        if client.transport is not None:
            client.transport.close()
        client._fail(ConnectionError("gave up waiting"))
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    lat = sorted(tally.latencies)
    return {
        "rps": round(tally.ok / duration, 1),
        "p50_ms": round(_percentile(lat, 0.50) * 1000, 3),
        "p90_ms": round(_percentile(lat, 0.90) * 1000, 3),
        "p99_ms": round(_percentile(lat, 0.99) * 1000, 3),
        "max_ms": round((lat[-1] if lat else float("nan")) * 1000, 3),
        "ok": tally.ok,
        "errors": tally.errors,
        "ok_total": tally.ok_total,
        "errors_total": tally.errors_total,
        "unfinished": tally.unfinished,
        "connect_errors": tally.connect_errors,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "duration_s": duration,
        "warmup_s": warmup,
        "connections": connections,
        "actions": actions,
        "request_bytes": len(templates[0].build(b"x" * id_width)),
        "client_cpu_s": round((cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime), 2),
    }


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default=RANK_PATH)
    parser.add_argument("--actions", type=int, default=50)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", type=int, default=64, help="distinct request bodies")
    parser.add_argument("--retrieve", type=int, default=0, help="send retrieve: {k} (0: actions)")
    args = parser.parse_args(argv)
    _install_uvloop()
    result = asyncio.run(
        run_load(
            host=args.host,
            port=args.port,
            path=args.path,
            actions=args.actions,
            connections=args.connections,
            duration=args.duration,
            warmup=args.warmup,
            seed=args.seed,
            variants=args.variants,
            retrieve=args.retrieve,
        )
    )
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
