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
from log.action_store import ChunkBodies
from log.records import DecisionRecord
from log.training_reads import JoinedDecision, TrainingRow
from policies.vw_text import action_line, shared_line

Bodies = Mapping[str, str] | ChunkBodies  # digest -> body text (log/action_store.py)

__all__ = [
    "BadEvent",
    "LineBuilder",
    "Prepared",
    "SlotExample",
    "TrainingEvent",
    "prepare",
    "prepare_rows",
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


def _mode(shadow: object) -> str:
    mode = shadow.get("mode") if isinstance(shadow, dict) else None
    return mode if isinstance(mode, str) else "Online"


def learning_mode(event: TrainingEvent) -> str:
    """`Online`, or the Personalizer learning mode the decision was served in (its baseline
    was served with probability 1; `decision_service.decide.baseline_shadow`)."""
    return _mode(event.record.shadow)


def slot_examples(event: TrainingEvent) -> list[SlotExample]:
    """The examples of one event: one for a single decision, one per slot for a slate.

    A decision served in Apprentice mode (the baseline, probability 1) is learned with reward 1
    on the baseline, whatever its true reward (which joins, reports and OPE keep): the model
    imitates the baseline, as Personalizer's apprentice mode does. One served in LoggingOnly
    mode has no examples: nothing is learned from it."""
    r = event.record
    ids = [str(a["id"]) for a in r.actions]
    return _slot_examples(_Logged(r.event_id, ids, r, event.rewards), _mode(r.shadow))


@dataclass(frozen=True, slots=True)
class _Logged:
    """What the examples are built from: the event id, its action ids in stored order, the
    record's labelling fields (`excluded`, `is_slate`, `chosen`, `pmf`, `slots`) and rewards."""

    event_id: str
    ids: list[str]
    fields: DecisionRecord | TrainingRow
    rewards: Mapping[int, float]


def _slot_examples(logged: _Logged, mode: str) -> list[SlotExample]:
    if mode == "LoggingOnly":
        return []
    out = _examples(logged)
    if mode == "Apprentice":
        return [SlotExample(ex.candidates, ex.label, -1.0, ex.probability) for ex in out]
    return out


def _examples(logged: _Logged) -> list[SlotExample]:
    record = logged.fields
    event_id = logged.event_id
    ids = logged.ids
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
        cost = -_reward(event_id, logged.rewards, 0)
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
        cost = -_reward(event_id, logged.rewards, k)
        probability = float(slot["probability"])
        _check_label(event_id, k, cost, probability)
        out.append(SlotExample(tuple(available), available.index(chosen), cost, probability))
        available = [i for i in available if i != chosen]
    return out


def _blocks(examples: list[SlotExample], shared: str, lines: Mapping[int, str]) -> list[list[str]]:
    out = []
    for ex in examples:
        block = [shared]
        block.extend([lines[i] for i in ex.candidates])
        at = ex.label + 1
        block[at] = f"0:{ex.cost:.9g}:{ex.probability:.9g} {block[at]}"
        out.append(block)
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
        # by stored JSON text: an action's (id, line, or the reason it has none), a context's line
        self._elements: dict[str, tuple[str, str | None, str]] = {}
        # by its [id, digest] text (without brackets): an action stored by reference
        # (log/action_store.py)
        self._referenced: dict[str, tuple[str, str | None, str]] = {}
        self._contexts: dict[str, str] = {}

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
        return _blocks(examples, shared_line(record.context), lines)

    def _element(self, piece: str) -> tuple[str, str | None, str]:
        """(id, line or None, why it has none) of an action from its stored JSON text without
        its outer braces (memoised by that text)."""
        hit = self._elements.get(piece)
        if hit is None:
            hit = self._parsed(orjson.loads("{" + piece + "}"))
            if len(self._elements) >= self.max_cached:
                self._elements.clear()
            self._elements[piece] = hit
        return hit

    def _parsed(self, action: Any) -> tuple[str, str | None, str]:
        try:
            action_id = str(action["id"])
        except (KeyError, TypeError) as err:
            raise BadEvent(f"bad action: {err!r}") from None
        try:
            return action_id, self.action(action), ""
        except (KeyError, TypeError, ValueError) as err:
            return action_id, None, str(err)

    def _references(self, text: str, bodies: Bodies) -> list[tuple[str, str | None, str]]:
        """(id, line or None, why) of each action of a stored array of references
        ``[[id, digest], ...]``, memoised by each pair's JSON text: a body is parsed and
        encoded once per id it is served under. The text is cut at the ``],[`` (``], [``)
        between pairs and the cut checked as :meth:`_actions` checks its own: a piece that is
        not a pair of strings (the separator occurred inside an id) makes the array parsed
        whole. A piece of a wrong cut is never a memoised key: it starts or ends inside an
        id's string, so it is not the text of a pair."""
        memo = self._referenced
        inner = text[2:-2]
        pieces = inner.split("], [" if "], [" in inner else "],[")
        hits = list(map(memo.get, pieces))
        if None not in hits:
            return hits  # type: ignore[return-value]
        try:
            pairs = [orjson.loads("[" + p + "]") for p in pieces]
            if not all(_is_pair(pair) for pair in pairs):
                raise ValueError("not a pair")
        except (orjson.JSONDecodeError, ValueError):
            pairs = orjson.loads(text)
            pieces = [orjson.dumps(pair).decode()[1:-1] for pair in pairs]
        out: list[tuple[str, str | None, str]] = []
        for piece, pair in zip(pieces, pairs, strict=True):
            if not _is_pair(pair):
                raise BadEvent(f"bad action reference: {pair!r}")
            hit = memo.get(piece)
            if hit is None:
                action_id, digest = pair
                body = bodies.get(digest)
                if body is None:
                    raise BadEvent(f"action body {digest!r} is not stored")
                hit = self._parsed({"id": action_id, **orjson.loads(body)})
                if len(memo) >= self.max_cached:
                    memo.clear()
                memo[piece] = hit
            out.append(hit)
        return out

    def _actions(
        self, text: str, bodies: Bodies | None = None
    ) -> list[tuple[str, str | None, str]]:
        """(id, line or None, why) of each action of a stored actions array, in order: the
        references of :mod:`log.action_store` (their bodies in `bodies`), or inline actions.

        The text is cut at each ``}, {`` (``},{``) between elements and each piece looked up
        by its text, parsed only when new. The cut is checked, not assumed: a piece that is not
        a whole JSON object (the separator also occurred inside a string or a nested value)
        fails to parse, and the array is then parsed whole. When every piece is a JSON object
        the pieces are the array's elements (JSON's grammar leaves no other reading)."""
        if text == "[]":
            return []
        if text.startswith("[["):
            return self._references(text, bodies or {})
        if text.startswith("[{") and text.endswith("}]"):
            inner = text[2:-2]
            sep = "}, {" if "}, {" in inner else "},{"
            pieces = inner.split(sep)
            hits = list(map(self._elements.get, pieces))
            if None not in hits:
                return hits  # type: ignore[return-value]
            try:
                return [self._element(p) for p in pieces]
            except orjson.JSONDecodeError:
                pass
        actions = orjson.loads(text)
        if not isinstance(actions, list):
            raise BadEvent("actions are not a list")
        return [self._parsed(a) for a in actions]

    def _shared(self, text: str) -> str:
        line = self._contexts.get(text)
        if line is None:
            line = shared_line(orjson.loads(text))
            if len(self._contexts) >= self.max_cached:
                self._contexts.clear()
            self._contexts[text] = line
        return line

    def row_lines(self, row: TrainingRow) -> list[list[str]]:
        """The VW examples of a training row: the same lines as :meth:`event_lines` gives for
        the same decision. Each action's and the context's text is memoised by its stored
        JSON, so a repeated one is neither parsed nor encoded again."""
        try:
            elements = self._actions(row.actions_json, row.bodies)
        except BadEvent as err:
            raise BadEvent(f"event {row.event_id!r}: {err}") from None
        except orjson.JSONDecodeError as err:
            raise BadEvent(f"event {row.event_id!r}: bad actions: {err}") from None
        if row.plain:
            fast = self._single(row, elements)
            if fast is not None:
                return fast
        ids = [e[0] for e in elements]
        examples = _slot_examples(_Logged(row.event_id, ids, row, row.rewards), _mode(row.shadow))
        if not examples:
            return []
        lines = {}
        for i in examples[0].candidates:
            _, line, error = elements[i]
            if line is None:
                raise BadEvent(f"event {row.event_id!r}: bad action: {error}")
            lines[i] = line
        return _blocks(examples, self._shared(row.context_json), lines)

    def _single(
        self, row: TrainingRow, elements: list[tuple[str, str | None, str]]
    ) -> list[list[str]] | None:
        """The example of a single decision without exclusions or shadow (the common case),
        exactly as :func:`slot_examples` builds it: every action a candidate in stored order,
        the chosen one labelled. None when anything is irregular: the general path then gives
        the example or the reason it has none."""
        if not elements:
            return None
        ids, lines, _ = zip(*elements, strict=True)
        if None in lines:
            return None
        try:
            i = ids.index(row.chosen)
            pmf = orjson.loads(row.pmf_json)
            if len(pmf) != len(lines):
                return None
            cost = -float(row.rewards[0])
            probability = float(pmf[i])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if not (math.isfinite(cost) and math.isfinite(probability) and 0.0 < probability <= 1.0):
            return None
        block = [self._shared(row.context_json), *lines]
        block[i + 1] = f"0:{cost:.9g}:{probability:.9g} {lines[i]}"
        return [block]


def _is_pair(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], str)
    )


# An event ready to learn: (event_id, decided_at, join_seq, joined_at, its VW examples or the
# reason it cannot be learned). Built in-process by `prepare` or by worker processes
# (learn.parallel).
Prepared = tuple[str, datetime, int, datetime, list[list[str]] | str]


def prepare_rows(
    rows: Iterable[TrainingRow], builder: LineBuilder
) -> Generator[Prepared, None, None]:
    """The VW examples of each training row, or the reason it cannot be learned (the same as
    :func:`prepare` gives for the same events)."""
    try:
        for row in rows:
            try:
                blocks: list[list[str]] | str = builder.row_lines(row)
            except BadEvent as err:
                blocks = str(err)
            yield row.event_id, row.decided_at, row.join_seq, row.joined_at, blocks
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


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
