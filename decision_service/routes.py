"""The native HTTP API: /v1/loops, rank, reward, activate.

Errors are the domain errors of `explore.errors` (mapped to statuses in errors.py). Bodies are
read as a stream and cut at `DS_MAX_BODY_BYTES`. Event ids are addressed as the whole path
between `/events/` and the fixed suffix, so ids holding `/`, `%`, spaces or any Unicode (sent
percent-encoded) reach the reward and activate routes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from decision_service.auth import authorize
from decision_service.errors import describe_validation
from decision_service.rank_input import LOOP_NAME
from decision_service.schemas import (
    ActivateResponse,
    LoopConfigIn,
    LoopOut,
    LoopsOut,
    RankRequest,
    RankResponse,
    RewardRequest,
    RewardResponse,
    StatusOut,
    body_ref,
    error_responses,
)
from decision_service.service import Service
from explore.errors import InvalidInput, InvalidJson, NotFound, PayloadTooLarge
from log.deploy_settings import LearnerSettings
from log.loops import LoopConfig, StoredLoop, get_loop, list_loops, put_loop
from log.store import loop_counts
from policies import check_vw_args
from policies.vw import check_model_args

router = APIRouter()
LOOP_PATTERN = f"^{LOOP_NAME.pattern}$"  # documented; the routes check it themselves
LOOP_PARAMETER = {
    "name": "loop",
    "in": "path",
    "required": True,
    "description": "The loop's name.",
    "schema": {"type": "string", "pattern": LOOP_PATTERN},
    "example": "default",
}
LoopName = Annotated[
    str,
    Path(
        description="The loop's name.",
        examples=["default"],
        json_schema_extra={"pattern": LOOP_PATTERN},
    ),
]
EventId = Annotated[
    str,
    Path(
        description="The decision's event id (percent-encode `/`, `%`, spaces and the like).",
        examples=["evt-1"],
    ),
]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, media_type="application/json", headers=headers
    )


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, read as a stream and cut as soon as it exceeds `limit` bytes (413): a
    chunked upload of any size costs the server at most `limit` bytes plus one chunk."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        return await request.body()  # the HTTP framing delivers no more than it declared
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_json(request: Request) -> Any:
    """The body as JSON, within the size limit; NaN and Infinity are not JSON and are refused."""
    body = await read_body(request, _service(request).settings.max_body_bytes)
    if not body:
        raise InvalidJson("the request needs a JSON body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise InvalidJson(f"body is not valid JSON (NaN/Infinity are not JSON): {err}") from None


def checked_candidates(config: LoopConfig) -> LearnerSettings:
    """The loop's learner settings with each candidate configuration validated like its VW
    arguments (and normalised), also together with the loop's exploration reduction (VW's
    cover refuses --cb_type dm). Raises ValueError naming the candidate."""
    checked = []
    for i, args in enumerate(config.learner.candidates):
        try:
            normalised = check_vw_args(args)
            check_model_args(config.with_explore_args(normalised))
        except ValueError as err:
            raise ValueError(f"learner.candidates[{i}]: {err}") from None
        checked.append(normalised)
    return replace(config.learner, candidates=tuple(checked))


def check_loop_name(loop: str, max_length: int) -> None:
    if not LOOP_NAME.fullmatch(loop):
        raise InvalidInput(
            "loop names are 1-128 characters of A-Z a-z 0-9 _ . -", "invalid_loop_name"
        )
    if len(loop) > max_length:
        raise InvalidInput(
            f"loop name is {len(loop)} characters; the limit is {max_length}", "limit_exceeded"
        )


def loop_json(stored: StoredLoop, counts: dict[str, int] | None = None) -> dict[str, Any]:
    """A loop as the API shows it: the public configuration only (never the sampling key)."""
    out: dict[str, Any] = {
        "loop": stored.name,
        "config": stored.config.to_json(),
        "created_at": stored.created_at.isoformat(),
        "updated_at": stored.updated_at.isoformat(),
    }
    if counts is not None:
        out["counts"] = counts
    return out


@router.get("/healthz", include_in_schema=False)
async def healthz() -> Response:
    return _json({"status": "ok"})


@router.get("/v1/status", response_model=StatusOut)
async def status(request: Request) -> Response:
    """This worker's write path: groups, rows, spool, errors, rows queued but not yet durable."""
    principal = await authorize(request, "read")
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
                "refused_unverifiable": stats.refused_unverifiable,
                "watermark": stats.watermark.isoformat() if stats.watermark else None,
                "writer_id": service.writer.writer_id,
            },
            "loops": {
                name: rt.policy.version
                for name, rt in service.loops.loops.items()
                if principal.sees(name)
            },
            "serving": {
                name: rt.serving_json()
                for name, rt in service.loops.loops.items()
                if principal.sees(name)
            },
        }
    )


@router.get("/v1/loops", response_model=LoopsOut)
async def get_loops(request: Request) -> Response:
    """The loops the key may act on."""
    principal = await authorize(request, "read")
    service = _service(request)
    loops = await run_in_threadpool(list_loops, service.engine)
    return _json({"loops": [loop_json(s) for s in loops if principal.sees(s.name)]})


@router.get("/v1/loops/{loop}", response_model=LoopOut, responses=error_responses(404, 422))
async def get_one_loop(request: Request, loop: LoopName) -> Response:
    """The loop's configuration (without its secret sampling key) and its counts."""
    await authorize(request, "read", loop)
    check_loop_name(loop, _service(request).settings.max_id_length)
    service = _service(request)
    stored = await run_in_threadpool(get_loop, service.engine, loop)
    if stored is None:
        raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
    counts = await run_in_threadpool(loop_counts, service.engine, loop)
    return _json(loop_json(stored, counts))


@router.put(
    "/v1/loops/{loop}",
    response_model=LoopOut,
    responses={
        201: {"model": LoopOut, "description": "The loop was created."},
        **error_responses(400, 413, 422),
    },
    response_description="The loop's configuration was replaced.",
    openapi_extra=body_ref(LoopConfigIn),
)
async def put_one_loop(request: Request, loop: LoopName) -> Response:
    """Create (201) or replace (200) a loop's configuration. A new loop gets a secret sampling
    key from the server; an existing loop keeps its key."""
    await authorize(request, "configure", loop)
    check_loop_name(loop, _service(request).settings.max_id_length)
    service = _service(request)
    body = await read_json(request)
    try:
        cfg_in = LoopConfigIn.model_validate(body)
    except ValidationError as err:
        raise InvalidInput(describe_validation(err.errors())) from None
    fields = cfg_in.model_dump()
    try:
        config = LoopConfig(**fields)  # bounds first: they name the field and the bound
        config = LoopConfig(**{**fields, "vw_args": check_vw_args(fields["vw_args"])})
        check_model_args(config.model_args)
        config = replace(config, learner=checked_candidates(config))
    except ValueError as err:
        raise InvalidInput(str(err), "invalid_config") from None
    stored, created = await run_in_threadpool(put_loop, service.engine, loop, config)
    await run_in_threadpool(service.loops.install, stored)
    return _json(loop_json(stored), 201 if created else 200)


@router.post(
    "/v1/loops/{loop}/rank",
    status_code=201,
    response_model=RankResponse,
    response_description="The decision (also when it is the replay of a stored one: then the "
    "header Idempotent-Replay is true and nothing is written).",
    responses=error_responses(400, 404, 409, 413, 422, 503),
    openapi_extra={"parameters": [LOOP_PARAMETER], **body_ref(RankRequest)},
)
async def rank(request: Request) -> Response:
    """Rank the actions for a context; the served action is sampled from the logged pmf."""
    # The loop is read from path_params directly: the hot route has no parameters for FastAPI
    # to resolve per request (it is documented through openapi_extra).
    loop = request.path_params["loop"]
    await authorize(request, "decide", loop)
    service = _service(request)
    body = await read_json(request)
    response, replayed = await service.rank(loop, body)
    return _json(response, 201, {"Idempotent-Replay": "true"} if replayed else None)


@router.post(
    "/v1/loops/{loop}/events/{event_id:path}/reward",
    status_code=202,
    response_model=RewardResponse,
    responses=error_responses(400, 404, 409, 413, 422, 503),
    openapi_extra=body_ref(RewardRequest),
)
async def reward(request: Request, loop: LoopName, event_id: EventId) -> Response:
    """Report a reward for a decision (one slot of it, for slates)."""
    await authorize(request, "decide", loop)
    service = _service(request)
    body = await read_json(request)
    return _json(await service.reward(loop, event_id, body), 202)


@router.post(
    "/v1/loops/{loop}/events/{event_id:path}/activate",
    status_code=202,
    response_model=ActivateResponse,
    responses={
        200: {"model": ActivateResponse, "description": "It was already activated."},
        **error_responses(404, 409, 422, 503),
    },
)
async def activate(request: Request, loop: LoopName, event_id: EventId) -> Response:
    """Activate a deferred decision: its reward window opens now."""
    await authorize(request, "decide", loop)
    service = _service(request)
    data, status = await service.activate(loop, event_id)
    return _json(data, status)
