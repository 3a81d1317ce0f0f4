"""One-pass validation of a rank request body (the hot path).

`RankRequest` (pydantic, in schemas.py) documents the body in the OpenAPI schema; this module
applies the same rules plus the settings' limits in a single pass over the parsed JSON, which at
50 actions costs a fraction of pydantic + separate limit checks. Messages name the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from decision_service.settings import Settings
from explore import Action
from explore.errors import InvalidInput
from explore.rules import FeaturePredicate, predicates_from_json

_SCALARS = (str, int, float, bool)
# Control characters (NUL above all) are not valid in ids: PostgreSQL text refuses NUL.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
LOOP_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")  # use with fullmatch
_RANK_FIELDS = frozenset(
    (
        "event_id",
        "user_id",
        "context",
        "actions",
        "retrieve",
        "excluded_actions",
        "slots",
        "defer_activation",
    )
)
_ACTION_FIELDS = frozenset(("id", "features"))
_RETRIEVE_FIELDS = frozenset(("k", "filters"))


@dataclass(frozen=True, slots=True)
class RetrieveSpec:
    """`retrieve` of a rank request: k candidates from the catalog, meeting `filters`."""

    k: int
    filters: tuple[FeaturePredicate, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"k": self.k, "filters": [p.to_json() for p in self.filters]}


@dataclass(frozen=True, slots=True)
class RankInput:
    event_id: str | None
    context: dict[str, Any]
    actions: list[Action]
    excluded: list[str]
    slots: int | None
    defer_activation: bool
    # The unit of a canary split (else the event id is); hashed with the loop's key, not stored.
    user_id: str | None = None
    # Candidates from the catalog (then `actions` is empty until the service retrieves them).
    retrieve: RetrieveSpec | None = None


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, "invalid_request")


def _limit(message: str) -> InvalidInput:
    return InvalidInput(message, "limit_exceeded")


def count_features(features: Any, where: str, depth: int = 0) -> int:
    """Count features, rejecting value types VW cannot take. Nested objects count their leaves."""
    if type(features) is not dict:
        raise _invalid(f"{where} must be an object")
    n = 0
    for key, value in features.items():
        t = type(value)
        if t is str or t is float or t is int or t is bool or value is None:
            n += 1
        elif t is dict:
            if depth >= 2:
                raise _invalid(f"{where}.{key}: objects nest at most 3 levels deep")
            n += count_features(value, f"{where}.{key}", depth + 1)
        elif t is list:
            for item in value:
                if item is not None and not isinstance(item, _SCALARS):
                    raise _invalid(
                        f"{where}.{key}: lists may hold strings, numbers or booleans only"
                    )
            n += len(value)
        else:  # pragma: no cover - JSON has no other types
            raise _invalid(f"{where}.{key}: unsupported value")
    return n


def _check_id(value: Any, where: str, settings: Settings) -> str:
    if type(value) is not str or not value:
        raise _invalid(f"{where} must be a non-empty string")
    if len(value) > settings.max_id_length:
        raise _limit(f"{where} is {len(value)} characters; the limit is {settings.max_id_length}")
    if CONTROL.search(value):
        raise _invalid(f"{where} must not contain control characters")
    return value


def parse_rank(body: Any, settings: Settings) -> RankInput:
    """Validate a parsed rank body; raises InvalidInput (422) naming the field that is wrong."""
    if type(body) is not dict:
        raise _invalid("body must be a JSON object")
    unknown = body.keys() - _RANK_FIELDS
    if unknown:
        raise _invalid(f"unknown field(s): {', '.join(sorted(unknown))}")

    event_id = body.get("event_id")
    if event_id is not None:
        _check_id(event_id, "event_id", settings)

    user_id = body.get("user_id")
    if user_id is not None:
        _check_id(user_id, "user_id", settings)

    context = body.get("context", {})
    if context is None:
        context = {}
    n = count_features(context, "context")
    if n > settings.max_features:
        raise _limit(f"context has {n} features; the limit is {settings.max_features}")

    if body.get("retrieve") is not None:
        return _parse_retrieve(body, event_id, context, user_id, settings)
    raw_actions = body.get("actions")
    if type(raw_actions) is not list or not raw_actions:
        raise _invalid("actions must be a non-empty list of {id, features} objects")
    if len(raw_actions) > settings.max_actions:
        raise _limit(f"{len(raw_actions)} actions; the limit is {settings.max_actions} per request")
    actions: list[Action] = []
    seen: set[str] = set()
    max_id, max_features = settings.max_id_length, settings.max_features
    for i, raw in enumerate(raw_actions):
        if type(raw) is not dict:
            raise _invalid(f"actions[{i}] must be an object with id and features")
        if len(raw) > 2 or not raw.keys() <= _ACTION_FIELDS:
            extra = ", ".join(sorted(raw.keys() - _ACTION_FIELDS))
            raise _invalid(f"actions[{i}]: unknown field(s): {extra}")
        action_id: str = raw.get("id")  # type: ignore[assignment]  # checked just below
        if (
            type(action_id) is not str
            or not action_id
            or len(action_id) > max_id
            or CONTROL.search(action_id)
        ):
            _check_id(action_id, f"actions[{i}].id", settings)
        if action_id in seen:
            raise InvalidInput(f"action id {action_id!r} appears twice", "duplicate_action")
        seen.add(action_id)
        features = raw.get("features")
        if features is None:
            features = {}
        elif type(features) is not dict:
            raise _invalid(f"actions[{i}].features must be an object")
        # fast path: flat features of scalars; anything else is counted (and checked) in full
        n = 0
        for value in features.values():
            t = type(value)
            if t is str or t is float or t is int or t is bool or value is None:
                n += 1
            else:
                n = count_features(features, f"actions[{i}].features")
                break
        if n > max_features:
            raise _limit(f"actions[{i}] has {n} features; the limit is {max_features}")
        actions.append(Action.validated(action_id, features))

    excluded = body.get("excluded_actions", [])
    if excluded is None:
        excluded = []
    if type(excluded) is not list or any(type(x) is not str for x in excluded):
        raise _invalid("excluded_actions must be a list of action ids")
    unknown_ex = [x for x in excluded if x not in seen]
    if unknown_ex:
        raise InvalidInput(
            f"excluded_actions not among actions: {unknown_ex[:5]}", "unknown_excluded_action"
        )
    available = len(seen - set(excluded))
    if available == 0:
        raise InvalidInput("every action is excluded; nothing to serve", "all_actions_excluded")

    slots = body.get("slots")
    if slots is not None:
        if type(slots) is not int or slots < 1:
            raise _invalid("slots must be an integer >= 1")
        if slots > settings.max_slots:
            raise _limit(f"{slots} slots; the limit is {settings.max_slots}")
        if slots > available:
            raise InvalidInput(
                f"{slots} slots but only {available} actions can be served", "too_many_slots"
            )

    defer = body.get("defer_activation", False)
    if type(defer) is not bool:
        raise _invalid("defer_activation must be true or false")
    return RankInput(event_id, context, actions, list(excluded), slots, defer, user_id)


def _parse_retrieve(
    body: dict[str, Any],
    event_id: str | None,
    context: dict[str, Any],
    user_id: str | None,
    settings: Settings,
) -> RankInput:
    """A request whose candidates come from the catalog: `retrieve` in place of `actions`;
    `excluded_actions` are ids never retrieved."""
    if body.get("actions") is not None:
        raise _invalid("send either actions or retrieve, not both")
    raw = body["retrieve"]
    if type(raw) is not dict or not raw.keys() <= _RETRIEVE_FIELDS:
        raise _invalid("retrieve must be an object {k, filters?}")
    k = raw.get("k")
    if type(k) is not int or k < 1:
        raise _invalid("retrieve.k must be an integer >= 1")
    if k > settings.max_actions:
        raise _limit(f"retrieve.k is {k}; the limit is {settings.max_actions}")
    try:
        filters = predicates_from_json(raw.get("filters"), "retrieve.filters")
    except ValueError as err:
        raise _invalid(str(err)) from None
    excluded = body.get("excluded_actions", [])
    if excluded is None:
        excluded = []
    if type(excluded) is not list or any(type(x) is not str for x in excluded):
        raise _invalid("excluded_actions must be a list of action ids")
    if len(excluded) > settings.max_actions:
        raise _limit(f"{len(excluded)} excluded_actions; the limit is {settings.max_actions}")
    slots = body.get("slots")
    if slots is not None:
        if type(slots) is not int or slots < 1:
            raise _invalid("slots must be an integer >= 1")
        if slots > settings.max_slots:
            raise _limit(f"{slots} slots; the limit is {settings.max_slots}")
        if slots > k:
            raise InvalidInput(f"{slots} slots but retrieve.k is {k}", "too_many_slots")
    defer = body.get("defer_activation", False)
    if type(defer) is not bool:
        raise _invalid("defer_activation must be true or false")
    return RankInput(
        event_id, context, [], list(excluded), slots, defer, user_id, RetrieveSpec(k, filters)
    )
