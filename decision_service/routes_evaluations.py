"""Offline evaluations over HTTP: ``/v1/loops/{loop}/evaluations``.

``POST`` validates the request (nothing is written when it is refused), inserts a `queued` row
and starts the job in a process of its own (``python -m decision_service.cli_evaluate --job
ID``, with ``DS_DATABASE_URL`` from the service's settings): the serving worker only inserts and
spawns, the job trains and evaluates outside it (DESIGN §6). It answers 202 with the row and a
``Location`` to poll. ``GET .../{id}`` gives status, progress and, once succeeded, the result;
``GET .../{id}/report`` the self-contained HTML report; ``GET`` on the collection lists runs.

A thread of the worker waits for each job process; a process that exits with an error before
recording its end (a crash, a kill) leaves its row `failed` with the exit status and the tail
of its stderr.

| what | status | code |
| --- | --- | --- |
| unknown loop (or a name no loop can have) | 404 | loop_not_found |
| unknown evaluation (or one of another loop) | 404 | evaluation_not_found |
| body not JSON / too large | 400 / 413 | invalid_json / payload_too_large |
| wrong shape, unknown fields, bad estimator, alpha, interval, guardrails | 422 | invalid_request |
| two policies with one name | 422 | duplicate_policy |
| since >= until, naive or unparsable timestamps, train_until >= until | 422 | invalid_window |
| model version unknown in this loop | 422 | unknown_version |
| VW arguments refused (forbidden, touching files, rejected by VW) | 422 | invalid_vw_args |
| report of a run not succeeded | 409 | evaluation_not_ready |
| the loop's `DS_MAX_EVALUATIONS_PER_LOOP` runs already active | 429 | too_many_evaluations |

At most `DS_MAX_EVALUATIONS_PER_LOOP` runs per loop are queued or running at once (checked and
inserted atomically, across workers); a job still running after `DS_EVALUATION_TIMEOUT_S` is
killed and failed, and rows older than that no longer count (a worker that died with its job
cannot block a loop forever).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
)
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, Response

import deploy.registry as registry
from decision_service.auth import authorize
from decision_service.errors import describe_validation
from decision_service.routes import LOOP_NAME, LoopName, _json, _service, read_json
from decision_service.schemas import body_ref, error_responses
from decision_service.settings import Settings
from explore.errors import Conflict, InvalidInput, NotFound
from learn.offline_eval import resolve_spec
from learn.offline_eval_spec import EvaluationSpec, SpecError
from learn.report import render_html
from log.evaluations import (
    EvaluationRecord,
    create_evaluation,
    fail_evaluation,
    get_evaluation,
    list_evaluations,
)
from log.loops import get_loop
from log.schema import Engine

__all__ = [
    "REQUEST_MODELS",
    "EvaluationOut",
    "EvaluationRequest",
    "queue_run",
    "router",
    "spawn_job",
    "start_run",
]

logger = logging.getLogger(__name__)
router = APIRouter()
MAX_LIST = 500
EVALUATION_ID = re.compile(r"[0-9a-f]{32}")
_STDERR_TAIL = 2000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PolicyIn(_Body):
    kind: Literal["live", "uniform", "first_action", "model", "vw_args"]
    name: str | None = Field(default=None, min_length=1, max_length=128)
    version: str | None = Field(default=None, min_length=1, max_length=256)
    args: str | None = Field(default=None, min_length=1, max_length=2000)
    explore: StrictBool | None = None
    train_since: str | None = None
    train_until: str | None = None
    exploration: dict[str, Any] | None = Field(
        default=None,
        description="model / vw_args: overrides of the loop's exploration (exploration, "
        "epsilon, softmax_lambda, exploration_options).",
    )


class EvaluationRequest(_Body):
    """Body of ``POST /v1/loops/{loop}/evaluations``; every field optional."""

    policies: list[PolicyIn] | None = Field(default=None, min_length=1, max_length=32)
    since: str | None = None
    until: str | None = None
    estimators: list[str] | None = Field(default=None, min_length=1, max_length=7)
    alpha: StrictFloat | StrictInt = 0.05
    interval: str = "bootstrap"
    slates: Literal["skip", "slot0"] = "skip"
    seed: StrictInt = 0
    guardrails: list[str] | None = Field(
        default=None,
        max_length=8,
        description="Guardrail metrics (as in the loop's gate.guardrails, e.g. report): each "
        "policy's result gets, per metric, its rate (share of events with at least one signal "
        "of the metric inside the window), live's on the same events and the paired difference, "
        "IPS estimates with this request's interval and alpha.",
    )


class EvaluationLinks(BaseModel):
    self: str
    report: str


class EvaluationOut(BaseModel):
    """An evaluation run; `result` only on GET of one run, once it succeeded."""

    id: str
    loop: str
    status: Literal["queued", "running", "succeeded", "failed"]
    progress: float = Field(ge=0, le=1)
    request: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: EvaluationLinks
    result: dict[str, Any] | None = None


class EvaluationsOut(BaseModel):
    evaluations: list[EvaluationOut]


REQUEST_MODELS: tuple[type[BaseModel], ...] = (EvaluationRequest,)
EvaluationId = Annotated[
    str,
    Path(
        description="The run's id (32 hex digits).",
        json_schema_extra={"pattern": f"^{EVALUATION_ID.pattern}$"},
    ),
]


def _links(record: EvaluationRecord) -> dict[str, str]:
    base = f"/v1/loops/{record.loop}/evaluations/{record.id}"
    return {"self": base, "report": f"{base}/report"}


def _record_json(record: EvaluationRecord, *, with_result: bool = True) -> dict[str, Any]:
    return {**record.to_json(with_result=with_result), "links": _links(record)}


async def _existing_loop(request: Request, loop: str) -> Engine:
    engine = _service(request).engine
    if not LOOP_NAME.fullmatch(loop) or await run_in_threadpool(get_loop, engine, loop) is None:
        raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
    return engine


def _watch(
    engine: Engine, proc: subprocess.Popen[bytes], evaluation_id: str, timeout_s: float
) -> None:
    try:
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the job leads its own session
            proc.communicate()
            fail_evaluation(
                engine,
                evaluation_id,
                f"the evaluation ran longer than {timeout_s:g} s (DS_EVALUATION_TIMEOUT_S) and "
                "was stopped",
                include_queued=True,
            )
            return
        if proc.returncode != 0:
            tail = (err or b"").decode(errors="replace")[-_STDERR_TAIL:]
            fail_evaluation(
                engine,
                evaluation_id,
                f"the evaluation process exited with status {proc.returncode}: {tail}",
                include_queued=True,
            )
    except Exception:  # a watcher must never take the worker down
        logger.exception("watching evaluation %s failed", evaluation_id)


def spawn_job(engine: Engine, settings: Settings, evaluation_id: str) -> bool:
    """Start the job process of a queued run and a thread that waits for it. False when the
    process could not be started (the run is then `failed`)."""
    env = dict(os.environ)
    env["DS_DATABASE_URL"] = settings.database_url
    cmd = [sys.executable, "-m", "decision_service.cli_evaluate", "--job", evaluation_id]
    try:
        proc = subprocess.Popen(
            [*cmd, "--no-progress"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as err:
        fail_evaluation(
            engine, evaluation_id, f"could not start the job: {err}", include_queued=True
        )
        logger.exception("could not start evaluation %s", evaluation_id)
        return False
    threading.Thread(
        target=_watch,
        args=(engine, proc, evaluation_id, settings.evaluation_timeout_s),
        name=f"evaluation-{evaluation_id[:8]}",
        daemon=True,
    ).start()
    return True


async def queue_run(
    engine: Engine, settings: Settings, loop: str, spec: EvaluationSpec
) -> EvaluationRecord:
    """Resolve `spec` against the loop's store and store it as a queued run (bounded by
    `max_evaluations_per_loop`): the one path of every evaluation route (native, tune,
    Personalizer's). Start it with `start_run`."""
    try:
        spec = await run_in_threadpool(lambda: resolve_spec(engine, loop, spec, registry=registry))
    except SpecError as err:
        raise InvalidInput(err.message, err.code) from None
    except LookupError as err:
        raise NotFound(str(err), "loop_not_found") from None
    since = datetime.now(UTC) - timedelta(seconds=settings.evaluation_timeout_s)
    return await run_in_threadpool(
        lambda: create_evaluation(
            engine,
            loop,
            spec.to_json(),
            max_active=settings.max_evaluations_per_loop,
            active_since=since,
        )
    )


async def start_run(
    engine: Engine, settings: Settings, record: EvaluationRecord
) -> EvaluationRecord:
    """Start a queued run's job; the run as stored after a failed start."""
    # `spawn_job` is looked up at call time (the contract tests keep accepted runs queued)
    if not await run_in_threadpool(spawn_job, engine, settings, record.id):
        failed = await run_in_threadpool(get_evaluation, engine, record.id)
        return failed if failed is not None else record
    return record


@router.post(
    "/v1/loops/{loop}/evaluations",
    status_code=202,
    response_model=EvaluationOut,
    response_description="Accepted: the run is queued (poll the Location).",
    responses=error_responses(400, 404, 413, 422, 429),
    openapi_extra=body_ref(EvaluationRequest),
)
async def create(request: Request, loop: LoopName) -> Response:
    """Queue an offline evaluation of candidate policies on the loop's joined logs."""
    await authorize(request, "evaluate", loop)
    engine = await _existing_loop(request, loop)
    service = _service(request)
    body = await read_json(request)
    try:
        parsed = EvaluationRequest.model_validate(body)
    except ValidationError as err:
        raise InvalidInput(describe_validation(err.errors())) from None
    try:
        spec = EvaluationSpec.from_json(parsed.model_dump(exclude_none=True))
    except SpecError as err:
        raise InvalidInput(err.message, err.code) from None
    record = await start_run(
        engine, service.settings, await queue_run(engine, service.settings, loop, spec)
    )
    return _json(_record_json(record, with_result=False), 202, {"Location": _links(record)["self"]})


@router.get(
    "/v1/loops/{loop}/evaluations",
    response_model=EvaluationsOut,
    responses=error_responses(404, 422),
)
async def list_runs(
    request: Request,
    loop: LoopName,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST, description="Most runs listed.")] = 50,
) -> Response:
    """The loop's latest runs, newest first (without their results)."""
    await authorize(request, "read", loop)
    engine = await _existing_loop(request, loop)
    records = await run_in_threadpool(lambda: list_evaluations(engine, loop, limit=limit))
    return _json({"evaluations": [_record_json(r, with_result=False) for r in records]})


async def _run(request: Request, loop: str, evaluation_id: str) -> EvaluationRecord:
    await authorize(request, "read", loop)
    engine = await _existing_loop(request, loop)
    record = None
    if EVALUATION_ID.fullmatch(evaluation_id):
        record = await run_in_threadpool(lambda: get_evaluation(engine, evaluation_id, loop=loop))
    if record is None:
        raise NotFound(f"no evaluation {evaluation_id!r} in loop {loop!r}", "evaluation_not_found")
    return record


@router.get(
    "/v1/loops/{loop}/evaluations/{evaluation_id}",
    response_model=EvaluationOut,
    responses=error_responses(404),
)
async def get_run(request: Request, loop: LoopName, evaluation_id: EvaluationId) -> Response:
    """One run: status, progress and, once it succeeded, its result."""
    return _json(_record_json(await _run(request, loop, evaluation_id)))


@router.get(
    "/v1/loops/{loop}/evaluations/{evaluation_id}/report",
    response_class=HTMLResponse,
    response_description="The self-contained HTML report.",
    responses=error_responses(404, 409),
)
async def get_report(request: Request, loop: LoopName, evaluation_id: EvaluationId) -> Response:
    """The run's HTML report, once it succeeded."""
    record = await _run(request, loop, evaluation_id)
    if record.status != "succeeded" or record.result is None:
        detail = f": {record.error}" if record.error else ""
        raise Conflict(
            f"evaluation {evaluation_id!r} is {record.status}{detail}; the report exists once it "
            "succeeded",
            "evaluation_not_ready",
        )
    page = await run_in_threadpool(render_html, record.result)
    return Response(page, media_type="text/html; charset=utf-8")
