"""Rollout of retriever (two-tower) versions: the same states, rules and guarantees as a model
version's (:mod:`deploy.rollout`), with the retriever gate in place of the VW gate.

::

    candidate -> shadow -> canary -> live -> retired
        |          |          |                 |
        +----------+----------+--> rejected     +--> live (rollback only)

- ``shadow``: after each served decision that retrieved its candidates, the shadow retrieves
  top-k for the same request (nothing served changes); the decision logs its overlap with the
  served candidate set. ``canary``: ``canary_percent`` % of the units (user id, else event id)
  retrieve with it (:mod:`explore.arms`, salted by :func:`explore.arms.retriever_salt`).
  ``live``: every other request. One of each per loop.
- The moves and their refusals are the model rollout's
  (:func:`deploy.rollout_plan.check_transition`: 409 ``transition_conflict`` when the version
  is already there, ``invalid_transition`` otherwise; 409 ``rollout_slot_taken``; 404
  ``not_found``), and to ``canary`` or ``live`` the version's latest retriever-gate verdict
  must have passed (409 ``gate_not_passed``) unless ``override`` with a reason (422
  ``reason_required``; audit action ``retriever.canary_override`` /
  ``retriever.live_override``). A shadow serves nothing and needs no verdict.
- Item embeddings: entering shadow or canary, the version embeds the whole catalog with its item
  tower into ``item_embeddings`` (computed before the transaction; the items changed meanwhile
  are embedded again inside it, under the loop's lock, which upserts take too, so the version
  has a fresh embedding of every item from its commit on). Promotion copies a shadow's or
  canary's embeddings into the catalog (only what changed since is embedded again; a candidate
  promoted directly embeds the catalog as before); rejection and promotion drop them.
- :func:`rollback_retriever`: live -> retired, the version it replaced -> live (re-embedding the
  catalog with it), ``expected_live`` as compare-and-set; to stop a canary and keep live,
  reject the canary.

Every move is one transaction under the loop's lock (:func:`log.retrievers.apply_retriever_plan`)
with its audit row (actions ``retriever.<state>``, ``retriever.rollback``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from deploy.rollout_plan import (
    MAX_ACTOR,
    MAX_REASON,
    GateNotPassed,
    InvalidTransition,
    NoLiveVersion,
    NoRollbackTarget,
    RolloutSlotTaken,
    TransitionRequest,
    check_canary_percent,
    check_text,
    check_transition,
)
from explore.errors import Conflict, InvalidInput, NotFound
from log.audit import AuditEntry
from log.catalog import iter_items_to_embed
from log.deploy_settings import RolloutSettings
from log.loops import get_loop
from log.retrievers import (
    RetrieverChange,
    RetrieverPlan,
    RetrieverState,
    RetrieverVersion,
    apply_retriever_plan,
    get_retriever,
    read_retriever_artifact,
    rolled_out,
)
from log.schema import Engine
from log.verdicts import VerdictRecord, latest_verdict

__all__ = [
    "GATED",
    "ModelOf",
    "move_retriever",
    "plan_retriever_move",
    "plan_retriever_rollback",
    "rollback_retriever",
]

GATED = frozenset({"canary", "live"})
"""Moves that need a passed retriever-gate verdict (or an audited override)."""

ModelOf = Callable[[str], Any]
"""retriever version -> its loaded two-tower model (`policies.two_tower.TwoTower`)."""


def _verdict_json(verdict: VerdictRecord | None) -> dict[str, Any] | None:
    if verdict is None:
        return None
    return {"id": verdict.id, "look": verdict.look, "decision": verdict.decision}


def _check_gate(version: str, verdict: VerdictRecord | None, req: TransitionRequest) -> bool:
    """Whether the move overrides the gate (raises when it may not)."""
    if verdict is not None and verdict.passed:
        return False
    if not req.override:
        seen = "no gate verdict" if verdict is None else f"its latest verdict is {verdict.decision}"
        raise GateNotPassed(
            f"retriever {version} has not passed the retriever gate ({seen}): run the check, "
            "or override with a reason"
        )
    if req.reason is None:
        raise InvalidInput("an override needs a reason", "reason_required")
    return True


def plan_retriever_move(state: RetrieverState, req: TransitionRequest) -> RetrieverPlan:
    """The changes, embeddings and audit row of moving `state.subject` to `req.to` (pure:
    raises to refuse). The state is read under the loop's lock."""
    v = state.subject
    if v is None:
        raise NotFound(f"no such retriever version in loop {state.loop!r}", "not_found")
    current = v.status
    check_transition(current, req.to)
    details: dict[str, Any] = {
        "from": current,
        "to": req.to,
        "metrics": v.metrics,
        "verdict": _verdict_json(state.verdict),
        **req.details,
    }
    action = f"retriever.{req.to}"
    overridden = req.to in GATED and _check_gate(v.version, state.verdict, req)
    if overridden:
        action = f"retriever.{req.to}_override"
    details["override"] = overridden
    changes: list[RetrieverChange] = []
    side = live = None
    drop: tuple[str, ...] = ()
    if req.to in ("shadow", "canary"):
        holder = state.shadow if req.to == "shadow" else state.canary
        if holder is not None and holder.version != v.version:
            raise RolloutSlotTaken(
                f"retriever {holder.version!r} is already {req.to} in loop {state.loop!r}: "
                "reject it (or promote it) first"
            )
        pct = req.canary_percent if req.to == "canary" else None
        changes.append(RetrieverChange(v.version, current, req.to, {"canary_percent": pct}))
        details["canary_percent"] = pct
        side = v.version
    elif req.to == "live":
        old = state.live
        if old is not None:
            changes.append(RetrieverChange(old.version, "live", "retired"))
        replaced = None if old is None else old.version
        changes.append(
            RetrieverChange(
                v.version, current, "live", {"canary_percent": None, "replaced": replaced}
            )
        )
        details.update({"retired": replaced, "replaced": replaced})
        live, drop = v.version, (v.version,)
    else:  # rejected
        changes.append(RetrieverChange(v.version, current, "rejected", {"canary_percent": None}))
        drop = (v.version,)
    audit = AuditEntry(
        at=req.at,
        actor=req.actor,
        role=req.role,
        loop=state.loop,
        action=action,
        target=v.version,
        reason=req.reason,
        details=details,
    )
    return RetrieverPlan(tuple(changes), audit, v.version, side=side, live=live, drop=drop)


def plan_retriever_rollback(
    state: RetrieverState,
    *,
    to: str | None,
    actor: str,
    role: str | None,
    reason: str,
    at: datetime,
    expected_live: str | None,
) -> RetrieverPlan:
    """The changes and audit row of rolling the live retriever back (pure: raises to refuse)."""
    live = state.live
    if live is None:
        raise NoLiveVersion(f"loop {state.loop!r} has no live retriever to roll back")
    if expected_live is not None and live.version != expected_live:
        raise Conflict(
            f"the live retriever of loop {state.loop!r} is {live.version!r}, not "
            f"{expected_live!r}: nothing was rolled back",
            "transition_conflict",
        )
    target_version = to if to is not None else live.replaced
    if target_version is None:
        raise NoRollbackTarget(
            f"live retriever {live.version!r} replaced no earlier version: name one with `to`"
        )
    target = state.versions.get(target_version)
    if target is None:
        raise NotFound(f"no retriever version {target_version!r} in loop {state.loop!r}")
    if target.status != "retired":
        raise InvalidTransition(
            f"a rollback returns to a retired retriever (one that was live); {target.version!r} "
            f"is {target.status}"
        )
    audit = AuditEntry(
        at=at,
        actor=actor,
        role=role,
        loop=state.loop,
        action="retriever.rollback",
        target=live.version,
        reason=reason,
        details={"rolled_back": live.version, "restored": target.version},
    )
    return RetrieverPlan(
        (
            RetrieverChange(live.version, "live", "retired"),
            RetrieverChange(target.version, "retired", "live"),
        ),
        audit,
        target.version,
        live=target.version,
        drop=(target.version,),
    )


def load_model(engine: Engine) -> ModelOf:
    """Retriever version -> its model, loaded from the registry (checked against its sha256)."""
    from policies.two_tower import load_two_tower

    cache: dict[str, Any] = {}

    def model_of(version: str) -> Any:
        if version not in cache:
            cache[version] = load_two_tower(read_retriever_artifact(engine, version))
        return cache[version]

    return model_of


def _embedder(model_of: ModelOf) -> Callable[[str, list[dict[str, Any]]], np.ndarray]:
    def embed(version: str, features: list[dict[str, Any]]) -> np.ndarray:
        vectors = np.asarray(model_of(version).embed_items(features), dtype=np.float32)
        if not np.isfinite(vectors).all():
            raise InvalidInput(
                f"retriever {version}: an item's features give a non-finite embedding",
                "invalid_embedding",
            )
        return vectors

    return embed


def _precompute(
    engine: Engine, loop: str, version: str, model_of: ModelOf
) -> list[tuple[str, np.ndarray, datetime]]:
    """`version`'s embeddings of the items whose catalog embedding is neither its own nor a
    client's, read and embedded outside any transaction (the move embeds again, under the
    lock, what changed meanwhile)."""
    embed = _embedder(model_of)
    out: list[tuple[str, np.ndarray, datetime]] = []
    for chunk in iter_items_to_embed(engine, loop, version):
        vectors = embed(version, [features for _, features, _ in chunk])
        out.extend((i, v, at) for (i, _, at), v in zip(chunk, vectors, strict=True))
    return out


def _canary_default(engine: Engine, loop: str) -> float:
    stored = get_loop(engine, loop)
    return (stored.config.rollout if stored is not None else RolloutSettings()).canary_percent


def move_retriever(
    engine: Engine,
    loop: str,
    version: str,
    to: str,
    *,
    actor: str,
    role: str | None = None,
    reason: str | None = None,
    canary_percent: float | None = None,
    override: bool = False,
    model_of: ModelOf | None = None,
    now: datetime | None = None,
) -> RetrieverVersion:
    """Move retriever `version` of `loop` to `to` (shadow, canary, live, rejected) in one
    audited transaction; see the module docstring. `canary_percent` (to canary): default the
    loop's ``rollout.canary_percent``."""
    actor_ = check_text(actor, "actor", MAX_ACTOR, required=True)
    assert actor_ is not None
    reason_ = check_text(reason, "reason", MAX_REASON, required=False)
    if not isinstance(override, bool):
        raise InvalidInput("override must be true or false", "invalid_request")
    if override and reason_ is None:
        raise InvalidInput("an override needs a reason", "reason_required")
    found = get_retriever(engine, version)
    if found is None or found.loop != loop:
        raise NotFound(f"no retriever version {version!r} in loop {loop!r}", "not_found")
    pct = None
    if to == "canary":
        pct = check_canary_percent(canary_percent, _canary_default(engine, loop))
        if not 0.0 < pct < 100.0:
            raise InvalidInput(
                "a retriever canary's percent must be in (0, 100)", "invalid_request"
            )
    elif canary_percent is not None:
        raise InvalidInput("canary_percent applies to a canary only", "invalid_request")
    req = TransitionRequest(
        to=to,
        actor=actor_,
        role=role,
        reason=reason_,
        at=now or datetime.now(UTC),
        canary_percent=pct,
        override=override,
    )
    # fail fast, before embedding the catalog (everything is checked again under the lock)
    check_transition(found.status, to)
    if to in GATED:
        _check_gate(version, latest_verdict(engine, version), req)
    holder = rolled_out(engine, loop).get(to) if to in ("shadow", "canary") else None
    if holder is not None and holder.version != version:
        raise RolloutSlotTaken(
            f"retriever {holder.version!r} is already {to} in loop {loop!r}: reject it (or "
            "promote it) first"
        )
    model_of = model_of or load_model(engine)
    vectors: list[tuple[str, np.ndarray, datetime]] = []
    if found.status == "candidate" and to in ("shadow", "canary", "live"):
        vectors = _precompute(engine, loop, version, model_of)
    return apply_retriever_plan(
        engine,
        loop,
        version,
        lambda state: plan_retriever_move(state, req),
        embed=_embedder(model_of),
        vectors=vectors,
    )


def rollback_retriever(
    engine: Engine,
    loop: str,
    *,
    actor: str,
    role: str | None = None,
    reason: str,
    to: str | None = None,
    expected_live: str | None = None,
    model_of: ModelOf | None = None,
) -> RetrieverVersion:
    """Roll the loop's live retriever back to the one it replaced (or `to`, a retired
    version), re-embedding the catalog with it; returns the restored version."""
    actor_ = check_text(actor, "actor", MAX_ACTOR, required=True)
    reason_ = check_text(reason, "reason", MAX_REASON, required=True)
    assert actor_ is not None and reason_ is not None
    at = datetime.now(UTC)
    model_of = model_of or load_model(engine)
    # the target is read again under the lock; its embeddings are computed first
    live = rolled_out(engine, loop).get("live")
    target = to if to is not None else (None if live is None else live.replaced)
    vectors: list[tuple[str, np.ndarray, datetime]] = []
    if target is not None:
        found = get_retriever(engine, target)
        if found is not None and found.loop == loop and found.status == "retired":
            vectors = _precompute(engine, loop, target, model_of)
    return apply_retriever_plan(
        engine,
        loop,
        None,
        lambda state: plan_retriever_rollback(
            state,
            to=to,
            actor=actor_,
            role=role,
            reason=reason_,
            at=at,
            expected_live=expected_live,
        ),
        embed=_embedder(model_of),
        vectors=vectors,
    )
