"""Request bodies at the HTTP edge (pydantic). The rank body is checked in rank_input.py."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

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
