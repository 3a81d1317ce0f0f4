"""Rollout states of a model version and the transitions between them.

::

    candidate -> shadow -> canary -> live -> retired
        |          |          |                 |
        +----------+----------+--> rejected     +--> live (rollback only)

- ``candidate``: registered, not used. ``shadow``: scores every request beside live, its pmf is
  logged, never served. ``canary``: serves ``canary_percent`` % of traffic (stable hash of the
  user id). ``live``: serves the rest (everything without a canary). ``retired``: was live;
  the only state a rollback returns to. ``rejected``: final.
- At most one live, one canary and one shadow version per loop (the database's unique indexes
  back the planner's checks). A version enters a taken slot only once its holder left it.
- :func:`transition` makes one move: to ``shadow`` or ``canary`` (no gate needed: a canary is
  watched online by :mod:`deploy.ab`), to ``live`` (the version's latest gate verdict must have
  passed, unless ``override=True`` with a reason: the audit row's action is then
  ``model.live_override`` and the model listing flags the version), or to ``rejected``. The
  loop's live version is retired by the same transaction; the new one's ``replaced`` is it (the
  rollback target). **Freshness track**: a version registered as an online continuation of the
  live version (kind ``online``, parent = live, same VW arguments) goes live without a gate
  verdict (the learner's cheap safety checks guard it) and inherits the live version's
  ``replaced``, so a rollback undoes the whole lineage.
- :func:`rollback` changes the live version: live -> retired (audited as ``model.rollback``),
  its ``replaced`` (or ``to``) -> live. To stop a canary without touching live, **reject the
  canary** (``transition(canary, "rejected")``). Workers poll the registry every
  ``DS_LOOP_REFRESH_S`` (2 s by default), so either takes effect in every worker within seconds.
- Every transition is one transaction under the loop's lock, compare-and-set on the state the
  planner read, with its audit row (who, role, why, the numbers) in the same transaction: two
  concurrent approvals make exactly one transition; the second gets 409 ``transition_conflict``.

Errors (all :mod:`explore.errors`): 404 ``model_not_found`` (unknown version, or one of another
loop); 409 ``invalid_transition``, ``transition_conflict``, ``gate_not_passed``,
``rollout_slot_taken``, ``no_live_version``, ``no_rollback_target``; 422 ``invalid_request``
(an empty or overlong reason or actor, a canary percent out of bounds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from explore.errors import Conflict, InvalidInput, NotFound
from log.audit import AuditEntry
from log.deploy_settings import DEPLOY_BOUNDS, RolloutSettings
from log.loops import get_loop
from log.registry_store import (
    OVERRIDE_ACTION,
    LiveVersionConflict,
    LoopModels,
    ModelChange,
    ModelRecord,
    RolloutPlan,
    TransitionConflict,
    apply_rollout,
    get_model,
)
from log.schema import Engine
from log.verdicts import VerdictRecord

__all__ = [
    "EXPLICIT",
    "MAX_REASON",
    "OVERRIDE_ACTION",
    "STATUSES",
    "TRANSITIONS",
    "GateNotPassed",
    "InvalidTransition",
    "LiveVersionConflict",
    "NoLiveVersion",
    "NoRollbackTarget",
    "RolloutSlotTaken",
    "TransitionConflict",
    "TransitionRequest",
    "check_transition",
    "is_freshness",
    "plan_rollback",
    "plan_transition",
    "promote",
    "rollback",
    "transition",
]

STATUSES = ("candidate", "shadow", "canary", "live", "retired", "rejected")
TRANSITIONS: Mapping[str, frozenset[str]] = {
    "candidate": frozenset({"shadow", "canary", "live", "rejected"}),
    "shadow": frozenset({"canary", "live", "rejected"}),
    "canary": frozenset({"live", "rejected"}),
    "live": frozenset({"retired"}),
    "retired": frozenset({"live"}),
    "rejected": frozenset(),
}
"""Every status change the registry ever makes."""
EXPLICIT: Mapping[str, frozenset[str]] = {
    **TRANSITIONS,
    "live": frozenset(),  # retired only when another version becomes live, or by a rollback
    "retired": frozenset(),  # live again only by a rollback
}
"""The moves :func:`transition` accepts; the others are side effects of a promotion (the old
live version retires) or of :func:`rollback`."""
_PROMOTABLE = frozenset({"candidate", "shadow", "canary", "retired"})
TARGETS = ("shadow", "canary", "live", "rejected", "retired")
MAX_REASON = 2000
MAX_ACTOR = 256


class InvalidTransition(Conflict):
    default_code = "invalid_transition"


class GateNotPassed(Conflict):
    default_code = "gate_not_passed"


class RolloutSlotTaken(Conflict):
    default_code = "rollout_slot_taken"


class NoLiveVersion(Conflict):
    default_code = "no_live_version"


class NoRollbackTarget(Conflict):
    default_code = "no_rollback_target"


def check_transition(current: str, to: str) -> None:
    """Raise unless :func:`transition` may move a version from `current` to `to`: the same
    state is a TransitionConflict (someone got there first), any other refused move an
    InvalidTransition."""
    if to not in TARGETS or current not in EXPLICIT:
        raise InvalidInput(f"to must be one of {list(TARGETS)}, got {to!r}", "invalid_request")
    if current == to:
        raise TransitionConflict(f"the version is already {to}")
    if to not in EXPLICIT[current]:
        if to == "retired":
            why = "a live version is retired by promoting another version or by a rollback"
        elif current == "retired":
            why = "a retired version becomes live again only by a rollback"
        else:
            allowed = sorted(EXPLICIT[current]) or "nothing"
            why = f"from {current} it may go to {allowed}"
        raise InvalidTransition(f"a {current} version cannot become {to}: {why}")


def is_freshness(version: ModelRecord, live: ModelRecord | None) -> bool:
    """Whether `version` is the freshness track's continuation of `live`: the same
    configuration continued online on newer events."""
    return (
        live is not None
        and version.kind == "online"
        and version.parent == live.version
        and version.vw_args == live.vw_args
    )


def _text(value: str | None, name: str, limit: int, *, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidInput(f"{name} is required (a non-empty string)", "invalid_request")
        return None
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise InvalidInput(
            f"{name} must be a string of at most {limit} characters without NUL", "invalid_request"
        )
    return value


def _canary_percent(value: float | None, default: float) -> float:
    lo, hi = DEPLOY_BOUNDS[("rollout", "canary_percent")]
    pct = default if value is None else value
    if (
        isinstance(pct, bool)
        or not isinstance(pct, int | float)
        or not math.isfinite(pct)
        or not lo <= pct <= hi
    ):
        raise InvalidInput(
            f"canary_percent must be a number in [{lo:g}, {hi:g}], got {value!r}", "invalid_request"
        )
    return float(pct)


def _verdict_json(verdict: VerdictRecord | None) -> dict[str, Any] | None:
    if verdict is None:
        return None
    return {
        "id": verdict.id,
        "look": verdict.look,
        "at": verdict.at.isoformat(),
        "decision": verdict.decision,
        "incumbent": verdict.incumbent,
        "reason": verdict.reason,
        "numbers": verdict.numbers,
    }


@dataclass(frozen=True)
class TransitionRequest:
    """One requested move (see :func:`transition`). `any_to_live`: the legacy `promote` (any
    non-rejected version to live; promoting the live version changes nothing)."""

    to: str
    actor: str
    role: str | None
    reason: str | None
    at: datetime
    canary_percent: float | None = None
    override: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)
    any_to_live: bool = False


def plan_transition(state: LoopModels, req: TransitionRequest) -> RolloutPlan:
    """The changes and audit entry of `req` on the version `state.subject` (pure: raises to
    refuse). The state is read under the loop's lock, so the checks hold when it commits."""
    v = state.subject
    if v is None:
        raise NotFound("the model version does not exist", "model_not_found")
    current = v.status
    legacy = req.any_to_live and req.to == "live" and current in _PROMOTABLE
    if not legacy:
        check_transition(current, req.to)
    details: dict[str, Any] = {"from": current, "to": req.to, **req.details}
    action = f"model.{req.to}"
    changes: list[ModelChange] = []
    if req.to == "live":
        live = state.live
        freshness = is_freshness(v, live)
        passed = state.verdict is not None and state.verdict.passed
        overridden = not (freshness or passed)
        if overridden:
            if not req.override:
                latest = state.verdict
                why = (
                    "it has no gate verdict"
                    if latest is None
                    else f"its latest gate verdict (look {latest.look}) is {latest.decision}: "
                    f"{latest.reason}"
                )
                raise GateNotPassed(
                    f"version {v.version!r} cannot go live: {why}; a gatekeeper may override "
                    "with a reason"
                )
            if req.reason is None:
                raise InvalidInput("an override of the gate needs a reason", "invalid_request")
            action = OVERRIDE_ACTION
        if live is not None:
            changes.append(ModelChange(live.version, "live", "retired"))
            replaced = live.replaced if v.parent == live.version else live.version
        else:
            replaced = v.replaced
        changes.append(
            ModelChange(
                v.version,
                current,
                "live",
                {"live_since": req.at, "replaced": replaced, "canary_percent": None},
            )
        )
        details.update(
            {
                "track": "freshness" if freshness else "candidate",
                "override": overridden,
                "verdict": _verdict_json(state.verdict),
                "retired": None if live is None else live.version,
                "replaced": replaced,
            }
        )
    elif req.to in ("shadow", "canary"):
        holder = state.shadow if req.to == "shadow" else state.canary
        if holder is not None and holder.version != v.version:
            raise RolloutSlotTaken(
                f"version {holder.version!r} is already {req.to} in loop {state.loop!r}: reject "
                f"it (or promote it) first"
            )
        pct = req.canary_percent if req.to == "canary" else None
        changes.append(ModelChange(v.version, current, req.to, {"canary_percent": pct}))
        details["canary_percent"] = pct
        details["verdict"] = _verdict_json(state.verdict)
    else:  # rejected
        changes.append(ModelChange(v.version, current, req.to, {"canary_percent": None}))
    audit = AuditEntry(
        at=req.at,
        actor=req.actor,
        action=action,
        loop=state.loop,
        target=v.version,
        reason=req.reason,
        role=req.role,
        details=details,
    )
    return RolloutPlan(tuple(changes), audit, v.version)


def _loop_canary_percent(engine: Engine, loop: str) -> float:
    stored = get_loop(engine, loop)
    return (stored.config.rollout if stored is not None else RolloutSettings()).canary_percent


def transition(
    engine: Engine,
    version: str,
    to: str,
    *,
    actor: str,
    role: str | None,
    reason: str | None,
    canary_percent: float | None = None,
    override: bool = False,
    details: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> ModelRecord:
    """Move `version` to `to` (shadow, canary, live, rejected) in one audited transaction; see
    the module docstring for the rules and errors. `canary_percent` (to canary): the share of
    traffic, default the loop's ``rollout.canary_percent``. `details` go into the audit row.
    Returns the version's new record."""
    actor_ = _text(actor, "actor", MAX_ACTOR, required=True)
    assert actor_ is not None
    reason_ = _text(reason, "reason", MAX_REASON, required=False)
    if not isinstance(override, bool):
        raise InvalidInput("override must be true or false", "invalid_request")
    if to not in TARGETS:
        raise InvalidInput(f"to must be one of {list(TARGETS)}, got {to!r}", "invalid_request")
    pct = None
    if to == "canary":
        found = _existing(engine, version)
        pct = _canary_percent(canary_percent, _loop_canary_percent(engine, found.loop))
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
        details=dict(details or {}),
    )
    return apply_rollout(engine, lambda state: plan_transition(state, req), version=version)


def _existing(engine: Engine, version: str) -> ModelRecord:
    found = get_model(engine, version)
    if found is None:
        raise NotFound(f"model version {version!r} does not exist", "model_not_found")
    return found


def promote(
    engine: Engine, version: str, *, actor: str = "cli", reason: str | None = None
) -> ModelRecord:
    """Make `version` live whatever its gate verdict (the CLI's ``learn --promote`` and the
    registry's historical `promote`): a candidate, shadow, canary or retired version goes live,
    the live version retires; promoting the live version changes nothing. Audited like
    :func:`transition`, as an override when the gate had not passed it."""
    req = TransitionRequest(
        to="live",
        actor=actor,
        role=None,
        reason=reason or f"promoted by {actor} (no gate)",
        at=datetime.now(UTC),
        override=True,
        any_to_live=True,
    )
    found = _existing(engine, version)
    if found.status == "live":
        return found
    return apply_rollout(engine, lambda state: plan_transition(state, req), version=version)


def plan_rollback(
    state: LoopModels,
    *,
    to: str | None,
    actor: str,
    role: str | None,
    reason: str,
    at: datetime,
    expected_live: str | None = None,
) -> RolloutPlan:
    """The changes and audit entry of a rollback of `state.loop` (pure: raises to refuse)."""
    live = state.live
    if live is None:
        raise NoLiveVersion(f"loop {state.loop!r} has no live version to roll back")
    if expected_live is not None and live.version != expected_live:
        raise TransitionConflict(
            f"the live version of loop {state.loop!r} is {live.version!r}, not "
            f"{expected_live!r}: it changed since it was read; nothing was rolled back"
        )
    target_version = to if to is not None else live.replaced
    if target_version is None:
        raise NoRollbackTarget(
            f"live version {live.version!r} replaced no earlier version: there is nothing to roll "
            "back to (name one with `to`)"
        )
    target = state.others.get(target_version)
    if target is None:
        raise NotFound(
            f"model version {target_version!r} does not exist in loop {state.loop!r}",
            "model_not_found",
        )
    if target.version == live.version:
        raise InvalidTransition(f"version {live.version!r} is the live version")
    if target.status != "retired":
        raise InvalidTransition(
            f"a rollback returns to a retired version (one that was live); {target.version!r} "
            f"is {target.status}"
        )
    changes = (
        ModelChange(live.version, "live", "retired"),
        ModelChange(target.version, "retired", "live", {"live_since": at}),
    )
    audit = AuditEntry(
        at=at,
        actor=actor,
        action="model.rollback",
        loop=state.loop,
        target=live.version,
        reason=reason,
        role=role,
        details={
            "rolled_back": live.version,
            "rolled_back_live_since": None
            if live.live_since is None
            else live.live_since.isoformat(),
            "restored": target.version,
            "default_target": to is None,
        },
    )
    return RolloutPlan(changes, audit, target.version)


def rollback(
    engine: Engine,
    loop: str,
    *,
    actor: str,
    role: str | None,
    reason: str,
    to: str | None = None,
    expected_live: str | None = None,
) -> ModelRecord:
    """Roll the loop's live version back in one audited transaction: live -> retired, `to`
    (default: live's ``replaced``, the version it replaced) -> live. `expected_live`: refuse
    (TransitionConflict) unless the live version is still this one, so that two gatekeepers
    pressing rollback at once roll back one version, not two. Returns the restored version.
    To stop a canary and keep live, reject the canary with :func:`transition` instead."""
    actor_ = _text(actor, "actor", MAX_ACTOR, required=True)
    reason_ = _text(reason, "reason", MAX_REASON, required=True)
    assert actor_ is not None and reason_ is not None
    at = datetime.now(UTC)
    extra = () if to is None else (to,)
    return apply_rollout(
        engine,
        lambda state: plan_rollback(
            state,
            to=to,
            actor=actor_,
            role=role,
            reason=reason_,
            at=at,
            expected_live=expected_live,
        ),
        loop=loop,
        extra=extra,
    )
