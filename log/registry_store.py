"""The `models` table: model versions with their artifact, lineage, training window, status.

What `deploy.registry` builds on. Registering is one transaction (a version is stored whole or
not at all). Promotion (status -> live, the loop's previous live version -> retired) is one
transaction serialised per loop: PostgreSQL takes a transaction-scoped advisory lock keyed by
the loop before reading anything, SQLite takes the database's write lock first (one writer at a
time). Whatever gets around that lock, the unique partial index `ux_models_one_live` (revision
0005) keeps the database from ever holding two live versions of a loop: the losing
transaction fails with :class:`LiveVersionConflict` and changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, exc, insert, select, text, update

from explore.errors import Conflict, NotFound
from log.models import ModelRow

__all__ = [
    "LiveVersionConflict",
    "ModelRecord",
    "get_model",
    "list_models",
    "live_model",
    "live_models",
    "promote_model",
    "read_artifact",
    "register_model",
]

# pg_advisory_xact_lock(namespace, hashtext(loop)): the namespace keeps these locks apart
# from other advisory locks (log.schema's migration lock is a single bigint key).
_PROMOTION_LOCK_NAMESPACE = 730_501


class LiveVersionConflict(Conflict):
    """Another promotion of the loop committed first and the database refused a second live
    version (unique index). Nothing was changed; read the live version and retry if needed."""

    default_code = "live_version_conflict"


@dataclass(frozen=True)
class ModelRecord:
    """A stored model version (without its artifact bytes).

    `trained_from`/`trained_until`: the decided_at range of the events the version and all its
    ancestors learned. `checkpoint_seq`: the largest join_seq it learned (online continuation
    resumes after it); `checkpoint`: that event's joined_at (informative only)."""

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
    checkpoint_seq: int | None
    status: str
    created_at: datetime
    updated_at: datetime
    canary_percent: float | None = None
    replaced: str | None = None
    live_since: datetime | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
        return out


_COLUMNS = tuple(ModelRow.__table__.c[name] for name in ModelRecord.__dataclass_fields__)


def _record(row: object) -> ModelRecord:
    return ModelRecord(*row)  # type: ignore[misc]


def _take_write_lock(conn: Connection) -> None:
    """SQLite: start the transaction as a writer, so that what it reads next is what it
    writes over (the statement takes the database's write lock, waiting its busy timeout)."""
    if conn.dialect.name == "sqlite":
        conn.execute(text("UPDATE models SET status = status WHERE 0 = 1"))


def _lock_loop(conn: Connection, loop: str) -> None:
    """PostgreSQL: serialise promotions of `loop` until this transaction ends."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:ns, hashtext(:loop))"),
            {"ns": _PROMOTION_LOCK_NAMESPACE, "loop": loop},
        )


def _set_live(conn: Connection, loop: str, version: str, now: datetime) -> None:
    """Retire the loop's live version (if another) and make `version` live."""
    conn.execute(
        update(ModelRow)
        .where(ModelRow.loop == loop, ModelRow.status == "live", ModelRow.version != version)
        .values(status="retired", updated_at=now)
    )
    conn.execute(
        update(ModelRow)
        .where(ModelRow.version == version, ModelRow.status != "live")
        .values(status="live", updated_at=now)
    )


def _get(conn: Connection, version: str) -> ModelRecord | None:
    row = conn.execute(select(*_COLUMNS).where(ModelRow.version == version)).first()
    return None if row is None else _record(row)


def _is_one_live_violation(err: exc.IntegrityError) -> bool:
    return "ux_models_one_live" in str(err) or "models.loop" in str(err)


def register_model(
    engine: Engine, record: ModelRecord, artifact: bytes, *, promote: bool = False
) -> ModelRecord:
    """Insert `record` with its artifact (its status must be "candidate"), live at once with
    `promote` (the loop's previous live version retired), in one transaction. Returns the
    stored record. Raises LiveVersionConflict (see the module docstring)."""
    if record.status != "candidate":
        raise ValueError(f"a new version is registered as a candidate, got {record.status!r}")
    try:
        with engine.begin() as conn:
            conn.execute(insert(ModelRow), {**asdict(record), "artifact": artifact})
            if promote:
                _lock_loop(conn, record.loop)
                _set_live(conn, record.loop, record.version, record.created_at)
            stored = _get(conn, record.version)
    except exc.IntegrityError as err:
        if promote and _is_one_live_violation(err):
            raise LiveVersionConflict(
                f"another version of loop {record.loop!r} became live concurrently; "
                f"{record.version!r} was not registered"
            ) from err
        raise
    assert stored is not None
    return stored


def promote_model(engine: Engine, version: str, *, now: datetime) -> ModelRecord:
    """Make `version` live and retire its loop's previous live version, in one transaction
    serialised per loop. Promoting the live version changes nothing. Raises LookupError for
    an unknown version, LiveVersionConflict (see the module docstring)."""
    try:
        with engine.begin() as conn:
            _take_write_lock(conn)
            found = _get(conn, version)
            if found is None:
                raise NotFound(f"model version {version!r} does not exist", "model_not_found")
            _lock_loop(conn, found.loop)
            _set_live(conn, found.loop, version, now)
            stored = _get(conn, version)
    except exc.IntegrityError as err:
        if _is_one_live_violation(err):
            raise LiveVersionConflict(
                f"another version of the loop of {version!r} became live concurrently; "
                "nothing was changed"
            ) from err
        raise
    assert stored is not None
    return stored


def get_model(engine: Engine, version: str) -> ModelRecord | None:
    with engine.connect() as conn:
        return _get(conn, version)


def list_models(engine: Engine, loop: str) -> list[ModelRecord]:
    """The versions of `loop`, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_COLUMNS)
            .where(ModelRow.loop == loop)
            .order_by(ModelRow.created_at, ModelRow.version)
        ).all()
    return [_record(r) for r in rows]


def live_models(engine: Engine) -> dict[str, ModelRecord]:
    """The live version of every loop that has one."""
    with engine.connect() as conn:
        rows = conn.execute(select(*_COLUMNS).where(ModelRow.status == "live")).all()
    return {r.loop: _record(r) for r in rows}


def live_model(engine: Engine, loop: str) -> ModelRecord | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(*_COLUMNS).where(ModelRow.loop == loop, ModelRow.status == "live")
        ).first()
    return None if row is None else _record(row)


def read_artifact(engine: Engine, version: str) -> tuple[bytes, str] | None:
    """(artifact bytes, stored sha256) of `version`, None if it does not exist."""
    with engine.connect() as conn:
        row = conn.execute(
            select(ModelRow.artifact, ModelRow.sha256).where(ModelRow.version == version)
        ).first()
    return None if row is None else (bytes(row[0]), str(row[1]))
