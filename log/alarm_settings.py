"""A loop's alarm rules (`alarms` section of `LoopConfig`; deploy/alarm_rules.py applies them).
Every threshold has a bound; 0 turns a rule off."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["ALARM_BOUNDS", "AlarmSettings"]

# name -> closed interval; the README quotes them.
ALARM_BOUNDS: dict[str, tuple[float, float]] = {
    "no_rewards_min": (0.0, 7 * 24 * 60.0),
    "reward_drop_pct": (0.0, 100.0),
    "join_lag_s": (0.0, 30 * 86_400.0),
    "spool_backlog": (0.0, 1_000_000.0),
    "min_propensity": (0.0, 1.0),
    "entropy_ratio": (0.0, 1.0),
    "guardrail_rate": (0.0, 1.0),
    "freshness_stale_factor": (0.0, 1000.0),
    "min_events": (1.0, 1_000_000.0),
}


@dataclass(frozen=True)
class AlarmSettings:
    """The loop's alarm rules (0: the rule is off).

    - `no_rewards_min`: decisions were made but no reward arrived for this many minutes;
    - `reward_drop_pct`: the reward rate of the last complete hour is this many percent below
      the same hour's over the trailing week (pooled; each side at least `min_events` joined);
    - `join_lag_s`: the mean join lag of the last 15 minutes is above this;
    - `spool_backlog`: a worker reported more spool segments than this in the last 15 minutes;
    - `min_propensity`: a decision of the last 15 minutes logged a smaller probability;
    - `entropy_ratio`: the mean entropy of the served distribution of the last 15 minutes fell
      below this share of the trailing day's (both at least `min_events` decisions);
    - `guardrail_rate`: a guardrail's rate over the last hour's joined decisions exceeds this
      (at least `min_events` joined);
    - `freshness_stale_factor`: the freshness track is on, not stopped, and has not completed
      for this many times `learner.freshness_s`."""

    no_rewards_min: float = 60.0
    reward_drop_pct: float = 50.0
    join_lag_s: float = 3600.0
    spool_backlog: float = 100.0
    min_propensity: float = 0.001
    entropy_ratio: float = 0.3
    guardrail_rate: float = 0.2
    freshness_stale_factor: float = 10.0
    min_events: float = 50.0

    def __post_init__(self) -> None:
        for f in fields(self):
            lo, hi = ALARM_BOUNDS[f.name]
            value: Any = getattr(self, f.name)
            if not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and lo <= value <= hi
            ):
                raise ValueError(
                    f"alarms.{f.name} must be a number in [{lo:g}, {hi:g}], got {value!r}"
                )
            object.__setattr__(self, f.name, float(value))
