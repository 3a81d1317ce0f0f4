"""Bodies of the key and audit routes (`routes_keys.py`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from deploy.keys import MAX_KEY_LOOPS, MAX_KEY_NAME

__all__ = [
    "REQUEST_MODELS",
    "AuditEntryOut",
    "AuditOut",
    "KeyCreateIn",
    "KeyCreatedOut",
    "KeyOut",
    "KeysOut",
]

Role = Literal["app", "experimenter", "gatekeeper", "admin"]
ScopeLoop = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")]


class KeyCreateIn(BaseModel):
    """Body of `POST /v1/keys`. `loops` left out: the key acts on every loop."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=MAX_KEY_NAME, pattern=r"^[^\x00-\x1f\x7f]*$")
    role: Role
    loops: list[ScopeLoop] | None = Field(default=None, min_length=1, max_length=MAX_KEY_LOOPS)


class KeyOut(BaseModel):
    """A key as listed: never its secret nor the secret's hash."""

    key_id: str = Field(pattern=r"^[0-9a-f]{12}$")
    name: str
    role: Role
    loops: list[str] | None = Field(description="The loops the key may act on; null: every loop.")
    active: bool
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None
    revoked_by: str | None


class KeyCreatedOut(KeyOut):
    key: str = Field(
        description="The key, shown this once: send it as `Authorization: Bearer <key>`.",
        pattern=r"^dsk_[0-9a-f]{12}_[A-Za-z0-9_\-]{43}$",
    )


class KeysOut(BaseModel):
    keys: list[KeyOut]


class AuditEntryOut(BaseModel):
    seq: int = Field(ge=1)
    at: datetime
    actor: str = Field(description="Who: `key:<key id>:<name>`, `cli:<user>`, `learner`...")
    role: str | None
    loop: str | None
    action: str
    target: str | None
    reason: str | None
    details: dict[str, Any] = Field(description="The numbers of the action.")


class AuditOut(BaseModel):
    entries: list[AuditEntryOut]
    next_after_seq: int | None = Field(
        description="Pass as `after_seq` for the next page; null when this page is the last."
    )


REQUEST_MODELS: tuple[type[BaseModel], ...] = (KeyCreateIn,)
