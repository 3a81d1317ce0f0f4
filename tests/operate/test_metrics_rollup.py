"""The metrics rollup against figures computed directly from the tables: after a first run,
after a gap of hours without any run (catch-up), with rows landing late inside the settle
period, and run twice (idempotent); hourly and daily buckets are the sums of the 5-minute ones."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select

from deploy.learner import LearnerOptions, run_learner_process
from deploy.operate import OperateOptions
from log.joiner import join_loop
from log.metrics import (
    ALL,
    MetricsPolicy,
    flush_request_stats,
    metrics_through,
    read_series,
    rollup_loop,
)
from log.metrics_math import Sums, floor_time, latency_bucket, quantile, wilson
from log.models import (
    DecisionRow,
    Metrics1dRow,
    Metrics1hRow,
    Metrics5mRow,
    OutcomeRow,
    RequestStatsRow,
    RewardRow,
)
from log.writer import GroupCommitWriter
from tests.deploy.learner_helpers import SIM, configure
from tests.learn.helpers import T0, WAIT_S, sim_events, write

LOOP = "default"


def _j(v: Any) -> Any:
    return orjson.loads(v) if isinstance(v, str | bytes) else v


def direct(engine: Engine) -> dict[datetime, dict[str, float]]:
    """Per 5-minute bucket, the loop's figures computed straight from the tables."""
    out: dict[datetime, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    with engine.connect() as conn:
        for decided_at, pmf, slots in conn.execute(
            select(DecisionRow.decided_at, DecisionRow.pmf, DecisionRow.slots).where(
                DecisionRow.loop == LOOP
            )
        ):
            b = out[floor_time(decided_at)]
            b["decisions"] += 1
            b["entropy"] += -sum(p * math.log(p) for p in _j(pmf) if p > 0)
            b["prob"] += _j(slots)[0]["probability"]
        for joined_at, reward, n in conn.execute(
            select(OutcomeRow.joined_at, OutcomeRow.reward, OutcomeRow.n_rewards).where(
                OutcomeRow.loop == LOOP, OutcomeRow.slot == 0
            )
        ):
            b = out[floor_time(joined_at)]
            b["joined"] += 1
            b["reward"] += reward
            b["rewarded"] += n > 0
        for (received_at,) in conn.execute(
            select(RewardRow.received_at).where(RewardRow.loop == LOOP, RewardRow.metric == "")
        ):
            out[floor_time(received_at)]["rewards"] += 1
    return out


def stored(engine: Engine, table: Any = Metrics5mRow) -> dict[datetime, dict[str, float]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(table).where(table.loop == LOOP, table.arm == ALL, table.model_version == ALL)
        ).mappings()
        return {
            r["bucket"]: {
                "decisions": r["decisions"],
                "entropy": r["entropy_sum"],
                "prob": r["prob_sum"],
                "joined": r["joined"],
                "reward": r["reward_sum"],
                "rewarded": r["rewarded"],
                "rewards": r["rewards"],
            }
            for r in rows
        }


def assert_matches(engine: Engine, upto: datetime) -> None:
    want = {b: v for b, v in direct(engine).items() if b < upto}
    got = {b: v for b, v in stored(engine).items() if b < upto and any(v.values())}
    assert set(got) == set(want)
    for bucket, figures in want.items():
        for name, value in figures.items():
            assert got[bucket][name] == pytest.approx(value), (bucket, name)


def log(
    engine: Engine, writer: GroupCommitWriter, n: int, start: datetime, prefix: str
) -> datetime:
    write(writer, sim_events(SIM, n, seed=len(prefix), start=start, prefix=prefix, spacing_s=3.0))
    at = start + timedelta(seconds=n * 3.0 + WAIT_S + 1)
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=at)
    return at


def test_rollup_matches_the_tables_after_a_gap_and_is_idempotent(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    configure(engine)
    policy = MetricsPolicy(settle_s=900)
    first = log(engine, writer, 400, T0, "a")  # 20 minutes of decisions
    rollup_loop(engine, LOOP, now=first, policy=policy)
    assert_matches(engine, floor_time(first) + timedelta(minutes=5))
    # a gap: three hours without any rollup, then more traffic
    later = T0 + timedelta(hours=3)
    second = log(engine, writer, 300, later, "bb")
    n = rollup_loop(engine, LOOP, now=second, policy=policy)
    assert n >= 3 * 12  # every bucket since the watermark was computed
    assert_matches(engine, floor_time(second) + timedelta(minutes=5))
    before = stored(engine)
    rollup_loop(engine, LOOP, now=second, policy=policy)  # again: nothing changes
    assert stored(engine) == before
    # a decision that lands late (a spool shipped after the bucket was computed), inside the
    # settle period, is counted at the next run
    write(writer, sim_events(SIM, 1, seed=99, start=second - timedelta(minutes=6), prefix="late"))
    rollup_loop(engine, LOOP, now=second + timedelta(seconds=30), policy=policy)
    assert_matches(engine, floor_time(second) + timedelta(minutes=5))
    # hourly and daily buckets are the sums of the 5-minute ones
    fine = stored(engine)
    for table, seconds in ((Metrics1hRow, 3600), (Metrics1dRow, 86_400)):
        coarse = stored(engine, table)
        for bucket, figures in coarse.items():
            inside = [v for b, v in fine.items() if floor_time(b, seconds) == bucket]
            for name, value in figures.items():
                assert value == pytest.approx(sum(v[name] for v in inside)), (table, name)
        assert sum(v["decisions"] for v in coarse.values()) == 701


def test_a_spool_shipped_after_the_settle_period_is_counted_once_joined(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    """Decisions (with their rewards) that reach the store hours after their buckets were
    computed: the run after the joiner closed their windows recomputes their buckets (found by
    `joined_at`), without `operate --since`; the hourly and daily sums follow."""
    configure(engine)
    policy = MetricsPolicy(settle_s=900)
    first = log(engine, writer, 200, T0, "d")
    rollup_loop(engine, LOOP, now=first, policy=policy)
    later = first + timedelta(hours=3)
    rollup_loop(engine, LOOP, now=later, policy=policy)  # the watermark moves on
    before = stored(engine)
    # a spool shipped now: 40 decisions (and their rewards) of the first minutes
    write(writer, sim_events(SIM, 40, seed=5, start=T0 + timedelta(seconds=1), prefix="spool"))
    rollup_loop(engine, LOOP, now=later + timedelta(seconds=10), policy=policy)
    assert stored(engine) == before  # not joined yet: not found (operate --since would)
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=later)
    rollup_loop(engine, LOOP, now=later + timedelta(seconds=20), policy=policy)
    assert_matches(engine, floor_time(later) + timedelta(minutes=5))
    assert stored(engine) != before
    for table in (Metrics1hRow, Metrics1dRow):
        assert sum(v["decisions"] for v in stored(engine, table).values()) == 240
        assert sum(v["rewards"] for v in stored(engine, table).values()) == sum(
            v["rewards"] for v in direct(engine).values()
        )
    again = stored(engine)
    rollup_loop(engine, LOOP, now=later + timedelta(seconds=30), policy=policy)
    assert stored(engine) == again  # idempotent


def test_per_arm_rows_and_derived_figures(engine: Engine, writer: GroupCommitWriter) -> None:
    configure(engine)
    at = log(engine, writer, 200, T0, "c")
    flush_request_stats(
        engine,
        "w1",
        [
            (LOOP, T0, Sums(requests=3, latency_hist=_hist([1.5, 2.5, 40.0]), errors={"x": 1})),
            (LOOP, T0, Sums(requests=1, latency_hist=_hist([2.5]), errors={"x": 2, "y": 1})),
        ],
        at,
    )
    rollup_loop(engine, LOOP, now=at)
    points = read_series(engine, LOOP, since=T0, until=at + timedelta(hours=1))
    assert sum(p.decisions for p in points) == 200
    first = points[0]
    assert first.requests == 4 and first.errors == {"x": 3, "y": 1}
    assert first.latency_p50_ms is not None and 2 <= first.latency_p50_ms <= 3
    arm = read_series(
        engine, LOOP, since=T0, until=at + timedelta(hours=1), arm="live",
        model_version="untrained",
    )  # fmt: skip
    assert sum(p.decisions for p in arm) == 200
    assert all(p.requests == 0 for p in arm)  # request stats are the loop's only


def _hist(ms: list[float]) -> list[int]:
    h = Sums().latency_hist
    for v in ms:
        h[latency_bucket(v)] += 1
    return h


def test_quantiles_of_a_histogram() -> None:
    h = _hist([float(i) for i in range(1, 101)])  # 1..100 ms
    p50, p99 = quantile(h, 0.5), quantile(h, 0.99)
    assert p50 is not None and p99 is not None
    assert 40 <= p50 <= 55 and 75 <= p99 <= 100
    assert quantile(Sums().latency_hist, 0.5) is None


def test_the_learner_process_runs_the_operate_job(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    """`decision-service learner` runs the rollup and the alarm rules (here: one round)."""
    configure(engine)
    now = datetime.now(UTC)
    write(writer, sim_events(SIM, 30, seed=8, start=now - timedelta(minutes=3), prefix="lp"))
    options = LearnerOptions(loops=(LOOP,), operate=OperateOptions())
    run_learner_process(engine, options, rounds=1)
    through = metrics_through(engine, LOOP)
    assert through is not None and through >= floor_time(now)
    points = read_series(
        engine, LOOP, since=now - timedelta(hours=1), until=now + timedelta(hours=1)
    )
    assert sum(p.decisions for p in points) == 30


def test_wilson_interval_covers_the_rate() -> None:
    low, high = wilson(30, 100) or (0.0, 0.0)
    assert low == pytest.approx(0.2189, abs=1e-3) and high == pytest.approx(0.3958, abs=1e-3)
    assert wilson(0, 0) is None
    assert wilson(0, 10) is not None and wilson(0, 10)[0] == 0.0  # type: ignore[index]


def test_migration_0008_downgrades_and_upgrades(db_url: str) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from log.schema import alembic_config, make_engine, migrate

    engine = make_engine(db_url)
    migrate(engine)
    cfg = alembic_config(db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
    assert "metrics_5m" not in inspect(engine).get_table_names()
    migrate(engine)
    tables = set(inspect(engine).get_table_names())
    assert {
        "metrics_5m",
        "metrics_1h",
        "metrics_1d",
        "request_stats",
        "dashboard_sessions",
    } <= tables
    engine.dispose()


def test_retention_deletes_old_buckets_per_grain(engine: Engine, writer: GroupCommitWriter) -> None:
    configure(engine)
    at = log(engine, writer, 100, T0, "r")
    flush_request_stats(engine, "w1", [(LOOP, T0, Sums(requests=1))], at)
    rollup_loop(engine, LOOP, now=at)
    assert stored(engine) and stored(engine, Metrics1hRow) and stored(engine, Metrics1dRow)
    policy = MetricsPolicy(retention_5m_days=1, retention_1h_days=7, request_stats_days=1)
    rollup_loop(engine, LOOP, now=at + timedelta(days=3), policy=policy)
    assert stored(engine) == {}  # 5-minute buckets older than a day are gone
    assert sum(v["decisions"] for v in stored(engine, Metrics1hRow).values()) == 100
    assert sum(v["decisions"] for v in stored(engine, Metrics1dRow).values()) == 100
    with engine.connect() as conn:
        assert conn.execute(select(RequestStatsRow)).first() is None
    rollup_loop(engine, LOOP, now=at + timedelta(days=8), policy=policy)
    assert stored(engine, Metrics1hRow) == {}  # hourly kept a week
    assert sum(v["decisions"] for v in stored(engine, Metrics1dRow).values()) == 100
