"""Retriever (two-tower) versions of each loop and the builds of their ANN indexes: the SQL.

A version is registered as a candidate with its artifact (sha256) and its validation metrics.
Its rollout moves (candidate -> shadow -> canary -> live, rejected, rollback; the rules are
`deploy.retriever_rollout`'s pure planner) are applied by :func:`apply_retriever_plan`: one
transaction under the loop's lock, compare-and-set, with the item embeddings the move needs and
its audit row (`ux_retrievers_one_live` / `_shadow` / `_canary` are the backstop).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from explore.errors import Conflict, NotFound
from log.audit import AuditEntry, append_audit
from log.catalog import (
    Embedder,
    bump_clock,
    catch_up_catalog,
    catch_up_side,
    copy_side_to_catalog,
    drop_side,
    write_side,
)
from log.loop_lock import lock_loop, take_write_lock
from log.models import RetrievalIndexRow, RetrieverRow
from log.verdicts import VerdictRecord, latest_verdict_in

__all__ = [
    "RETRIEVER_STATUSES",
    "ROLLED_OUT",
    "RetrieverChange",
    "RetrieverPlan",
    "RetrieverState",
    "RetrieverVersion",
    "apply_retriever_plan",
    "get_retriever",
    "list_retrievers",
    "live_retriever",
    "read_retriever_artifact",
    "record_index_build",
    "register_retriever",
    "reject_retriever",
    "rolled_out",
]

RETRIEVER_STATUSES = ("candidate", "shadow", "canary", "live", "retired", "rejected")
ROLLED_OUT = ("live", "shadow", "canary")


@dataclass(frozen=True)
class RetrieverVersion:
    version: str
    loop: str
    status: str
    sha256: str
    metrics: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    canary_percent: float | None = None
    replaced: str | None = None

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
            "canary_percent": self.canary_percent,
            "replaced": self.replaced,
        }


_COLUMNS = (
    RetrieverRow.version,
    RetrieverRow.loop,
    RetrieverRow.status,
    RetrieverRow.sha256,
    RetrieverRow.metrics,
    RetrieverRow.created_at,
    RetrieverRow.updated_at,
    RetrieverRow.canary_percent,
    RetrieverRow.replaced,
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


@dataclass(frozen=True)
class RetrieverState:
    """A loop's retrievers as read under its lock: the subject of a move (None: unknown),
    the holders of the live, shadow and canary slots, every version by id, and the subject's
    latest retriever-gate verdict."""

    loop: str
    subject: RetrieverVersion | None
    live: RetrieverVersion | None
    shadow: RetrieverVersion | None
    canary: RetrieverVersion | None
    versions: Mapping[str, RetrieverVersion]
    verdict: VerdictRecord | None


@dataclass(frozen=True)
class RetrieverChange:
    """One status change, compare-and-set on `from_status`, with other columns to set."""

    version: str
    from_status: str
    to_status: str
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RetrieverPlan:
    """What a move does: its status changes, its audit row, whose record it answers, and the
    item embeddings it moves: `side` gets embeddings of its own (entering shadow or canary),
    `live` becomes the catalog's embeddings (promotion, rollback), `drop` loses its own."""

    changes: tuple[RetrieverChange, ...]
    audit: AuditEntry
    result: str
    side: str | None = None
    live: str | None = None
    drop: tuple[str, ...] = ()


def apply_retriever_plan(
    engine: Engine,
    loop: str,
    version: str | None,
    planner: Callable[[RetrieverState], RetrieverPlan],
    *,
    embed: Embedder | None = None,
    vectors: Sequence[tuple[str, np.ndarray, datetime]] = (),
) -> RetrieverVersion:
    """Apply one move in one transaction under the loop's lock (the lock upserts take too):
    read the state, `planner` decides (raising refuses: nothing is written), each change is a
    compare-and-set on the status read (TransitionConflict otherwise), then the embeddings:
    `vectors` (item id, embedding, the item's updated_at it was computed from; computed before
    the transaction by the version the plan embeds) are stored, every item they miss or that
    changed since is embedded now by `embed`; a promoted version's become the catalog's (the
    loop's catalog clock moves, so every worker rebuilds its live index); and the audit row."""
    with engine.begin() as conn:
        take_write_lock(conn)
        lock_loop(conn, loop)
        state = _state(conn, loop, version)
        plan = planner(state)
        for change in plan.changes:
            n = conn.execute(
                update(RetrieverRow)
                .where(
                    RetrieverRow.version == change.version,
                    RetrieverRow.status == change.from_status,
                )
                .values(status=change.to_status, updated_at=plan.audit.at, **change.values)
            ).rowcount
            if n != 1:
                raise Conflict(
                    f"retriever {change.version} is no longer {change.from_status}",
                    "transition_conflict",
                )
        embedded = plan.side or plan.live
        if embedded is not None:
            if embed is None:
                raise ValueError("a move that embeds the catalog needs an embedder")
            write_side(conn, loop, embedded, vectors)
            catch_up_side(conn, loop, embedded, embed)
        if plan.live is not None:
            assert embed is not None
            copy_side_to_catalog(conn, loop, plan.live)
            catch_up_catalog(conn, loop, plan.live, embed)
            bump_clock(conn, loop)
        drop_side(conn, loop, plan.drop)
        append_audit(conn, plan.audit)
        row = conn.execute(select(*_COLUMNS).where(RetrieverRow.version == plan.result)).one()
    return _version(row)


def _state(conn: Connection, loop: str, version: str | None) -> RetrieverState:
    rows = conn.execute(select(*_COLUMNS).where(RetrieverRow.loop == loop)).all()
    versions = {r.version: _version(r) for r in rows}

    def holder(status: str) -> RetrieverVersion | None:
        return next((v for v in versions.values() if v.status == status), None)

    subject = None if version is None else versions.get(version)
    return RetrieverState(
        loop,
        subject,
        holder("live"),
        holder("shadow"),
        holder("canary"),
        versions,
        None if subject is None else latest_verdict_in(conn, subject.version),
    )


def rolled_out(engine: Engine, loop: str) -> dict[str, RetrieverVersion]:
    """Status (live, shadow, canary) -> the loop's retriever in it (one query)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_COLUMNS).where(RetrieverRow.loop == loop, RetrieverRow.status.in_(ROLLED_OUT))
        ).all()
    return {r.status: _version(r) for r in rows}


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
