"""What the Personalizer compatibility layer costs per rank, against the native route.

The app runs in-process, driven through ASGI by httpx (no sockets, no thread portal; its
lifespan started as the server would), on SQLite in a temporary directory with
`DS_DURABILITY=fast` so that the group commit does not dominate; rounds alternate the native
`/v1/loops/default/rank`, `/personalizer/v1.0/rank` and
`/personalizer/rank?api-version=2022-09-01-preview` with the same request (10 actions, 4
context features, generated event ids). Prints one JSON line: the median CPU microseconds (of
the whole process: client, app, writer) per request of each route over the rounds and the
ratios to native.

    python -m benchmarks.personalizer [--rounds 7] [--n 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.loadgen import BENCH_KEY
from decision_service import create_app
from decision_service.settings import Settings

ACTIONS = [{"id": f"item-{i}", "features": {"topic": f"t{i % 4}", "price": i}} for i in range(10)]
CONTEXT = {"user": {"segment": "s1", "device": "mobile"}, "hour": 9, "weekday": "mon"}
NATIVE = {"context": CONTEXT, "actions": ACTIONS}
PERSONALIZER = {
    "contextFeatures": [{"user": CONTEXT["user"]}, {"hour": 9, "weekday": "mon"}],
    "actions": [{"id": a["id"], "features": [a["features"]]} for a in ACTIONS],
}
ROUTES = {
    "native": ("/v1/loops/default/rank", NATIVE),
    "v1_0": ("/personalizer/v1.0/rank", PERSONALIZER),
    "v2022": ("/personalizer/rank?api-version=2022-09-01-preview", PERSONALIZER),
}


async def timed(client: httpx.AsyncClient, path: str, body: bytes, n: int) -> float:
    """CPU microseconds of this process per request (all its threads: client, app, writer):
    less sensitive than wall time to other processes on a shared host."""
    start = time.process_time()
    for _ in range(n):
        r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
        if r.status_code != 201:
            raise RuntimeError(f"{path}: {r.status_code} {r.text}")
    return (time.process_time() - start) / n * 1e6


async def measure(settings: Settings, rounds: int, n: int) -> dict[str, list[float]]:
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    times: dict[str, list[float]] = {name: [] for name in ROUTES}
    bodies = {name: orjson.dumps(body) for name, (_, body) in ROUTES.items()}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", headers=headers
        ) as client:
            for name, (path, _) in ROUTES.items():  # warm up
                await timed(client, path, bodies[name], 20)
            for r in range(rounds):
                order = list(ROUTES) if r % 2 == 0 else list(reversed(ROUTES))
                for name in order:
                    times[name].append(await timed(client, ROUTES[name][0], bodies[name], n))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url=f"sqlite:///{Path(tmp) / 'bench.db'}",
            spool_dir=str(Path(tmp) / "spool"),
            durability="fast",
            admin_key=BENCH_KEY,
            admin_key_file=str(Path(tmp) / "admin-key"),
            gc_tuning=False,
        )
        times = asyncio.run(measure(settings, args.rounds, args.n))
    medians = {name: statistics.median(values) for name, values in times.items()}
    out: dict[str, Any] = {
        "benchmark": "personalizer_rank",
        "rounds": args.rounds,
        "n_per_round": args.n,
        "median_cpu_us": {k: round(v, 1) for k, v in medians.items()},
        "ratio_to_native": {k: round(v / medians["native"], 3) for k, v in medians.items()},
    }
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


if __name__ == "__main__":
    main()
