"""Retriever (two-tower) versions of each loop and the builds of their ANN indexes: the SQL.

A version is registered as a candidate with its artifact (sha256) and its validation metrics;
promotion makes it live and retires the previous live one in one transaction under the loop's
lock (`ux_retrievers_one_live` is the backstop), with its audit row.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from explore.errors import Conflict, InvalidInput, NotFound
from log.audit import AuditEntry, append_audit
from log.catalog import bump_clock, write_embeddings
from log.loop_lock import lock_loop, take_write_lock
from log.models import RetrievalIndexRow, RetrieverRow
from log.verdicts import latest_verdict_in

__all__ = [
    "RETRIEVER_STATUSES",
    "RetrieverVersion",
    "get_retriever",
    "list_retrievers",
    "live_retriever",
    "promote_retriever",
    "read_retriever_artifact",
    "record_index_build",
    "register_retriever",
    "reject_retriever",
]

RETRIEVER_STATUSES = ("candidate", "live", "retired", "rejected")


@dataclass(frozen=True)
class RetrieverVersion:
    version: str
    loop: str
    status: str
    sha256: str
    metrics: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "loop": self.loop,
            "kind": "retriever",
            "status": self.status,
            "sha256": self.sha256,
            "metrics": self.metrics,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


_COLUMNS = (
    RetrieverRow.version,
    RetrieverRow.loop,
    RetrieverRow.status,
    RetrieverRow.sha256,
    RetrieverRow.metrics,
    RetrieverRow.created_at,
    RetrieverRow.updated_at,
)


def _version(row: Any) -> RetrieverVersion:
    return RetrieverVersion(*row)


def register_retriever(
    engine: Engine, loop: str, artifact: bytes, metrics: dict[str, Any], now: datetime
) -> RetrieverVersion:
    sha = hashlib.sha256(artifact).hexdigest()
    version = f"r{now:%Y%m%d%H%M%S}-{sha[:8]}-{secrets.token_hex(2)}"
    with engine.begin() as conn:
        conn.execute(
            insert(RetrieverRow).values(
                version=version,
                loop=loop,
                status="candidate",
                artifact=artifact,
                sha256=sha,
                metrics=metrics,
                created_at=now,
                updated_at=now,
            )
        )
    return RetrieverVersion(version, loop, "candidate", sha, metrics, now, now)


def get_retriever(engine: Engine, version: str) -> RetrieverVersion | None:
    with engine.connect() as conn:
        row = conn.execute(select(*_COLUMNS).where(RetrieverRow.version == version)).first()
    return None if row is None else _version(row)


def list_retrievers(engine: Engine, loop: str) -> list[RetrieverVersion]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_COLUMNS).where(RetrieverRow.loop == loop).order_by(RetrieverRow.created_at)
        ).all()
    return [_version(r) for r in rows]


def live_retriever(engine: Engine, loop: str) -> RetrieverVersion | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(*_COLUMNS).where(RetrieverRow.loop == loop, RetrieverRow.status == "live")
        ).first()
    return None if row is None else _version(row)


def read_retriever_artifact(engine: Engine, version: str) -> bytes:
    """The artifact, checked against its sha256."""
    with engine.connect() as conn:
        row = conn.execute(
            select(RetrieverRow.artifact, RetrieverRow.sha256).where(
                RetrieverRow.version == version
            )
        ).first()
    if row is None:
        raise NotFound(f"no retriever version {version!r}", "retriever_not_found")
    if hashlib.sha256(row.artifact).hexdigest() != row.sha256:
        raise RuntimeError(f"retriever {version}: artifact does not match its sha256")
    return bytes(row.artifact)


def promote_retriever(
    engine: Engine,
    loop: str,
    version: str,
    now: datetime,
    actor: str,
    embeddings: Sequence[tuple[str, np.ndarray]] = (),
    reason: str | None = None,
    *,
    override: bool = False,
) -> RetrieverVersion:
    """Make `version` (a candidate of `loop`) live and retire the live one, storing the
    catalog's `embeddings` by its item tower: one transaction under the loop's lock, with its
    audit row (so no index ever pairs one version's user tower with another's items).

    The version's latest retriever-gate verdict must have passed (read in the same
    transaction), else Conflict ``gate_not_passed``; unless `override` with a `reason`: the
    audit row's action is then ``retriever.live_override`` (InvalidInput ``reason_required``
    without a reason)."""
    if override and not (reason and reason.strip()):
        raise InvalidInput("an override needs a reason", "reason_required")
    with engine.begin() as conn:
        take_write_lock(conn)
        lock_loop(conn, loop)
        current = _candidate(conn, loop, version, "go live")
        verdict = latest_verdict_in(conn, version)
        passed = verdict is not None and verdict.passed
        if not passed and not override:
            seen = (
                "no gate verdict"
                if verdict is None
                else f"its latest verdict is {verdict.decision}"
            )
            raise Conflict(
                f"retriever {version} has not passed the retriever gate ({seen}): run the "
                "check, or override with a reason",
                "gate_not_passed",
            )
        conn.execute(
            update(RetrieverRow)
            .where(RetrieverRow.loop == loop, RetrieverRow.status == "live")
            .values(status="retired", updated_at=now)
        )
        conn.execute(
            update(RetrieverRow)
            .where(RetrieverRow.version == version)
            .values(status="live", updated_at=now)
        )
        write_embeddings(conn, loop, embeddings, version)
        bump_clock(conn, loop)
        append_audit(
            conn,
            AuditEntry(
                at=now,
                actor=actor,
                role=None,
                loop=loop,
                action="retriever.live" if passed else "retriever.live_override",
                target=version,
                reason=reason,
                details={
                    "metrics": current.metrics,
                    "verdict": None if verdict is None else verdict.id,
                    "decision": None if verdict is None else verdict.decision,
                    "override": not passed,
                },
            ),
        )
    return RetrieverVersion(
        version, loop, "live", current.sha256, current.metrics, current.created_at, now
    )


def _candidate(conn: Connection, loop: str, version: str, move: str) -> RetrieverVersion:
    """The candidate `version` of `loop`, read in the caller's locked transaction. NotFound
    ``not_found``; Conflict ``transition_conflict`` when it is not a candidate."""
    row = conn.execute(
        select(*_COLUMNS).where(RetrieverRow.version == version, RetrieverRow.loop == loop)
    ).first()
    if row is None:
        raise NotFound(f"no retriever version {version!r} in loop {loop!r}", "not_found")
    current = _version(row)
    if current.status != "candidate":
        raise Conflict(
            f"retriever {version} is {current.status}; only a candidate can {move}",
            "transition_conflict",
        )
    return current


def reject_retriever(
    engine: Engine, loop: str, version: str, now: datetime, actor: str, reason: str
) -> RetrieverVersion:
    """Reject a candidate (it can no longer go live), with its audit row ``retriever.rejected``.
    NotFound ``not_found``; Conflict ``transition_conflict`` (not a candidate)."""
    with engine.begin() as conn:
        take_write_lock(conn)
        lock_loop(conn, loop)
        current = _candidate(conn, loop, version, "be rejected")
        conn.execute(
            update(RetrieverRow)
            .where(RetrieverRow.version == version)
            .values(status="rejected", updated_at=now)
        )
        append_audit(
            conn,
            AuditEntry(
                at=now,
                actor=actor,
                role=None,
                loop=loop,
                action="retriever.rejected",
                target=version,
                reason=reason,
                details={},
            ),
        )
    return RetrieverVersion(
        version, loop, "rejected", current.sha256, current.metrics, current.created_at, now
    )


def record_index_build(
    engine: Engine, loop: str, index_version: str, details: dict[str, Any], now: datetime
) -> None:
    """Store a build's numbers (the first build of an index version stands)."""
    with engine.begin() as conn:
        ins = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        conn.execute(
            ins(RetrievalIndexRow)
            .values(index_version=index_version, loop=loop, built_at=now, details=details)
            .on_conflict_do_nothing(index_elements=["index_version"])
        )


def index_builds(engine: Engine, loop: str, limit: int = 20) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                RetrievalIndexRow.index_version,
                RetrievalIndexRow.built_at,
                RetrievalIndexRow.details,
            )
            .where(RetrievalIndexRow.loop == loop)
            .order_by(RetrievalIndexRow.built_at.desc())
            .limit(limit)
        ).all()
    return [
        {"index_version": r.index_version, "built_at": r.built_at.isoformat(), **r.details}
        for r in rows
    ]
