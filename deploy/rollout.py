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

from datetime import UTC, datetime
from typing import Any

from deploy.rollout_plan import (
    EXPLICIT,
    MAX_ACTOR,
    MAX_REASON,
    STATUSES,
    TARGETS,
    TRANSITIONS,
    GateNotPassed,
    InvalidTransition,
    NoLiveVersion,
    NoRollbackTarget,
    RolloutSlotTaken,
    TransitionRequest,
    check_canary_percent,
    check_text,
    check_transition,
    is_freshness,
    plan_rollback,
    plan_transition,
)
from explore.errors import InvalidInput, NotFound
from log.deploy_settings import RolloutSettings
from log.loops import get_loop
from log.registry_store import (
    OVERRIDE_ACTION,
    LiveVersionConflict,
    ModelRecord,
    TransitionConflict,
    apply_rollout,
    get_model,
)
from log.schema import Engine

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
    actor_ = check_text(actor, "actor", MAX_ACTOR, required=True)
    assert actor_ is not None
    reason_ = check_text(reason, "reason", MAX_REASON, required=False)
    if not isinstance(override, bool):
        raise InvalidInput("override must be true or false", "invalid_request")
    if to not in TARGETS:
        raise InvalidInput(f"to must be one of {list(TARGETS)}, got {to!r}", "invalid_request")
    pct = None
    if to == "canary":
        found = _existing(engine, version)
        pct = check_canary_percent(canary_percent, _loop_canary_percent(engine, found.loop))
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
    actor_ = check_text(actor, "actor", MAX_ACTOR, required=True)
    reason_ = check_text(reason, "reason", MAX_REASON, required=True)
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
