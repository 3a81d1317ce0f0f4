"""What operating the service costs: the telemetry middleware per request, and the metrics
rollup per decision.

Prints one JSON line (medians of 5 alternated runs):
- `plain_us` / `telemetry_us`: one request through a minimal FastAPI route matching the rank
  route's template, driven through ASGI, without and with `TelemetryMiddleware` (Prometheus
  histogram + the per-loop latency histogram); `overhead_us` their difference;
- `error_plain_us` / `error_telemetry_us`: the same for a 404 answer (the middleware also reads
  the error body's code);
- `rollup_s_per_10k`: `rollup_loop` over `--decisions` decisions (uniform pmf over 10 actions,
  half of them joined with a reward) in SQLite, seconds per 10,000 decisions.

    python -m benchmarks.operate [--n 20000] [--decisions 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from decision_service.telemetry import Telemetry, TelemetryMiddleware
from explore.errors import NotFound
from log.joiner import join_loop
from log.loops import LoopConfig, put_loop
from log.metrics import rollup_loop
from log.records import DecisionRecord, RewardRecord
from log.schema import make_engine, migrate
from log.writer import GroupCommitWriter


def _app(telemetry: bool) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/loops/{loop}/rank")
    async def rank(request: Request, loop: str) -> Response:
        if loop == "missing":
            raise NotFound("no such loop", "loop_not_found")
        return Response(b'{"ok":true}', status_code=201, media_type="application/json")

    @app.exception_handler(NotFound)
    async def _nf(_: Request, err: NotFound) -> Response:
        body = orjson.dumps({"error": {"code": err.code, "message": err.message}})
        return Response(body, status_code=404, media_type="application/json")

    if telemetry:
        app.state.telemetry = Telemetry()
        app.add_middleware(TelemetryMiddleware)
    return app


async def _drive(app: FastAPI, n: int, loop: str) -> float:
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": f"/v1/loops/{loop}/rank", "raw_path": b"", "query_string": b"",
        "root_path": "", "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(_: Any) -> None:
        pass

    for _ in range(200):  # warm up
        await app({**scope, "app": app}, receive, send)
    t0 = time.perf_counter()
    for _ in range(n):
        await app({**scope, "app": app}, receive, send)
    return (time.perf_counter() - t0) / n * 1e6


def _rollup(decisions: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        migrate(engine)
        put_loop(engine, "bench", LoopConfig(reward_wait_s=60))
        writer = GroupCommitWriter(engine, Path(tmp) / "spool", delay_s=0.0, max_group=100_000)
        writer.start()
        t0 = datetime(2026, 1, 1, tzinfo=UTC)
        actions = [{"id": f"a{i}", "features": {}} for i in range(10)]
        ops: list[Any] = []
        for i in range(decisions):
            at = t0 + timedelta(seconds=i * 0.01)
            ops.append(
                DecisionRecord.from_row(
                    {
                        "loop": "bench", "event_id": f"e{i}", "decided_at": at,
                        "model_version": "v", "policy_arm": "live", "request_digest": "0" * 64,
                        "context": {}, "actions": actions, "pmf": [0.1] * 10, "excluded": [],
                        "chosen": "a0",
                        "slots": [{"slot": 0, "action_id": "a0", "probability": 0.1}],
                        "n_slots": 1, "is_slate": False, "deferred": False, "activated_at": None,
                        "reward_deadline": at + timedelta(seconds=60), "response": {},
                    }
                )
            )  # fmt: skip
            if i % 2:
                ops.append(RewardRecord(f"r{i}", "bench", f"e{i}", 0, 1.0, at, False, ""))
        for i in range(0, len(ops), 5000):
            writer.write_sync(ops[i : i + 5000])
        writer.stop()
        end = t0 + timedelta(seconds=decisions * 0.01 + 120)
        join_loop(engine, "bench", default_reward=0.0, aggregation="earliest", now=end)
        started = time.perf_counter()
        rollup_loop(engine, "bench", now=end)
        took = time.perf_counter() - started
        engine.dispose()
    return took / decisions * 10_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    plain, tele = _app(False), _app(True)
    runs: dict[str, list[float]] = {k: [] for k in ("plain", "tele", "eplain", "etele")}
    for _ in range(args.repeats):
        runs["plain"].append(asyncio.run(_drive(plain, args.n, "bench")))
        runs["tele"].append(asyncio.run(_drive(tele, args.n, "bench")))
        runs["eplain"].append(asyncio.run(_drive(plain, args.n // 4, "missing")))
        runs["etele"].append(asyncio.run(_drive(tele, args.n // 4, "missing")))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(
        orjson.dumps(
            {
                "plain_us": round(med["plain"], 1),
                "telemetry_us": round(med["tele"], 1),
                "overhead_us": round(med["tele"] - med["plain"], 1),
                "error_plain_us": round(med["eplain"], 1),
                "error_telemetry_us": round(med["etele"], 1),
                "rollup_s_per_10k": round(_rollup(args.decisions), 3),
                "decisions": args.decisions,
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
