"""Optimization discovery over HTTP: ``POST /v1/loops/{loop}/tune`` (permission "evaluate").

Queues one offline evaluation (the same job, rows and report as ``/v1/loops/{loop}/evaluations``)
of a grid of VW argument sets x exploration settings on the loop's own logs: each combination
is trained on the earlier part of the window and evaluated on the later part (`learn.tune`). It
answers 202 with the run; the ranking is read from the run's result (each ``tuneN`` policy with
its arguments, exploration, estimates and difference with live) and its HTML report. Submitting
the best as a candidate is the CLI's ``decision-service tune --submit`` (or a PUT of the loop's
``learner.candidates``): an HTTP caller decides from the report. Errors as for evaluations.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError
from starlette.responses import Response

from decision_service import routes_evaluations
from decision_service.auth import authorize
from decision_service.errors import describe_validation
from decision_service.routes import LoopName, _json, _service, read_json
from decision_service.routes_evaluations import EvaluationOut, _existing_loop, _links, _record_json
from decision_service.schemas import body_ref, error_responses
from explore.errors import InvalidInput
from learn.offline_eval_spec import SpecError, parse_time
from learn.tune import MAX_COMBINATIONS, tune_spec

__all__ = ["REQUEST_MODELS", "TuneRequest", "router"]

router = APIRouter()


class TuneRequest(BaseModel):
    """Body of ``POST /v1/loops/{loop}/tune``; every field optional."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    vw_args: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_COMBINATIONS,
        description="VW argument sets (default: a small built-in set).",
    )
    explorations: list[dict[str, Any] | None] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_COMBINATIONS,
        description="Exploration overrides (exploration, epsilon, softmax_lambda, "
        "exploration_options); null keeps the loop's. At most 31 combinations in all.",
    )
    since: str | None = None
    until: str | None = None
    train_until: str | None = Field(
        default=None, description="End of training, start of evaluation (default: the median)."
    )
    estimators: list[str] | None = Field(default=None, min_length=1, max_length=7)
    alpha: StrictFloat | StrictInt = 0.05
    interval: str = "bootstrap"
    seed: StrictInt = 0


REQUEST_MODELS: tuple[type[BaseModel], ...] = (TuneRequest,)


@router.post(
    "/v1/loops/{loop}/tune",
    status_code=202,
    response_model=EvaluationOut,
    response_description="Accepted: the grid's evaluation is queued (poll the Location).",
    responses=error_responses(400, 404, 413, 422, 429),
    openapi_extra=body_ref(TuneRequest),
)
async def tune(request: Request, loop: LoopName) -> Response:
    """Queue the off-policy evaluation of a grid of VW arguments x exploration settings."""
    await authorize(request, "evaluate", loop)
    engine = await _existing_loop(request, loop)
    service = _service(request)
    body = await read_json(request)
    try:
        parsed = TuneRequest.model_validate(body)
    except ValidationError as err:
        raise InvalidInput(describe_validation(err.errors())) from None
    try:
        extra: dict[str, Any] = {}
        if parsed.estimators is not None:
            extra["estimators"] = tuple(parsed.estimators)
        spec = tune_spec(
            parsed.vw_args or (),
            parsed.explorations or (),
            since=parse_time(parsed.since, "since"),
            until=parse_time(parsed.until, "until"),
            train_until=parse_time(parsed.train_until, "train_until"),
            alpha=float(parsed.alpha),
            interval=parsed.interval,
            seed=parsed.seed,
            **extra,
        )
    except SpecError as err:
        raise InvalidInput(err.message, err.code) from None
    settings = service.settings
    queued = await routes_evaluations.queue_run(engine, settings, loop, spec)
    record = await routes_evaluations.start_run(engine, settings, queued)
    return _json(_record_json(record, with_result=False), 202, {"Location": _links(record)["self"]})
