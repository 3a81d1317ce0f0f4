"""Model registry: versions with artifact, sha256, lineage, training range and status.

Registering is one transaction: a training that is interrupted before or during registration
leaves no version behind. `promote` makes a version live and retires the previous live one in one
transaction; serving workers pick the live version up by polling (no restart).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, insert, select, update

from log.models import ModelRow

STATUSES = ("candidate", "live", "retired")
KINDS = ("online", "batch", "manual")


@dataclass(frozen=True)
class ModelVersion:
    version: str
    loop: str
    kind: str
    vw_args: str
    sha256: str
    parent: str | None
    trained_from: datetime | None
    trained_until: datetime | None
    n_events: int
    checkpoint: datetime | None
    status: str
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = dict(vars(self))
        for key in ("trained_from", "trained_until", "checkpoint", "created_at", "updated_at"):
            value = out[key]
            out[key] = value.isoformat() if isinstance(value, datetime) else None
        return out


_COLUMNS = (
    ModelRow.version,
    ModelRow.loop,
    ModelRow.kind,
    ModelRow.vw_args,
    ModelRow.sha256,
    ModelRow.parent,
    ModelRow.trained_from,
    ModelRow.trained_until,
    ModelRow.n_events,
    ModelRow.checkpoint,
    ModelRow.status,
    ModelRow.created_at,
    ModelRow.updated_at,
)


def _version(row: object) -> ModelVersion:
    return ModelVersion(**row._mapping)  # type: ignore[attr-defined]


class IntegrityError(RuntimeError):
    """A stored artifact does not match its sha256."""


def new_version_id(sha256: str, now: datetime) -> str:
    return f"v{now:%Y%m%d%H%M%S}-{sha256[:8]}-{secrets.token_hex(2)}"


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
    promote_now: bool = False,
    conn: Connection | None = None,
) -> ModelVersion:
    """Store a new version (status candidate, or live with `promote_now`) atomically."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not artifact:
        raise ValueError("artifact must be non-empty bytes")
    now = datetime.now(UTC)
    digest = hashlib.sha256(artifact).hexdigest()
    version = new_version_id(digest, now)
    row = {
        "version": version,
        "loop": loop,
        "kind": kind,
        "vw_args": vw_args,
        "artifact": artifact,
        "sha256": digest,
        "parent": parent,
        "trained_from": trained_from,
        "trained_until": trained_until,
        "n_events": n_events,
        "checkpoint": checkpoint,
        "status": "candidate",
        "created_at": now,
        "updated_at": now,
    }

    def _do(c: Connection) -> None:
        c.execute(insert(ModelRow), row)
        if promote_now:
            _promote(c, loop, version, now)

    if conn is not None:
        _do(conn)
    else:
        with engine.begin() as c:
            _do(c)
    return get_version(engine, version, conn=conn)  # type: ignore[return-value]


def _promote(conn: Connection, loop: str, version: str, now: datetime) -> None:
    conn.execute(
        update(ModelRow)
        .where(ModelRow.loop == loop, ModelRow.status == "live", ModelRow.version != version)
        .values(status="retired", updated_at=now)
    )
    conn.execute(
        update(ModelRow).where(ModelRow.version == version).values(status="live", updated_at=now)
    )


def promote(engine: Engine, version: str) -> ModelVersion:
    """Make `version` live; the loop's previous live version is retired (one transaction)."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        found = get_version(engine, version, conn=conn)
        if found is None:
            raise LookupError(f"model version {version!r} does not exist")
        _promote(conn, found.loop, version, now)
    result = get_version(engine, version)
    assert result is not None
    return result


def get_version(
    engine: Engine, version: str, *, conn: Connection | None = None
) -> ModelVersion | None:
    stmt = select(*_COLUMNS).where(ModelRow.version == version)
    if conn is not None:
        row = conn.execute(stmt).first()
    else:
        with engine.connect() as c:
            row = c.execute(stmt).first()
    return None if row is None else _version(row)


def list_versions(engine: Engine, loop: str) -> list[ModelVersion]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_COLUMNS).where(ModelRow.loop == loop).order_by(ModelRow.created_at)
        ).all()
    return [_version(r) for r in rows]


def live_versions(engine: Engine) -> dict[str, ModelVersion]:
    """The live version of every loop that has one."""
    with engine.connect() as conn:
        rows = conn.execute(select(*_COLUMNS).where(ModelRow.status == "live")).all()
    return {r.loop: _version(r) for r in rows}


def live_version(engine: Engine, loop: str) -> ModelVersion | None:
    return live_versions(engine).get(loop)


def load_artifact(engine: Engine, version: str) -> bytes:
    """The artifact bytes, checked against the stored sha256."""
    with engine.connect() as conn:
        row = conn.execute(
            select(ModelRow.artifact, ModelRow.sha256).where(ModelRow.version == version)
        ).first()
    if row is None:
        raise LookupError(f"model version {version!r} does not exist")
    data = bytes(row[0])
    if hashlib.sha256(data).hexdigest() != row[1]:
        raise IntegrityError(f"artifact of {version!r} does not match its sha256")
    return data
