"""The item catalog of a loop (`/v1/loops/{loop}/items`) and its retrievers.

Writes need `configure` (retriever moves: `gatekeep`), reads `read`. A PUT upserts at most
1,000 items (each within DS_MAX_FEATURES features and DS_MAX_ID_LENGTH characters of id;
embeddings of at most 256 finite numbers) in one transaction: all or nothing. Items sent without
an embedding get the live retriever's item tower's (cold start), and every shadow or canary
retriever embeds them into its own embeddings. Lists are paged by item id (`after`: the last id
of the previous page), which is stable under concurrent changes.

Retrievers roll out like models (`deploy.retriever_rollout`): `.../rollout` (shadow, canary),
`.../promote` (live), `.../reject`, `.../retrievers/rollback`; `GET .../retrievers/rollout` is
the shadow's and canary's report (`deploy.retriever_report`).

| what | status | code |
| --- | --- | --- |
| unknown loop | 404 | loop_not_found |
| unknown item / retriever | 404 | item_not_found / not_found |
| too many items, features or numbers | 422 | limit_exceeded |
| an id twice in one PUT | 422 | duplicate_item |
| an embedding of another size than a rolled-out retriever's | 422 | embedding_dimension |
| a move to the state the retriever is in | 409 | transition_conflict |
| a move the states do not allow | 409 | invalid_transition |
| shadow or canary while another retriever holds the slot | 409 | rollout_slot_taken |
| canary or live without a passed retriever-gate verdict nor an override | 409 | gate_not_passed |
| an override without a reason | 422 | reason_required |
| rollback without a live retriever / a target | 409 | no_live_version / no_rollback_target |
| checking a version that is not a candidate, shadow or canary | 409 | not_a_candidate |

Rollout, promote, reject, rollback and check (the retriever gate, `deploy.retriever_gate`) need
`gatekeep`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from decision_service.auth import authorize
from decision_service.errors import describe_validation
from decision_service.rank_input import _check_id, count_features
from decision_service.routes import (
    LoopName,
    _json,
    _service,
    check_loop_name,
    read_body,
    read_json,
)
from decision_service.schemas import body_ref, error_responses
from decision_service.schemas_catalog import (
    MAX_LIST,
    ItemIdsIn,
    ItemOut,
    ItemsChangedOut,
    ItemsOut,
    ItemsPutIn,
    ItemsPutOut,
    RetrieverCheckIn,
    RetrieverOut,
    RetrieverPromoteIn,
    RetrieverRejectIn,
    RetrieverReportOut,
    RetrieverRollbackIn,
    RetrieverRolloutIn,
    RetrieversOut,
    RetrieverVerdictOut,
)
from decision_service.service import Service
from decision_service.settings import Settings
from deploy.retriever_gate import check_retriever
from deploy.retriever_report import DEFAULT_MAX_EVENTS as DEFAULT_REPORT_EVENTS
from deploy.retriever_report import retriever_report
from explore.errors import InvalidInput, InvalidJson, NotFound
from log.catalog import ItemUpsert, delete_items, get_item, list_items, set_active
from log.loops import get_loop
from log.retriever_reads import MAX_RETRIEVED_EVENTS
from log.retrievers import index_builds, list_retrievers
from log.verdicts import latest_verdicts

__all__ = ["router"]

router = APIRouter()
MAX_EMBEDDING_VALUE = 1e30  # stored as float32; products of two stay finite in float64
ItemId = Annotated[str, Path(description="The item's id (percent-encode `/`, `%`, spaces).")]
Version = Annotated[str, Path(description="The retriever version.")]
T = TypeVar("T", bound=BaseModel)


async def _loop(request: Request, loop: str) -> Service:
    service = _service(request)
    check_loop_name(loop, service.settings.max_id_length)
    if await run_in_threadpool(get_loop, service.engine, loop) is None:
        raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
    return service


def _created(value: str | None, where: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{where} must be an ISO 8601 timestamp", "invalid_request") from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"{where} needs a time zone (e.g. +00:00 or Z)", "invalid_request")
    return parsed.astimezone(UTC)


def parse_items(body: Any, service: Service) -> list[ItemUpsert]:
    return validate_items(body, service.settings)


def validate_items(body: Any, settings: Settings) -> list[ItemUpsert]:
    """Validate a PUT body; raises InvalidInput naming the item and field."""
    try:
        parsed = ItemsPutIn.model_validate(body)
    except ValidationError as err:
        code = "limit_exceeded" if "too_long" in str(err) else "invalid_request"
        raise InvalidInput(describe_validation(err.errors()), code) from None
    items: list[ItemUpsert] = []
    seen: set[str] = set()
    for i, item in enumerate(parsed.items):
        _check_id(item.id, f"items[{i}].id", settings)
        if item.id in seen:
            raise InvalidInput(f"item id {item.id!r} appears twice", "duplicate_item")
        seen.add(item.id)
        n = count_features(item.features, f"items[{i}].features")
        if n > settings.max_features:
            raise InvalidInput(
                f"items[{i}] has {n} features; the limit is {settings.max_features}",
                "limit_exceeded",
            )
        embedding = None
        if item.embedding is not None:
            if not item.embedding or not all(
                math.isfinite(x) and abs(x) <= MAX_EMBEDDING_VALUE for x in item.embedding
            ):
                raise InvalidInput(
                    f"items[{i}].embedding must be a non-empty list of numbers within "
                    f"+-{MAX_EMBEDDING_VALUE:g} (32-bit floats)",
                    "invalid_request",
                )
            embedding = tuple(float(x) for x in item.embedding)
        items.append(
            ItemUpsert(item.id, item.features, _created(item.created_at, f"items[{i}]"), embedding)
        )
    return items


def _upsert(service: Service, loop: str, items: list[ItemUpsert]) -> tuple[int, int]:
    return service.retrieval.upsert(loop, items)


@router.put(
    "/v1/loops/{loop}/items",
    response_model=ItemsPutOut,
    responses=error_responses(400, 404, 413, 422),
    openapi_extra=body_ref(ItemsPutIn),
)
async def put_items(request: Request, loop: LoopName) -> Response:
    """Insert or replace up to 1,000 items (one transaction). An upserted item is active."""
    await authorize(request, "configure", loop)
    service = await _loop(request, loop)
    items = parse_items(await read_json(request), service)
    inserted, embedded = await run_in_threadpool(_upsert, service, loop, items)
    return _json({"loop": loop, "upserted": len(items), "inserted": inserted, "embedded": embedded})


async def _ids(request: Request) -> list[str]:
    try:
        return ItemIdsIn.model_validate(await read_json(request)).ids
    except ValidationError as err:
        raise InvalidInput(describe_validation(err.errors())) from None


@router.post(
    "/v1/loops/{loop}/items/deactivate",
    response_model=ItemsChangedOut,
    responses=error_responses(400, 404, 413, 422),
    openapi_extra=body_ref(ItemIdsIn),
)
async def deactivate_items(request: Request, loop: LoopName) -> Response:
    """Stop retrieving these items (kept in the catalog; a PUT makes an item active again)."""
    await authorize(request, "configure", loop)
    service = await _loop(request, loop)
    ids = await _ids(request)
    now = datetime.now(UTC)
    changed = await run_in_threadpool(set_active, service.engine, loop, ids, False, now)
    return _json({"loop": loop, "changed": changed})


@router.delete(
    "/v1/loops/{loop}/items/{item_id:path}",
    response_model=ItemsChangedOut,
    responses=error_responses(404, 422),
)
async def delete_item(request: Request, loop: LoopName, item_id: ItemId) -> Response:
    """Remove an item from the catalog (decisions that served it keep its features)."""
    await authorize(request, "configure", loop)
    service = await _loop(request, loop)
    changed = await run_in_threadpool(delete_items, service.engine, loop, [item_id])
    if not changed:
        raise NotFound(f"no item {item_id!r} in loop {loop!r}", "item_not_found")
    return _json({"loop": loop, "changed": changed})


@router.get("/v1/loops/{loop}/items", response_model=ItemsOut, responses=error_responses(404, 422))
async def get_items(
    request: Request,
    loop: LoopName,
    after: Annotated[str | None, Query(max_length=256, description="Ids after this one.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST, description="Most items returned.")] = 100,
    active: Annotated[bool | None, Query(description="Only active (or inactive) items.")] = None,
) -> Response:
    """A page of the catalog in item-id order (without embeddings)."""
    await authorize(request, "read", loop)
    service = await _loop(request, loop)
    items, total = await run_in_threadpool(
        lambda: list_items(service.engine, loop, after=after, limit=limit, active=active)
    )
    next_after = items[-1].item_id if len(items) == limit else None
    return _json(
        {"items": [item.to_json() for item in items], "total": total, "next_after": next_after}
    )


@router.get(
    "/v1/loops/{loop}/items/{item_id:path}",
    response_model=ItemOut,
    responses=error_responses(404, 422),
)
async def get_one_item(request: Request, loop: LoopName, item_id: ItemId) -> Response:
    """One item with its embedding."""
    await authorize(request, "read", loop)
    service = await _loop(request, loop)
    item = await run_in_threadpool(get_item, service.engine, loop, item_id)
    if item is None:
        raise NotFound(f"no item {item_id!r} in loop {loop!r}", "item_not_found")
    return _json(item.to_json(with_embedding=True))


@router.get(
    "/v1/loops/{loop}/retrievers",
    response_model=RetrieversOut,
    responses=error_responses(404, 422),
)
async def get_retrievers(request: Request, loop: LoopName) -> Response:
    """The loop's retriever versions, its latest index builds (kind, items, recall@k against
    exact search) and the index this worker serves (with its shadow and canary retrievers)."""
    await authorize(request, "read", loop)
    service = await _loop(request, loop)
    versions = await run_in_threadpool(list_retrievers, service.engine, loop)
    verdicts = await run_in_threadpool(
        latest_verdicts, service.engine, loop, [v.version for v in versions]
    )
    builds = await run_in_threadpool(index_builds, service.engine, loop)
    held = service.retrieval.loops.get(loop)
    serving = None if held is None else held.live
    return _json(
        {
            "retrievers": [
                {
                    **v.to_json(),
                    "verdict": None if v.version not in verdicts else verdicts[v.version].to_json(),
                }
                for v in versions
            ],
            "indexes": builds,
            "serving": None
            if serving is None
            else {
                "index": serving.version,
                "retriever": serving.retriever,
                "catalog_seq": serving.catalog_seq,
                **serving.ann.details(),
                "shadow": None if held is None or held.shadow is None else held.shadow.retriever,
                "canary": None if held is None or held.canary is None else held.canary.retriever,
                "canary_percent": None if held is None else held.canary_percent,
            },
        }
    )


async def _strict_body(request: Request, model: type[T]) -> T:
    try:
        return model.model_validate(await read_json(request))
    except ValidationError as err:
        raise InvalidInput(describe_validation(err.errors())) from None


async def _optional_body(request: Request, model: type[T]) -> T:
    """The JSON body validated as `model`; an empty body is the model's defaults."""
    service = _service(request)
    raw = await read_body(request, service.settings.max_body_bytes)
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as err:
        raise InvalidJson(f"body is not valid JSON: {err}") from None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise InvalidInput(describe_validation(err.errors())) from None


@router.post(
    "/v1/loops/{loop}/retrievers/{version}/promote",
    response_model=RetrieverOut,
    responses=error_responses(400, 404, 409, 422),
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/RetrieverPromoteIn"}}
            },
        }
    },
)
async def promote(request: Request, loop: LoopName, version: Version) -> Response:
    """Make a candidate retriever live (the live one retires; audited). Its latest retriever-
    gate verdict must have passed (409 `gate_not_passed`), unless `override` with a `reason`
    (audited as `retriever.live_override`). The catalog is re-embedded by its item tower
    before it serves."""
    principal = await authorize(request, "gatekeep", loop)
    service = await _loop(request, loop)
    body = await _optional_body(request, RetrieverPromoteIn)
    record = await run_in_threadpool(
        lambda: service.retrieval.promote(
            loop,
            version,
            principal.actor,
            reason=body.reason,
            override=body.override,
            role=principal.role,
        )
    )
    return _json(record.to_json())


@router.post(
    "/v1/loops/{loop}/retrievers/{version}/reject",
    response_model=RetrieverOut,
    responses=error_responses(400, 404, 409, 422),
    openapi_extra=body_ref(RetrieverRejectIn),
)
async def reject(request: Request, loop: LoopName, version: Version) -> Response:
    """Reject a candidate, shadow or canary retriever (it stops retrieving and can no longer go
    live; its own embeddings are dropped; audited)."""
    principal = await authorize(request, "gatekeep", loop)
    service = await _loop(request, loop)
    body = await _strict_body(request, RetrieverRejectIn)
    record = await run_in_threadpool(
        lambda: service.retrieval.move(
            loop, version, "rejected", principal.actor, role=principal.role, reason=body.reason
        )
    )
    return _json(record.to_json())


@router.post(
    "/v1/loops/{loop}/retrievers/{version}/rollout",
    response_model=RetrieverOut,
    responses=error_responses(400, 404, 409, 413, 422),
    openapi_extra=body_ref(RetrieverRolloutIn),
)
async def rollout(request: Request, loop: LoopName, version: Version) -> Response:
    """Move a retriever to shadow (after each retrieved decision it retrieves top-k for the same
    request; nothing served changes) or canary (retrieves for `canary_percent` % of the units;
    its latest retriever-gate verdict must have passed, 409 `gate_not_passed`, unless
    `override` with a `reason`). Entering either, it embeds the catalog with its item tower."""
    principal = await authorize(request, "gatekeep", loop)
    service = await _loop(request, loop)
    body = await _strict_body(request, RetrieverRolloutIn)
    if body.to == "shadow" and body.canary_percent is not None:
        raise InvalidInput("canary_percent applies to a canary only", "invalid_request")
    record = await run_in_threadpool(
        lambda: service.retrieval.move(
            loop,
            version,
            body.to,
            principal.actor,
            role=principal.role,
            reason=body.reason,
            override=body.override,
            canary_percent=None if body.canary_percent is None else float(body.canary_percent),
        )
    )
    return _json(record.to_json())


@router.post(
    "/v1/loops/{loop}/retrievers/rollback",
    response_model=RetrieverOut,
    responses=error_responses(400, 404, 409, 413, 422),
    openapi_extra=body_ref(RetrieverRollbackIn),
)
async def rollback(request: Request, loop: LoopName) -> Response:
    """Roll the live retriever back: it retires, the one it replaced (or `to`) is live again
    (the catalog re-embedded by it). Answers the restored version. To stop a canary retriever
    and keep live, reject the canary."""
    principal = await authorize(request, "gatekeep", loop)
    service = await _loop(request, loop)
    body = await _strict_body(request, RetrieverRollbackIn)
    record = await run_in_threadpool(
        lambda: service.retrieval.rollback(
            loop,
            principal.actor,
            role=principal.role,
            reason=body.reason,
            to=body.to,
            expected_live=body.expected_live,
        )
    )
    return _json(record.to_json())


@router.get(
    "/v1/loops/{loop}/retrievers/rollout",
    response_model=RetrieverReportOut,
    responses=error_responses(404, 422),
)
async def report(
    request: Request,
    loop: LoopName,
    max_events: Annotated[
        int, Query(ge=1, le=MAX_RETRIEVED_EVENTS, description="Latest retrieved decisions read.")
    ] = DEFAULT_REPORT_EVENTS,
) -> Response:
    """The shadow retriever's mean overlap@k with the served candidates and the hit rate of the
    rewarded item in each set; the canary retriever's online A/B against live (Horvitz-Thompson
    terms with the logged arm probability, anytime-valid interval, decision)."""
    await authorize(request, "read", loop)
    service = await _loop(request, loop)
    found = await run_in_threadpool(
        lambda: retriever_report(service.engine, loop, max_events=max_events)
    )
    return _json(found.to_json())


@router.post(
    "/v1/loops/{loop}/retrievers/{version}/check",
    response_model=RetrieverVerdictOut,
    responses=error_responses(400, 404, 409, 422),
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/RetrieverCheckIn"}}
            },
        }
    },
)
async def check(request: Request, loop: LoopName, version: Version) -> Response:
    """Run the retriever gate on a candidate now: recall@k and AUC against the live retriever
    (or the popularity baseline) on the events decided after its training data; the verdict
    (pass / fail / pending, with its numbers and reason) is stored and answered."""
    await authorize(request, "gatekeep", loop)
    service = await _loop(request, loop)
    body = await _optional_body(request, RetrieverCheckIn)
    verdict = await run_in_threadpool(
        lambda: check_retriever(service.engine, loop, version, k=body.k)
    )
    return _json(verdict.to_json())
