"""The service with timers around its write path, for diagnosing the rank benchmark.

``uvicorn --factory benchmarks.instrumented_app:create_app`` serves the unmodified service,
with the group-commit writer and `Service.rank` wrapped to record group sizes, commit wall
and CPU time, and how long requests wait for durability. Each worker prints a JSON summary
on stderr when it stops. Cyclic garbage collections are timed per generation.

Experiments, by environment variable: ``BENCH_SWITCH_INTERVAL`` (seconds) sets
`sys.setswitchinterval` (how much the writer thread waits for the GIL);
``BENCH_GC_FREEZE=1`` calls `gc.freeze()` once the service has started (startup objects leave
the collector's generations); ``BENCH_GC_THRESHOLD=a,b,c`` calls `gc.set_threshold`.
(The service itself now scores through VW's raw path and tunes the GC: see DS_GC_TUNING.)
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from typing import Any

import orjson
from fastapi import FastAPI

from decision_service import create_app as create_service_app
from decision_service.service import Service
from log.writer import GroupCommitWriter

_rec: dict[str, list[float]] = {
    "group_rows": [],
    "gather_ms": [],
    "commit_wall_ms": [],
    "commit_cpu_ms": [],
    "write_wait_ms": [],
    "rank_ms": [],
}
_gc_ms = [0.0, 0.0, 0.0]
_gc_n = [0, 0, 0]
_gc_t0 = [0.0]


def _gc_callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_t0[0] = time.perf_counter()
    else:
        gen = info["generation"]
        _gc_ms[gen] += (time.perf_counter() - _gc_t0[0]) * 1e3
        _gc_n[gen] += 1


def _summary() -> dict[str, Any]:
    out: dict[str, Any] = {
        "pid": os.getpid(),
        "switch_interval": sys.getswitchinterval(),
        "gc_threshold": gc.get_threshold(),
        "gc_frozen": gc.get_freeze_count(),
        "gc_collections": _gc_n,
        "gc_ms": [round(x, 1) for x in _gc_ms],
        "gc_tracked_objects": len(gc.get_objects()),
    }
    for name, values in _rec.items():
        if values:
            v = sorted(values)
            out[name] = {
                "n": len(v),
                "mean": round(statistics.fmean(v), 3),
                "p50": round(v[len(v) // 2], 3),
                "p90": round(v[int(len(v) * 0.9)], 3),
                "max": round(v[-1], 3),
            }
    return out


def _instrument() -> None:
    gather = GroupCommitWriter._gather
    commit = GroupCommitWriter._commit_group
    write = GroupCommitWriter.write
    rank = Service.rank
    stop = Service.stop
    start = Service.start

    async def start_then_freeze(self: Service) -> None:
        await start(self)
        if os.environ.get("BENCH_GC_FREEZE") == "1":
            gc.collect()
            gc.freeze()

    def timed_gather(self: GroupCommitWriter, first: Any) -> Any:
        t0 = time.perf_counter()
        out = gather(self, first)
        _rec["gather_ms"].append((time.perf_counter() - t0) * 1e3)
        return out

    def timed_commit(self: GroupCommitWriter, group: Any) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        commit(self, group)
        _rec["commit_wall_ms"].append((time.perf_counter() - t0) * 1e3)
        _rec["commit_cpu_ms"].append((time.thread_time() - c0) * 1e3)
        _rec["group_rows"].append(sum(len(ops) for ops, _ in group))

    async def timed_write(self: GroupCommitWriter, ops: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await write(self, ops)
        finally:
            _rec["write_wait_ms"].append((time.perf_counter() - t0) * 1e3)

    async def timed_rank(self: Service, loop: str, body: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await rank(self, loop, body)
        finally:
            _rec["rank_ms"].append((time.perf_counter() - t0) * 1e3)

    async def stop_and_report(self: Service) -> None:
        await stop(self)
        sys.stderr.write(f"[instrumented] {orjson.dumps(_summary()).decode()}\n")
        sys.stderr.flush()

    GroupCommitWriter._gather = timed_gather  # type: ignore[method-assign]
    GroupCommitWriter._commit_group = timed_commit  # type: ignore[method-assign]
    GroupCommitWriter.write = timed_write  # type: ignore[method-assign]
    Service.rank = timed_rank  # type: ignore[method-assign]
    Service.stop = stop_and_report  # type: ignore[method-assign]
    Service.start = start_then_freeze  # type: ignore[method-assign]
    gc.callbacks.append(_gc_callback)


def create_app() -> FastAPI:
    interval = os.environ.get("BENCH_SWITCH_INTERVAL")
    if interval:
        sys.setswitchinterval(float(interval))
    threshold = os.environ.get("BENCH_GC_THRESHOLD")
    if threshold:
        gc.set_threshold(*(int(x) for x in threshold.split(",")))
    _instrument()
    return create_service_app()
