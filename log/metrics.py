"""The metrics rollup: 5-minute, hourly and daily sums per loop and per arm / model version,
recomputed from the tables (decisions, outcomes, rewards, request_stats).

What lands in a 5-minute bucket:
- decisions by `decided_at`: count, exploration (served action not a most probable one),
  logged probability of the served action (sum, min), entropy and top probability of the
  served distribution (first slot's for a slate);
- joined decisions (outcomes of slot 0) by `joined_at`: count, rewarded (a reward arrived in
  the window), default reward applied, reward sum and sum of squares, join lag (joined_at -
  reward deadline), guardrail signals (decisions with at least one, per metric);
- rewards by `received_at`: count of rewards (metric "") and of late ones (loop total only);
- request_stats (what workers flushed): rank requests, latency histogram, errors by code,
  spool backlog (loop total only).
Rows: per (arm, model_version) of the decisions, plus the loop total with arm = version = "*".

Idempotent and catching up: each run recomputes every bucket from `metrics_state.through -
settle_s` up to the current bucket (delete + insert in one transaction per chunk, under a
per-loop advisory lock), so rows that landed late (a join batch committing after the bucket was
computed, a spool shipped within `settle_s`) are counted, running twice changes nothing, and a
rollup that did not run for a day computes the whole day (in chunks) on its next run, bounded
by the 5-minute retention. Decisions shipped later than that (a spool shipped hours after its
decisions) are found by their arrival: the joiner closes a decision's window at its first pass
after the deadline, so every decision joined in the recomputed span whose `decided_at` (or whose
rewards' `received_at`) lies before it has its own buckets recomputed too. Not covered: rewards
shipped after their decision was joined, and deferred decisions never activated (never
joined): `operate --since T` recomputes those. Hourly and daily buckets are sums of the
5-minute / hourly ones that the run touched. Rows older than the retention of each grain are
deleted.
"""

from __future__ import annotations

import math
import secrets
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, text, update

from log.metrics_math import GRAIN_S, MetricsPoint, Sums, derive, floor_time
from log.models import (
    DecisionRow,
    Metrics1dRow,
    Metrics1hRow,
    Metrics5mRow,
    MetricsStateRow,
    OutcomeRow,
    RequestStatsRow,
    RewardRow,
)

__all__ = [
    "ALL",
    "MetricsPolicy",
    "breakdown",
    "flush_request_stats",
    "merged_point",
    "metrics_through",
    "read_series",
    "rollup_loop",
]

ALL = "*"
TABLES: dict[str, Any] = {"5m": Metrics5mRow, "1h": Metrics1hRow, "1d": Metrics1dRow}
_LOCK_NAMESPACE = 730_512  # pg_advisory_xact_lock(namespace, hashtext(loop)) of the rollup
MAX_POINTS = 2000

# name -> (low, high): the README quotes them
METRICS_BOUNDS: dict[str, tuple[float, float]] = {
    "settle_s": (0.0, 7 * 86_400.0),
    "chunk_s": (3600.0, 7 * 86_400.0),
    "retention_5m_days": (1.0, 90.0),
    "retention_1h_days": (7.0, 730.0),
    "retention_1d_days": (30.0, 3650.0),
    "request_stats_days": (1.0, 30.0),
}


@dataclass(frozen=True)
class MetricsPolicy:
    """`settle_s`: each run recomputes the buckets of the last settle_s before its watermark
    (rows landing late); `chunk_s`: catch-up works in transactions of this span; retention per
    grain (days); `request_stats_days`: how long the workers' raw rows are kept."""

    settle_s: float = 900.0
    chunk_s: float = 6 * 3600.0
    retention_5m_days: float = 14.0
    retention_1h_days: float = 90.0
    retention_1d_days: float = 730.0
    request_stats_days: float = 2.0

    def __post_init__(self) -> None:
        for name, (lo, hi) in METRICS_BOUNDS.items():
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and lo <= value <= hi):
                raise ValueError(f"metrics {name} must be in [{lo:g}, {hi:g}], got {value!r}")


def _lock(conn: Connection, loop: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:ns, hashtext(:loop))"),
            {"ns": _LOCK_NAMESPACE, "loop": loop},
        )
    else:  # SQLite: be the writer before reading what is rewritten
        conn.execute(text("UPDATE metrics_state SET loop = loop WHERE 0 = 1"))


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _compute(
    conn: Connection, loop: str, start: datetime, end: datetime
) -> dict[tuple[datetime, str, str], Sums]:
    """The 5-minute sums of [start, end) straight from the tables."""
    out: dict[tuple[datetime, str, str], Sums] = defaultdict(Sums)

    def both(bucket: datetime, arm: str, version: str) -> tuple[Sums, Sums]:
        return out[(bucket, arm, version)], out[(bucket, ALL, ALL)]

    d = DecisionRow
    rows = conn.execute(
        select(d.decided_at, d.policy_arm, d.model_version, d.pmf, d.slots).where(
            d.loop == loop, d.decided_at >= start, d.decided_at < end
        )
    )
    for decided_at, arm, version, pmf, slots in rows:
        pmf = _json(pmf)
        slots = _json(slots)
        chosen_p = float(slots[0]["probability"]) if slots else 0.0
        for s in both(floor_time(decided_at), arm, version):
            s.add_decision([float(p) for p in pmf], chosen_p)

    o = OutcomeRow
    rows = conn.execute(
        select(
            o.joined_at,
            o.decided_at,
            o.reward,
            o.default_applied,
            o.n_rewards,
            o.guardrails,
            d.policy_arm,
            d.model_version,
            d.reward_deadline,
        )
        .join(d, and_(d.loop == o.loop, d.event_id == o.event_id))
        .where(o.loop == loop, o.slot == 0, o.joined_at >= start, o.joined_at < end)
    )
    for (
        joined_at,
        decided_at,
        reward,
        default,
        n_rewards,
        guardrails,
        arm,
        version,
        deadline,
    ) in rows:
        lag = (joined_at - (deadline or decided_at)).total_seconds()
        for s in both(floor_time(joined_at), arm, version):
            s.add_outcome(
                float(reward),
                default=bool(default),
                rewarded=int(n_rewards) > 0,
                lag_s=max(lag, 0.0),
                guardrails=_json(guardrails),
            )

    r = RewardRow
    rows = conn.execute(
        select(r.received_at, r.late).where(
            r.loop == loop, r.metric == "", r.received_at >= start, r.received_at < end
        )
    )
    for received_at, late in rows:
        s = out[(floor_time(received_at), ALL, ALL)]
        s.rewards += 1
        s.late_rewards += int(bool(late))

    q = RequestStatsRow
    rows = conn.execute(
        select(q.bucket, q.requests, q.latency_hist, q.errors, q.spool_backlog_max).where(
            q.loop == loop, q.bucket >= start, q.bucket < end
        )
    )
    for bucket, requests, hist, errors, backlog in rows:
        s = out[(floor_time(bucket), ALL, ALL)]
        s.merge(
            Sums(
                requests=int(requests),
                latency_hist=list(_json(hist)),
                errors=dict(_json(errors)),
                spool_backlog_max=int(backlog),
            )
        )
    return out


def _write(conn: Connection, table: Any, loop: str, start: datetime, end: datetime,
           sums: dict[tuple[datetime, str, str], Sums]) -> None:  # fmt: skip
    conn.execute(delete(table).where(table.loop == loop, table.bucket >= start, table.bucket < end))
    rows = [
        {"loop": loop, "bucket": bucket, "arm": arm, "model_version": version, **s.columns()}
        for (bucket, arm, version), s in sums.items()
    ]
    if rows:
        conn.execute(insert(table), rows)


def _coarsen(
    conn: Connection, loop: str, fine: str, coarse: str, start: datetime, end: datetime
) -> None:
    """Recompute the `coarse` buckets overlapping [start, end) as sums of the `fine` ones."""
    seconds = GRAIN_S[coarse]
    lo = floor_time(start, seconds)
    hi = floor_time(end - timedelta(microseconds=1), seconds) + timedelta(seconds=seconds)
    src = TABLES[fine]
    sums: dict[tuple[datetime, str, str], Sums] = defaultdict(Sums)
    for row in conn.execute(
        select(src).where(src.loop == loop, src.bucket >= lo, src.bucket < hi)
    ).mappings():
        values = {k: row[k] for k in Sums.__dataclass_fields__}
        for k in ("latency_hist", "errors", "guardrails"):
            values[k] = _json(values[k])
        sums[(floor_time(row["bucket"], seconds), row["arm"], row["model_version"])].merge(
            Sums.from_columns(values)
        )
    _write(conn, TABLES[coarse], loop, lo, hi, sums)


def metrics_through(engine: Engine, loop: str) -> datetime | None:
    with engine.connect() as conn:
        return conn.execute(
            select(MetricsStateRow.through).where(MetricsStateRow.loop == loop)
        ).scalar()


def _first_activity(conn: Connection, loop: str) -> datetime | None:
    return conn.execute(
        select(func.min(DecisionRow.decided_at)).where(DecisionRow.loop == loop)
    ).scalar()


def rollup_loop(
    engine: Engine, loop: str, *, now: datetime, policy: MetricsPolicy | None = None,
    since: datetime | None = None,
) -> int:  # fmt: skip
    """Recompute the loop's buckets from its watermark (minus `settle_s`; or from `since`) to
    the bucket holding `now`; then the hourly and daily buckets they fall in; then apply the
    retention. Returns the number of 5-minute buckets recomputed."""
    policy = policy or MetricsPolicy()
    end = floor_time(now) + timedelta(seconds=GRAIN_S["5m"])
    oldest = floor_time(now - timedelta(days=policy.retention_5m_days))
    with engine.connect() as conn:
        through = conn.execute(
            select(MetricsStateRow.through).where(MetricsStateRow.loop == loop)
        ).scalar()
        first = _first_activity(conn, loop) if through is None and since is None else None
    if since is not None:
        start = floor_time(since)
    elif through is not None:
        start = floor_time(through - timedelta(seconds=policy.settle_s))
    elif first is not None:
        start = floor_time(first)
    else:
        start = floor_time(now)
    start = max(start, oldest)
    done = _recompute_late(engine, loop, start, end, oldest)
    chunk = timedelta(seconds=policy.chunk_s)
    while start < end:
        stop = min(start + chunk, end)
        with engine.begin() as conn:
            _lock(conn, loop)
            _write(conn, Metrics5mRow, loop, start, stop, _compute(conn, loop, start, stop))
            _coarsen(conn, loop, "5m", "1h", start, stop)
            _coarsen(conn, loop, "1h", "1d", start, stop)
            _set_through(conn, loop, min(stop, floor_time(now)), now)
        done += int((stop - start).total_seconds()) // GRAIN_S["5m"]
        start = stop
    _retain(engine, loop, now, policy)
    return done


def _late_buckets(
    conn: Connection, loop: str, start: datetime, end: datetime, oldest: datetime
) -> list[datetime]:
    """The 5-minute buckets before `start` (and within the retention) of the decisions joined in
    [start, end), and of those decisions' rewards: rows that arrived after their buckets were
    last computed (a spool shipped later than `settle_s`). The joiner closes a decision's window
    at its first pass after the deadline, so `joined_at` is when the decision reached the store
    at the latest, the same watermark (with the same settle period) outcomes are counted by."""
    d, r = DecisionRow, RewardRow
    recent = and_(d.loop == loop, d.joined_at >= start, d.joined_at < end)
    found: set[datetime] = set()
    for (at,) in conn.execute(
        select(d.decided_at).where(recent, d.decided_at < start, d.decided_at >= oldest)
    ):
        found.add(floor_time(at))
    for (at,) in conn.execute(
        select(r.received_at)
        .join(d, and_(d.loop == r.loop, d.event_id == r.event_id))
        .where(recent, r.loop == loop, r.received_at < start, r.received_at >= oldest)
    ):
        found.add(floor_time(at))
    return sorted(found)


def _recompute_late(
    engine: Engine, loop: str, start: datetime, end: datetime, oldest: datetime
) -> int:
    """Recompute the buckets `_late_buckets` names (one transaction), then the hours and days
    they fall in. Returns how many 5-minute buckets were recomputed."""
    with engine.connect() as conn:
        if not _late_buckets(conn, loop, start, end, oldest):
            return 0
    step = timedelta(seconds=GRAIN_S["5m"])
    with engine.begin() as conn:
        _lock(conn, loop)
        buckets = _late_buckets(conn, loop, start, end, oldest)
        for bucket in buckets:
            stop = bucket + step
            _write(conn, Metrics5mRow, loop, bucket, stop, _compute(conn, loop, bucket, stop))
        hours = sorted({floor_time(b, GRAIN_S["1h"]) for b in buckets})
        for hour in hours:
            _coarsen(conn, loop, "5m", "1h", hour, hour + timedelta(hours=1))
        for day in sorted({floor_time(h, GRAIN_S["1d"]) for h in hours}):
            _coarsen(conn, loop, "1h", "1d", day, day + timedelta(days=1))
    return len(buckets)


def _set_through(conn: Connection, loop: str, through: datetime, now: datetime) -> None:
    t = MetricsStateRow
    found = conn.execute(select(t.through).where(t.loop == loop)).first()
    if found is None:
        conn.execute(insert(t).values(loop=loop, through=through, updated_at=now))
    else:
        conn.execute(update(t).where(t.loop == loop).values(through=through, updated_at=now))


def _retain(engine: Engine, loop: str, now: datetime, policy: MetricsPolicy) -> None:
    keep = {
        "5m": policy.retention_5m_days,
        "1h": policy.retention_1h_days,
        "1d": policy.retention_1d_days,
    }
    with engine.begin() as conn:
        for grain, days in keep.items():
            table = TABLES[grain]
            conn.execute(
                delete(table).where(table.loop == loop, table.bucket < now - timedelta(days=days))
            )
        conn.execute(
            delete(RequestStatsRow).where(
                RequestStatsRow.loop == loop,
                RequestStatsRow.bucket < now - timedelta(days=policy.request_stats_days),
            )
        )


def _sums_of(row: Any) -> Sums:
    values = {k: row[k] for k in Sums.__dataclass_fields__}
    for k in ("latency_hist", "errors", "guardrails"):
        values[k] = _json(values[k])
    return Sums.from_columns(values)


def read_series(
    engine: Engine,
    loop: str,
    *,
    grain: str = "5m",
    since: datetime,
    until: datetime,
    arm: str = ALL,
    model_version: str = ALL,
) -> list[MetricsPoint]:
    """The loop's points of `grain` in [since, until), oldest first (buckets without a row are
    absent). `arm`/`model_version` "*": the loop's total."""
    if grain not in TABLES:
        raise ValueError(f"grain must be one of {sorted(TABLES)}")
    table = TABLES[grain]
    with engine.connect() as conn:
        rows = (
            conn.execute(
                select(table)
                .where(
                    table.loop == loop,
                    table.arm == arm,
                    table.model_version == model_version,
                    table.bucket >= since,
                    table.bucket < until,
                )
                .order_by(table.bucket)
                .limit(MAX_POINTS)
            )
            .mappings()
            .all()
        )
    return [derive(row["bucket"], _sums_of(row)) for row in rows]


def breakdown(
    engine: Engine, loop: str, *, since: datetime, until: datetime, grain: str = "5m"
) -> dict[tuple[str, str], MetricsPoint]:
    """The figures over [since, until) merged, per (arm, model version) and for the loop
    ((*, *))."""
    table = TABLES[grain]
    merged: dict[tuple[str, str], Sums] = defaultdict(Sums)
    with engine.connect() as conn:
        for row in conn.execute(
            select(table).where(table.loop == loop, table.bucket >= since, table.bucket < until)
        ).mappings():
            merged[(row["arm"], row["model_version"])].merge(_sums_of(row))
    return {key: derive(since, s) for key, s in sorted(merged.items())}


def flush_request_stats(
    engine: Engine, worker: str, rows: Iterable[tuple[str, datetime, Sums]], now: datetime
) -> int:
    """Append what a worker aggregated (per loop and 5-minute bucket since its last flush):
    additive rows, merged by the rollup. Returns how many were written."""
    values = [
        {
            "id": secrets.token_hex(16),
            "loop": loop,
            "bucket": bucket,
            "worker": worker,
            "requests": s.requests,
            "latency_hist": list(s.latency_hist),
            "errors": dict(s.errors),
            "spool_backlog_max": s.spool_backlog_max,
            "flushed_at": now,
        }
        for loop, bucket, s in rows
    ]
    if values:
        with engine.begin() as conn:
            conn.execute(insert(RequestStatsRow), values)
    return len(values)


def merged_point(
    engine: Engine, loop: str, windows: list[tuple[datetime, datetime]], *, grain: str = "5m"
) -> MetricsPoint | None:
    """The loop's figures (arm "*") over the union of `windows` merged into one; None when no
    bucket of them has a row."""
    if not windows:
        return None
    table = TABLES[grain]
    merged = Sums()
    found = False
    with engine.connect() as conn:
        for since, until in windows:
            for row in conn.execute(
                select(table).where(
                    table.loop == loop,
                    table.arm == ALL,
                    table.model_version == ALL,
                    table.bucket >= since,
                    table.bucket < until,
                )
            ).mappings():
                merged.merge(_sums_of(row))
                found = True
    return derive(windows[0][0], merged) if found else None
