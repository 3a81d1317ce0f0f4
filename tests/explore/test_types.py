"""Core types: valid construction and the invalid-input table."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from explore import Action, Context, Decision, SlotChoice

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_decision(**overrides: Any) -> Decision:
    fields: dict[str, Any] = {
        "event_id": "evt-1",
        "loop": "feed",
        "ranking": (("a", 0.7), ("b", 0.2), ("c", 0.1), ("d", 0.0)),
        "chosen": "a",
        "slots": (SlotChoice(0, "a", 0.7), SlotChoice(1, "b", 2 / 3)),
        "model_version": "v1",
        "policy_arm": "live",
        "decided_at": NOW,
    }
    fields.update(overrides)
    return Decision(**fields)


def test_valid_types_construct() -> None:
    assert Action("a", {"x": 1}).id == "a"
    assert Context({"u": 1}).user_id is None
    assert Context({}, user_id="u1").user_id == "u1"
    d = make_decision()
    assert d.chosen == "a"
    assert len(d.slots) == 2


def test_decision_without_slots_is_valid() -> None:
    assert make_decision(slots=()).slots == ()


def test_decision_stores_sequences_as_tuples() -> None:
    d = make_decision(ranking=[["a", 0.5], ["b", 0.5]], slots=[SlotChoice(0, "a", 0.5)])
    assert d.ranking == (("a", 0.5), ("b", 0.5))
    assert isinstance(d.slots, tuple)


def test_types_are_frozen() -> None:
    d = make_decision()
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.chosen = "b"  # type: ignore[misc]


def test_decision_tolerates_sum_round_off() -> None:
    make_decision(ranking=(("a", 0.7 + 5e-7), ("b", 0.3)), slots=())


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", {}), r"^id must be a non-empty string"),
        ((3, {}), r"^id must be a non-empty string, got int"),
        (("a", [("x", 1)]), r"^features must be a mapping"),
        (("a", {1: 2}), r"^features keys must be strings"),
    ],
)
def test_action_rejects(args: tuple[Any, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Action(*args)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((None,), r"^features must be a mapping"),
        (({}, ""), r"^user_id must be a non-empty string"),
        (({}, 7), r"^user_id must be a non-empty string, got int"),
    ],
)
def test_context_rejects(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Context(*args)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1, "a", 0.5), r"^slot must be an integer >= 0, got -1"),
        ((0.0, "a", 0.5), r"^slot must be an integer >= 0, got float"),
        ((0, "", 0.5), r"^action_id must be a non-empty string"),
        ((0, "a", 0.0), r"^probability must be a probability in \(0, 1\], got 0.0"),
        ((0, "a", 1.01), r"^probability must be a probability in \(0, 1\], got 1.01"),
        ((0, "a", float("nan")), r"^probability must be .* got nan"),
    ],
)
def test_slot_choice_rejects(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SlotChoice(*args)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"event_id": ""}, r"^event_id must be a non-empty string"),
        ({"loop": None}, r"^loop must be a non-empty string"),
        ({"model_version": ""}, r"^model_version must be a non-empty string"),
        ({"policy_arm": 1}, r"^policy_arm must be a non-empty string"),
        ({"decided_at": "2026-01-01"}, r"^decided_at must be a datetime, got str"),
        ({"ranking": ()}, r"^ranking must be a non-empty sequence .* got an empty sequence"),
        ({"ranking": None}, r"^ranking must be a non-empty sequence .* got NoneType"),
        ({"ranking": {"a": 1.0}}, r"^ranking must be .* got dict"),
        ({"ranking": (("a",),)}, r"^ranking\[0\] must be an \(action_id, probability\) pair"),
        ({"ranking": (("a", 0.5), ("a", 0.5))}, r"^ranking action_ids must be distinct"),
        ({"ranking": (("a", 1.2), ("b", -0.2))}, r"^ranking\[0\] probability must be .* 1.2"),
        (
            {"ranking": (("a", 0.5), ("b", float("nan")))},
            r"^ranking\[1\] probability must be .* got nan",
        ),
        ({"ranking": (("a", 0.5), ("b", 0.4))}, r"^ranking probabilities must sum to 1"),
        ({"ranking": (("a", 0.5), (2, 0.5))}, r"^ranking\[1\] action_id must be a non-empty"),
        ({"chosen": "zzz"}, r"^chosen must be an action_id in ranking with probability > 0"),
        ({"chosen": "d", "slots": ()}, r"^chosen must be .* probability > 0, got 'd'"),
        ({"chosen": ""}, r"^chosen must be a non-empty string"),
        ({"slots": None}, r"^slots must be a sequence of SlotChoice"),
        ({"slots": (("a", 0.7),)}, r"^slots\[0\] must be a SlotChoice, got tuple"),
        ({"slots": (SlotChoice(0, "b", 0.2),)}, r"^slots\[0\]\.action_id must equal chosen"),
        (
            {"slots": (SlotChoice(0, "a", 0.7), SlotChoice(2, "b", 0.5))},
            r"^slots\[1\]\.slot must be 1",
        ),
        ({"slots": (SlotChoice(1, "a", 0.7),)}, r"^slots\[0\]\.slot must be 0"),
        (
            {"slots": (SlotChoice(0, "a", 0.7), SlotChoice(1, "a", 0.5))},
            r"^slots action_ids must be distinct, got 'a' twice",
        ),
    ],
)
def test_decision_rejects(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_decision(**overrides)
