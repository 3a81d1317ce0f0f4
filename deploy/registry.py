"""Model registry: versions with artifact, sha256, lineage, training window and status.

Registering is one transaction: a training that is interrupted before or during registration
leaves no version behind. `promote` makes a version live and retires the previous live one in
one transaction, serialised per loop; the database holds at most one live version per loop
(unique index): a promotion that loses a race raises :class:`LiveVersionConflict` and changes
nothing. Serving workers pick the live version up by polling (no restart).

A version registered with a parent (an online continuation) covers its whole lineage:
`trained_from`/`trained_until` span the events it and every ancestor learned, so an
evaluation that starts after `trained_until` never scores it on data it was trained on.

The storage is `log.registry_store` (only `log` talks to the database).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

from deploy import rollout
from explore.errors import NotFound
from log.registry_store import (
    LiveVersionConflict,
    ModelRecord,
    get_model,
    list_models,
    live_model,
    live_models,
    read_artifact,
    register_model,
)
from log.schema import Engine

__all__ = [
    "KINDS",
    "STATUSES",
    "IntegrityError",
    "LiveVersionConflict",
    "ModelVersion",
    "get_version",
    "lineage_window",
    "list_versions",
    "live_version",
    "live_versions",
    "load_artifact",
    "new_version_id",
    "promote",
    "register",
]

STATUSES = rollout.STATUSES
KINDS = ("online", "batch", "manual")

ModelVersion = ModelRecord
"""A registered model version (the stored record, without its artifact)."""


class IntegrityError(RuntimeError):
    """A stored artifact does not match its sha256."""


def new_version_id(sha256: str, now: datetime) -> str:
    return f"v{now:%Y%m%d%H%M%S}-{sha256[:8]}-{secrets.token_hex(2)}"


def _earliest(*values: datetime | None) -> datetime | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _latest(*values: datetime | None) -> datetime | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def lineage_window(
    parent: ModelVersion | None, trained_from: datetime | None, trained_until: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """The training window of a version that learned [trained_from, trained_until] on top of
    `parent`: the parent's window (its lineage's, by induction) widened by its own."""
    if parent is None:
        return trained_from, trained_until
    return (
        _earliest(parent.trained_from, trained_from),
        _latest(parent.trained_until, trained_until),
    )


def register(
    engine: Engine,
    *,
    loop: str,
    kind: str,
    vw_args: str,
    artifact: bytes,
    parent: str | None = None,
    trained_from: datetime | None = None,
    trained_until: datetime | None = None,
    n_events: int = 0,
    checkpoint: datetime | None = None,
    checkpoint_seq: int | None = None,
    promote_now: bool = False,
    actor: str = "cli",
    reason: str | None = None,
) -> ModelVersion:
    """Store a new version (status candidate, or live with `promote_now`) atomically.

    `trained_from`/`trained_until` are the decided_at range of the events this training
    learned; with a `parent` (which must be a version of the same loop) the stored window
    also covers the parent's lineage, and the version inherits the parent's `replaced` (a
    freshness continuation rolls back to what its lineage replaced). `checkpoint_seq` is the
    largest join_seq learned. With `promote_now` the version goes live in the same transaction
    (audited with `actor` and `reason`; see :func:`deploy.rollout.promote`: a continuation of the
    live version is the freshness track, anything else an override of the gate).
    Raises ValueError (bad arguments), LookupError (unknown parent), LiveVersionConflict."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not artifact:
        raise ValueError("artifact must be non-empty bytes")
    if checkpoint_seq is not None and (isinstance(checkpoint_seq, bool) or checkpoint_seq < 0):
        raise ValueError(f"checkpoint_seq must be an int >= 0, got {checkpoint_seq!r}")
    for name, value in (("trained_from", trained_from), ("trained_until", trained_until)):
        if value is not None and value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")
    parent_version: ModelVersion | None = None
    if parent is not None:
        parent_version = get_model(engine, parent)
        if parent_version is None or parent_version.loop != loop:
            raise NotFound(
                f"parent version {parent!r} does not exist in loop {loop!r}", "model_not_found"
            )
    trained_from, trained_until = lineage_window(parent_version, trained_from, trained_until)
    now = datetime.now(UTC)
    digest = hashlib.sha256(artifact).hexdigest()
    record = ModelRecord(
        version=new_version_id(digest, now),
        loop=loop,
        kind=kind,
        vw_args=vw_args,
        sha256=digest,
        parent=parent,
        trained_from=trained_from,
        trained_until=trained_until,
        n_events=n_events,
        checkpoint=checkpoint,
        checkpoint_seq=checkpoint_seq,
        status="candidate",
        created_at=now,
        updated_at=now,
        replaced=None if parent_version is None else parent_version.replaced,
    )
    if not promote_now:
        return register_model(engine, record, artifact)
    req = rollout.TransitionRequest(
        to="live",
        actor=actor,
        role=None,
        reason=reason or f"registered live directly by {actor} (no gate)",
        at=now,
        override=True,
        any_to_live=True,
    )
    return register_model(
        engine, record, artifact, planner=lambda state: rollout.plan_transition(state, req)
    )


def promote(engine: Engine, version: str) -> ModelVersion:
    """Make `version` live whatever its gate verdict (actor "cli"; audited, flagged as an
    override unless it is a freshness continuation); the loop's previous live version is
    retired (one transaction, serialised per loop). See :func:`deploy.rollout.promote`.
    Raises LookupError for an unknown version, LiveVersionConflict."""
    return rollout.promote(engine, version, actor="cli")


def get_version(engine: Engine, version: str) -> ModelVersion | None:
    return get_model(engine, version)


def list_versions(engine: Engine, loop: str) -> list[ModelVersion]:
    """The versions of `loop`, oldest first."""
    return list_models(engine, loop)


def live_versions(engine: Engine) -> dict[str, ModelVersion]:
    """The live version of every loop that has one."""
    return live_models(engine)


def live_version(engine: Engine, loop: str) -> ModelVersion | None:
    return live_model(engine, loop)


def load_artifact(engine: Engine, version: str) -> bytes:
    """The artifact bytes, checked against the stored sha256."""
    found = read_artifact(engine, version)
    if found is None:
        raise NotFound(f"model version {version!r} does not exist", "model_not_found")
    data, sha256 = found
    if hashlib.sha256(data).hexdigest() != sha256:
        raise IntegrityError(f"artifact of {version!r} does not match its sha256")
    return data
