"""The versions the learner registers: batch candidates (status candidate, audited) and
freshness continuations (live at once, their parent retired, audited), each in one transaction.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from deploy.registry import ModelVersion, lineage_window, new_version_id
from learn.train import Trained
from log.audit import AuditEntry
from log.learner_versions import LiveVersionChanged, store_candidate, swap_in_continuation
from log.registry_store import ModelRecord
from log.schema import Engine

__all__ = ["LEARNER", "LiveVersionChanged", "register_candidate", "swap_in"]

LEARNER = "learner"
"""The actor of every change the learner makes (audit rows)."""


def _record(
    trained: Trained, *, kind: str, parent: ModelVersion | None, now: datetime
) -> tuple[ModelRecord, bytes]:
    artifact = trained.artifact
    if artifact is None:
        raise ValueError("nothing was learned: there is no artifact to register")
    stats = trained.stats
    trained_from, trained_until = lineage_window(parent, stats.decided_from, stats.decided_until)
    digest = hashlib.sha256(artifact).hexdigest()
    record = ModelRecord(
        version=new_version_id(digest, now),
        loop=trained.loop,
        kind=kind,
        vw_args=trained.vw_args,
        sha256=digest,
        parent=None if parent is None else parent.version,
        trained_from=trained_from,
        trained_until=trained_until,
        n_events=stats.n_events,
        checkpoint=stats.checkpoint,
        checkpoint_seq=trained.checkpoint_seq,
        status="candidate",
        created_at=now,
        updated_at=now,
    )
    return record, artifact


def register_candidate(
    engine: Engine,
    trained: Trained,
    *,
    now: datetime,
    reason: str,
    details: dict[str, Any],
) -> ModelVersion:
    """Register a batch candidate with its audit row ("model.register"), in one transaction."""
    record, artifact = _record(trained, kind="batch", parent=None, now=now)
    audit = AuditEntry(
        at=now,
        actor=LEARNER,
        action="model.register",
        loop=record.loop,
        target=record.version,
        reason=reason,
        details={"from": None, "to": "candidate", "kind": "batch", **details},
    )
    return store_candidate(engine, record, artifact, audit=audit)


def swap_in(
    engine: Engine,
    trained: Trained,
    *,
    parent: ModelVersion | None,
    now: datetime,
    reason: str,
    details: dict[str, Any],
) -> ModelVersion:
    """Register a freshness continuation of `parent` (the live version it was trained from;
    None when the loop had none) and make it live, retiring `parent`, with its audit row
    ("model.live", track "freshness"), in one transaction. Raises LiveVersionChanged when the
    live version is no longer `parent` (nothing is stored)."""
    record, artifact = _record(trained, kind="online", parent=parent, now=now)
    audit = AuditEntry(
        at=now,
        actor=LEARNER,
        action="model.live",
        loop=record.loop,
        target=record.version,
        reason=reason,
        details={
            "from": None,
            "to": "live",
            "track": "freshness",
            "override": False,
            "retired": None if parent is None else parent.version,
            **details,
        },
    )
    return swap_in_continuation(
        engine,
        record,
        artifact,
        expected_live=None if parent is None else parent.version,
        audit=audit,
        now=now,
    )
