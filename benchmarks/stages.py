"""Per-stage cost of one rank request on the service's hot path, in-process (no HTTP).

Times each step the rank route takes (JSON parse, pydantic validation, limit checks, the decide
steps, response encoding) on the load generator's request bodies, and the PostgreSQL group
commit (binary COPY + INSERT .. ON CONFLICT + COMMIT) for several group sizes. Prints one JSON
line per action count, and one for the writer.

    .venv/bin/python -m benchmarks.stages --actions 10,50
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from benchmarks.loadgen import rank_body
from benchmarks.rank import DEFAULT_DATABASE_URL, premigrate, scratch_database
from decision_service.decide import decide, request_digest
from decision_service.rank_input import parse_rank
from decision_service.runtime import LoopRuntime, explorer_for
from decision_service.settings import Settings
from explore import Action, rank_order, rng_for, sample_index
from log.loops import LoopConfig
from log.records import DecisionRecord
from policies import VWPolicy
from policies.vw_text import example_lines


def timed(fn: Callable[[int], Any], n: int, repeats: int = 5) -> float:
    """Median over `repeats` of the mean µs per call of fn(i) over n calls."""
    runs = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            fn(r * n + i)
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return round(statistics.median(runs), 2)


def hot_path(n_actions: int, n: int) -> dict[str, Any]:
    rng = random.Random(1)
    bodies = [orjson.dumps(rank_body(n_actions, rng, f"ev-{i:08d}")) for i in range(64)]
    settings = Settings(database_url="sqlite://")
    config = LoopConfig(sampling_key=bytes(32))
    runtime = LoopRuntime(
        "default", config, datetime.now(UTC), explorer_for(config), VWPolicy(config.vw_args)
    )
    parsed = [orjson.loads(b) for b in bodies]
    reqs = [parse_rank(p, settings) for p in parsed]
    actions = [r.actions for r in reqs]
    lines = [example_lines(r.context, a) for r, a in zip(reqs, actions, strict=True)]
    scores = [runtime.policy.scores(r.context, a) for r, a in zip(reqs, actions, strict=True)]
    pmfs = [runtime.explorer.pmf(s) for s in scores]
    now = datetime.now(UTC)
    rows = [
        decide(r, p, runtime, now, f"s-{i}")
        for i, (r, p) in enumerate(zip(reqs, parsed, strict=True))
    ]
    k = len(bodies)

    def one_decide(i: int) -> Any:
        body = dict(parsed[i % k])
        body["event_id"] = f"x-{i}"
        return decide(parse_rank(body, settings), body, runtime, now, body["event_id"])

    stages = {
        "orjson_loads": timed(lambda i: orjson.loads(bodies[i % k]), n),
        "parse_rank": timed(lambda i: parse_rank(parsed[i % k], settings), n),
        "actions_to_Action": timed(
            lambda i: [Action(a.id, a.features) for a in reqs[i % k].actions], n
        ),
        "example_lines": timed(lambda i: example_lines(reqs[i % k].context, actions[i % k]), n),
        "vw_predict_text": timed(lambda i: runtime.policy._ws.predict(lines[i % k]), n),
        "explorer_pmf": timed(lambda i: runtime.explorer.pmf(scores[i % k]), n),
        "rng_for": timed(lambda i: rng_for(config.sampling_key, f"x-{i}"), n),
        "sample_index": timed(lambda i: sample_index(pmfs[i % k], np.random.default_rng(i)), n),
        "default_rng_only": timed(lambda i: np.random.default_rng(i), n),
        "rank_order": timed(lambda i: rank_order(pmfs[i % k], scores[i % k], [0]), n),
        "request_digest": timed(lambda i: request_digest(parsed[i % k]), n),
        "response_dumps": timed(lambda i: orjson.dumps(rows[i % k].response), n),
        "decide_total (incl. validate)": timed(one_decide, n),
    }
    return {"bench": "rank_stages", "actions": n_actions, "us_per_request": stages}


def _backend_cpu(pid: int) -> float:
    from benchmarks.rank import TICK

    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / TICK


def writer_groups(database_url: str, n_actions: int, sizes: list[int]) -> dict[str, Any]:
    """PostgreSQL group commit of `size` decision rows: wall time, the writer's own CPU
    (encoding, psycopg) and the PostgreSQL backend's CPU, per row, through `apply_records` as
    the writer calls it (with its known action bodies: after the first groups only new bodies
    are written). `service` is the writer's first try (binary COPY straight into `decisions`);
    `retry_path` the insert-if-absent path it redoes a group through when a key was already
    stored (COPY into a temp staging table, INSERT .. ON CONFLICT DO NOTHING RETURNING)."""
    from log.action_store import KnownBodies
    from log.apply import apply_records
    from log.schema import make_engine

    rng = random.Random(2)
    config = LoopConfig(sampling_key=bytes(32))
    runtime = LoopRuntime(
        "default", config, datetime.now(UTC), explorer_for(config), VWPolicy(config.vw_args)
    )
    template = rank_body(n_actions, rng, "t")
    out: dict[str, Any] = {"bench": "rank_writer", "actions": n_actions}
    known = KnownBodies()
    variants: dict[str, Callable[[Any, list[DecisionRecord]], Any]] = {
        "service": lambda conn, rows: apply_records(conn, rows, optimistic=True, known=known),
        "retry_path": lambda conn, rows: apply_records(conn, rows, known=known),
    }
    with scratch_database(database_url) as url:
        premigrate(url)
        engine = make_engine(url, pool_size=1)
        counter = 0
        with engine.connect() as conn:
            backend = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
            conn.commit()
            for variant, fn in variants.items():
                res: dict[str, Any] = {}
                for size in sizes:
                    walls, cpus, pg_cpus = [], [], []
                    for _ in range(max(5, 400 // size)):
                        rows = []
                        for _ in range(size):
                            counter += 1
                            body = dict(template, event_id=f"w-{counter}")
                            req = parse_rank(body, Settings(database_url="sqlite://"))
                            rows.append(
                                decide(req, body, runtime, datetime.now(UTC), f"w-{counter}")
                            )
                        t0, c0, p0 = time.perf_counter(), time.thread_time(), _backend_cpu(backend)
                        with conn.begin():
                            fn(conn, rows)
                        known.commit()
                        walls.append(time.perf_counter() - t0)
                        cpus.append(time.thread_time() - c0)
                        pg_cpus.append(_backend_cpu(backend) - p0)
                    res[str(size)] = {
                        "ms_per_group": round(statistics.median(walls) * 1e3, 3),
                        "wall_us_per_row": round(statistics.median(walls) / size * 1e6, 1),
                        "writer_cpu_us_per_row": round(statistics.fmean(cpus) / size * 1e6, 1),
                        "pg_cpu_us_per_row": round(statistics.fmean(pg_cpus) / size * 1e6, 1),
                    }
                out[variant] = res
            t0 = time.perf_counter()
            for _ in range(50):
                with conn.begin():
                    conn.exec_driver_sql("SELECT 1")
            out["empty_txn_ms"] = round((time.perf_counter() - t0) / 50 * 1e3, 3)
        engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--actions", default="10,50")
    parser.add_argument("--n", type=int, default=400, help="calls per timing")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--groups", default="1,8,32,128", help="group sizes for the writer")
    parser.add_argument("--no-db", action="store_true")
    args = parser.parse_args(argv)
    counts = [int(a) for a in args.actions.split(",")]
    for n_actions in counts:
        print(orjson.dumps(hot_path(n_actions, args.n)).decode(), flush=True)
    if not args.no_db:
        sizes = [int(s) for s in args.groups.split(",")]
        print(orjson.dumps(writer_groups(args.database_url, counts[-1], sizes)).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
