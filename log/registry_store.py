"""The `models` table: model versions with their artifact, lineage, training window, status,
and the rollout transitions between statuses.

What `deploy.registry` and `deploy.rollout` build on. Registering is one transaction (a version
is stored whole or not at all). A transition (a version to shadow, canary, live, rejected; a
rollback) is one transaction serialised per loop (:mod:`log.loop_lock`: PostgreSQL takes a
transaction-scoped advisory lock keyed by the loop before reading anything, SQLite takes the
database's write lock first): :func:`apply_rollout` reads the loop's state under the lock, a
planner supplied by `deploy.rollout` decides (or refuses), and every status change is a
compare-and-set on the status the planner saw, written together with its audit row
(:mod:`log.audit`). Whatever gets around the lock, the unique partial indexes
`ux_models_one_live`/`_canary`/`_shadow` keep the database from ever holding two live (canary,
shadow) versions of a loop: the losing transaction fails with :class:`TransitionConflict`
(:class:`LiveVersionConflict` for live) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, exc, insert, select, update

from explore.errors import Conflict, NotFound
from log.audit import AuditEntry, append_audit
from log.loop_lock import lock_loop, take_write_lock
from log.models import AuditRow, ModelRow
from log.verdicts import VerdictRecord, latest_verdict_in

__all__ = [
    "MAX_MODELS_READ",
    "OVERRIDE_ACTION",
    "LiveVersionConflict",
    "LoopModels",
    "ModelChange",
    "ModelRecord",
    "Planner",
    "RolloutPlan",
    "TransitionConflict",
    "apply_rollout",
    "get_model",
    "list_models",
    "live_model",
    "live_models",
    "model_history",
    "override_versions",
    "read_artifact",
    "register_model",
]

MAX_MODELS_READ = 1000


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
    take_write_lock(conn)


def _lock_loop(conn: Connection, loop: str) -> None:
    lock_loop(conn, loop)


def _get(conn: Connection, version: str) -> ModelRecord | None:
    row = conn.execute(select(*_COLUMNS).where(ModelRow.version == version)).first()
    return None if row is None else _record(row)


class TransitionConflict(Conflict):
    """The version (or the loop's live version) changed since the caller looked: another
    transition committed first. Nothing was changed; read the state again."""

    default_code = "transition_conflict"


class LiveVersionConflict(TransitionConflict):
    """Another promotion of the loop committed first and the database refused a second live
    version (unique index). Nothing was changed; read the live version and retry if needed."""

    default_code = "live_version_conflict"


@dataclass(frozen=True)
class LoopModels:
    """What a rollout planner sees, read inside the transaction under the loop's lock.

    `subject`: the version acted on (None for loop-level actions such as a rollback);
    `live`/`canary`/`shadow`: the loop's versions in those states; `verdict`: the subject's
    latest gate verdict; `others`: further versions asked for (a rollback target...), by id."""

    loop: str
    subject: ModelRecord | None
    live: ModelRecord | None
    canary: ModelRecord | None
    shadow: ModelRecord | None
    verdict: VerdictRecord | None
    others: Mapping[str, ModelRecord]


@dataclass(frozen=True)
class ModelChange:
    """Set `version`'s status from `expected` (compare-and-set: the update matches only a row
    still in that state) to `status`, with the other columns in `values` (canary_percent,
    replaced, live_since)."""

    version: str
    expected: str
    status: str
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutPlan:
    """The changes of one transition, in order, its audit entry, and the version to return."""

    changes: tuple[ModelChange, ...]
    audit: AuditEntry
    result: str


Planner = Callable[[LoopModels], RolloutPlan]
"""Decides a transition from the state read under the lock (raises to refuse: nothing is
written). Pure: `deploy.rollout` supplies it."""

_CHANGEABLE = frozenset({"canary_percent", "replaced", "live_since"})


def _loop_models(
    conn: Connection, loop: str, subject: str | None, extra: Sequence[str]
) -> LoopModels:
    current = conn.execute(
        select(*_COLUMNS).where(
            ModelRow.loop == loop, ModelRow.status.in_(("live", "canary", "shadow"))
        )
    ).all()
    by_status = {r.status: _record(r) for r in current}
    live = by_status.get("live")
    wanted = {v for v in (subject, *extra) if v is not None}
    if live is not None and live.replaced is not None:
        wanted.add(live.replaced)
    others = {}
    if wanted:
        rows = conn.execute(select(*_COLUMNS).where(ModelRow.version.in_(sorted(wanted)))).all()
        others = {r.version: _record(r) for r in rows if r.loop == loop}
    record = None if subject is None else others.get(subject)
    return LoopModels(
        loop=loop,
        subject=record,
        live=live,
        canary=by_status.get("canary"),
        shadow=by_status.get("shadow"),
        verdict=None if subject is None else latest_verdict_in(conn, subject),
        others=others,
    )


def _set_live(conn: Connection, plan: RolloutPlan) -> None:
    """Apply `plan`'s changes (making a version live, retiring the one before, any other
    status change) and append its audit entry, on the caller's transaction. A change whose row
    is no longer in the expected state raises TransitionConflict (LiveVersionConflict when the
    plan makes a version live): the caller's transaction then rolls back."""
    makes_live = any(c.status == "live" for c in plan.changes)
    for change in plan.changes:
        unknown = set(change.values) - _CHANGEABLE
        if unknown:
            raise ValueError(f"a rollout change may set {sorted(_CHANGEABLE)}, got {unknown}")
        done = conn.execute(
            update(ModelRow)
            .where(ModelRow.version == change.version, ModelRow.status == change.expected)
            .values(status=change.status, updated_at=plan.audit.at, **change.values)
        )
        if done.rowcount != 1:
            cls = LiveVersionConflict if makes_live else TransitionConflict
            raise cls(
                f"version {change.version!r} is no longer {change.expected}: another change "
                + ("became live concurrently" if makes_live else "committed first")
                + "; nothing was changed"
            )
    append_audit(conn, plan.audit)


def _conflict(err: exc.IntegrityError, what: str) -> TransitionConflict | None:
    text_ = str(err)
    for status in ("live", "canary", "shadow"):
        if f"ux_models_one_{status}" in text_:
            cls = LiveVersionConflict if status == "live" else TransitionConflict
            return cls(
                f"another version of the loop became {status} concurrently; {what}"
                + (" (the database holds one per loop)" if status != "live" else "")
            )
    if "models.loop" in text_:  # SQLite names the column, not the index
        return LiveVersionConflict(f"another version of the loop became live concurrently; {what}")
    return None


def apply_rollout(
    engine: Engine,
    planner: Planner,
    *,
    loop: str | None = None,
    version: str | None = None,
    extra: Sequence[str] = (),
) -> ModelRecord:
    """One transition in one transaction serialised per loop: read the state under the lock,
    let `planner` decide (or refuse by raising), apply its changes compare-and-set, append its
    audit entry, and return the resulting record. Give `version` (the subject; its loop is
    locked) or `loop`. Raises NotFound for an unknown version, TransitionConflict."""
    if (loop is None) == (version is None):
        raise ValueError("give exactly one of loop and version")
    try:
        with engine.begin() as conn:
            _take_write_lock(conn)
            if version is not None:
                found = _get(conn, version)
                if found is None:
                    raise NotFound(f"model version {version!r} does not exist", "model_not_found")
                loop = found.loop
            assert loop is not None
            _lock_loop(conn, loop)
            plan = planner(_loop_models(conn, loop, version, extra))
            _set_live(conn, plan)
            stored = _get(conn, plan.result)
    except exc.IntegrityError as err:
        conflict = _conflict(err, "nothing was changed")
        if conflict is not None:
            raise conflict from err
        raise
    assert stored is not None
    return stored


def register_model(
    engine: Engine, record: ModelRecord, artifact: bytes, *, planner: Planner | None = None
) -> ModelRecord:
    """Insert `record` with its artifact (its status must be "candidate") and, with `planner`,
    apply the transition it plans for the new version (making it live), in one transaction
    (serialised per loop). Returns the stored record. Raises LiveVersionConflict (see the
    module docstring)."""
    if record.status != "candidate":
        raise ValueError(f"a new version is registered as a candidate, got {record.status!r}")
    try:
        with engine.begin() as conn:
            if planner is not None:
                _take_write_lock(conn)
                _lock_loop(conn, record.loop)
            conn.execute(insert(ModelRow), {**asdict(record), "artifact": artifact})
            result = record.version
            if planner is not None:
                plan = planner(_loop_models(conn, record.loop, record.version, ()))
                _set_live(conn, plan)
                result = plan.result
            stored = _get(conn, result)
    except exc.IntegrityError as err:
        conflict = _conflict(err, f"{record.version!r} was not registered")
        if planner is not None and conflict is not None:
            raise conflict from err
        raise
    assert stored is not None
    return stored


def get_model(engine: Engine, version: str) -> ModelRecord | None:
    with engine.connect() as conn:
        return _get(conn, version)


def list_models(
    engine: Engine,
    loop: str,
    *,
    statuses: Sequence[str] | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[ModelRecord]:
    """The versions of `loop` (only those in `statuses` when given), oldest first (newest first
    with `newest_first`), at most `limit` (at most MAX_MODELS_READ when given)."""
    if limit is not None and not 1 <= limit <= MAX_MODELS_READ:
        raise ValueError(f"limit must be in [1, {MAX_MODELS_READ}], got {limit}")
    stmt = select(*_COLUMNS).where(ModelRow.loop == loop)
    if statuses is not None:
        stmt = stmt.where(ModelRow.status.in_(tuple(statuses)))
    if newest_first:
        stmt = stmt.order_by(ModelRow.created_at.desc(), ModelRow.version.desc())
    else:
        stmt = stmt.order_by(ModelRow.created_at, ModelRow.version)
    if limit is not None:
        stmt = stmt.limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [_record(r) for r in rows]


OVERRIDE_ACTION = "model.live_override"
"""The audit action of a version made live over a gate that had not passed it."""


def _audit_entry(r: Any) -> AuditEntry:
    return AuditEntry(
        at=r.at,
        actor=r.actor,
        action=r.action,
        loop=r.loop,
        target=r.target,
        reason=r.reason,
        role=r.role,
        details=r.details or {},
        seq=r.seq,
    )


def model_history(engine: Engine, loop: str, version: str, *, limit: int = 100) -> list[AuditEntry]:
    """The audit entries of `loop` whose target is `version`, oldest first (at most `limit`)."""
    if not 1 <= limit <= MAX_MODELS_READ:
        raise ValueError(f"limit must be in [1, {MAX_MODELS_READ}], got {limit}")
    with engine.connect() as conn:
        rows = conn.execute(
            select(*AuditRow.__table__.c)
            .where(AuditRow.loop == loop, AuditRow.target == version)
            .order_by(AuditRow.seq)
            .limit(limit)
        ).all()
    return [_audit_entry(r) for r in rows]


def override_versions(engine: Engine, loop: str) -> set[str]:
    """The versions of `loop` that were ever made live over a gate that had not passed them."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(AuditRow.target)
            .where(AuditRow.loop == loop, AuditRow.action == OVERRIDE_ACTION)
            .distinct()
        ).all()
    return {r[0] for r in rows if r[0] is not None}


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
