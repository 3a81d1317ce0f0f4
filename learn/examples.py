"""Vowpal Wabbit training examples from logged decisions, with the features as logged.

A single decision gives one ``cb_adf`` example: the candidates are the non-excluded actions in
stored order, the label is the chosen action with cost = -reward and the logged probability
``pmf[chosen]``. A slate gives one example per slot (the CCB reduction done explicitly): at slot
``k`` the candidates are the non-excluded actions minus those chosen at earlier slots, the label
is slot ``k``'s action with cost = -(slot ``k``'s reward) and probability = slot ``k``'s logged
conditional probability. Serving samples slot by slot without replacement from the same scores,
so these are exactly the distributions the choices were drawn from.

The text is the serving encoding (:mod:`policies.vw_text`); :class:`LineBuilder` only caches
action lines, it never changes them.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from explore.types import Action
from log.training_reads import JoinedDecision
from policies.vw_text import action_line, shared_line

__all__ = [
    "BadEvent",
    "LineBuilder",
    "Prepared",
    "SlotExample",
    "TrainingEvent",
    "prepare",
    "slot_examples",
]


class BadEvent(ValueError):
    """A logged event that cannot be turned into a training example (skipped and counted)."""


TrainingEvent = JoinedDecision
"""A joined decision as logged (the `DecisionRecord`, its reward per slot, its join_seq)."""


@dataclass(frozen=True, slots=True)
class SlotExample:
    """One cb_adf example: `candidates` (indices into the event's actions), the label position
    among them, its cost and logged probability."""

    candidates: tuple[int, ...]
    label: int
    cost: float
    probability: float


def _check_label(event_id: str, slot: int, cost: float, probability: float) -> None:
    if not math.isfinite(cost):
        raise BadEvent(f"event {event_id!r} slot {slot}: reward must be finite, got {-cost!r}")
    if not (math.isfinite(probability) and 0.0 < probability <= 1.0):
        raise BadEvent(
            f"event {event_id!r} slot {slot}: logged probability must be in (0, 1], "
            f"got {probability!r}"
        )


def _reward(event_id: str, rewards: Mapping[int, float], slot: int) -> float:
    try:
        return float(rewards[slot])
    except KeyError:
        raise BadEvent(f"event {event_id!r} has no joined reward for slot {slot}") from None


def learning_mode(event: TrainingEvent) -> str:
    """`Online`, or the Personalizer learning mode the decision was served in (its baseline
    was served with probability 1; `decision_service.decide.baseline_shadow`)."""
    shadow = event.record.shadow
    mode = shadow.get("mode") if isinstance(shadow, dict) else None
    return mode if isinstance(mode, str) else "Online"


def slot_examples(event: TrainingEvent) -> list[SlotExample]:
    """The examples of one event: one for a single decision, one per slot for a slate.

    A decision served in Apprentice mode (the baseline, probability 1) is learned with reward 1
    on the baseline, whatever its true reward (which joins, reports and OPE keep): the model
    imitates the baseline, as Personalizer's apprentice mode does. One served in LoggingOnly
    mode has no examples: nothing is learned from it."""
    mode = learning_mode(event)
    if mode == "LoggingOnly":
        return []
    out = _examples(event)
    if mode == "Apprentice":
        return [SlotExample(ex.candidates, ex.label, -1.0, ex.probability) for ex in out]
    return out


def _examples(event: TrainingEvent) -> list[SlotExample]:
    record = event.record
    event_id = record.event_id
    ids = [str(a["id"]) for a in record.actions]
    excluded = set(record.excluded)
    available = [i for i, action_id in enumerate(ids) if action_id not in excluded]
    if not record.is_slate:
        try:
            chosen = ids.index(record.chosen)
            label = available.index(chosen)
        except ValueError:
            raise BadEvent(
                f"event {event_id!r}: chosen action {record.chosen!r} is not a candidate"
            ) from None
        cost = -_reward(event_id, event.rewards, 0)
        if len(record.pmf) != len(ids):
            raise BadEvent(f"event {event_id!r}: pmf and actions differ in length")
        probability = float(record.pmf[chosen])
        _check_label(event_id, 0, cost, probability)
        return [SlotExample(tuple(available), label, cost, probability)]
    out = []
    position = {action_id: i for i, action_id in reversed(list(enumerate(ids)))}
    for k, slot in enumerate(sorted(record.slots, key=lambda s: int(s["slot"]))):
        if int(slot["slot"]) != k:
            raise BadEvent(f"event {event_id!r}: slots must be numbered 0..n-1")
        chosen = position.get(str(slot["action_id"]), -1)
        if chosen not in available:
            raise BadEvent(
                f"event {event_id!r} slot {k}: action {slot['action_id']!r} "
                "is not an available candidate"
            )
        cost = -_reward(event_id, event.rewards, k)
        probability = float(slot["probability"])
        _check_label(event_id, k, cost, probability)
        out.append(SlotExample(tuple(available), available.index(chosen), cost, probability))
        available = [i for i in available if i != chosen]
    return out


class LineBuilder:
    """Builds the VW text of examples; caches each action's line by (id, features as JSON).

    The cache key is the exact JSON of the features, so a cached line is the line
    :func:`policies.vw_text.action_line` gives for those features. It is cleared when it
    holds `max_cached` lines (memory stays bounded).
    """

    def __init__(self, max_cached: int = 50_000) -> None:
        self.max_cached = max_cached
        self._cache: dict[tuple[str, bytes], str] = {}

    def action(self, action: Mapping[str, Any]) -> str:
        """The (unlabelled) line of one logged action."""
        action_id = action["id"]
        features = action["features"]
        key = (action_id, orjson.dumps(features))
        line = self._cache.get(key)
        if line is None:
            line = action_line(Action(action_id, features))
            if len(self._cache) >= self.max_cached:
                self._cache.clear()
            self._cache[key] = line
        return line

    def event_lines(self, event: TrainingEvent) -> list[list[str]]:
        """The multi-line VW examples of an event (see :func:`slot_examples`)."""
        examples = slot_examples(event)
        if not examples:  # LoggingOnly: nothing to learn
            return []
        record = event.record
        actions = record.actions
        first = examples[0].candidates
        try:
            lines = dict(zip(first, map(self.action, [actions[i] for i in first]), strict=True))
        except (KeyError, TypeError, ValueError) as err:
            raise BadEvent(f"event {record.event_id!r}: bad action: {err}") from None
        shared = shared_line(record.context)
        out = []
        for ex in examples:
            block = [shared]
            block.extend([lines[i] for i in ex.candidates])
            at = ex.label + 1
            block[at] = f"0:{ex.cost:.9g}:{ex.probability:.9g} {block[at]}"
            out.append(block)
        return out


# An event ready to learn: (event_id, decided_at, join_seq, joined_at, its VW examples or the
# reason it cannot be learned). Built in-process by `prepare` or by worker processes
# (learn.parallel).
Prepared = tuple[str, datetime, int, datetime, list[list[str]] | str]


def prepare(
    events: Iterable[TrainingEvent], builder: LineBuilder
) -> Generator[Prepared, None, None]:
    """The VW examples of each event, or the reason it cannot be learned."""
    try:
        for event in events:
            try:
                blocks: list[list[str]] | str = builder.event_lines(event)
            except BadEvent as err:
                blocks = str(err)
            record = event.record
            yield record.event_id, record.decided_at, event.join_seq, event.joined_at, blocks
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
