"""Versions the learner stores: a candidate with its audit row, or a freshness continuation
that becomes live at once, with its audit row, in ONE transaction.

A freshness continuation is the live version continued on newer events (same configuration):
it is inserted live, its parent retired, and the audit row appended in one transaction
serialised per loop like every promotion (`log.registry_store`'s lock). The transaction first
checks that the loop's live version is still the one the continuation was trained from; if a
gatekeeper (or anything else) changed it meanwhile, nothing is written
(:class:`LiveVersionChanged`). A killed process leaves either all of it or none of it.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import datetime

from sqlalchemy import Connection, Engine, exc, insert, select, update

from explore.errors import Conflict
from log.audit import AuditEntry, append_audit
from log.models import ModelRow
from log.registry_store import (
    LiveVersionConflict,
    ModelRecord,
    _lock_loop,
    _take_write_lock,
    get_model,
)

__all__ = ["LiveVersionChanged", "store_candidate", "swap_in_continuation"]


class LiveVersionChanged(Conflict):
    """The loop's live version is no longer the one a continuation was trained from: nothing
    was stored (the learner tries again from the new live version)."""

    default_code = "live_version_changed"


def _live(conn: Connection, loop: str) -> str | None:
    row = conn.execute(
        select(ModelRow.version).where(ModelRow.loop == loop, ModelRow.status == "live")
    ).first()
    return None if row is None else str(row[0])


def store_candidate(
    engine: Engine, record: ModelRecord, artifact: bytes, *, audit: AuditEntry
) -> ModelRecord:
    """Insert `record` (status "candidate") with its artifact and its audit row, in one
    transaction. Returns the stored record."""
    if record.status != "candidate":
        raise ValueError(f"a new version is stored as a candidate, got {record.status!r}")
    with engine.begin() as conn:
        conn.execute(insert(ModelRow), {**asdict(record), "artifact": artifact})
        append_audit(conn, audit)
    stored = get_model(engine, record.version)
    assert stored is not None
    return stored


def swap_in_continuation(
    engine: Engine,
    record: ModelRecord,
    artifact: bytes,
    *,
    expected_live: str | None,
    audit: AuditEntry,
    now: datetime,
) -> ModelRecord:
    """Store `record` live and retire `expected_live` (the live version it continues; None
    when the loop had none), with the audit row, in one transaction serialised per loop.

    The new version's `replaced` (the rollback target) is its parent's: a continuation belongs
    to the lineage that became live when its first version replaced the version before it.
    Raises LiveVersionChanged when the loop's live version is not `expected_live`,
    LiveVersionConflict when the database refuses a second live version."""
    if record.parent != expected_live:
        raise ValueError("a continuation's parent is the live version it continues")
    try:
        with engine.begin() as conn:
            _take_write_lock(conn)
            _lock_loop(conn, record.loop)
            current = _live(conn, record.loop)
            if current != expected_live:
                raise LiveVersionChanged(
                    f"the live version of loop {record.loop!r} is {current!r}, not "
                    f"{expected_live!r}: the continuation was not stored"
                )
            replaced = None
            if expected_live is not None:
                replaced = conn.execute(
                    select(ModelRow.replaced).where(ModelRow.version == expected_live)
                ).scalar_one()
                conn.execute(
                    update(ModelRow)
                    .where(ModelRow.version == expected_live, ModelRow.status == "live")
                    .values(status="retired", updated_at=now)
                )
            live = replace(record, status="live", replaced=replaced, live_since=now, updated_at=now)
            conn.execute(insert(ModelRow), {**asdict(live), "artifact": artifact})
            append_audit(conn, audit)
    except exc.IntegrityError as err:
        if "ux_models_one_live" in str(err) or "models.loop" in str(err):
            raise LiveVersionConflict(
                f"another version of loop {record.loop!r} became live concurrently; "
                f"{record.version!r} was not stored"
            ) from err
        raise
    stored = get_model(engine, record.version)
    assert stored is not None
    return stored
