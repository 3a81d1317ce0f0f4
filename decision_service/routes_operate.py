"""Operating the service over HTTP: Prometheus metrics, load-balancer probes, a loop's
5-minute figures.

| route | what | permission |
| --- | --- | --- |
| ``GET /metrics`` | this worker's Prometheus metrics (text exposition format) | read |
| ``GET /livez`` | liveness: the worker's event loop answers (always 200) | open |
| ``GET /readyz`` | readiness: started and the database answers (else 503) | open |
| ``GET /v1/loops/{loop}/metrics`` | the loop's figures over a window, per bucket and arm | read |

The probes are open, like `/healthz`: a load balancer carries no key, and they reveal nothing
but "ready" or not. `/metrics` needs a key with `read` (Prometheus sends it as a bearer token):
it names loops and model versions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from decision_service.auth import authorize
from decision_service.routes import LOOP_NAME, LoopName, _json, _service
from decision_service.schemas import error_responses
from explore.errors import NotFound
from log.loops import get_loop
from log.metrics import ALL, breakdown, metrics_through, read_series
from log.metrics_math import MetricsPoint
from log.operate_reads import store_answers
from log.schema import Engine

__all__ = ["WINDOWS", "loop_metrics", "router"]

router = APIRouter()
# window -> (span, grain of its points)
WINDOWS: dict[str, tuple[timedelta, str]] = {
    "1h": (timedelta(hours=1), "5m"),
    "6h": (timedelta(hours=6), "5m"),
    "24h": (timedelta(hours=24), "5m"),
    "7d": (timedelta(days=7), "1h"),
    "30d": (timedelta(days=30), "1d"),
}
Window = Literal["1h", "6h", "24h", "7d", "30d"]


class PointOut(BaseModel):
    bucket: datetime
    decisions: int
    exploration_share: float | None
    mean_probability: float | None
    min_probability: float | None
    entropy: float | None
    top_action_share: float | None
    rewards: int
    late_rewards: int
    joined: int
    reward_rate: float | None
    reward_rate_low: float | None
    reward_rate_high: float | None
    mean_reward: float | None
    mean_reward_low: float | None
    mean_reward_high: float | None
    default_reward_rate: float | None
    join_lag_mean_s: float | None
    join_lag_max_s: float | None
    guardrail_rates: dict[str, float]
    requests: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    errors: dict[str, int]
    spool_backlog_max: int


class ArmOut(BaseModel):
    arm: str
    model_version: str
    figures: PointOut


class LoopMetricsOut(BaseModel):
    """The loop's figures over `window`: per bucket (`points`, oldest first), over the whole
    window (`total`) and per arm and model version (`arms`)."""

    loop: str
    window: str
    grain: str
    computed_through: datetime | None
    total: PointOut | None
    points: list[PointOut]
    arms: list[ArmOut]


def loop_metrics(engine: Engine, loop: str, window: str, now: datetime) -> dict[str, Any]:
    span, grain = WINDOWS[window]
    since = now - span
    until = now + timedelta(days=1)
    points = read_series(engine, loop, grain=grain, since=since, until=until)
    merged = breakdown(engine, loop, since=since, until=until, grain=grain)
    total: MetricsPoint | None = merged.pop((ALL, ALL), None)
    return {
        "loop": loop,
        "window": window,
        "grain": grain,
        "computed_through": _iso(metrics_through(engine, loop)),
        "total": None if total is None else total.to_json(),
        "points": [p.to_json() for p in points],
        "arms": [
            {"arm": arm, "model_version": version, "figures": p.to_json()}
            for (arm, version), p in merged.items()
        ],
    }


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


@router.get(
    "/metrics",
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition."}},
    response_class=Response,
)
async def metrics(request: Request) -> Response:
    """This worker's metrics in the Prometheus text format: HTTP latency per route, the write
    path (queue depth, groups, spool, shipped, quarantined), the learner's state and firing
    alarms per loop."""
    await authorize(request, "read")
    service = _service(request)
    body = await run_in_threadpool(generate_latest, service.telemetry.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/livez", include_in_schema=False)
async def livez() -> Response:
    return _json({"status": "alive"})


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> Response:
    service = getattr(request.app.state, "service", None)
    if service is None or not service.keys.ready:
        return _json({"status": "starting"}, 503, {"Retry-After": "1"})
    try:
        await run_in_threadpool(store_answers, service.engine)
    except Exception:
        return _json({"status": "store_unavailable"}, 503, {"Retry-After": "1"})
    return _json({"status": "ready"})


@router.get(
    "/v1/loops/{loop}/metrics", response_model=LoopMetricsOut, responses=error_responses(404, 422)
)
async def get_loop_metrics(
    request: Request,
    loop: LoopName,
    window: Annotated[Window, Query(description="How far back: 1h, 6h, 24h (5-minute points), "
                                    "7d (hourly), 30d (daily).")] = "6h",
) -> Response:  # fmt: skip
    """The loop's operating figures (computed by the metrics rollup of the learner process)."""
    await authorize(request, "read", loop)
    engine = _service(request).engine
    if not LOOP_NAME.fullmatch(loop) or await run_in_threadpool(get_loop, engine, loop) is None:
        raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
    return _json(await run_in_threadpool(loop_metrics, engine, loop, window, datetime.now(UTC)))
