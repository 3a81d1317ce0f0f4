"""The learner over HTTP: its per-loop state, the loop's alarms, resuming a stopped freshness
track.

| route | what | permission |
| --- | --- | --- |
| ``GET .../learner`` | the tracks' schedule and state, the last runs, firing alarms | read |
| ``GET .../alarms`` | the loop's alarms, newest first (``?state=firing``) | read |
| ``POST .../freshness/resume`` | resume a stopped freshness track, ``{reason}`` | gatekeep |
| ``POST .../alarms/{alarm_id}/clear`` | acknowledge a firing alarm, ``{reason}`` | gatekeep |

(``...`` is ``/v1/loops/{loop}``.)

| what | status | code |
| --- | --- | --- |
| unknown loop (or a name no loop can have) | 404 | loop_not_found |
| body not JSON / too large | 400 / 413 | invalid_json / payload_too_large |
| no reason, an empty or overlong one, unknown fields | 422 | invalid_request |
| the freshness track is not stopped | 409 | freshness_not_stopped |
| unknown alarm (or one of another loop) | 404 | alarm_not_found |
| the alarm is not firing | 409 | alarm_not_firing |
| a freshness_stopped alarm (resume the track instead) | 409 | alarm_needs_resume |

Resuming clears the stop and the loop's firing "freshness_stopped" alarms and appends an audit
row (who, why), in one transaction; of two concurrent resumes one succeeds, the other is a 409.
Clearing an alarm (a rolled-back canary's, say) appends an audit row ("alarm_clear") in the
same transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from decision_service.auth import authorize
from decision_service.errors import describe_validation
from decision_service.routes import LOOP_NAME, LoopName, _json, _service, read_json
from decision_service.routes_deploy import actor_of
from decision_service.schemas import body_ref, error_responses
from deploy.learner.freshness import resume
from explore.errors import InvalidInput, NotFound
from log.alarms import MAX_LIST, Alarm, clear_alarm, list_alarms
from log.learner_state import FRESHNESS_ALARM, LearnerState, get_learner_state
from log.loops import StoredLoop, get_loop
from log.schema import Engine

__all__ = ["REQUEST_MODELS", "ResumeRequest", "router"]

router = APIRouter()
MAX_REASON = 2000


class ResumeRequest(BaseModel):
    """Body of ``POST /v1/loops/{loop}/freshness/resume`` and of
    ``POST /v1/loops/{loop}/alarms/{alarm_id}/clear``."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=MAX_REASON, description="Why it is resumed.")


class AlarmOut(BaseModel):
    id: str
    loop: str
    kind: str
    state: Literal["firing", "cleared"]
    raised_at: datetime
    cleared_at: datetime | None
    message: str
    details: dict[str, Any]


class AlarmsOut(BaseModel):
    alarms: list[AlarmOut]


class RunOut(BaseModel):
    track: Literal["freshness", "candidates", "rollout"]
    at: datetime
    outcome: str
    message: str
    version: str | None
    details: dict[str, Any]


class FreshnessOut(BaseModel):
    every_s: float = Field(description="learner.freshness_s (0: off).")
    stopped: bool
    stopped_at: datetime | None
    reason: str | None = Field(description="Why the track stopped (the failed check).")
    last_run_at: datetime | None


class CandidatesOut(BaseModel):
    every_s: float = Field(description="learner.candidate_interval_s.")
    configurations: list[str]
    last_run_at: datetime | None


class LearnerOut(BaseModel):
    """The learner's state of a loop: both tracks, the last runs (newest first) and the loop's
    firing alarms."""

    loop: str
    freshness: FreshnessOut
    candidates: CandidatesOut
    runs: list[RunOut]
    alarms: list[AlarmOut]


REQUEST_MODELS: tuple[type[BaseModel], ...] = (ResumeRequest,)


async def _existing_loop(request: Request, loop: str) -> tuple[Engine, StoredLoop]:
    engine = _service(request).engine
    stored = None
    if LOOP_NAME.fullmatch(loop):
        stored = await run_in_threadpool(get_loop, engine, loop)
    if stored is None:
        raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
    return engine, stored


def _alarm_json(alarm: Alarm) -> dict[str, Any]:
    return alarm.to_json()


def learner_json(stored: StoredLoop, state: LearnerState, alarms: list[Alarm]) -> dict[str, Any]:
    settings = stored.config.learner

    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "loop": stored.name,
        "freshness": {
            "every_s": settings.freshness_s,
            "stopped": state.freshness_stopped,
            "stopped_at": iso(state.freshness_stopped_at),
            "reason": state.freshness_reason,
            "last_run_at": iso(state.last_freshness_at),
        },
        "candidates": {
            "every_s": settings.candidate_interval_s,
            "configurations": list(settings.candidates),
            "last_run_at": iso(state.last_candidate_at),
        },
        "runs": [r.to_json() for r in state.runs],
        "alarms": [_alarm_json(a) for a in alarms],
    }


def _learner(engine: Engine, stored: StoredLoop) -> dict[str, Any]:
    state = get_learner_state(engine, stored.name)
    alarms = list_alarms(engine, stored.name, state="firing", limit=MAX_LIST)
    return learner_json(stored, state, alarms)


@router.get(
    "/v1/loops/{loop}/learner", response_model=LearnerOut, responses=error_responses(404, 422)
)
async def get_learner(request: Request, loop: LoopName) -> Response:
    """The learner's state of the loop: the freshness track (stopped or not, why), the
    candidate track, the last runs of each track and the firing alarms."""
    await authorize(request, "read", loop)
    engine, stored = await _existing_loop(request, loop)
    return _json(await run_in_threadpool(_learner, engine, stored))


@router.get(
    "/v1/loops/{loop}/alarms", response_model=AlarmsOut, responses=error_responses(404, 422)
)
async def get_alarms(
    request: Request,
    loop: LoopName,
    state: Annotated[
        Literal["firing", "cleared"] | None,
        Query(description="Only alarms in this state (default: all)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST, description="Most alarms listed.")] = 100,
) -> Response:
    """The loop's alarms, newest first."""
    await authorize(request, "read", loop)
    engine, _ = await _existing_loop(request, loop)
    alarms = await run_in_threadpool(lambda: list_alarms(engine, loop, state=state, limit=limit))
    return _json({"alarms": [_alarm_json(a) for a in alarms]})


@router.post(
    "/v1/loops/{loop}/freshness/resume",
    response_model=LearnerOut,
    responses=error_responses(400, 404, 409, 413, 422),
    openapi_extra=body_ref(ResumeRequest),
)
async def resume_freshness(request: Request, loop: LoopName) -> Response:
    """Resume the loop's stopped freshness track (a gatekeeper, with a reason): clears the stop
    and its alarm; audited. 409 when the track is not stopped."""
    principal = await authorize(request, "gatekeep", loop)
    engine, stored = await _existing_loop(request, loop)
    body = await read_json(request)
    reason = _reason(body)
    actor, role = actor_of(principal)
    await run_in_threadpool(
        lambda: resume(engine, loop, actor=actor, role=role, reason=reason, now=datetime.now(UTC))
    )
    return _json(await run_in_threadpool(_learner, engine, stored))


AlarmId = Annotated[str, Path(description="The alarm's id.", examples=["0f" * 16])]


@router.post(
    "/v1/loops/{loop}/alarms/{alarm_id}/clear",
    response_model=AlarmOut,
    responses=error_responses(400, 404, 409, 413, 422),
    openapi_extra=body_ref(ResumeRequest),
)
async def clear_one_alarm(request: Request, loop: LoopName, alarm_id: AlarmId) -> Response:
    """Acknowledge a firing alarm (a gatekeeper, with a reason); audited. A freshness_stopped
    alarm is cleared by resuming the track instead (409 alarm_needs_resume)."""
    principal = await authorize(request, "gatekeep", loop)
    engine, _ = await _existing_loop(request, loop)
    body = await read_json(request)
    reason = _reason(body)
    actor, role = actor_of(principal)
    alarm = await run_in_threadpool(
        lambda: clear_alarm(
            engine,
            loop,
            alarm_id,
            at=datetime.now(UTC),
            actor=actor,
            role=role,
            reason=reason,
            keep_kinds=(FRESHNESS_ALARM,),
        )
    )
    return _json(_alarm_json(alarm))


def _reason(body: Any) -> str:
    try:
        parsed = ResumeRequest.model_validate(body)
    except ValidationError as err:
        raise InvalidInput(describe_validation(err.errors())) from None
    if not parsed.reason.strip() or "\x00" in parsed.reason:
        raise InvalidInput("reason must be a non-empty string without NUL", "invalid_request")
    return parsed.reason
