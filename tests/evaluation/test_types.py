"""Estimate and LoggedBandit: construction, validation and properties."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from evaluation import Estimate, LoggedBandit, ips

GOOD: dict[str, Any] = {
    "value": 0.5,
    "ci_low": 0.4,
    "ci_high": 0.6,
    "n": 100,
    "ess": 80.0,
    "method": "ips/normal",
}


def test_estimate_fields_and_helpers() -> None:
    e = Estimate(**{**GOOD, "value": np.float64(0.5), "n": np.int64(100)})
    assert type(e.value) is float and type(e.n) is int
    assert e.width == pytest.approx(0.2)
    assert e.contains(0.45) and not e.contains(0.7)
    assert e.to_dict() == {**GOOD, "value": 0.5}
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.value = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"value": float("nan")}, "value must be a finite real number, got nan"),
        ({"value": "0.5"}, "value must be a finite real number, got str"),
        ({"value": True}, "value must be a finite real number, got bool"),
        ({"ci_low": float("-inf")}, "ci_low must be a finite real number, got -inf"),
        ({"ci_high": None}, "ci_high must be a finite real number, got NoneType"),
        ({"ci_low": 0.7}, r"ci_low must be <= ci_high, got ci_low=0.7 > ci_high=0.6"),
        ({"n": 0}, "n must be an integer >= 1, got 0"),
        ({"n": 2.5}, "n must be an integer >= 1, got 2.5"),
        ({"ess": -1.0}, r"ess must be in \[0, n=100\], got -1.0"),
        ({"ess": 101.0}, r"ess must be in \[0, n=100\], got 101.0"),
        ({"method": ""}, "method must be a non-empty string"),
        ({"method": 3}, "method must be a non-empty string, got 3"),
    ],
)
def test_estimate_rejects(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Estimate(**{**GOOD, **changes})


def _logged(**changes: Any) -> LoggedBandit:
    mask = np.array([[True, True, False], [True, True, True]])
    kwargs: dict[str, Any] = {
        "reward": [1.0, 0.0],
        "action": [1, 2],
        "pscore": [0.5, 0.25],
        "candidates_mask": mask,
    }
    kwargs.update(changes)
    return LoggedBandit(**kwargs)


def test_logged_bandit_properties_and_read_only() -> None:
    source = np.array([1.0, 0.0])
    logged = _logged(reward=source)
    assert logged.n_rounds == 2 and logged.n_actions == 3
    assert logged.action.dtype == np.int64 and logged.reward.dtype == np.float64
    with pytest.raises(ValueError, match="read-only"):
        logged.reward[0] = 5.0
    source[0] = 7.0  # the caller's array is not shared
    assert logged.reward[0] == 1.0
    kwargs = logged.as_kwargs()
    assert sorted(kwargs) == ["action", "pscore", "reward"]
    target = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(
        ips(**kwargs, action_dist=logged.check_action_dist(target)), [2.0, 0.0]
    )


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"candidates_mask": np.ones((2, 3))}, "candidates_mask must be a non-empty 2-D bool"),
        ({"candidates_mask": np.ones(3, bool)}, "candidates_mask must be a non-empty 2-D bool"),
        ({"reward": [1.0, np.nan]}, "reward must be .* got nan at index 1"),
        ({"action": [1, 3]}, r"action must be .*\[0, 3\).* got 3 at index 1"),
        (
            {"action": [2, 2]},
            "action must be one of the event's candidates.* got action 2 at index 0",
        ),
        ({"pscore": [0.5, 0.0]}, r"pscore must be .*\(0, 1\]"),
        ({"pscore": [0.5]}, r"pscore must have one entry per event \(2"),
    ],
)
def test_logged_bandit_rejects(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _logged(**changes)


def test_logged_bandit_checks_target_support_on_candidates() -> None:
    logged = _logged()
    good = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    np.testing.assert_array_equal(logged.check_action_dist(good), good)
    with pytest.raises(
        ValueError, match=r"action_dist must put probability 0 on non-candidate.*\(0, 2\)"
    ):
        logged.check_action_dist(np.array([[0.5, 0.0, 0.5], [0.2, 0.3, 0.5]]))
    with pytest.raises(ValueError, match=r"action_dist must have shape \(2, 3\)"):
        logged.check_action_dist(np.array([[0.5, 0.5], [0.5, 0.5]]))
    with pytest.raises(
        ValueError, match=r"action_dist must be a 2-D array of shape \(2, n_actions\)"
    ):
        logged.check_action_dist(np.full((3, 3), 1 / 3))
