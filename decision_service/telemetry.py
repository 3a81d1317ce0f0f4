"""Per-worker telemetry: Prometheus metrics (prometheus-client, one registry per app) and the
per-loop 5-minute request statistics each worker flushes to the database.

`TelemetryMiddleware` (pure ASGI) times every request. It feeds
- `ds_http_request_duration_seconds{route, method, status}`: a histogram per route template;
- for routes under `/v1/loops/{loop}/`: errors by code (the `code` of the JSON error body of
  any 4xx/5xx answer) and, for the rank route, the latency histogram of `log.metrics_math`,
  aggregated in memory per (loop, 5-minute bucket) and flushed as additive rows
  (`Telemetry.drain` -> `log.metrics.flush_request_stats`) every `DS_METRICS_FLUSH_S` and at
  shutdown. The rollup merges every worker's rows; p50/p99 come from the merged histograms.

Each worker exposes its own counters (its writer, its requests, label `worker`); the learner
and alarm gauges are read from the database at scrape time and are the same in every worker.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from log.metrics_math import BUCKET_S, Sums, floor_time, latency_bucket
from log.operate_reads import firing_alarm_counts, learner_states
from log.writer import GROUP_SIZE_EDGES, GroupCommitWriter

__all__ = ["Telemetry", "TelemetryMiddleware"]

RANK_ROUTE = "/v1/loops/{loop}/rank"
MAX_PENDING_KEYS = 10_000  # (loop, bucket) pairs held between flushes at most
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Telemetry:
    """One per app (worker)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http = Histogram(
            "ds_http_request_duration_seconds",
            "Time to answer a request, per route template, method and status.",
            ["route", "method", "status"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], Any] = {}  # labelled histograms, looked up once
        self._bucket = floor_time(datetime.now(UTC))
        self._bucket_end = 0.0
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, datetime], Sums] = {}
        self.dropped = 0  # observations dropped because too many (loop, bucket) keys were held

    def attach(self, writer: GroupCommitWriter, engine: Any) -> None:
        """Expose the worker's write path and the store's learner and alarm state."""
        self.registry.register(_StateCollector(writer, engine))

    def observe(
        self, route: str, method: str, status: int, seconds: float, loop: str | None,
        error_code: str | None,
    ) -> None:  # fmt: skip
        child = self._children.get((route, method, status))
        if child is None:
            child = self._children[(route, method, status)] = self.http.labels(
                route, method, str(status)
            )
        child.observe(seconds)
        if loop is None:
            return
        is_rank = route == RANK_ROUTE
        if not is_rank and error_code is None:
            return
        now = time.time()
        if now >= self._bucket_end:  # a new 5-minute bucket began
            self._bucket = floor_time(datetime.fromtimestamp(now, UTC))
            self._bucket_end = self._bucket.timestamp() + BUCKET_S
        key = (loop, self._bucket)
        with self._lock:
            sums = self._pending.get(key)
            if sums is None:
                if len(self._pending) >= MAX_PENDING_KEYS:
                    self.dropped += 1
                    return
                sums = self._pending[key] = Sums()
            if is_rank:
                sums.requests += 1
                sums.latency_hist[latency_bucket(seconds * 1000.0)] += 1
            if error_code is not None:
                sums.errors[error_code] = sums.errors.get(error_code, 0) + 1

    def drain(self, spool_segments: int = 0) -> list[tuple[str, datetime, Sums]]:
        """What was aggregated since the last drain (the caller writes it), each with the
        worker's current spool backlog."""
        with self._lock:
            pending, self._pending = self._pending, {}
        out = []
        for (loop, bucket), sums in sorted(pending.items()):
            sums.spool_backlog_max = spool_segments
            out.append((loop, bucket, sums))
        return out

    def restore(self, rows: list[tuple[str, datetime, Sums]]) -> None:
        """Put back rows whose flush failed (the next flush retries them)."""
        with self._lock:
            for loop, bucket, sums in rows:
                mine = self._pending.get((loop, bucket))
                if mine is None:
                    self._pending[(loop, bucket)] = sums
                else:
                    mine.merge(sums)


class _StateCollector(Collector):
    def __init__(self, writer: GroupCommitWriter, engine: Any) -> None:
        self.writer = writer
        self.engine = engine

    def describe(self) -> list[Metric]:
        return []  # registering must not read the store (collect does, at scrape time)

    def collect(self) -> Iterator[Metric]:
        w = self.writer
        s = w.stats
        worker = w.writer_id

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=["worker"])
            g.add_metric([worker], value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=["worker"])
            c.add_metric([worker], value)
            return c

        yield gauge("ds_write_queue_depth", "Rows queued and not yet durable.", s.pending)
        yield counter("ds_write_groups", "Groups made durable.", s.groups)
        yield counter("ds_write_rows", "Rows made durable (database or spool).", s.ops)
        yield gauge("ds_write_group_size_max", "Largest group so far (rows).", s.max_group)
        sizes = HistogramMetricFamily(
            "ds_write_group_size", "Rows per group made durable.", labels=["worker"]
        )
        cumulative, buckets = 0, []
        for edge, count in zip((*GROUP_SIZE_EDGES, math.inf), s.group_sizes, strict=True):
            cumulative += count
            buckets.append(("+Inf" if edge == math.inf else str(edge), cumulative))
        sizes.add_metric([worker], buckets, sum_value=s.ops)
        yield sizes
        yield gauge("ds_spool_segments", "Spool segments not yet shipped.", len(w.spool.segments()))
        yield counter("ds_spool_spooled_rows", "Rows written to the spool.", s.spooled_ops)
        yield counter(
            "ds_spool_shipped_rows", "Spooled rows shipped to the database.", s.shipped_ops
        )
        yield counter(
            "ds_spool_quarantined_segments",
            "Segments the database refused.",
            s.quarantined_segments,
        )
        yield counter("ds_write_errors", "Failed database writes.", s.errors)
        yield counter(
            "ds_write_lost_fast_rows", "Fast-mode rows lost at shutdown.", s.lost_fast_ops
        )
        try:
            states = learner_states(self.engine)
            alarms = firing_alarm_counts(self.engine)
        except Exception:  # the store does not answer: the worker's own figures still show
            up = GaugeMetricFamily("ds_store_up", "Whether the database answered this scrape.")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("ds_store_up", "Whether the database answered this scrape.")
        up.add_metric([], 1)
        yield up
        stopped = GaugeMetricFamily(
            "ds_learner_freshness_stopped", "1 while the loop's freshness track is stopped.",
            labels=["loop"],
        )  # fmt: skip
        last = GaugeMetricFamily(
            "ds_learner_last_run_timestamp_seconds", "When the learner's track last completed.",
            labels=["loop", "track"],
        )  # fmt: skip
        for st in states:
            stopped.add_metric([st.loop], float(st.freshness_stopped))
            for track, at in (
                ("freshness", st.last_freshness_at),
                ("candidates", st.last_candidate_at),
            ):
                if at is not None:
                    last.add_metric([st.loop, track], at.timestamp())
        yield stopped
        yield last
        firing = GaugeMetricFamily(
            "ds_alarms_firing", "Firing alarms per loop and kind.", labels=["loop", "kind"]
        )
        for (loop, kind), n in sorted(alarms.items()):
            firing.add_metric([loop, kind], n)
        yield firing


class TelemetryMiddleware:
    """Pure ASGI: times each request and reads the error code of error answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        body = b""

        async def tracked(message: Message) -> None:
            nonlocal status, body
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400 and len(body) < 4096:
                body += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            telemetry: Telemetry | None = getattr(scope["app"].state, "telemetry", None)
            if telemetry is not None:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                params = scope.get("path_params") or {}
                loop = params.get("loop") if route.startswith("/v1/loops/{loop}") else None
                telemetry.observe(
                    route, scope["method"], status, time.perf_counter() - start,
                    loop if isinstance(loop, str) else None,
                    _error_code(body) if status >= 400 else None,
                )  # fmt: skip


def _error_code(body: bytes) -> str:
    try:
        code = orjson.loads(body)["error"]["code"]
    except Exception:
        return "unknown"
    return code if isinstance(code, str) and len(code) <= 64 else "unknown"
