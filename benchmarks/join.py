"""The joiner's throughput, and the training read of what it joined, with guardrail signals.

Fills a store (a SQLite file in a temporary directory, or a scratch schema of the PostgreSQL
database at ``--database-url``) with single-slot decisions whose windows have closed, a reward
for half of them and, for ``--signal-share`` of them, guardrail signals (one or two "report",
sometimes a "hide", and a late "report" that must not count), then times in the same run:

- ``join_loop`` closing every window (batches of ``--batch-size``);
- ``iter_joined`` streaming every joined event (the training read), guardrail counts included.

Both report wall time and this process's CPU time (steadier on a busy host; the PostgreSQL
server's CPU is not counted).

Prints one JSON line on stdout; progress goes to stderr::

    .venv/bin/python -m benchmarks.join --events 20000
    .venv/bin/python -m benchmarks.join --events 20000 --signal-share 0.1 --database-url postgresql://...
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
from sqlalchemy import insert

from benchmarks.learn import scratch_store
from log.joiner import join_loop
from log.loops import LoopConfig, put_loop
from log.models import DecisionRow, RewardRow
from log.schema import make_engine, migrate
from log.training_reads import iter_joined

LOOP = "bench"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
WAIT_S = 60.0
FILL_CHUNK = 5000


def log(msg: str) -> None:
    print(f"[join] {msg}", file=sys.stderr, flush=True)


def _decision(i: int, rng: np.random.Generator) -> dict[str, Any]:
    decided_at = T0 + timedelta(milliseconds=10 * i)
    event_id = f"ev{i:08d}"
    k = 5
    actions = [{"id": f"a{j}", "features": {"price": j, "kind": f"k{j}"}} for j in range(k)]
    chosen = int(rng.integers(k))
    return {
        "loop": LOOP,
        "event_id": event_id,
        "decided_at": decided_at,
        "model_version": "untrained",
        "policy_arm": "live",
        "request_digest": "0" * 64,
        "context": {"user": f"u{i % 100}", "hour": i % 24},
        "actions": actions,
        "pmf": [1.0 / k] * k,
        "excluded": [],
        "chosen": f"a{chosen}",
        "slots": [{"slot": 0, "action_id": f"a{chosen}", "probability": 1.0 / k}],
        "n_slots": 1,
        "is_slate": False,
        "deferred": False,
        "activated_at": None,
        "reward_deadline": decided_at + timedelta(seconds=WAIT_S),
        "response": {"event_id": event_id},
    }


def _reward(
    event_id: str, decided_at: datetime, n: int, at_s: float, metric: str
) -> dict[str, Any]:
    return {
        "reward_id": f"{event_id}-{n}",
        "loop": LOOP,
        "event_id": event_id,
        "slot": 0,
        "value": 1.0,
        "received_at": decided_at + timedelta(seconds=at_s),
        "late": at_s > WAIT_S,
        "metric": metric,
    }


def fill(url: str, n: int, signal_share: float, seed: int) -> tuple[int, int]:
    """Write `n` decisions with their rewards and signals; returns (rewards, signals) rows."""
    engine = make_engine(url)
    migrate(engine)
    put_loop(engine, LOOP, LoopConfig())
    rng = np.random.default_rng(seed)
    n_rewards = n_signals = 0
    for lo in range(0, n, FILL_CHUNK):
        decisions, rewards = [], []
        for i in range(lo, min(n, lo + FILL_CHUNK)):
            d = _decision(i, rng)
            decisions.append(d)
            eid, at = d["event_id"], d["decided_at"]
            if rng.random() < 0.5:
                rewards.append(_reward(eid, at, 0, 5.0, ""))
                n_rewards += 1
            if rng.random() < signal_share:
                rewards.append(_reward(eid, at, 1, 10.0, "report"))
                rewards.append(_reward(eid, at, 2, WAIT_S + 5, "report"))  # late
                n_signals += 2
                if rng.random() < 0.5:
                    rewards.append(_reward(eid, at, 3, 20.0, "report"))
                    rewards.append(_reward(eid, at, 4, 30.0, "hide"))
                    n_signals += 2
        with engine.begin() as conn:
            conn.execute(insert(DecisionRow), decisions)
            if rewards:
                conn.execute(insert(RewardRow), rewards)
    engine.dispose()
    return n_rewards, n_signals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="decisions to join")
    parser.add_argument(
        "--signal-share", type=float, default=0.0, help="share of events with guardrail signals"
    )
    parser.add_argument("--batch-size", type=int, default=2000, help="join batch size")
    parser.add_argument("--database-url", default=None, help="PostgreSQL (default: SQLite)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.events < 1 or not 0.0 <= args.signal_share <= 1.0 or args.batch_size < 1:
        parser.error("--events and --batch-size must be >= 1, --signal-share in [0, 1]")
    database = "postgresql" if args.database_url else "sqlite"
    with scratch_store(args.database_url) as url:
        log(f"filling {args.events} decisions into {database}")
        n_rewards, n_signals = fill(url, args.events, args.signal_share, args.seed)
        engine = make_engine(url)
        now = T0 + timedelta(days=1)
        log("joining")
        started, cpu = time.perf_counter(), time.process_time()
        stats = join_loop(
            engine,
            LOOP,
            default_reward=0.0,
            aggregation="earliest",
            now=now,
            batch_size=args.batch_size,
        )
        join_s, join_cpu = time.perf_counter() - started, time.process_time() - cpu
        assert stats.decisions == args.events, stats
        log("reading")
        started, cpu = time.perf_counter(), time.process_time()
        read = with_signals = 0
        for event in iter_joined(engine, LOOP):
            read += 1
            with_signals += bool(getattr(event, "guardrails", None))
        read_s, read_cpu = time.perf_counter() - started, time.process_time() - cpu
        engine.dispose()
    print(
        orjson.dumps(
            {
                "bench": "join",
                "database": database,
                "events": args.events,
                "rewards": n_rewards,
                "signal_rows": n_signals,
                "signal_share": args.signal_share,
                "join_s": round(join_s, 3),
                "join_events_per_s": round(args.events / join_s, 1),
                "join_cpu_s": round(join_cpu, 3),
                "read_events_per_s": round(read / read_s, 1),
                "read_cpu_s": round(read_cpu, 3),
                "events_with_signals_read": with_signals,
                "guardrail_signals_joined": getattr(stats, "guardrail_signals", None),
            }
        ).decode(),
        flush=True,
    )


if __name__ == "__main__":
    main()
