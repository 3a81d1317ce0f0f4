"""What checking a key costs: `authorize` on a cached key, on a miss, and as a route would.

Prints one JSON line (microseconds per call, medians of 3 runs):
- `cached_us`: `authorize(request, "decide", loop)` with the key in the worker's cache (the
  rank path: a header scan, a dict lookup, one HMAC-SHA256, a constant-time comparison);
- `hmac_us`: the HMAC alone;
- `miss_us`: the key just dropped from the cache (one read of `api_keys`, SQLite, through the
  thread pool), i.e. once per key and worker every DS_KEY_CACHE_S;
- `unknown_us`: a well-formed key that does not exist, remembered as unknown;
- `route_direct_us` / `route_depends_us`: a minimal FastAPI route driven through ASGI that
  calls `authorize` in its body (as the service's routes do) vs the same check declared as a
  FastAPI dependency: what dependency resolution would add per request.

    python -m benchmarks.auth [--n 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from starlette.responses import Response

from benchmarks.loadgen import BENCH_KEY
from decision_service.auth import authorize
from decision_service.service import Service
from decision_service.settings import Settings
from deploy.keys import parse_token, secret_digest
from explore.errors import Unauthorized

UNKNOWN = "dsk_0000000000ff_" + "A" * 43


def scope(token: str, path: str = "/v1/loops/default/rank", app: Any = None) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", b"2"),
            (b"authorization", f"Bearer {token}".encode()),
        ],
        "client": ("bench", 1),
        "server": ("bench", 80),
        "app": app,
    }


async def per_call(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - t0) / n * 1e6


def minimal_app(service: Service) -> FastAPI:
    app = FastAPI()
    app.state.service = service
    ok = Response(b"{}", media_type="application/json")

    @app.post("/direct/{loop}")
    async def direct(request: Request) -> Response:
        await authorize(request, "decide", request.path_params["loop"])
        return ok

    async def checked(request: Request) -> None:
        await authorize(request, "decide", request.path_params["loop"])

    @app.post("/depends/{loop}", dependencies=[Depends(checked)])
    async def depends(request: Request) -> Response:
        return ok

    return app


async def drive_asgi(app: FastAPI, path: str, n: int) -> float:
    sc = scope(BENCH_KEY, path)
    body = {"type": "http.request", "body": b"{}", "more_body": False}

    async def receive() -> MutableMapping[str, Any]:
        return body

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message

    async def one() -> None:
        await app(dict(sc), receive, send)

    return await per_call(one, n)


async def run(n: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url=f"sqlite:///{Path(tmp) / 'bench.db'}",
            spool_dir=str(Path(tmp) / "spool"),
            admin_key=BENCH_KEY,
            admin_key_file=str(Path(tmp) / "admin-key"),
            key_cache_s=60,
        )
        service = Service(settings)
        service.start_sync()
        try:
            fake_app = SimpleNamespace(state=SimpleNamespace(service=service))
            cached = Request(scope(BENCH_KEY, app=fake_app))
            unknown = Request(scope(UNKNOWN, app=fake_app))
            key = parse_token(BENCH_KEY)
            assert key is not None
            await authorize(cached, "decide", "default")  # fills the cache

            async def check_cached() -> None:
                await authorize(cached, "decide", "default")

            async def check_miss() -> None:
                service.keys.forget(key.key_id)
                await authorize(cached, "decide", "default")

            async def check_unknown() -> None:
                with contextlib.suppress(Unauthorized):
                    await authorize(unknown, "decide", "default")

            async def hmac_only() -> None:
                secret_digest(key.key_id, key.secret)

            out: dict[str, Any] = {"n": n}
            for name, fn, calls in (
                ("cached_us", check_cached, n),
                ("hmac_us", hmac_only, n),
                ("miss_us", check_miss, max(50, n // 200)),
                ("unknown_us", check_unknown, n),
            ):
                samples = [await per_call(fn, calls) for _ in range(runs)]
                out[name] = round(statistics.median(samples), 3)
            app = minimal_app(service)
            for name, path in (
                ("route_direct_us", "/direct/default"),
                ("route_depends_us", "/depends/default"),
            ):
                calls = max(1000, n // 10)
                samples = [await drive_asgi(app, path, calls) for _ in range(runs)]
                out[name] = round(statistics.median(samples), 3)
            out["db_reads"] = service.keys.reads
        finally:
            service.writer.stop()
            service.engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=50_000, help="calls per cached measurement")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.n, args.runs))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
