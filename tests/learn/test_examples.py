"""The example builder: candidates, labels and probabilities per slot, and the exact text."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from explore.types import Action
from learn import BadEvent, LineBuilder, SlotExample, TrainingEvent, slot_examples
from policies.vw_text import example_lines
from tests.learn.helpers import joined_event

T = datetime(2026, 1, 1, tzinfo=UTC)


def event(**overrides: Any) -> TrainingEvent:
    actions = [{"id": f"a{i}", "features": {"x": i, "kind": f"k{i % 2}"}} for i in range(5)]
    values: dict[str, Any] = {
        "event_id": "e1",
        "decided_at": T,
        "joined_at": T,
        "context": {"user": "u1", "hour": 3},
        "actions": actions,
        "pmf": [0.1, 0.0, 0.5, 0.2, 0.2],
        "excluded": ["a1"],
        "chosen": "a2",
        "slots": [{"slot": 0, "action_id": "a2", "probability": 0.5}],
        "is_slate": False,
        "rewards": {0: 1.0},
    }
    values.update(overrides)
    return joined_event(**values)


SLATE: dict[str, Any] = {
    "is_slate": True,
    "chosen": "a3",
    "slots": [
        {"slot": 0, "action_id": "a3", "probability": 0.4},
        {"slot": 1, "action_id": "a0", "probability": 0.25},
        {"slot": 2, "action_id": "a4", "probability": 0.5},
    ],
    "rewards": {0: 0.0, 1: 1.0, 2: 0.5},
}


def test_single_decision_example() -> None:
    # candidates: the non-excluded actions in stored order; label: the chosen one among them
    assert slot_examples(event()) == [SlotExample((0, 2, 3, 4), 1, -1.0, 0.5)]


def test_slate_examples_remove_earlier_choices_and_excluded() -> None:
    examples = slot_examples(event(**SLATE))
    assert examples == [
        SlotExample((0, 2, 3, 4), 2, -0.0, 0.4),
        SlotExample((0, 2, 4), 0, -1.0, 0.25),
        SlotExample((2, 4), 1, -0.5, 0.5),
    ]


def test_slate_slots_are_taken_in_slot_order() -> None:
    shuffled = event(**{**SLATE, "slots": list(reversed(SLATE["slots"]))})
    assert slot_examples(shuffled) == slot_examples(event(**SLATE))


def test_lines_are_the_serving_encoding() -> None:
    ctx = {"user": "u 1", "hour": 3, "flag": True, "tags": ["a", "b"], "geo": {"lat": 1.5}}
    actions: list[dict[str, Any]] = [
        {"id": "x y", "features": {"b": True, "n": 1, "z": -0.0, "l": [1, 2], "m": {"q": "v"}}},
        {"id": "two", "features": {"b": 1, "n": True, "s": "with space"}},
        {"id": "three", "features": {}},
        {"id": "four", "features": {"n": 2.5}},
    ]
    ev = event(
        context=ctx,
        actions=actions,
        pmf=[0.25] * 4,
        excluded=[],
        chosen="two",
        is_slate=True,
        slots=[
            {"slot": 0, "action_id": "two", "probability": 0.25},
            {"slot": 1, "action_id": "x y", "probability": 1 / 3},
        ],
        rewards={0: 0.25, 1: -1.0},
    )
    builder = LineBuilder()
    blocks = builder.event_lines(ev)
    expected = []
    for ex in slot_examples(ev):
        cands = [Action(actions[i]["id"], actions[i]["features"]) for i in ex.candidates]
        expected.append(example_lines(ctx, cands, label=(ex.label, ex.cost, ex.probability)))
    assert blocks == expected
    # cached lines: the same ids with other feature values (True vs 1, 0.0 vs -0.0) differ
    other: list[dict[str, Any]] = [
        {"id": "x y", "features": {"b": 1, "n": True, "z": 0.0, "l": [1, 2], "m": {"q": "v"}}},
        {"id": "two", "features": {"b": True, "n": 1, "s": "with space"}},
        {"id": "three", "features": {}},
        {"id": "four", "features": {"n": 2.5}},
    ]
    ev2 = replace(ev, record=replace(ev.record, actions=other))
    expected2 = []
    for ex in slot_examples(ev2):
        cands = [Action(other[i]["id"], other[i]["features"]) for i in ex.candidates]
        expected2.append(example_lines(ctx, cands, label=(ex.label, ex.cost, ex.probability)))
    assert builder.event_lines(ev2) == expected2
    assert expected2 != expected


def test_line_cache_is_bounded() -> None:
    builder = LineBuilder(max_cached=3)
    for i in range(10):
        builder.action({"id": f"a{i}", "features": {"x": i}})
        assert len(builder._cache) <= 3


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"chosen": "zz"}, "chosen action 'zz' is not a candidate"),
        ({"chosen": "a1"}, "chosen action 'a1' is not a candidate"),
        ({"pmf": [0.1, 0.0, 0.0, 0.2, 0.2]}, r"probability must be in \(0, 1\], got 0.0"),
        ({"pmf": [0.1, 0.0, 1.5, 0.2, 0.2]}, r"probability must be in \(0, 1\], got 1.5"),
        ({"pmf": [0.5, 0.5]}, "pmf and actions differ in length"),
        ({"rewards": {}}, "has no joined reward for slot 0"),
        ({"rewards": {0: float("nan")}}, "reward must be finite"),
        ({**SLATE, "rewards": {0: 0.0, 1: 1.0}}, "has no joined reward for slot 2"),
        (
            {**SLATE, "slots": [*SLATE["slots"][:2], {**SLATE["slots"][0], "slot": 2}]},
            "slot 2: action 'a3' is not an available candidate",
        ),
        (
            {**SLATE, "slots": [{"slot": 0, "action_id": "a1", "probability": 0.5}]},
            "slot 0: action 'a1' is not an available candidate",
        ),
        ({**SLATE, "slots": SLATE["slots"][1:]}, "slots must be numbered 0..n-1"),
        (
            {"actions": [{"id": f"a{i}", "features": [i]} for i in range(5)]},
            "bad action: features must be a mapping",
        ),
    ],
)
def test_bad_events_are_refused(overrides: dict[str, Any], match: str) -> None:
    ev = event(**overrides)
    with pytest.raises(BadEvent, match=match):
        LineBuilder().event_lines(ev)
