"""Applying a group of records inside one transaction (the writer and the spool shipper)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.dialects import postgresql, sqlite

from log.action_store import KnownBodies, stored_actions, write_bodies
from log.models import ActivationRow, DecisionRow, RewardRow
from log.ops import Op
from log.pgcopy import copy_decisions
from log.records import ActivationRecord, DecisionRecord, RewardRecord

# Copy activations onto their (deferred, not yet activated) decisions. Whichever of the two
# committed second finds the other; a pair committed concurrently is caught by the joiner,
# which runs this for the whole loop before closing windows.
_APPLY = """
UPDATE decisions SET
  activated_at = (SELECT a.activated_at FROM activations a
                  WHERE a.loop = decisions.loop AND a.event_id = decisions.event_id),
  reward_deadline = (SELECT a.reward_deadline FROM activations a
                     WHERE a.loop = decisions.loop AND a.event_id = decisions.event_id)
WHERE decisions.loop = :loop AND decisions.deferred AND decisions.activated_at IS NULL
  AND EXISTS (SELECT 1 FROM activations a WHERE a.loop = decisions.loop
              AND a.event_id = decisions.event_id AND NOT a.applied){keys}
"""
# An activation is done once its decision carries an activation (this one: the first wins) or
# was not deferred (nothing to activate). A decision not yet stored leaves it pending.
_MARK = """
UPDATE activations SET applied = true
WHERE activations.loop = :loop AND NOT activations.applied{keys}
  AND EXISTS (SELECT 1 FROM decisions d WHERE d.loop = activations.loop
              AND d.event_id = activations.event_id
              AND (d.activated_at IS NOT NULL OR NOT d.deferred))
"""


def dialect_insert(conn: Connection, model: type) -> postgresql.Insert | sqlite.Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


def apply_activations(conn: Connection, loop: str, event_ids: list[str] | None = None) -> int:
    """Copy stored activations onto their decisions (all of `loop`'s, or these events').
    Returns the number of decisions activated."""
    keys = ""
    params: dict[str, Any] = {"loop": loop}
    if event_ids is not None:
        if not event_ids:
            return 0
        names = [f"k{i}" for i in range(len(event_ids))]
        params.update(zip(names, event_ids, strict=True))
        keys = " AND {table}.event_id IN (" + ", ".join(f":{n}" for n in names) + ")"
    n = conn.execute(text(_APPLY.format(keys=keys.format(table="decisions"))), params).rowcount
    conn.execute(text(_MARK.format(keys=keys.format(table="activations"))), params)
    return int(n or 0)


def apply_records(
    conn: Connection,
    ops: Sequence[Op],
    *,
    optimistic: bool = False,
    known: KnownBodies | None = None,
) -> list[bool]:
    """Write records (unique by key among themselves) inside the caller's transaction;
    returns, for each, whether it was new. Every write is insert-if-absent: the first stands.

    A decision's actions are stored as references to their bodies (log/action_store.py),
    written in the same transaction; `known` (a writer's) skips the bodies it has committed
    and stages the new ones: the caller commits or discards them with the transaction.

    With `optimistic` (PostgreSQL), decisions are COPied straight into the table: an existing
    key raises IntegrityError and the caller retries without it.
    """
    inserted = [True] * len(ops)
    decisions = [(i, op) for i, op in enumerate(ops) if isinstance(op, DecisionRecord)]
    if decisions:
        records = [d for _, d in decisions]
        refs, bodies = stored_actions(records)
        write_bodies(conn, bodies, known)
        if optimistic and conn.dialect.name == "postgresql":
            copy_decisions(conn, records, refs, direct=True)
        else:
            stored = _insert_decisions(conn, records, refs)
            for i, d in decisions:
                inserted[i] = d.key in stored
    rewards = [(i, op) for i, op in enumerate(ops) if isinstance(op, RewardRecord)]
    if rewards:
        stmt = (
            dialect_insert(conn, RewardRow)
            .on_conflict_do_nothing(index_elements=["reward_id"])
            .returning(RewardRow.reward_id)
        )
        new = set(conn.execute(stmt, [r.row() for _, r in rewards]).scalars().all())
        for i, r in rewards:
            inserted[i] = r.reward_id in new
    activations = [(i, op) for i, op in enumerate(ops) if isinstance(op, ActivationRecord)]
    if activations:
        act_stmt = (
            dialect_insert(conn, ActivationRow)
            .on_conflict_do_nothing(index_elements=["loop", "event_id"])
            .returning(ActivationRow.loop, ActivationRow.event_id)
        )
        new_keys = {
            (r[0], r[1]) for r in conn.execute(act_stmt, [a.row() for _, a in activations]).all()
        }
        for i, a in activations:
            inserted[i] = a.key in new_keys
    by_loop: dict[str, list[str]] = {}
    for _, a in activations:
        by_loop.setdefault(a.loop, []).append(a.event_id)
    for _, d in decisions:
        if d.deferred:
            by_loop.setdefault(d.loop, []).append(d.event_id)
    for loop, ids in by_loop.items():
        apply_activations(conn, loop, ids)
    return inserted


def _insert_decisions(
    conn: Connection, records: list[DecisionRecord], refs: list[Any]
) -> set[tuple[str, str]]:
    """Insert decisions (`refs`: each one's stored actions), skipping keys already stored;
    returns the keys actually inserted."""
    if conn.dialect.name == "postgresql":
        return copy_decisions(conn, records, refs)
    stmt = (
        sqlite.insert(DecisionRow)
        .on_conflict_do_nothing(index_elements=["loop", "event_id"])
        .returning(DecisionRow.loop, DecisionRow.event_id)
    )
    out: set[tuple[str, str]] = set()
    for rec, actions in zip(records, refs, strict=True):
        hit = conn.execute(stmt, rec.row() | {"actions": actions}).first()
        if hit is not None:
            out.add((hit[0], hit[1]))
    return out
