"""The native HTTP API: /v1/loops, rank, reward, activate."""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from decision_service.errors import ApiError, describe_validation
from decision_service.rank_input import LOOP_NAME
from decision_service.schemas import LoopConfigIn, RankRequest, RewardRequest
from decision_service.service import Service
from log.loops import LoopConfig, StoredLoop, get_loop, list_loops, put_loop
from log.store import loop_counts
from policies import check_vw_args

router = APIRouter()
LOOP_PARAMETER = {"name": "loop", "in": "path", "required": True, "schema": {"type": "string"}}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, media_type="application/json", headers=headers
    )


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def read_json(request: Request) -> Any:
    """The body as JSON, within the size limit; NaN and Infinity are not JSON and are refused."""
    limit = _service(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"body exceeds {limit} bytes")
    body = await request.body()
    if len(body) > limit:
        raise ApiError(413, "payload_too_large", f"body exceeds {limit} bytes")
    if not body:
        raise ApiError(400, "invalid_json", "the request needs a JSON body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise ApiError(
            400, "invalid_json", f"body is not valid JSON (NaN/Infinity are not JSON): {err}"
        ) from None


def check_loop_name(loop: str, max_length: int) -> None:
    if not LOOP_NAME.fullmatch(loop):
        raise ApiError(
            422, "invalid_loop_name", "loop names are 1-128 characters of A-Z a-z 0-9 _ . -"
        )
    if len(loop) > max_length:
        raise ApiError(
            422, "limit_exceeded", f"loop name is {len(loop)} characters; the limit is {max_length}"
        )


def loop_json(stored: StoredLoop, counts: dict[str, int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "loop": stored.name,
        "config": stored.config.to_json(),
        "created_at": stored.created_at.isoformat(),
        "updated_at": stored.updated_at.isoformat(),
    }
    out["config"].pop("extra", None)
    if counts is not None:
        out["counts"] = counts
    return out


@router.get("/healthz", include_in_schema=False)
async def healthz() -> Response:
    return _json({"status": "ok"})


@router.get("/v1/status")
async def status(request: Request) -> Response:
    """This worker's write path: groups, rows, spool, errors, rows queued but not yet durable."""
    service = _service(request)
    stats = service.writer.stats
    return _json(
        {
            "durability": service.settings.durability,
            "writer": {
                "groups": stats.groups,
                "rows": stats.ops,
                "max_group": stats.max_group,
                "pending": stats.pending,
                "spooled_rows": stats.spooled_ops,
                "shipped_rows": stats.shipped_ops,
                "spool_segments": len(service.writer.spool.segments()),
                "quarantined_segments": stats.quarantined_segments,
                "errors": stats.errors,
                "last_error": stats.last_error,
                "lost_fast_rows": stats.lost_fast_ops,
            },
            "loops": {name: rt.policy.version for name, rt in service.loops.loops.items()},
        }
    )


@router.get("/v1/loops")
async def get_loops(request: Request) -> Response:
    service = _service(request)
    loops = await run_in_threadpool(list_loops, service.engine)
    return _json({"loops": [loop_json(s) for s in loops]})


@router.get("/v1/loops/{loop}")
async def get_one_loop(loop: str, request: Request) -> Response:
    check_loop_name(loop, _service(request).settings.max_id_length)
    service = _service(request)
    stored = await run_in_threadpool(get_loop, service.engine, loop)
    if stored is None:
        raise ApiError(404, "loop_not_found", f"loop {loop!r} does not exist")
    counts = await run_in_threadpool(loop_counts, service.engine, loop)
    return _json(loop_json(stored, counts))


@router.put(
    "/v1/loops/{loop}",
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": LoopConfigIn.model_json_schema()}}
        }
    },
)
async def put_one_loop(loop: str, request: Request) -> Response:
    check_loop_name(loop, _service(request).settings.max_id_length)
    service = _service(request)
    body = await read_json(request)
    try:
        cfg_in = LoopConfigIn.model_validate(body)
    except ValidationError as err:
        raise ApiError(422, "invalid_request", describe_validation(err.errors())) from None
    fields = cfg_in.model_dump()
    if fields["seed"] is None:
        existing = await run_in_threadpool(get_loop, service.engine, loop)
        fields["seed"] = existing.config.seed if existing else secrets.randbits(31)
    try:
        fields["vw_args"] = check_vw_args(fields["vw_args"])
        config = LoopConfig(**fields)
    except ValueError as err:
        raise ApiError(422, "invalid_config", str(err)) from None
    stored, created = await run_in_threadpool(put_loop, service.engine, loop, config)
    await run_in_threadpool(service.loops.install, stored)
    return _json(loop_json(stored), 201 if created else 200)


@router.post(
    "/v1/loops/{loop}/rank",
    status_code=201,
    openapi_extra={
        "parameters": [LOOP_PARAMETER],
        "requestBody": {
            "content": {"application/json": {"schema": RankRequest.model_json_schema()}}
        },
    },
)
async def rank(request: Request) -> Response:
    # The loop is read from path_params directly: the hot route has no parameters for FastAPI
    # to resolve per request (it is still documented through openapi_extra).
    service = _service(request)
    body = await read_json(request)
    response, replayed = await service.rank(request.path_params["loop"], body)
    return _json(response, 201, {"Idempotent-Replay": "true"} if replayed else None)


@router.post(
    "/v1/loops/{loop}/events/{event_id}/reward",
    status_code=202,
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": RewardRequest.model_json_schema()}}
        }
    },
)
async def reward(loop: str, event_id: str, request: Request) -> Response:
    service = _service(request)
    body = await read_json(request)
    return _json(await service.reward(loop, event_id, body), 202)


@router.post("/v1/loops/{loop}/events/{event_id}/activate", status_code=202)
async def activate(loop: str, event_id: str, request: Request) -> Response:
    service = _service(request)
    data, status = await service.activate(loop, event_id)
    return _json(data, status)
