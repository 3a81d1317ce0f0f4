"""The pure arithmetic of the operating metrics: what one decision contributes, the latency
histogram, and the figures derived from a bucket's additive sums. No I/O.

Every stored figure is a sum (or a min/max), so coarser buckets and several workers' rows merge
by adding; rates, means, intervals and quantiles are derived only when read.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "BUCKET_S",
    "LATENCY_EDGES_MS",
    "MetricsPoint",
    "Sums",
    "decision_terms",
    "derive",
    "floor_time",
    "latency_bucket",
    "merge_counts",
    "merge_hist",
    "quantile",
    "wilson",
]

BUCKET_S = 300
GRAIN_S = {"5m": 300, "1h": 3600, "1d": 86_400}
# Upper edges (ms) of the rank-latency histogram; the last bucket is everything above 5 s.
LATENCY_EDGES_MS: tuple[float, ...] = (
    0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000,
)  # fmt: skip
N_LATENCY = len(LATENCY_EDGES_MS) + 1
Z95 = 1.959963984540054
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def floor_time(at: datetime, seconds: int = BUCKET_S) -> datetime:
    """The start of the bucket of `seconds` (aligned to the Unix epoch, UTC) holding `at`."""
    offset = (at - EPOCH).total_seconds()
    return EPOCH + timedelta(seconds=math.floor(offset / seconds) * seconds)


def decision_terms(pmf: Sequence[float], chosen_probability: float) -> tuple[float, float, bool]:
    """(entropy in nats of the served distribution, its largest probability, explored): a
    decision explored when what it served was not a most probable action."""
    entropy = -sum(p * math.log(p) for p in pmf if p > 0)
    top = max(pmf, default=0.0)
    return entropy, top, chosen_probability < top - 1e-12


def latency_bucket(ms: float) -> int:
    """Index of the histogram bucket of a latency in ms (the first edge >= ms)."""
    return bisect_left(LATENCY_EDGES_MS, ms)


def merge_hist(a: Sequence[int], b: Sequence[int]) -> list[int]:
    n = max(len(a), len(b), N_LATENCY)
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


def merge_counts(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, int]:
    out = {k: int(v) for k, v in a.items()}
    for k, v in b.items():
        out[k] = out.get(k, 0) + int(v)
    return out


def quantile(hist: Sequence[int], q: float) -> float | None:
    """The q-quantile (ms) of a latency histogram, interpolated linearly inside its bucket
    (the open last bucket answers its lower edge). None when the histogram is empty."""
    total = sum(hist)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(hist):
        if count and seen + count >= rank:
            lo = 0.0 if i == 0 else LATENCY_EDGES_MS[i - 1]
            if i >= len(LATENCY_EDGES_MS):
                return lo
            hi = LATENCY_EDGES_MS[i]
            return lo + (hi - lo) * max(rank - seen, 0.0) / count
        seen += count
    return LATENCY_EDGES_MS[-1]


@dataclass
class Sums:
    """The additive sums of one bucket (the columns of metrics_5m)."""

    decisions: int = 0
    explored: int = 0
    prob_sum: float = 0.0
    prob_min: float | None = None
    entropy_sum: float = 0.0
    top_sum: float = 0.0
    rewards: int = 0
    late_rewards: int = 0
    joined: int = 0
    rewarded: int = 0
    default_rewards: int = 0
    reward_sum: float = 0.0
    reward_sq_sum: float = 0.0
    join_lag_sum_s: float = 0.0
    join_lag_max_s: float | None = None
    guardrails: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    latency_hist: list[int] = field(default_factory=lambda: [0] * N_LATENCY)
    errors: dict[str, int] = field(default_factory=dict)
    spool_backlog_max: int = 0

    def add_decision(self, pmf: Sequence[float], chosen_probability: float) -> None:
        entropy, top, explored = decision_terms(pmf, chosen_probability)
        self.decisions += 1
        self.explored += int(explored)
        self.prob_sum += chosen_probability
        self.prob_min = (
            chosen_probability if self.prob_min is None else min(self.prob_min, chosen_probability)
        )
        self.entropy_sum += entropy
        self.top_sum += top

    def add_outcome(
        self,
        reward: float,
        *,
        default: bool,
        rewarded: bool,
        lag_s: float,
        guardrails: Mapping[str, Any] | None,
    ) -> None:
        self.joined += 1
        self.rewarded += int(rewarded)
        self.default_rewards += int(default)
        self.reward_sum += reward
        self.reward_sq_sum += reward * reward
        self.join_lag_sum_s += lag_s
        self.join_lag_max_s = (
            lag_s if self.join_lag_max_s is None else max(self.join_lag_max_s, lag_s)
        )
        for metric, count in (guardrails or {}).items():
            if count:
                self.guardrails[metric] = self.guardrails.get(metric, 0) + 1

    def merge(self, other: Sums) -> None:
        """Add another bucket's sums to these."""
        for name in (
            "decisions", "explored", "prob_sum", "entropy_sum", "top_sum", "rewards",
            "late_rewards", "joined", "rewarded", "default_rewards", "reward_sum",
            "reward_sq_sum", "join_lag_sum_s", "requests",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("prob_min",):
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(
                self,
                name,
                theirs if mine is None else mine if theirs is None else min(mine, theirs),
            )
        mine, theirs = self.join_lag_max_s, other.join_lag_max_s
        self.join_lag_max_s = (
            theirs if mine is None else mine if theirs is None else max(mine, theirs)
        )
        self.guardrails = merge_counts(self.guardrails, other.guardrails)
        self.errors = merge_counts(self.errors, other.errors)
        self.latency_hist = merge_hist(self.latency_hist, other.latency_hist)
        self.spool_backlog_max = max(self.spool_backlog_max, other.spool_backlog_max)

    def columns(self) -> dict[str, Any]:
        return {
            name: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
            for name in self.__dataclass_fields__
            for v in (getattr(self, name),)
        }

    @classmethod
    def from_columns(cls, row: Mapping[str, Any]) -> Sums:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


def _ratio(num: float, den: float) -> float | None:
    return None if den <= 0 else num / den


@dataclass(frozen=True)
class MetricsPoint:
    """The figures of one bucket (or of several merged), as shown and alarmed on. None where
    the bucket has nothing to compute it from."""

    bucket: datetime
    decisions: int
    exploration_share: float | None
    mean_probability: float | None
    min_probability: float | None
    entropy: float | None
    top_action_share: float | None
    rewards: int
    late_rewards: int
    joined: int
    reward_rate: float | None
    reward_rate_low: float | None
    reward_rate_high: float | None
    mean_reward: float | None
    mean_reward_low: float | None
    mean_reward_high: float | None
    default_reward_rate: float | None
    join_lag_mean_s: float | None
    join_lag_max_s: float | None
    guardrail_rates: dict[str, float]
    requests: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    errors: dict[str, int]
    spool_backlog_max: int

    def to_json(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["bucket"] = self.bucket.isoformat()
        return out


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (None when n = 0)."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def derive(bucket: datetime, s: Sums) -> MetricsPoint:
    """The figures of a bucket's sums. The reward rate's interval is the Wilson 95% interval;
    the mean reward's the normal (Wald) 95% interval of the joined decisions' rewards."""
    rate_ci = wilson(s.rewarded, s.joined)
    mean = _ratio(s.reward_sum, s.joined)
    low = high = None
    if mean is not None and s.joined >= 2:
        var = max(s.reward_sq_sum / s.joined - mean * mean, 0.0) * s.joined / (s.joined - 1)
        half = Z95 * math.sqrt(var / s.joined)
        low, high = mean - half, mean + half
    return MetricsPoint(
        bucket=bucket,
        decisions=s.decisions,
        exploration_share=_ratio(s.explored, s.decisions),
        mean_probability=_ratio(s.prob_sum, s.decisions),
        min_probability=s.prob_min,
        entropy=_ratio(s.entropy_sum, s.decisions),
        top_action_share=_ratio(s.top_sum, s.decisions),
        rewards=s.rewards,
        late_rewards=s.late_rewards,
        joined=s.joined,
        reward_rate=_ratio(s.rewarded, s.joined),
        reward_rate_low=None if rate_ci is None else rate_ci[0],
        reward_rate_high=None if rate_ci is None else rate_ci[1],
        mean_reward=mean,
        mean_reward_low=low,
        mean_reward_high=high,
        default_reward_rate=_ratio(s.default_rewards, s.joined),
        join_lag_mean_s=_ratio(s.join_lag_sum_s, s.joined),
        join_lag_max_s=s.join_lag_max_s,
        guardrail_rates={m: c / s.joined for m, c in sorted(s.guardrails.items()) if s.joined > 0},
        requests=s.requests,
        latency_p50_ms=quantile(s.latency_hist, 0.5),
        latency_p99_ms=quantile(s.latency_hist, 0.99),
        errors=dict(sorted(s.errors.items())),
        spool_backlog_max=s.spool_backlog_max,
    )
