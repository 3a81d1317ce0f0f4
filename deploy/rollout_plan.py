"""The rollout planners (pure): which moves between rollout states are allowed, and the
changes and audit entry of a transition or a rollback, computed from the loop's versions as read
under its lock. :mod:`deploy.rollout` applies them (one transaction each)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from explore.errors import Conflict, InvalidInput, NotFound
from log.audit import AuditEntry
from log.deploy_settings import DEPLOY_BOUNDS
from log.registry_store import (
    OVERRIDE_ACTION,
    LoopModels,
    ModelChange,
    ModelRecord,
    RolloutPlan,
    TransitionConflict,
)
from log.verdicts import VerdictRecord

__all__ = [
    "EXPLICIT",
    "MAX_ACTOR",
    "MAX_REASON",
    "STATUSES",
    "TARGETS",
    "TRANSITIONS",
    "GateNotPassed",
    "InvalidTransition",
    "NoLiveVersion",
    "NoRollbackTarget",
    "RolloutSlotTaken",
    "TransitionRequest",
    "check_canary_percent",
    "check_text",
    "check_transition",
    "is_freshness",
    "plan_rollback",
    "plan_transition",
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


def check_text(value: str | None, name: str, limit: int, *, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidInput(f"{name} is required (a non-empty string)", "invalid_request")
        return None
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise InvalidInput(
            f"{name} must be a string of at most {limit} characters without NUL", "invalid_request"
        )
    return value


def check_canary_percent(value: float | None, default: float) -> float:
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
