"""The canary split's keyed hash: uniform, stable, nested in the share, fresh per canary and
per key, and unambiguous about its unit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, chisquare

from explore.arms import CANARY, LIVE, ArmSplit, arm_uniform, split_unit

KEY = bytes(range(32))
UNITS = [split_unit(f"user-{i}", "") for i in range(20_000)]


def test_uniform_and_stable() -> None:
    u = np.array([arm_uniform(KEY, "v1", unit) for unit in UNITS])
    assert ((u >= 0) & (u < 1)).all()
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    assert chisquare(counts).pvalue > 1e-4
    again = np.array([arm_uniform(KEY, "v1", unit) for unit in UNITS])
    assert (u == again).all()


def test_share_and_arm_probabilities() -> None:
    split = ArmSplit(KEY, "v1", 0.1)
    arms = [split.arm(unit) for unit in UNITS]
    k = sum(a == CANARY for a, _ in arms)
    assert binomtest(k, len(UNITS), 0.1).pvalue > 1e-4
    assert {p for a, p in arms if a == CANARY} == {0.1}
    assert {p for a, p in arms if a == LIVE} == {1.0 - 0.1}


def test_raising_the_share_keeps_the_canary_units() -> None:
    small = {u for u in UNITS if ArmSplit(KEY, "v1", 0.05).arm(u)[0] == CANARY}
    large = {u for u in UNITS if ArmSplit(KEY, "v1", 0.2).arm(u)[0] == CANARY}
    assert small < large


@pytest.mark.parametrize("other", [("v2", KEY), ("v1", bytes(32))])
def test_another_canary_or_key_draws_other_units(other: tuple[str, bytes]) -> None:
    salt, key = other
    p = 0.3
    first = {u for u in UNITS if ArmSplit(KEY, "v1", p).arm(u)[0] == CANARY}
    second = {u for u in UNITS if ArmSplit(key, salt, p).arm(u)[0] == CANARY}
    # independent draws: the overlap is p * p of the units
    assert binomtest(len(first & second), len(UNITS), p * p).pvalue > 1e-4


def test_units_are_tagged() -> None:
    assert split_unit("x", "e") == b"u\x00x" and split_unit(None, "x") == b"e\x00x"
    assert split_unit("x", "y") != split_unit(None, "x")


@pytest.mark.parametrize(
    ("key", "salt", "share"),
    [
        (b"short", "v", 0.1),
        (KEY, "", 0.1),
        (KEY, "v\x00", 0.1),
        (KEY, "v", 0.0),
        (KEY, "v", 1.0),
        (KEY, "v", float("nan")),
        (KEY, "v", True),
    ],
)
def test_invalid_splits(key: bytes, salt: str, share: float) -> None:
    with pytest.raises(ValueError):
        ArmSplit(key, salt, share)
