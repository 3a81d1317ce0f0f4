"""A loop's deploy settings: the promotion gate's criteria, the rollout policy and the learner's
schedule. Part of `LoopConfig` (stored with it, shown by GET /v1/loops/{loop}); every value has
a bound, like every other setting.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from log.alarm_settings import AlarmSettings

__all__ = [
    "AUTO_LEVELS",
    "DEPLOY_BOUNDS",
    "GUARDRAIL_NAME",
    "GateSettings",
    "LearnerSettings",
    "RolloutSettings",
    "settings_from_json",
]

GUARDRAIL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_GUARDRAILS = 8
MAX_CANDIDATES = 8
MAX_CANDIDATE_ARGS_CHARS = 1000
AUTO_LEVELS = ("none", "shadow", "canary", "live")
"""How far the learner moves a candidate that passed the gate without a gatekeeper."""

# (section, name) -> closed interval; the README quotes them.
DEPLOY_BOUNDS: dict[tuple[str, str], tuple[float, float]] = {
    ("gate", "confidence"): (0.5, 0.999),
    ("gate", "margin"): (-1e9, 1e9),
    ("gate", "min_events"): (10, 10_000_000),
    ("gate", "min_ess"): (1, 10_000_000),
    ("gate", "max_weight"): (1, 1e6),
    ("gate", "min_support"): (0.0, 1.0),
    ("gate", "max_events"): (100, 100_000_000),
    ("rollout", "canary_percent"): (0.1, 50.0),
    ("rollout", "shadow_min_events"): (0, 10_000_000),
    ("rollout", "canary_min_events"): (10, 10_000_000),
    ("rollout", "confidence"): (0.5, 0.999),
    ("learner", "freshness_s"): (0.0, 86_400.0),
    ("learner", "freshness_min_events"): (1, 10_000_000),
    ("learner", "collapse_ratio"): (0.0, 1.0),
    ("learner", "candidate_interval_s"): (60.0, 30 * 86_400.0),
    ("learner", "train_window_s"): (60.0, 365 * 86_400.0),
    ("learner", "holdout_fraction"): (0.05, 0.9),
}
_INTS = {
    "min_events",
    "max_events",
    "shadow_min_events",
    "canary_min_events",
    "freshness_min_events",
}


def _check(section: str, name: str, value: Any) -> None:
    lo, hi = DEPLOY_BOUNDS[(section, name)]
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and lo <= value <= hi
        and (name not in _INTS or float(value).is_integer())
    )
    if not ok:
        kind = "an integer" if name in _INTS else "a number"
        raise ValueError(f"{section}.{name} must be {kind} in [{lo:g}, {hi:g}], got {value!r}")


def _check_section(obj: Any, section: str) -> None:
    for f in fields(obj):
        if (section, f.name) in DEPLOY_BOUNDS:
            _check(section, f.name, getattr(obj, f.name))
            if f.name in _INTS:
                object.__setattr__(obj, f.name, int(getattr(obj, f.name)))


def _check_bool(section: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{section}.{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class GateSettings:
    """The promotion gate's criteria (see `deploy.gate`).

    A candidate passes when, on events it was not trained on, the lower confidence bound of
    (candidate - live) exceeds `margin`, with at least `min_events` events, an effective sample
    size of at least `min_ess`, no importance weight above `max_weight`, at least `min_support`
    of the candidate's probability on actions the logging policy could serve, and no guardrail
    rate (negative feedback, `metric` of a reward) whose increase may exceed its allowance.
    `sequential`: the interval is an anytime-valid confidence sequence (repeated looks as data
    arrive keep the error rate); otherwise a fixed-sample interval (one look). A candidate still
    undecided after `max_events` held-out events is rejected."""

    confidence: float = 0.95
    margin: float = 0.0
    min_events: int = 1000
    min_ess: float = 200.0
    max_weight: float = 1000.0
    min_support: float = 0.99
    max_events: int = 1_000_000
    sequential: bool = True
    guardrails: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_section(self, "gate")
        _check_bool("gate", "sequential", self.sequential)
        if not isinstance(self.guardrails, Mapping) or len(self.guardrails) > MAX_GUARDRAILS:
            raise ValueError(
                f"gate.guardrails must map at most {MAX_GUARDRAILS} metric names to the largest "
                "increase of their rate allowed"
            )
        for name, allowed in self.guardrails.items():
            if not isinstance(name, str) or not GUARDRAIL_NAME.fullmatch(name):
                raise ValueError(
                    f"gate.guardrails: metric names are 1-64 characters of a-z 0-9 _ starting "
                    f"with a letter, got {name!r}"
                )
            if (
                isinstance(allowed, bool)
                or not isinstance(allowed, int | float)
                or not 0.0 <= allowed <= 1.0
            ):
                raise ValueError(
                    f"gate.guardrails.{name} (the largest increase of its rate allowed) must be "
                    f"a number in [0, 1], got {allowed!r}"
                )
        object.__setattr__(
            self, "guardrails", {k: float(v) for k, v in sorted(self.guardrails.items())}
        )


@dataclass(frozen=True)
class RolloutSettings:
    """How candidates move: `auto` is the furthest state the learner takes a candidate that
    passed the gate without a gatekeeper (none, shadow, canary, live); a shadow moves on after
    `shadow_min_events` shadowed decisions; a canary serves `canary_percent` % of traffic and is
    analysed against live (sequential, at `confidence`); with `auto_rollback` a canary that is
    significantly worse or trips a guardrail is rolled back automatically."""

    auto: str = "canary"
    canary_percent: float = 10.0
    shadow_min_events: int = 1000
    canary_min_events: int = 1000
    confidence: float = 0.95
    auto_rollback: bool = True

    def __post_init__(self) -> None:
        if self.auto not in AUTO_LEVELS:
            raise ValueError(f"rollout.auto must be one of {list(AUTO_LEVELS)}, got {self.auto!r}")
        _check_section(self, "rollout")
        _check_bool("rollout", "auto_rollback", self.auto_rollback)


@dataclass(frozen=True)
class LearnerSettings:
    """The learner's schedule for this loop.

    Freshness track: every `freshness_s` seconds (0: off) the live model is continued on the
    events joined since it was trained (at least `freshness_min_events`) and swapped in when the
    safety checks pass (finite scores; the served distribution's entropy stays above
    `collapse_ratio` x the previous version's; the last window's IPS value is not significantly
    below the previous version's). Candidate track: every `candidate_interval_s` seconds, each
    VW argument set of `candidates` is trained in batch on the events decided in the last
    `train_window_s` seconds but the newest `holdout_fraction`, which the gate evaluates it on."""

    freshness_s: float = 60.0
    freshness_min_events: int = 100
    collapse_ratio: float = 0.5
    candidate_interval_s: float = 3600.0
    train_window_s: float = 7 * 86_400.0
    holdout_fraction: float = 0.3
    candidates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_section(self, "learner")
        if 0 < self.freshness_s < 1:
            raise ValueError("learner.freshness_s must be 0 (off) or at least 1 second")
        candidates = self.candidates
        if isinstance(candidates, str) or not isinstance(candidates, list | tuple):
            raise ValueError("learner.candidates must be a list of VW argument strings")
        if len(candidates) > MAX_CANDIDATES or not all(
            isinstance(c, str) and len(c) <= MAX_CANDIDATE_ARGS_CHARS for c in candidates
        ):
            raise ValueError(
                f"learner.candidates must hold at most {MAX_CANDIDATES} VW argument strings of "
                f"at most {MAX_CANDIDATE_ARGS_CHARS} characters"
            )
        object.__setattr__(self, "candidates", tuple(candidates))


T = TypeVar("T", GateSettings, RolloutSettings, LearnerSettings, AlarmSettings)


def settings_from_json(cls: type[T], data: Any, section: str) -> T:
    """A section from its JSON object (missing fields take defaults; unknown ones are refused)."""
    if isinstance(data, cls):
        return data
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise ValueError(f"{section} must be an object")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{section}: unknown settings {unknown}")
    return cls(**data)


def section_json(
    obj: GateSettings | RolloutSettings | LearnerSettings | AlarmSettings,
) -> dict[str, Any]:
    out = asdict(obj)
    for key, value in out.items():
        if isinstance(value, tuple):
            out[key] = list(value)
        elif isinstance(value, Mapping):
            out[key] = dict(value)
    return out
