"""Core value types of the decision path: actions, contexts and decisions."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from explore.validation import PMF_ATOL, check_int, check_non_empty_str, check_probability

__all__ = ["Action", "Context", "Decision", "SlotChoice"]


def _check_features(features: Any, name: str) -> None:
    if not isinstance(features, Mapping):
        raise ValueError(
            f"{name} must be a mapping of str to values, got {type(features).__name__}"
        )
    for key in features:
        if not isinstance(key, str):
            raise ValueError(f"{name} keys must be strings, got {type(key).__name__} key {key!r}")


@dataclass(frozen=True)
class Action:
    """A candidate action with its features at decision time."""

    id: str
    features: Mapping[str, Any]

    def __post_init__(self) -> None:
        check_non_empty_str(self.id, "id")
        _check_features(self.features, "features")

    @classmethod
    def validated(cls, id: str, features: dict[str, Any]) -> Action:
        """Build without re-checking: for callers that have already validated id and features
        (the service's request parser does, on the hot path)."""
        action = object.__new__(cls)
        object.__setattr__(action, "id", id)
        object.__setattr__(action, "features", features)
        return action


@dataclass(frozen=True)
class Context:
    """The features of a request, optionally with the user it is for."""

    features: Mapping[str, Any]
    user_id: str | None = None

    def __post_init__(self) -> None:
        _check_features(self.features, "features")
        if self.user_id is not None:
            check_non_empty_str(self.user_id, "user_id")


@dataclass(frozen=True)
class SlotChoice:
    """The action served in one slot and its probability conditional on the earlier slots."""

    slot: int
    action_id: str
    probability: float

    def __post_init__(self) -> None:
        check_int(self.slot, "slot", minimum=0)
        check_non_empty_str(self.action_id, "action_id")
        check_probability(self.probability, "probability", positive=True)


@dataclass(frozen=True)
class Decision:
    """A logged decision: the distribution the choice was sampled from, and the choice.

    `ranking` holds (action_id, probability) pairs; the probabilities are a distribution.
    Lists given for `ranking` or `slots` are stored as tuples.
    """

    event_id: str
    loop: str
    ranking: tuple[tuple[str, float], ...]
    chosen: str
    slots: tuple[SlotChoice, ...]
    model_version: str
    policy_arm: str
    decided_at: datetime

    def __post_init__(self) -> None:
        for name in ("event_id", "loop", "model_version", "policy_arm"):
            check_non_empty_str(getattr(self, name), name)
        check_non_empty_str(self.chosen, "chosen")
        if not isinstance(self.decided_at, datetime):
            raise ValueError(f"decided_at must be a datetime, got {type(self.decided_at).__name__}")
        object.__setattr__(self, "ranking", _check_ranking(self.ranking))
        probs = dict(self.ranking)
        if probs.get(self.chosen, 0.0) <= 0.0:
            raise ValueError(
                f"chosen must be an action_id in ranking with probability > 0, got {self.chosen!r}"
            )
        object.__setattr__(self, "slots", _check_slots(self.slots, self.chosen))


def _check_ranking(ranking: Any) -> tuple[tuple[str, float], ...]:
    expectation = "a non-empty sequence of (action_id, probability) pairs"
    if isinstance(ranking, str | bytes | Mapping) or not hasattr(ranking, "__iter__"):
        raise ValueError(f"ranking must be {expectation}, got {type(ranking).__name__}")
    pairs: list[tuple[str, float]] = []
    seen: set[str] = set()
    for i, pair in enumerate(ranking):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"ranking[{i}] must be an (action_id, probability) pair, got {pair!r}")
        action_id = check_non_empty_str(pair[0], f"ranking[{i}] action_id")
        p = check_probability(pair[1], f"ranking[{i}] probability")
        if action_id in seen:
            raise ValueError(f"ranking action_ids must be distinct, got {action_id!r} twice")
        seen.add(action_id)
        pairs.append((action_id, p))
    if not pairs:
        raise ValueError(f"ranking must be {expectation}, got an empty sequence")
    total = math.fsum(p for _, p in pairs)
    if abs(total - 1.0) > PMF_ATOL:
        raise ValueError(f"ranking probabilities must sum to 1, got sum {total!r}")
    return tuple(pairs)


def _check_slots(slots: Any, chosen: str) -> tuple[SlotChoice, ...]:
    if isinstance(slots, str | bytes | Mapping) or not hasattr(slots, "__iter__"):
        raise ValueError(f"slots must be a sequence of SlotChoice, got {type(slots).__name__}")
    result = tuple(slots)
    seen: set[str] = set()
    for k, choice in enumerate(result):
        if not isinstance(choice, SlotChoice):
            raise ValueError(f"slots[{k}] must be a SlotChoice, got {type(choice).__name__}")
        if choice.slot != k:
            raise ValueError(f"slots[{k}].slot must be {k} (slots are 0..K-1), got {choice.slot}")
        if choice.action_id in seen:
            raise ValueError(f"slots action_ids must be distinct, got {choice.action_id!r} twice")
        seen.add(choice.action_id)
    if result and result[0].action_id != chosen:
        raise ValueError(
            f"slots[0].action_id must equal chosen {chosen!r}, got {result[0].action_id!r}"
        )
    return result
