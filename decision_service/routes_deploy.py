"""Models, gate verdicts and rollout over HTTP (gatekeepers).

Routes (permission in brackets; the integrator adds the checks):

- GET /v1/loops/{loop}/models [read]: versions, newest first, with status, lineage, canary
  percent, latest gate verdict (numbers and reason) and the override flag;
- GET /v1/loops/{loop}/models/{version} [read]: one version, all its verdicts, its history;
- POST /v1/loops/{loop}/models/{version}/approve [gatekeep]: to live `{reason, override?}`;
- POST /v1/loops/{loop}/models/{version}/reject [gatekeep]: to rejected `{reason}`;
- POST /v1/loops/{loop}/models/{version}/rollout [gatekeep]: to shadow or canary
  `{to, canary_percent?, reason}`;
- POST /v1/loops/{loop}/rollback [gatekeep]: live back to the version it replaced
  `{reason, to?, expected_live?}`;
- GET /v1/loops/{loop}/rollout [read]: live, canary, shadow and the canary's online analysis.

Errors: 404 `loop_not_found`, `model_not_found` (unknown version, or one of another loop); 409
`invalid_transition`, `transition_conflict` (a concurrent change committed first: nothing
changed), `gate_not_passed` (approve without a passed verdict and without override),
`rollout_slot_taken`, `no_live_version`, `no_rollback_target`; 422 `invalid_request` (blank or
overlong reason, canary percent out of bounds, unknown fields); 400/413 for bodies.

Reads need the `read` permission, changes `gatekeep` (decision_service.auth); the caller's key
(its id and name) and role are the actor of the audited change.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from decision_service.auth import authorize
from decision_service.errors import describe_validation
from decision_service.routes import LOOP_NAME, LoopName, _json, _service, read_json
from decision_service.schemas import body_ref, error_responses
from decision_service.schemas_deploy import (
    VERSION_MAX,
    ApproveRequest,
    ModelDetailOut,
    ModelOut,
    ModelsOut,
    RejectRequest,
    RollbackRequest,
    RolloutOut,
    RolloutRequest,
)
from deploy.ab import analyse_canary
from deploy.keys import Principal
from deploy.registry import ModelVersion, get_version
from deploy.rollout import rollback, transition
from explore.errors import Conflict, InvalidInput, NotFound
from log.loops import get_loop
from log.registry_store import MAX_MODELS_READ, model_history, override_versions
from log.registry_store import list_models as stored_models
from log.schema import Engine
from log.verdicts import VerdictRecord, latest_verdicts, list_verdicts

__all__ = ["REQUEST_STATUSES", "actor_of", "router"]

router = APIRouter()
REQUEST_STATUSES = ("candidate", "shadow", "canary", "live", "retired", "rejected")
VersionId = Annotated[
    str, Path(description="The model version.", json_schema_extra={"maxLength": VERSION_MAX})
]


def actor_of(principal: Principal) -> tuple[str, str | None]:
    """(actor, role) of the caller for the audit log."""
    return principal.actor, principal.role


async def _loop_engine(request: Request, loop: str) -> Engine:
    engine = _service(request).engine
    if not LOOP_NAME.fullmatch(loop) or await run_in_threadpool(get_loop, engine, loop) is None:
        raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
    return engine


async def _version(engine: Engine, loop: str, version: str) -> ModelVersion:
    found = None
    if 0 < len(version) <= VERSION_MAX:
        found = await run_in_threadpool(get_version, engine, version)
    if found is None or found.loop != loop:
        raise NotFound(
            f"model version {version!r} does not exist in loop {loop!r}", "model_not_found"
        )
    return found


T = TypeVar("T", bound=BaseModel)


async def _body(request: Request, model: type[T]) -> T:
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise InvalidInput(describe_validation(err.errors())) from None


def _model_json(m: ModelVersion, verdict: VerdictRecord | None, override: bool) -> dict[str, Any]:
    out = m.to_json()
    out["override"] = override
    out["latest_verdict"] = None if verdict is None else verdict.to_json()
    return out


def _one_json(engine: Engine, m: ModelVersion) -> dict[str, Any]:
    verdict = latest_verdicts(engine, m.loop, [m.version]).get(m.version)
    return _model_json(m, verdict, m.version in override_versions(engine, m.loop))


@router.get(
    "/v1/loops/{loop}/models", response_model=ModelsOut, responses=error_responses(404, 422)
)
async def list_models(
    request: Request,
    loop: LoopName,
    status: Annotated[
        str | None, Query(description=f"Only versions in this state: one of {REQUEST_STATUSES}.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_MODELS_READ, description="Most versions.")] = 100,
) -> Response:
    """The loop's model versions, newest first, with their latest gate verdict."""
    await authorize(request, "read", loop)
    engine = await _loop_engine(request, loop)
    if status is not None and status not in REQUEST_STATUSES:
        raise InvalidInput(f"status must be one of {list(REQUEST_STATUSES)}", "invalid_request")

    def build() -> dict[str, Any]:
        models = stored_models(
            engine,
            loop,
            statuses=None if status is None else (status,),
            limit=limit,
            newest_first=True,
        )
        verdicts = latest_verdicts(engine, loop, [m.version for m in models])
        overrides = override_versions(engine, loop)
        return {
            "loop": loop,
            "models": [
                _model_json(m, verdicts.get(m.version), m.version in overrides) for m in models
            ],
        }

    return _json(await run_in_threadpool(build))


@router.get(
    "/v1/loops/{loop}/models/{version}",
    response_model=ModelDetailOut,
    responses=error_responses(404),
)
async def get_model(request: Request, loop: LoopName, version: VersionId) -> Response:
    """One version with all its gate verdicts (latest first) and its audited history."""
    await authorize(request, "read", loop)
    engine = await _loop_engine(request, loop)
    found = await _version(engine, loop, version)

    def build() -> dict[str, Any]:
        verdicts = list_verdicts(engine, found.version, limit=100)
        out = _model_json(
            found,
            verdicts[0] if verdicts else None,
            found.version in override_versions(engine, loop),
        )
        out["verdicts"] = [v.to_json() for v in verdicts]
        out["history"] = [e.to_json() for e in model_history(engine, loop, found.version)]
        return out

    return _json(await run_in_threadpool(build))


async def _move(
    request: Request,
    principal: Principal,
    loop: str,
    version: str,
    to: str,
    body: Any,
    **kwargs: Any,
) -> Response:
    engine = await _loop_engine(request, loop)
    found = await _version(engine, loop, version)
    actor, role = actor_of(principal)

    def run() -> dict[str, Any]:
        moved = transition(
            engine, found.version, to, actor=actor, role=role, reason=body.reason, **kwargs
        )
        return _one_json(engine, moved)

    return _json(await run_in_threadpool(run))


_MOVE_ERRORS = error_responses(400, 404, 409, 413, 422)


@router.post(
    "/v1/loops/{loop}/models/{version}/approve",
    response_model=ModelOut,
    responses=_MOVE_ERRORS,
    openapi_extra=body_ref(ApproveRequest),
)
async def approve(request: Request, loop: LoopName, version: VersionId) -> Response:
    """Make the version live (its latest gate verdict must have passed, unless `override`);
    the live version retires and becomes this one's rollback target."""
    principal = await authorize(request, "gatekeep", loop)
    body = await _body(request, ApproveRequest)
    return await _move(request, principal, loop, version, "live", body, override=body.override)


@router.post(
    "/v1/loops/{loop}/models/{version}/reject",
    response_model=ModelOut,
    responses=_MOVE_ERRORS,
    openapi_extra=body_ref(RejectRequest),
)
async def reject(request: Request, loop: LoopName, version: VersionId) -> Response:
    """Reject a candidate, shadow or canary (a canary stops serving; live is untouched)."""
    principal = await authorize(request, "gatekeep", loop)
    body = await _body(request, RejectRequest)
    return await _move(request, principal, loop, version, "rejected", body)


@router.post(
    "/v1/loops/{loop}/models/{version}/rollout",
    response_model=ModelOut,
    responses=_MOVE_ERRORS,
    openapi_extra=body_ref(RolloutRequest),
)
async def rollout(request: Request, loop: LoopName, version: VersionId) -> Response:
    """Move the version to shadow (scored beside live, never served) or canary (serves
    `canary_percent` % of traffic)."""
    principal = await authorize(request, "gatekeep", loop)
    body = await _body(request, RolloutRequest)
    if body.to == "shadow" and body.canary_percent is not None:
        raise InvalidInput("canary_percent applies to a canary only", "invalid_request")
    extra = {"canary_percent": body.canary_percent} if body.to == "canary" else {}
    return await _move(request, principal, loop, version, body.to, body, **extra)


@router.post(
    "/v1/loops/{loop}/rollback",
    response_model=ModelOut,
    responses=_MOVE_ERRORS,
    openapi_extra=body_ref(RollbackRequest),
)
async def roll_back(request: Request, loop: LoopName) -> Response:
    """Roll the live version back: it retires, the version it replaced (or `to`) is live again.
    Answers the restored version. To stop a canary and keep live, reject the canary."""
    principal = await authorize(request, "gatekeep", loop)
    engine = await _loop_engine(request, loop)
    body = await _body(request, RollbackRequest)
    actor, role = actor_of(principal)

    def run() -> dict[str, Any]:
        restored = rollback(
            engine,
            loop,
            actor=actor,
            role=role,
            reason=body.reason,
            to=body.to,
            expected_live=body.expected_live,
        )
        return _one_json(engine, restored)

    return _json(await run_in_threadpool(run))


@router.get("/v1/loops/{loop}/rollout", response_model=RolloutOut, responses=error_responses(404))
async def rollout_state(request: Request, loop: LoopName) -> Response:
    """The live, canary and shadow versions, and the canary's online analysis against live."""
    await authorize(request, "read", loop)
    engine = await _loop_engine(request, loop)

    def build() -> dict[str, Any]:
        current = {
            m.status: m for m in stored_models(engine, loop, statuses=("live", "canary", "shadow"))
        }
        verdicts = latest_verdicts(engine, loop, [m.version for m in current.values()])
        overrides = override_versions(engine, loop)
        out: dict[str, Any] = {"loop": loop}
        for status in ("live", "canary", "shadow"):
            m = current.get(status)
            out[status] = (
                None
                if m is None
                else _model_json(m, verdicts.get(m.version), m.version in overrides)
            )
        analysis = None
        if "canary" in current:
            try:
                analysis = analyse_canary(engine, loop).to_json()
            except Conflict:  # the canary left between the two reads
                analysis = None
        out["canary_analysis"] = analysis
        return out

    return _json(await run_in_threadpool(build))
