"""Post-processing rules of retrieved candidates (a loop's `retrieval` settings): pure functions.

Every rule acts BEFORE sampling, so the distribution an action is drawn from is the one logged:

- **hard filters** (`passes`): excluded ids, blocked creators, a maximum age, feature
  predicates (the loop's and the request's): a filtered item is never a candidate.
- **freshness boost** (`freshness_bonus`): ``boost * 2^(-age / half_life)`` added to each
  candidate's score before the exploration pmf.
- **per-creator cap** (`cap_mask`): inside a slate, a slot gives probability 0 to items of a
  creator already placed `creator_cap` times (unless every remaining item is such: then the cap
  cannot hold and is lifted for that slot).
- **minimum share** (`min_share`): the group (items whose `group_feature` equals
  `group_value`) gets at least `min_share` of each slot's probability: when it has less, the
  group's probabilities are scaled up and the others' down, each keeping its proportions.

Each is a deterministic function of the candidates and the slots already placed, so a slot's
logged conditional pmf is exactly the distribution it was sampled from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "OPS",
    "FeaturePredicate",
    "RetrievalRules",
    "cap_mask",
    "freshness_bonus",
    "min_share",
    "passes",
    "predicates_from_json",
]

OPS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "not_in")
MAX_PREDICATES = 8
MAX_IN_VALUES = 100
MAX_EXCLUDED_IDS = 10_000
MAX_BLOCKED_CREATORS = 1_000
MAX_AGE_S = 10 * 365 * 86_400.0
Scalar = str | int | float | bool

# name -> closed interval; the README quotes them.
RULE_BOUNDS: dict[str, tuple[float, float]] = {
    "max_age_s": (0.0, MAX_AGE_S),
    "freshness_boost": (0.0, 100.0),
    "freshness_half_life_s": (1.0, 365 * 86_400.0),
    "creator_cap": (0, 50),
    "min_share": (0.0, 0.99),
    "overfetch": (1.0, 10.0),
}


def _scalar(value: Any) -> bool:
    return isinstance(value, str | bool) or (
        isinstance(value, int | float) and math.isfinite(value)
    )


@dataclass(frozen=True)
class FeaturePredicate:
    """`feature` `op` `value` on an item's features (dots reach into nested objects); an item
    without the feature fails it. lt/le/gt/ge compare numbers; in/not_in take a list."""

    feature: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if not isinstance(self.feature, str) or not 1 <= len(self.feature) <= 256:
            raise ValueError("a predicate's feature must be a name of 1-256 characters")
        if self.op not in OPS:
            raise ValueError(f"a predicate's op must be one of {list(OPS)}, got {self.op!r}")
        if self.op in ("in", "not_in"):
            if (
                not isinstance(self.value, list | tuple)
                or len(self.value) > MAX_IN_VALUES
                or not all(_scalar(v) for v in self.value)
            ):
                raise ValueError(
                    f"{self.op} takes a list of at most {MAX_IN_VALUES} strings, numbers or "
                    "booleans"
                )
            object.__setattr__(self, "value", tuple(self.value))
        elif self.op in ("lt", "le", "gt", "ge"):
            if isinstance(self.value, bool) or not isinstance(self.value, int | float):
                raise ValueError(f"{self.op} compares numbers: value must be a number")
            if not math.isfinite(self.value):
                raise ValueError("a predicate's value must be finite")
        elif not _scalar(self.value):
            raise ValueError(f"{self.op} takes a string, number or boolean")

    def holds(self, features: Mapping[str, Any]) -> bool:
        value: Any = features
        for part in self.feature.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return False
            value = value[part]
        op, ref = self.op, self.value
        if op == "eq":
            return bool((value == ref and type(value) is type(ref)) or _num_eq(value, ref))
        if op == "ne":
            return not ((value == ref and type(value) is type(ref)) or _num_eq(value, ref))
        if op == "in":
            return any(value == r and (type(value) is type(r) or _num_eq(value, r)) for r in ref)
        if op == "not_in":
            return not any(
                value == r and (type(value) is type(r) or _num_eq(value, r)) for r in ref
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if op == "lt":
            return bool(value < ref)
        if op == "le":
            return bool(value <= ref)
        if op == "gt":
            return bool(value > ref)
        return bool(value >= ref)

    def to_json(self) -> dict[str, Any]:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"feature": self.feature, "op": self.op, "value": value}


def _num_eq(a: Any, b: Any) -> bool:
    numeric = (int, float)
    return (
        isinstance(a, numeric)
        and isinstance(b, numeric)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )


def predicates_from_json(data: Any, where: str) -> tuple[FeaturePredicate, ...]:
    if data is None:
        return ()
    if not isinstance(data, list | tuple) or len(data) > MAX_PREDICATES:
        raise ValueError(f"{where} must be a list of at most {MAX_PREDICATES} predicates")
    out = []
    for i, p in enumerate(data):
        if isinstance(p, FeaturePredicate):
            out.append(p)
            continue
        if not isinstance(p, Mapping) or set(p) != {"feature", "op", "value"}:
            raise ValueError(f"{where}[{i}] must be an object with feature, op and value")
        try:
            out.append(FeaturePredicate(p["feature"], p["op"], p["value"]))
        except ValueError as err:
            raise ValueError(f"{where}[{i}]: {err}") from None
    return tuple(out)


def _check_number(name: str, value: Any, integer: bool = False) -> None:
    lo, hi = RULE_BOUNDS[name]
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and lo <= value <= hi
        and (not integer or float(value).is_integer())
    )
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"retrieval.{name} must be {kind} in [{lo:g}, {hi:g}], got {value!r}")


def _strings(value: Any, name: str, limit: int) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or len(value) > limit:
        raise ValueError(f"retrieval.{name} must be a list of at most {limit} strings")
    if not all(isinstance(v, str) and 0 < len(v) <= 256 for v in value):
        raise ValueError(f"retrieval.{name} must hold strings of 1-256 characters")
    return tuple(value)


@dataclass(frozen=True)
class RetrievalRules:
    """A loop's post-processing rules for retrieved candidates (see the module docstring).
    `overfetch`: the index is asked for ``k * overfetch`` items so that k remain after the
    hard filters (fewer when the filters remove more)."""

    excluded_ids: tuple[str, ...] = ()
    creator_feature: str = "creator"
    blocked_creators: tuple[str, ...] = ()
    max_age_s: float = 0.0  # 0: no limit
    predicates: tuple[FeaturePredicate, ...] = ()
    freshness_boost: float = 0.0
    freshness_half_life_s: float = 86_400.0
    creator_cap: int = 0  # 0: no cap
    group_feature: str = ""
    group_value: Any = None
    min_share: float = 0.0
    overfetch: float = 2.0
    _excluded: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    _blocked: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "excluded_ids", _strings(self.excluded_ids, "excluded_ids", MAX_EXCLUDED_IDS)
        )
        object.__setattr__(
            self,
            "blocked_creators",
            _strings(self.blocked_creators, "blocked_creators", MAX_BLOCKED_CREATORS),
        )
        for name in ("creator_feature", "group_feature"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > 256:
                raise ValueError(f"retrieval.{name} must be a string of at most 256 characters")
        for name in RULE_BOUNDS:
            _check_number(name, getattr(self, name), integer=name == "creator_cap")
        object.__setattr__(self, "creator_cap", int(self.creator_cap))
        object.__setattr__(
            self, "predicates", predicates_from_json(self.predicates, "retrieval.predicates")
        )
        if self.min_share > 0 and (not self.group_feature or not _scalar(self.group_value)):
            raise ValueError(
                "retrieval.min_share needs group_feature and a group_value (string, number or "
                "boolean)"
            )
        object.__setattr__(self, "_excluded", frozenset(self.excluded_ids))
        object.__setattr__(self, "_blocked", frozenset(self.blocked_creators))

    def to_json(self) -> dict[str, Any]:
        return {
            "excluded_ids": list(self.excluded_ids),
            "creator_feature": self.creator_feature,
            "blocked_creators": list(self.blocked_creators),
            "max_age_s": self.max_age_s,
            "predicates": [p.to_json() for p in self.predicates],
            "freshness_boost": self.freshness_boost,
            "freshness_half_life_s": self.freshness_half_life_s,
            "creator_cap": self.creator_cap,
            "group_feature": self.group_feature,
            "group_value": self.group_value,
            "min_share": self.min_share,
            "overfetch": self.overfetch,
        }

    @classmethod
    def from_json(cls, data: Any) -> RetrievalRules:
        if isinstance(data, cls):
            return data
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError("retrieval must be an object")
        known = set(cls.__dataclass_fields__) - {"_excluded", "_blocked"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"retrieval: unknown settings {unknown}")
        return cls(**data)

    def creator(self, features: Mapping[str, Any]) -> str | None:
        value = features.get(self.creator_feature)
        return None if value is None else str(value)

    def in_group(self, features: Mapping[str, Any]) -> bool:
        if not self.group_feature:
            return False
        value = features.get(self.group_feature)
        ref = self.group_value
        return value == ref and (type(value) is type(ref) or _num_eq(value, ref))


def passes(
    rules: RetrievalRules,
    item_id: str,
    features: Mapping[str, Any],
    age_s: float,
    request_predicates: Sequence[FeaturePredicate] = (),
) -> bool:
    """Whether an item survives the hard filters."""
    if item_id in rules._excluded:
        return False
    if rules._blocked and rules.creator(features) in rules._blocked:
        return False
    if rules.max_age_s > 0 and age_s > rules.max_age_s:
        return False
    return all(p.holds(features) for p in rules.predicates) and all(
        p.holds(features) for p in request_predicates
    )


def freshness_bonus(rules: RetrievalRules, ages_s: np.ndarray) -> np.ndarray:
    """The score added to each candidate: boost x 2^(-age / half-life) (0 without a boost)."""
    if rules.freshness_boost <= 0:
        return np.zeros(len(ages_s))
    ages = np.maximum(np.asarray(ages_s, dtype=float), 0.0)
    return rules.freshness_boost * np.exp2(-ages / rules.freshness_half_life_s)


def cap_mask(
    creators: Sequence[str | None], remaining: np.ndarray, placed: Sequence[int], cap: int
) -> np.ndarray:
    """Which `remaining` candidates a slot may serve under the per-creator cap (all of them
    when none may: the cap is lifted rather than serving nothing)."""
    if cap <= 0 or not placed:
        return np.ones(len(remaining), dtype=bool)
    counts: dict[str, int] = {}
    for i in placed:
        c = creators[i]
        if c is not None:
            counts[c] = counts.get(c, 0) + 1
    mask = np.array(
        [creators[i] is None or counts.get(creators[i] or "", 0) < cap for i in remaining],
        dtype=bool,
    )
    return mask if mask.any() else np.ones(len(remaining), dtype=bool)


def min_share(pmf: np.ndarray, in_group: np.ndarray, share: float) -> np.ndarray:
    """`pmf` with at least `share` of its mass on the group (both sides keep their
    proportions). Entries at 0 stay 0, except when the group holds no mass at all: then its
    share goes to its members uniformly. Unchanged without a group or without others."""
    p = np.asarray(pmf, dtype=float)
    group = np.asarray(in_group, dtype=bool)
    if share <= 0 or not group.any() or group.all():
        return p
    mass = float(p[group].sum())
    if mass >= share:
        return p
    others = float(p[~group].sum())
    if others <= 0:
        return p
    out = np.where(group, 0.0, p * ((1.0 - share) / others))
    if mass > 0:
        out[group] = p[group] * (share / mass)
    else:
        out[group] = share / int(group.sum())
    return out / out.sum()
