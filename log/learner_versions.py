"""Versions the learner stores: a candidate with its audit row ("model.register") in ONE
transaction, so a killed learner leaves either both or neither.

(A freshness continuation goes live through `log.registry_store.register_model` with the
rollout planner, also one transaction; :class:`LiveVersionChanged` is what the learner's planner
raises when the live version changed while it trained.)
"""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy import Engine, insert

from explore.errors import Conflict
from log.audit import AuditEntry, append_audit
from log.models import ModelRow
from log.registry_store import ModelRecord, get_model

__all__ = ["LiveVersionChanged", "store_candidate"]


class LiveVersionChanged(Conflict):
    """The loop's live version is no longer the one a continuation was trained from: nothing
    was stored (the learner tries again from the new live version)."""

    default_code = "live_version_changed"


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
