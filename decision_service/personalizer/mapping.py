"""Pure translations between Azure Personalizer bodies and the native ones (no I/O).

Rank: `contextFeatures` (a list of objects) becomes the native `context` (one object: the items
merged; a name given twice is refused unless both are objects, which are merged); each action's
`features` list the same way; `excludedActions` -> `excluded_actions`, `eventId` -> `event_id`,
`deferActivation` -> `defer_activation`. Feature names starting with `_` are dropped (Personalizer
ignores them). Limits of the Personalizer contract: at most 50 actions, 50 slots, ids of at most
256 characters.

Multi-slot: the native slate of `len(slots)` positions. The actions are reordered so that each
slot's `baselineAction` comes first, in slot order (slot s's baseline is native action s: what
Apprentice and LoggingOnly serve and what OPE's baseline is); the slot ids are logged in the
context as `slotIds` (a list of strings, order kept) and the slots' features as `slotFeatures`
(`{slot id: features}`): the native slate scores every slot with the same shared context, so slot
features become context features. Per-slot `excludedActions` are not supported (the native slate
excludes actions for every slot): a non-empty list is refused.
"""

from __future__ import annotations

from typing import Any

from explore.errors import InvalidInput

__all__ = [
    "MAX_ACTIONS",
    "MAX_ID",
    "MAX_SLOTS",
    "SLOT_FEATURES",
    "SLOT_IDS",
    "check_id",
    "multislot_rank_body",
    "multislot_response",
    "rank_body",
    "rank_response",
    "slot_rewards",
]

MAX_ACTIONS = 50
MAX_SLOTS = 50
MAX_ID = 256
SLOT_IDS = "slotIds"
SLOT_FEATURES = "slotFeatures"


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message, "invalid_request")


def check_id(value: Any, where: str) -> str:
    if type(value) is not str or not value:
        raise _bad(f"{where} must be a non-empty string")
    if len(value) > MAX_ID:
        raise InvalidInput(f"{where} is {len(value)} characters; the limit is {MAX_ID}")
    return value


def _visible(features: dict[str, Any]) -> dict[str, Any]:
    """Without names starting with `_` (Personalizer ignores them), at every level."""
    return {k: _visible(v) if type(v) is dict else v for k, v in features.items() if k[:1] != "_"}


def _merge(into: dict[str, Any], item: dict[str, Any], where: str) -> None:
    for key, value in item.items():
        if key in into:
            if type(into[key]) is dict and type(value) is dict:
                merged = dict(into[key])
                _merge(merged, value, f"{where}.{key}")
                into[key] = merged
                continue
            raise _bad(f"{where}: feature {key!r} is given twice")
        into[key] = value


def features_object(items: Any, where: str) -> dict[str, Any]:
    """A Personalizer feature list (a list of objects; null = none) as one object."""
    if items is None:
        return {}
    if type(items) is dict:  # tolerated: one object instead of a list of one
        items = [items]
    if type(items) is not list:
        raise _bad(f"{where} must be a list of objects")
    out: dict[str, Any] = {}
    for i, item in enumerate(items):
        if type(item) is not dict:
            raise _bad(f"{where}[{i}] must be an object")
        _merge(out, _visible(item), where)
    return out


def _object(body: Any) -> dict[str, Any]:
    if type(body) is not dict:
        raise _bad("the body must be a JSON object")
    return body


def _actions(body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("actions")
    if type(raw) is not list or not raw:
        raise _bad("actions must be a non-empty list of {id, features}")
    if len(raw) > MAX_ACTIONS:
        raise InvalidInput(f"{len(raw)} actions; the limit is {MAX_ACTIONS}")
    out = []
    for i, action in enumerate(raw):
        if type(action) is not dict:
            raise _bad(f"actions[{i}] must be an object with id and features")
        out.append(
            {
                "id": check_id(action.get("id"), f"actions[{i}].id"),
                "features": features_object(action.get("features"), f"actions[{i}].features"),
            }
        )
    return out


def _common(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "context": features_object(body.get("contextFeatures"), "contextFeatures"),
    }
    event_id = body.get("eventId")
    if event_id is not None:
        out["event_id"] = check_id(event_id, "eventId")
    defer = body.get("deferActivation")
    if defer is not None:
        if type(defer) is not bool:
            raise _bad("deferActivation must be true or false")
        out["defer_activation"] = defer
    return out


def rank_body(body: Any) -> dict[str, Any]:
    """The native rank body of a Personalizer RankRequest (unknown fields are ignored, as the
    service did)."""
    body = _object(body)
    out = _common(body)
    out["actions"] = _actions(body)
    excluded = body.get("excludedActions")
    if excluded:
        if type(excluded) is not list or any(type(x) is not str for x in excluded):
            raise _bad("excludedActions must be a list of action ids")
        out["excluded_actions"] = excluded
    return out


def rank_response(native: dict[str, Any]) -> dict[str, Any]:
    """A Personalizer RankResponse from the native one: every action (excluded ones with
    probability 0), the served one first."""
    return {
        "ranking": [{"id": r["id"], "probability": r["probability"]} for r in native["ranking"]],
        "eventId": native["event_id"],
        "rewardActionId": native["reward_action_id"],
    }


def multislot_rank_body(body: Any) -> dict[str, Any]:
    """The native slate body of a Personalizer MultiSlotRankRequest (see the module docstring)."""
    body = _object(body)
    out = _common(body)
    actions = _actions(body)
    slots = body.get("slots")
    if type(slots) is not list or not slots:
        raise _bad("slots must be a non-empty list of {id, baselineAction, ...}")
    if len(slots) > MAX_SLOTS:
        raise InvalidInput(f"{len(slots)} slots; the limit is {MAX_SLOTS}")
    by_id = {a["id"]: a for a in actions}
    slot_ids: list[str] = []
    baselines: list[str] = []
    slot_features: dict[str, Any] = {}
    for i, slot in enumerate(slots):
        if type(slot) is not dict:
            raise _bad(f"slots[{i}] must be an object")
        slot_id = check_id(slot.get("id"), f"slots[{i}].id")
        if slot_id in slot_ids:
            raise _bad(f"slot id {slot_id!r} appears twice")
        baseline = check_id(slot.get("baselineAction"), f"slots[{i}].baselineAction")
        if baseline not in by_id:
            raise _bad(f"slots[{i}].baselineAction {baseline!r} is not among the actions")
        if baseline in baselines:
            raise _bad(f"slots[{i}].baselineAction {baseline!r} is another slot's baseline")
        if slot.get("excludedActions"):
            raise InvalidInput(
                f"slots[{i}].excludedActions: per-slot exclusions are not supported by this "
                "service (an action excluded from a slot is excluded from every slot here)",
                "unsupported",
            )
        features = features_object(slot.get("features"), f"slots[{i}].features")
        if features:
            slot_features[slot_id] = features
        slot_ids.append(slot_id)
        baselines.append(baseline)
    context = out["context"]
    for name in (SLOT_IDS, SLOT_FEATURES):
        if name in context:
            raise _bad(f"contextFeatures: {name!r} is reserved for multi-slot requests")
    context[SLOT_IDS] = slot_ids
    if slot_features:
        context[SLOT_FEATURES] = slot_features
    first = set(baselines)
    out["actions"] = [by_id[b] for b in baselines] + [a for a in actions if a["id"] not in first]
    out["slots"] = len(slots)
    return out


def multislot_response(native: dict[str, Any], slot_ids: list[str]) -> dict[str, Any]:
    """A Personalizer MultiSlotRankResponse from the native slate response."""
    by_slot = {s["slot"]: s["action_id"] for s in native["slots"]}
    return {
        "eventId": native["event_id"],
        "slots": [{"id": sid, "rewardActionId": by_slot[i]} for i, sid in enumerate(slot_ids)],
    }


def slot_rewards(body: Any, slot_ids: list[str]) -> list[tuple[int, float]]:
    """(native slot index, value) of each reward of a MultiSlotRewardRequest, checked first."""
    body = _object(body)
    rewards = body.get("reward")
    if type(rewards) is not list or not rewards:
        raise _bad("reward must be a non-empty list of {slotId, value}")
    out = []
    for i, item in enumerate(rewards):
        if type(item) is not dict:
            raise _bad(f"reward[{i}] must be an object with slotId and value")
        slot_id = item.get("slotId")
        if slot_id not in slot_ids:
            raise _bad(f"reward[{i}].slotId {slot_id!r} is not a slot of this event")
        out.append((slot_ids.index(slot_id), reward_value(item.get("value"), f"reward[{i}].value")))
    return out


def reward_value(value: Any, where: str = "value") -> float:
    if type(value) not in (int, float):
        raise _bad(f"{where} must be a number")
    return float(value)
