"""What a loop serves beside its live version: ``GET /v1/loops/{loop}/shadow``.

The shadow report (`deploy.shadow.shadow_report`) of the loop's current shadow version, or of a
past one (``?version=``): how many decisions it shadowed, how often its top choice agreed with
the served one, and its off-policy value (IPS, DR) on that traffic against the served policy's
on-policy value, with intervals. Read-only; computed on request over the latest `max_events`
shadowed decisions (in the worker's thread pool).

| what | status | code |
| --- | --- | --- |
| unknown loop (or a name no loop can have) | 404 | loop_not_found |
| no version given and the loop has no shadow | 404 | shadow_not_found |
| version unknown in this loop | 404 | model_not_found |
| max_events, slates or interval out of bounds | 422 | invalid_request |
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from decision_service.auth import authorize
from decision_service.rank_input import CONTROL
from decision_service.routes import LOOP_NAME, LoopName, _json, _service
from decision_service.schemas import error_responses
from deploy.shadow import DEFAULT_MAX_EVENTS, MAX_EVENTS, shadow_report
from explore.errors import NotFound

__all__ = ["ShadowReportOut", "router"]

router = APIRouter()


class EstimateOut(BaseModel):
    value: float
    ci_low: float
    ci_high: float
    n: int
    ess: float
    method: str


class ShadowReportOut(BaseModel):
    """A shadow version's report (see deploy/shadow.py for every figure's definition)."""

    loop: str
    version: str
    status: str = Field(description="The version's status now (shadow, canary, live, ...).")
    n_shadowed: int = Field(description="Decisions logged with its pmf, all time.")
    n_joined: int = Field(description="Of which joined.")
    first_at: str | None
    last_at: str | None
    window: int = Field(description="Latest shadowed decisions read (at most max_events).")
    max_events: int
    agreement: float | None = Field(
        description="Share of the window where its top choice equals the served arm's."
    )
    served_by_arm: dict[str, int] = Field(description="Decisions of the window per serving arm.")
    n_evaluated: int = Field(description="Joined decisions of the window the values use.")
    n_slates_skipped: int
    served: EstimateOut | None = Field(description="The served policy's on-policy value.")
    shadow: dict[str, EstimateOut] = Field(description="Its off-policy value: ips, dr.")
    difference: dict[str, EstimateOut] = Field(description="Shadow - served, paired.")
    diagnostics: dict[str, Any] | None = Field(description="Importance-weight diagnostics.")
    interval: str
    alpha: float
    problems: list[str] = Field(description="Reasons not to trust the values; empty if none.")


@router.get(
    "/v1/loops/{loop}/shadow",
    response_model=ShadowReportOut,
    responses=error_responses(404, 422),
)
async def get_shadow_report(
    request: Request,
    loop: LoopName,
    version: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=256,
            description="A version that was the loop's shadow (default: the current shadow).",
        ),
    ] = None,
    max_events: Annotated[
        int,
        Query(ge=1, le=MAX_EVENTS, description="The latest shadowed decisions to report on."),
    ] = DEFAULT_MAX_EVENTS,
    slates: Annotated[
        Literal["skip", "slot0"],
        Query(description="Leave slates out of the values, or value their first slot."),
    ] = "skip",
    interval: Annotated[
        Literal["normal", "bootstrap"], Query(description="Interval of the values.")
    ] = "normal",
) -> Response:
    """The shadow report: agreement with the served decisions and off-policy value."""
    await authorize(request, "read", loop)
    if not LOOP_NAME.fullmatch(loop):
        raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
    if version is not None and CONTROL.search(version):  # no version id holds one
        raise NotFound(f"model version {version!r} does not exist", "model_not_found")
    engine = _service(request).engine
    report = await run_in_threadpool(
        lambda: shadow_report(
            engine, loop, version, max_events=max_events, slates=slates, interval=interval
        )
    )
    return _json(report.to_json())
