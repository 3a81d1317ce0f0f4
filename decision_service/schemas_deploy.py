"""Bodies of the deploy routes (models, gate verdicts, rollout, rollback): requests and responses.

Requests are read by the routes themselves (service error codes); the app registers
`REQUEST_MODELS` as OpenAPI components. Reasons are required where a gatekeeper changes a state:
non-blank, at most `MAX_REASON` characters.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
)

from deploy.rollout import MAX_REASON
from log.deploy_settings import DEPLOY_BOUNDS

__all__ = [
    "REQUEST_MODELS",
    "ApproveRequest",
    "AuditEntryOut",
    "CanaryAnalysisOut",
    "ModelDetailOut",
    "ModelOut",
    "ModelsOut",
    "RejectRequest",
    "RollbackRequest",
    "RolloutOut",
    "RolloutRequest",
    "VerdictOut",
]

Number = StrictInt | StrictFloat
VERSION_MAX = 256
_PCT_LO, _PCT_HI = DEPLOY_BOUNDS[("rollout", "canary_percent")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _reason_field() -> Any:
    return Field(
        min_length=1,
        max_length=MAX_REASON,
        description=f"Why (required, non-blank, at most {MAX_REASON} characters; audited).",
    )


class _Reasoned(_Body):
    reason: str = _reason_field()

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip() or "\x00" in value:
            raise ValueError("reason must not be blank nor hold NUL")
        return value


class ApproveRequest(_Reasoned):
    """Body of ``POST /v1/loops/{loop}/models/{version}/approve``: make the version live."""

    override: StrictBool = Field(
        False,
        description="Go live although the latest gate verdict did not pass (flagged and audited "
        "as an override; the reason is required anyway).",
    )


class RejectRequest(_Reasoned):
    """Body of ``POST /v1/loops/{loop}/models/{version}/reject``."""


class RolloutRequest(_Reasoned):
    """Body of ``POST /v1/loops/{loop}/models/{version}/rollout``: to shadow or canary."""

    to: Literal["shadow", "canary"]
    canary_percent: Number | None = Field(
        None,
        ge=_PCT_LO,
        le=_PCT_HI,
        description=f"Canary only: the share of traffic in percent, in [{_PCT_LO:g}, {_PCT_HI:g}] "
        "(default: the loop's rollout.canary_percent).",
    )


class RollbackRequest(_Reasoned):
    """Body of ``POST /v1/loops/{loop}/rollback``."""

    to: str | None = Field(
        None,
        min_length=1,
        max_length=VERSION_MAX,
        description="The retired version to restore (default: the version live replaced).",
    )
    expected_live: str | None = Field(
        None,
        min_length=1,
        max_length=VERSION_MAX,
        description="Refuse (409 transition_conflict) unless this is still the live version: two "
        "gatekeepers pressing rollback at once then roll back one version, not two.",
    )


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    ApproveRequest,
    RejectRequest,
    RolloutRequest,
    RollbackRequest,
)


# ----------------------------------------------------------------------------------- responses
class VerdictOut(BaseModel):
    """A stored verdict of the promotion gate with every number it decided from."""

    id: str
    loop: str
    version: str
    incumbent: str | None = Field(description="The live version compared with (None: none).")
    at: datetime
    look: int = Field(ge=1, description="1 for the version's first check, 2 for the next...")
    decision: Literal["pass", "fail", "pending"]
    passed: bool
    reason: str
    criteria: dict[str, Any] = Field(description="The gate settings applied.")
    numbers: dict[str, Any] = Field(
        description="n, the difference (candidate - live) with its interval, both values, the "
        "weight diagnostics, support, guardrails, the evaluation window."
    )


class ModelOut(BaseModel):
    """A model version with its rollout state and its latest gate verdict."""

    version: str
    loop: str
    kind: str
    status: Literal["candidate", "shadow", "canary", "live", "retired", "rejected"]
    vw_args: str
    sha256: str
    parent: str | None = Field(description="The version it continues (lineage).")
    replaced: str | None = Field(description="Where a rollback of this version goes.")
    trained_from: datetime | None
    trained_until: datetime | None
    n_events: int
    canary_percent: float | None
    live_since: datetime | None
    created_at: datetime
    updated_at: datetime
    override: bool = Field(description="Made live over a gate that had not passed it.")
    latest_verdict: VerdictOut | None


class ModelsOut(BaseModel):
    loop: str
    models: list[ModelOut] = Field(description="Newest first.")


class AuditEntryOut(BaseModel):
    seq: int | None
    at: datetime
    actor: str
    role: str | None
    loop: str | None
    action: str
    target: str | None
    reason: str | None
    details: dict[str, Any]


class ModelDetailOut(ModelOut):
    verdicts: list[VerdictOut] = Field(description="Every verdict, latest first (at most 100).")
    history: list[AuditEntryOut] = Field(description="Its audited state changes, oldest first.")


class IntervalOut(BaseModel):
    value: float
    ci_low: float
    ci_high: float


class GuardrailOut(BaseModel):
    canary_rate: float | None
    live_rate: float | None
    difference: IntervalOut | None
    allowed: float


class CanaryAnalysisOut(BaseModel):
    """The canary against live on the split's joined decisions (anytime-valid sequence)."""

    loop: str
    canary: str
    live: str | None
    since: datetime
    canary_percent: float | None
    confidence: float
    n_canary: int
    n_live: int
    canary_mean: float | None
    live_mean: float | None
    difference: IntervalOut | None = Field(description="canary - live, with its interval.")
    guardrails: dict[str, GuardrailOut]
    decision: Literal["worse", "guardrail", "better", "undecided"]
    reason: str
    truncated: bool


class RolloutOut(BaseModel):
    loop: str
    live: ModelOut | None
    canary: ModelOut | None
    shadow: ModelOut | None
    canary_analysis: CanaryAnalysisOut | None
