"""The metrics rollup against figures computed directly from the tables: after a first run,
after a gap of hours without any run (catch-up), with rows landing late inside the settle
period, and run twice (idempotent); hourly and daily buckets are the sums of the 5-minute ones."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
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
from log.records import DecisionRecord, RewardRecord
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


def _canary(ops: list[Any]) -> list[Any]:
    """Half the decisions served by a canary ("cand"), with skewed distributions: the chosen
    action most probable (0.7) for some, explored (the least probable) for others."""
    out = []
    for i, op in enumerate(ops):
        if not isinstance(op, DecisionRecord):
            out.append(op)
            continue
        ids = [a["id"] for a in op.actions]
        k, chosen = len(ids), ids.index(op.chosen)
        top = 0 if chosen else 1  # explored: another action is the most probable
        if i % 2:
            top = chosen
        pmf = [0.7 if j == top else 0.3 / (k - 1) for j in range(k)]
        slot = {"slot": 0, "action_id": op.chosen, "probability": pmf[chosen]}
        arm = {"policy_arm": "canary", "model_version": "cand"} if i % 3 == 0 else {}
        out.append(replace(op, pmf=pmf, slots=[slot], **arm))
    return out


def direct_all(engine: Engine) -> dict[tuple[datetime, str, str], dict[str, Any]]:
    """Every additive figure per (bucket, arm, version) and for the loop ("*", "*"), straight
    from the tables."""
    out: dict[tuple[datetime, str, str], dict[str, Any]] = defaultdict(
        lambda: defaultdict(float, guardrails={}, prob_min=None, join_lag_max_s=None)
    )
    d, o = DecisionRow, OutcomeRow
    with engine.connect() as conn:
        for at, arm, version, pmf, slots in conn.execute(
            select(d.decided_at, d.policy_arm, d.model_version, d.pmf, d.slots).where(
                d.loop == LOOP
            )
        ):
            pmf, p = _j(pmf), _j(slots)[0]["probability"]
            for key in ((floor_time(at), arm, version), (floor_time(at), ALL, ALL)):
                b = out[key]
                b["decisions"] += 1
                b["explored"] += p < max(pmf)
                b["prob_sum"] += p
                b["prob_min"] = p if b["prob_min"] is None else min(b["prob_min"], p)
                b["entropy_sum"] += -sum(q * math.log(q) for q in pmf if q > 0)
                b["top_sum"] += max(pmf)
        for at, reward, default, n, guard, arm, version, deadline in conn.execute(
            select(o.joined_at, o.reward, o.default_applied, o.n_rewards, o.guardrails,
                   d.policy_arm, d.model_version, d.reward_deadline)
            .join(d, (d.loop == o.loop) & (d.event_id == o.event_id))
            .where(o.loop == LOOP, o.slot == 0)
        ):  # fmt: skip
            lag = max((at - deadline).total_seconds(), 0.0)
            for key in ((floor_time(at), arm, version), (floor_time(at), ALL, ALL)):
                b = out[key]
                b["joined"] += 1
                b["rewarded"] += n > 0
                b["default_rewards"] += bool(default)
                b["reward_sum"] += reward
                b["reward_sq_sum"] += reward * reward
                b["join_lag_sum_s"] += lag
                b["join_lag_max_s"] = max(b["join_lag_max_s"] or 0.0, lag)
                for metric, count in (_j(guard) or {}).items():
                    if count:
                        b["guardrails"][metric] = b["guardrails"].get(metric, 0) + 1
        for at, late in conn.execute(
            select(RewardRow.received_at, RewardRow.late).where(
                RewardRow.loop == LOOP, RewardRow.metric == ""
            )
        ):
            out[(floor_time(at), ALL, ALL)]["rewards"] += 1
            out[(floor_time(at), ALL, ALL)]["late_rewards"] += bool(late)
    return out


def test_every_figure_per_arm_during_a_canary_matches_the_tables(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    """Decisions, exploration, logged probability (mean, min), entropy, top-action share, joins,
    reward rate and mean reward, default rewards, join lag, guardrail signals, rewards and late
    rewards: per 5-minute bucket, per arm and model version (a canary beside live) and for the
    loop, as the rollup stored them and as computed from the tables."""
    configure(engine)
    ops = _canary(sim_events(SIM, 240, seed=21, start=T0, prefix="k", spacing_s=3.0))
    decisions = [op for op in ops if isinstance(op, DecisionRecord)]
    guard = [RewardRecord(f"g{i}", LOOP, op.event_id, 0, 1.0, op.decided_at, False, "report")
             for i, op in enumerate(decisions[::7])]  # fmt: skip
    late = [RewardRecord(f"l{i}", LOOP, op.event_id, 0, 1.0,
                         op.decided_at + timedelta(seconds=WAIT_S + 5), True, "")
            for i, op in enumerate(decisions[::11])]  # fmt: skip
    write(writer, ops + guard + late)
    at = T0 + timedelta(seconds=240 * 3.0 + WAIT_S + 10)
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=at)
    rollup_loop(engine, LOOP, now=at)
    want = direct_all(engine)
    with engine.connect() as conn:
        rows = conn.execute(select(Metrics5mRow).where(Metrics5mRow.loop == LOOP)).mappings()
        got = {(r["bucket"], r["arm"], r["model_version"]): dict(r) for r in rows}
    assert {k for k, v in want.items() if v.get("decisions") or v.get("joined")} <= set(got)
    assert {k[1:] for k in got} == {("live", "untrained"), ("canary", "cand"), (ALL, ALL)}
    for key, figures in want.items():
        for name, value in figures.items():
            stored_value = got[key][name]
            if name == "guardrails":
                assert _j(stored_value) == value, key
            elif value is None:
                assert stored_value is None, (key, name)
            else:
                assert stored_value == pytest.approx(value), (key, name)
    totals = {k[1:]: v for k, v in want.items()}
    assert any(v["explored"] for v in totals.values())  # the series exercise every figure
    assert any(v["guardrails"] for v in totals.values())
    assert any(v.get("late_rewards") for v in totals.values())
    assert any(v.get("default_rewards") for v in totals.values())
    # derived per arm: the canary's reward rate and mean reward are its own
    canary = read_series(engine, LOOP, since=T0, until=at + timedelta(hours=1), arm="canary",
                         model_version="cand")  # fmt: skip
    n = sum(v["joined"] for k, v in want.items() if k[1] == "canary")
    r = sum(v["reward_sum"] for k, v in want.items() if k[1] == "canary")
    assert sum(p.joined for p in canary) == n > 0
    assert sum((p.mean_reward or 0) * p.joined for p in canary) == pytest.approx(r)


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
