"""The versions the learner registers: batch candidates (status candidate, audited) and
freshness continuations (live at once, their parent retired, audited), each in one transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime
from typing import Any

from deploy.registry import ModelVersion, lineage_window, new_version_id
from deploy.rollout import TransitionRequest, plan_transition
from learn.train import Trained
from log.audit import AuditEntry
from log.learner_versions import LiveVersionChanged, store_candidate
from log.registry_store import LoopModels, ModelRecord, RolloutPlan, register_model
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
    parent: ModelVersion,
    now: datetime,
    reason: str,
    details: dict[str, Any],
) -> ModelVersion:
    """Register a freshness continuation of `parent` (the live version it was trained from)
    and make it live, retiring `parent`, with its audit row ("model.live", track "freshness",
    actor "learner"), in one transaction serialised per loop (the rollout planner of
    `deploy.rollout`: a continuation of the live version needs no gate verdict and inherits its
    `replaced`). Raises LiveVersionChanged when the live version is no longer `parent`
    (nothing is stored)."""
    record, artifact = _record(trained, kind="online", parent=parent, now=now)
    record = replace(record, replaced=parent.replaced)
    request = TransitionRequest(
        to="live", actor=LEARNER, role=None, reason=reason, at=now, details=details
    )

    def planner(state: LoopModels) -> RolloutPlan:
        live = state.live
        if live is None or live.version != parent.version:
            raise LiveVersionChanged(
                f"the live version of loop {record.loop!r} is "
                f"{None if live is None else live.version!r}, not {parent.version!r}: the "
                "continuation was not stored"
            )
        return plan_transition(state, request)

    return register_model(engine, record, artifact, planner=planner)
