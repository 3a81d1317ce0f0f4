"""The alarm rules of a loop, as a pure function of what was observed (`Observation`) and the
loop's `AlarmSettings`: each rule answers a `Finding` (fire) or None (clear). No I/O; the job
that gathers the observation and stores the alarms is deploy/operate.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from log.alarm_settings import AlarmSettings
from log.metrics_math import MetricsPoint

__all__ = ["RULE_KINDS", "Finding", "Observation", "evaluate_rules"]

RULE_KINDS = (
    "no_rewards",
    "reward_drop",
    "join_lag",
    "spool_backlog",
    "min_propensity",
    "entropy_collapse",
    "guardrail",
    "freshness_stale",
)


@dataclass(frozen=True)
class Finding:
    kind: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    """What the rules look at. `recent`: the last 15 minutes merged; `hour`: the last complete
    hour; `week_same_hour`: that hour on each of the 7 previous days, pooled; `day`: the
    trailing day; `no_reward_window`: the last `no_rewards_min` minutes (None when the rule is
    off). Freshness: whether the track is on, stopped, when it last completed, its period."""

    now: datetime
    recent: MetricsPoint | None
    hour: MetricsPoint | None
    week_same_hour: MetricsPoint | None
    day: MetricsPoint | None
    no_reward_window: MetricsPoint | None
    freshness_s: float = 0.0
    freshness_stopped: bool = False
    last_freshness_at: datetime | None = None
    freshness_since: datetime | None = None


def _no_rewards(s: AlarmSettings, o: Observation) -> Finding | None:
    w = o.no_reward_window
    if not s.no_rewards_min or w is None or w.decisions == 0 or w.rewards > 0:
        return None
    return Finding(
        "no_rewards",
        f"{w.decisions} decisions and no reward in the last {s.no_rewards_min:g} minutes",
        {"decisions": w.decisions, "minutes": s.no_rewards_min},
    )


def _reward_drop(s: AlarmSettings, o: Observation) -> Finding | None:
    h, base = o.hour, o.week_same_hour
    if not s.reward_drop_pct or h is None or base is None:
        return None
    if h.joined < s.min_events or base.joined < s.min_events:
        return None
    if h.reward_rate is None or base.reward_rate is None or base.reward_rate <= 0:
        return None
    drop = 100.0 * (1.0 - h.reward_rate / base.reward_rate)
    if drop < s.reward_drop_pct:
        return None
    return Finding(
        "reward_drop",
        f"reward rate {h.reward_rate:.4f} is {drop:.0f}% below the trailing week's "
        f"{base.reward_rate:.4f} at this hour",
        {"rate": h.reward_rate, "baseline": base.reward_rate, "drop_pct": drop},
    )


def _join_lag(s: AlarmSettings, o: Observation) -> Finding | None:
    r = o.recent
    if not s.join_lag_s or r is None or r.join_lag_mean_s is None:
        return None
    if r.join_lag_mean_s <= s.join_lag_s:
        return None
    return Finding(
        "join_lag",
        f"mean join lag {r.join_lag_mean_s:.0f} s is above {s.join_lag_s:g} s",
        {"join_lag_mean_s": r.join_lag_mean_s, "limit_s": s.join_lag_s},
    )


def _spool(s: AlarmSettings, o: Observation) -> Finding | None:
    r = o.recent
    if not s.spool_backlog or r is None or r.spool_backlog_max <= s.spool_backlog:
        return None
    return Finding(
        "spool_backlog",
        f"a worker holds {r.spool_backlog_max} spool segments (limit {s.spool_backlog:g})",
        {"segments": r.spool_backlog_max, "limit": s.spool_backlog},
    )


def _propensity(s: AlarmSettings, o: Observation) -> Finding | None:
    r = o.recent
    if not s.min_propensity or r is None or r.min_probability is None:
        return None
    if r.min_probability >= s.min_propensity:
        return None
    return Finding(
        "min_propensity",
        f"a decision logged probability {r.min_probability:.3g} (floor {s.min_propensity:g})",
        {"min_probability": r.min_probability, "floor": s.min_propensity},
    )


def _entropy(s: AlarmSettings, o: Observation) -> Finding | None:
    r, d = o.recent, o.day
    if not s.entropy_ratio or r is None or d is None or r.entropy is None or d.entropy is None:
        return None
    if r.decisions < s.min_events or d.decisions < s.min_events or d.entropy <= 0:
        return None
    if r.entropy >= s.entropy_ratio * d.entropy:
        return None
    return Finding(
        "entropy_collapse",
        f"served-distribution entropy {r.entropy:.3f} is below {s.entropy_ratio:g} x the "
        f"trailing day's {d.entropy:.3f}",
        {"entropy": r.entropy, "day_entropy": d.entropy, "ratio": s.entropy_ratio},
    )


def _guardrail(s: AlarmSettings, o: Observation) -> Finding | None:
    h = o.hour
    if not s.guardrail_rate or h is None or h.joined < s.min_events:
        return None
    over = {m: r for m, r in h.guardrail_rates.items() if r > s.guardrail_rate}
    if not over:
        return None
    names = ", ".join(f"{m} {r:.3f}" for m, r in sorted(over.items()))
    return Finding(
        "guardrail",
        f"guardrail rate above {s.guardrail_rate:g}: {names}",
        {"rates": over, "limit": s.guardrail_rate},
    )


def _freshness(s: AlarmSettings, o: Observation) -> Finding | None:
    if not s.freshness_stale_factor or not o.freshness_s or o.freshness_stopped:
        return None  # off, or stopped (the learner's own freshness_stopped alarm says so)
    since = o.last_freshness_at or o.freshness_since
    if since is None:
        return None
    age = (o.now - since).total_seconds()
    if age <= s.freshness_stale_factor * o.freshness_s:
        return None
    return Finding(
        "freshness_stale",
        f"no freshness update for {age:.0f} s (every {o.freshness_s:g} s expected)",
        {"age_s": age, "freshness_s": o.freshness_s},
    )


_RULES = {
    "no_rewards": _no_rewards,
    "reward_drop": _reward_drop,
    "join_lag": _join_lag,
    "spool_backlog": _spool,
    "min_propensity": _propensity,
    "entropy_collapse": _entropy,
    "guardrail": _guardrail,
    "freshness_stale": _freshness,
}


def evaluate_rules(settings: AlarmSettings, observation: Observation) -> dict[str, Finding | None]:
    """Every rule's answer: a Finding (the alarm should be firing) or None (cleared)."""
    return {kind: rule(settings, observation) for kind, rule in _RULES.items()}
