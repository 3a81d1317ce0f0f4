"""Request and response bodies of the catalog and retriever routes (OpenAPI documentation;
the routes validate bodies themselves with the same rules and the settings' limits)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from decision_service.schemas import _Body

MAX_ITEMS_PER_PUT = 1000
MAX_EMBEDDING_DIM = 256
MAX_LIST = 1000


class ItemIn(_Body):
    id: str = Field(min_length=1, max_length=256, description="The item's id (an action id).")
    features: dict[str, Any] = Field(
        default_factory=dict, description="The item's features (at most DS_MAX_FEATURES)."
    )
    created_at: str | None = Field(
        default=None,
        description="ISO 8601 with a time zone; absent: now for a new item, kept otherwise.",
    )
    embedding: list[float] | None = Field(
        default=None,
        max_length=MAX_EMBEDDING_DIM,
        description="A precomputed embedding in the live retriever's space; absent: the live "
        "item tower's (cold start), or kept.",
    )


class ItemsPutIn(_Body):
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_ITEMS_PER_PUT)


class ItemIdsIn(_Body):
    ids: list[str] = Field(min_length=1, max_length=MAX_ITEMS_PER_PUT)


class ItemsPutOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loop: str
    upserted: int
    inserted: int
    embedded: int = Field(description="Items given an embedding by the live item tower.")


class ItemsChangedOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loop: str
    changed: int


class ItemOut(BaseModel):
    id: str
    features: dict[str, Any]
    created_at: str
    updated_at: str
    active: bool
    embedding_model: str | None
    embedding: list[float] | None = None


class ItemsOut(BaseModel):
    items: list[ItemOut]
    total: int
    next_after: str | None = Field(description="The cursor of the next page (None: last page).")


class RetrieverOut(BaseModel):
    version: str
    loop: str
    kind: str
    status: str
    sha256: str
    metrics: dict[str, Any]
    created_at: str
    updated_at: str
    canary_percent: float | None = Field(None, description="While canary: its share (%).")
    replaced: str | None = Field(None, description="Once live: the version it replaced.")


class RetrieverVerdictOut(BaseModel):
    """A verdict of the retriever gate (`numbers`: recall@k of candidate and baseline, their
    paired difference with its interval, the AUCs, n, k, the baseline)."""

    id: str
    loop: str
    version: str
    incumbent: str | None
    at: str
    look: int
    decision: str
    passed: bool
    reason: str
    criteria: dict[str, Any]
    numbers: dict[str, Any]


class RetrieverWithVerdictOut(RetrieverOut):
    verdict: RetrieverVerdictOut | None = Field(
        None, description="The latest retriever-gate verdict (None: never checked)."
    )


class RetrieverPromoteIn(BaseModel):
    """Optional body of ``POST .../retrievers/{version}/promote``."""

    model_config = ConfigDict(extra="forbid")
    override: StrictBool = Field(
        False,
        description="Go live although the latest retriever-gate verdict did not pass (audited "
        "as retriever.live_override; needs a reason).",
    )
    reason: str | None = Field(None, min_length=1, max_length=1000)


class RetrieverRejectIn(BaseModel):
    """Body of ``POST .../retrievers/{version}/reject``."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=1000)


class RetrieverRolloutIn(BaseModel):
    """Body of ``POST .../retrievers/{version}/rollout``: to shadow (retrieves beside live after
    each decision, never served) or canary (retrieves for `canary_percent` % of the units)."""

    model_config = ConfigDict(extra="forbid")
    to: Literal["shadow", "canary"]
    canary_percent: StrictInt | StrictFloat | None = Field(
        None,
        gt=0,
        lt=100,
        description="Canary only: the share of units in percent (default: the loop's "
        "rollout.canary_percent).",
    )
    override: StrictBool = Field(
        False,
        description="To canary although the latest retriever-gate verdict did not pass "
        "(audited as retriever.canary_override; needs a reason).",
    )
    reason: str | None = Field(None, min_length=1, max_length=1000)


class RetrieverRollbackIn(BaseModel):
    """Body of ``POST .../retrievers/rollback``."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=1000)
    to: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="The retired retriever to restore (default: the one live replaced).",
    )
    expected_live: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Refuse (409 transition_conflict) unless this is still the live retriever.",
    )


class RetrieverReportOut(BaseModel):
    """The shadow's overlap@k and hit rates, the canary's online A/B (None: no such role)."""

    loop: str
    live: str | None
    window: int = Field(description="Retrieved decisions read (the latest, at most max_events).")
    truncated: bool
    shadow: dict[str, Any] | None
    canary: dict[str, Any] | None


class RetrieverCheckIn(BaseModel):
    """Optional body of ``POST .../retrievers/{version}/check``."""

    model_config = ConfigDict(extra="forbid")
    k: StrictInt = Field(50, ge=1, le=10_000, description="recall@k's k.")


class RetrieversOut(BaseModel):
    retrievers: list[RetrieverWithVerdictOut]
    indexes: list[dict[str, Any]] = Field(description="The latest index builds, newest first.")
    serving: dict[str, Any] | None = Field(description="This worker's index for the loop.")


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    ItemsPutIn,
    ItemIdsIn,
    RetrieverPromoteIn,
    RetrieverRejectIn,
    RetrieverCheckIn,
    RetrieverRolloutIn,
    RetrieverRollbackIn,
)
