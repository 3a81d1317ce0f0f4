"""API keys (`/v1/keys`, permission `keys`) and the audit log (`/v1/audit`, permission `read`).

A key is shown once, in the answer that creates it; lists show ids, names, roles and loops,
never secrets or hashes. A key scoped to some loops sees, makes and revokes only keys within
those loops (never a key for every loop), and reads only the audit entries of its loops.

| what | status | code |
| --- | --- | --- |
| body not JSON / too large | 400 / 413 | invalid_json / payload_too_large |
| unknown role, bad name or loops, unknown fields | 422 | invalid_request / invalid_key |
| a scoped key making a key outside its loops | 403 | forbidden |
| unknown key id (or one outside the caller's loops) | 404 | key_not_found |
| revoking the last active admin key for every loop | 409 | last_admin_key |
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from decision_service.auth import authorize
from decision_service.errors import describe_validation
from decision_service.routes import LoopName, _json, _service, check_loop_name, read_json
from decision_service.schemas import body_ref, error_responses
from decision_service.schemas_keys import AuditOut, KeyCreatedOut, KeyCreateIn, KeyOut, KeysOut
from deploy.key_issue import issue_key
from deploy.keys import KEY_ID, check_key_fields
from explore.errors import Forbidden, InvalidInput, NotFound
from log.api_keys import list_keys, revoke_key
from log.audit import MAX_READ, read_audit
from log.loops import get_loop

__all__ = ["router"]

router = APIRouter()
MAX_SEQ = 2**63 - 1
KeyId = Annotated[
    str,
    Path(
        description="The key's id (12 hex digits; the part after `dsk_`).",
        json_schema_extra={"pattern": f"^{KEY_ID.pattern}$"},
    ),
]
AfterSeq = Annotated[
    int, Query(ge=0, le=MAX_SEQ, description="Entries after this sequence number (paging).")
]
Limit = Annotated[int, Query(ge=1, le=MAX_READ, description="Most entries returned.")]
Reason = Annotated[
    str | None, Query(min_length=1, max_length=1000, description="Why (kept in the audit log).")
]


@router.post(
    "/v1/keys",
    status_code=201,
    response_model=KeyCreatedOut,
    response_description="The key was made; `key` is shown this once.",
    responses=error_responses(400, 413, 422),
    openapi_extra=body_ref(KeyCreateIn),
)
async def create(request: Request) -> Response:
    """Make an API key with a role and, optionally, a list of loops it may act on."""
    principal = await authorize(request, "keys")
    body = await read_json(request)
    try:
        parsed = KeyCreateIn.model_validate(body)
    except ValidationError as err:
        raise InvalidInput(describe_validation(err.errors())) from None
    name, role, loops = check_key_fields(parsed.name, parsed.role, parsed.loops)
    if not principal.covers(loops):
        raise Forbidden(
            f"this key acts on loops {list(principal.loops or ())}: it may only make keys "
            "limited to some of them",
            "forbidden",
        )
    engine = _service(request).engine

    def make() -> dict[str, Any]:
        stored, token = issue_key(
            engine,
            name=name,
            role=role,
            loops=loops,
            actor=principal.actor,
            actor_role=principal.role,
        )
        return {**stored.to_json(), "key": token}

    return _json(await run_in_threadpool(make), 201)


@router.get("/v1/keys", response_model=KeysOut)
async def list_all(request: Request) -> Response:
    """Every key (revoked ones too) within the caller's loops, oldest first."""
    principal = await authorize(request, "keys")
    keys = await run_in_threadpool(list_keys, _service(request).engine)
    return _json({"keys": [k.to_json() for k in keys if principal.covers(k.loops)]})


@router.delete(
    "/v1/keys/{key_id}",
    response_model=KeyOut,
    response_description="The key is revoked (also when it already was).",
    responses=error_responses(404, 409, 422),
)
async def revoke(request: Request, key_id: KeyId, reason: Reason = None) -> Response:
    """Revoke a key: it stops working at once in this worker and within `DS_KEY_CACHE_S` in
    every other. The last active admin key for every loop cannot be revoked here."""
    principal = await authorize(request, "keys")
    service = _service(request)
    if not KEY_ID.fullmatch(key_id):
        raise NotFound(f"no key {key_id!r}", "key_not_found")
    stored, _ = await run_in_threadpool(
        lambda: revoke_key(
            service.engine,
            key_id,
            actor=principal.actor,
            actor_role=principal.role,
            now=datetime.now(UTC),
            reason=reason,
            allowed=lambda k: principal.covers(k.loops),
        )
    )
    service.keys.forget(key_id)
    return _json(stored.to_json())


def _page(entries: list[Any], limit: int) -> dict[str, Any]:
    return {
        "entries": [e.to_json() for e in entries],
        "next_after_seq": entries[-1].seq if len(entries) == limit else None,
    }


@router.get("/v1/audit", response_model=AuditOut, responses=error_responses(422))
async def audit(request: Request, after_seq: AfterSeq = 0, limit: Limit = 100) -> Response:
    """The audit log in order (who, what, when, why, the numbers); a key scoped to some loops
    reads only their entries."""
    principal = await authorize(request, "read")
    engine = _service(request).engine
    entries = await run_in_threadpool(
        lambda: read_audit(engine, loops=principal.loops, after_seq=after_seq, limit=limit)
    )
    return _json(_page(entries, limit))


@router.get("/v1/loops/{loop}/audit", response_model=AuditOut, responses=error_responses(404, 422))
async def loop_audit(
    request: Request, loop: LoopName, after_seq: AfterSeq = 0, limit: Limit = 100
) -> Response:
    """The audit entries of one loop, in order."""
    await authorize(request, "read", loop)
    service = _service(request)
    check_loop_name(loop, service.settings.max_id_length)
    if await run_in_threadpool(get_loop, service.engine, loop) is None:
        raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
    entries = await run_in_threadpool(
        lambda: read_audit(service.engine, loop=loop, after_seq=after_seq, limit=limit)
    )
    return _json(_page(entries, limit))
