"""The `alarms` section of a loop's configuration over HTTP (log/alarm_settings.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from log.alarm_settings import ALARM_BOUNDS

Number = StrictInt | StrictFloat


def _alarm(default: float, name: str, description: str) -> Any:
    lo, hi = ALARM_BOUNDS[name]
    return Field(
        default,
        description=f"{description} In [{lo:.10g}, {hi:.10g}].",
        json_schema_extra={"minimum": lo, "maximum": hi},
    )


class AlarmsIn(BaseModel):
    """The loop's alarm rules (0 turns a rule off)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    no_rewards_min: Number = _alarm(
        60.0, "no_rewards_min", "Decisions were made but no reward arrived for this many minutes."
    )
    reward_drop_pct: Number = _alarm(
        50.0,
        "reward_drop_pct",
        "The last complete hour's reward rate is this many percent below the same hour's over "
        "the trailing week.",
    )
    join_lag_s: Number = _alarm(
        3600.0, "join_lag_s", "The mean join lag of the last 15 minutes is above this."
    )
    spool_backlog: Number = _alarm(
        100.0, "spool_backlog", "A worker reported more spool segments than this (15 minutes)."
    )
    min_propensity: Number = _alarm(
        0.001, "min_propensity", "A decision of the last 15 minutes logged a smaller probability."
    )
    entropy_ratio: Number = _alarm(
        0.3,
        "entropy_ratio",
        "The served distribution's mean entropy (15 minutes) fell below this share of the "
        "trailing day's.",
    )
    guardrail_rate: Number = _alarm(
        0.2, "guardrail_rate", "A guardrail's rate over the last hour's joined decisions."
    )
    freshness_stale_factor: Number = _alarm(
        10.0,
        "freshness_stale_factor",
        "The freshness track has not completed for this many times learner.freshness_s.",
    )
    min_events: Number = _alarm(
        50.0, "min_events", "Fewest decisions / joined decisions a rate-based rule needs."
    )
