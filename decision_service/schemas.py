"""Request bodies at the HTTP edge (pydantic), and the checks of the configurable limits."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from decision_service.errors import ApiError
from decision_service.settings import Settings

Number = StrictInt | StrictFloat


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ActionIn(_Body):
    id: str = Field(min_length=1)
    features: dict[str, Any] = Field(default_factory=dict)


class RankRequest(_Body):
    event_id: str | None = Field(default=None, min_length=1)
    context: dict[str, Any] = Field(default_factory=dict)
    actions: list[ActionIn] = Field(min_length=1)
    excluded_actions: list[str] = Field(default_factory=list)
    slots: StrictInt | None = Field(default=None, ge=1)
    defer_activation: StrictBool = False


class RewardRequest(_Body):
    value: Number
    slot: StrictInt | None = Field(default=None, ge=0)


class LoopConfigIn(_Body):
    """Every field optional; PUT replaces the configuration (missing fields take defaults)."""

    exploration: str = "epsilon_greedy"
    epsilon: Number = 0.2
    softmax_lambda: Number = 1.0
    reward_wait_s: Number = 600.0
    default_reward: Number = 0.0
    reward_aggregation: str = "earliest"
    min_reward: Number = -1.0
    max_reward: Number = 1.0
    vw_args: str = "-q ca --cb_type mtr"
    seed: StrictInt | None = None


def count_features(features: Any, where: str, depth: int = 0) -> int:
    """Count features, rejecting value types VW cannot take. Nested mappings count their leaves."""
    if not isinstance(features, dict):
        raise ApiError(422, "invalid_request", f"{where} must be an object")
    n = 0
    for key, value in features.items():
        if isinstance(value, dict):
            if depth >= 2:
                raise ApiError(422, "invalid_request", f"{where}.{key}: nested too deeply (max 3)")
            n += count_features(value, f"{where}.{key}", depth + 1)
        elif isinstance(value, list):
            for item in value:
                if not isinstance(item, str | int | float | bool) and item is not None:
                    raise ApiError(
                        422,
                        "invalid_request",
                        f"{where}.{key}: lists may hold strings, numbers or booleans only",
                    )
            n += len(value)
        elif isinstance(value, str | int | float | bool) or value is None:
            n += 1
        else:  # pragma: no cover - JSON has no other types
            raise ApiError(422, "invalid_request", f"{where}.{key}: unsupported value")
    return n


def _check_id(value: str, what: str, settings: Settings) -> None:
    if len(value) > settings.max_id_length:
        raise ApiError(
            422,
            "limit_exceeded",
            f"{what} is {len(value)} characters; the limit is {settings.max_id_length}",
        )


def check_rank_limits(req: RankRequest, settings: Settings) -> None:
    """Apply the settings' limits and the request's own consistency rules."""
    if req.event_id is not None:
        _check_id(req.event_id, "event_id", settings)
    if len(req.actions) > settings.max_actions:
        raise ApiError(
            422,
            "limit_exceeded",
            f"{len(req.actions)} actions; the limit is {settings.max_actions} per request",
        )
    n = count_features(req.context, "context")
    if n > settings.max_features:
        raise ApiError(
            422, "limit_exceeded", f"context has {n} features; the limit is {settings.max_features}"
        )
    seen: set[str] = set()
    for i, action in enumerate(req.actions):
        _check_id(action.id, f"actions[{i}].id", settings)
        if action.id in seen:
            raise ApiError(422, "duplicate_action", f"action id {action.id!r} appears twice")
        seen.add(action.id)
        n = count_features(action.features, f"actions[{i}].features")
        if n > settings.max_features:
            raise ApiError(
                422,
                "limit_exceeded",
                f"actions[{i}] has {n} features; the limit is {settings.max_features}",
            )
    unknown = [a for a in req.excluded_actions if a not in seen]
    if unknown:
        raise ApiError(
            422, "unknown_excluded_action", f"excluded_actions not among actions: {unknown[:5]}"
        )
    available = len(seen - set(req.excluded_actions))
    if available == 0:
        raise ApiError(422, "all_actions_excluded", "every action is excluded; nothing to serve")
    if req.slots is not None:
        if req.slots > settings.max_slots:
            raise ApiError(
                422, "limit_exceeded", f"{req.slots} slots; the limit is {settings.max_slots}"
            )
        if req.slots > available:
            raise ApiError(
                422,
                "too_many_slots",
                f"{req.slots} slots but only {available} actions can be served",
            )
