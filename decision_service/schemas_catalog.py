"""Request and response bodies of the catalog and retriever routes (OpenAPI documentation;
the routes validate bodies themselves with the same rules and the settings' limits)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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


class RetrieversOut(BaseModel):
    retrievers: list[RetrieverOut]
    indexes: list[dict[str, Any]] = Field(description="The latest index builds, newest first.")
    serving: dict[str, Any] | None = Field(description="This worker's index for the loop.")


REQUEST_MODELS: tuple[type[BaseModel], ...] = (ItemsPutIn, ItemIdsIn)
