"""The shared input validator: invalid-input tables and hypothesis properties."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation import ESTIMATORS, dr, evaluate, ips, validate_bandit_inputs


def _valid(n: int = 4, n_actions: int = 3) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    dist = rng.dirichlet(np.ones(n_actions), size=n)
    return {
        "reward": rng.random(n),
        "action": rng.integers(0, n_actions, size=n),
        "pscore": np.full(n, 1.0 / n_actions),
        "action_dist": dist,
        "q_hat": rng.random((n, n_actions)),
    }


def _with(**changes: Any) -> dict[str, Any]:
    out = _valid()
    out.update(changes)
    return out


INVALID = [
    (_with(reward=np.ones((4, 1))), r"reward must be a non-empty 1-D array.*shape \(4, 1\)"),
    (_with(reward=[]), r"reward must be a non-empty 1-D array.*shape \(0,\)"),
    (_with(reward="abc"), r"reward must be .* got str"),
    (_with(reward=[0.1, np.nan, 0.2, 0.3]), r"reward must be .*finite.* got nan at index 1"),
    (_with(reward=[0.1, np.inf, 0.2, 0.3]), r"reward must be .*finite.* got inf at index 1"),
    (_with(reward=np.ones(5)), r"reward must have one entry per event"),
    (
        _with(action=[0, 1, 2]),
        r"action must have one entry per event \(4, like reward, pscore, action_dist\), got 3",
    ),
    (_with(action=[0.0, 1.0, 2.0, 1.0]), r"action must be .*integer.* got dtype float64"),
    (_with(action=[True, False, True, True]), r"action must be .*integer.* got dtype bool"),
    (_with(action=[0, 1, 3, 1]), r"action must be .*indices in \[0, 3\).* got 3 at index 2"),
    (_with(action=[0, -1, 2, 1]), r"action must be .* got -1 at index 1"),
    (_with(pscore=[0.5, 0.0, 0.5, 0.5]), r"pscore must be .*probabilities in \(0, 1\].* got 0.0"),
    (_with(pscore=[0.5, 1.5, 0.5, 0.5]), r"pscore must be .*\(0, 1\].* got 1.5 at index 1"),
    (_with(pscore=[0.5, -0.1, 0.5, 0.5]), r"pscore must be .* got -0.1 at index 1"),
    (_with(pscore=[0.5, np.nan, 0.5, 0.5]), r"pscore must be .* got nan at index 1"),
    (_with(pscore=np.full(3, 0.5)), r"pscore must have one entry per event"),
    (_with(action_dist=np.full(4, 1.0)), r"action_dist must be a 2-D array .* got shape \(4,\)"),
    (
        _with(action_dist=np.full((4, 3), 0.5)),
        r"action_dist must be .*rows summing to 1.* got row 0 summing to 1.5",
    ),
    (
        _with(action_dist=np.array([[1.5, -0.5, 0.0]] * 4)),
        r"action_dist must be .* got -0.5 at index \(0, 1\)",
    ),
    (
        _with(action_dist=np.array([[np.nan, 0.5, 0.5]] * 4)),
        r"action_dist must be .* got nan at index \(0, 0\)",
    ),
    (_with(action_dist=np.full((5, 3), 1 / 3)), r"action_dist must have one entry per event"),
    (_with(q_hat=np.zeros((4, 2))), r"q_hat must be .*of shape \(4, 3\), got shape \(4, 2\)"),
    (_with(q_hat=np.full((4, 3), np.nan)), r"q_hat must be .*finite.* got nan at index \(0, 0\)"),
]


@pytest.mark.parametrize(("kwargs", "match"), INVALID)
def test_invalid_inputs_name_the_argument(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_bandit_inputs(**kwargs)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_validates(name: str) -> None:
    with pytest.raises(ValueError, match="pscore must be"):
        ESTIMATORS[name](**_with(pscore=[0.5, 0.0, 0.5, 0.5]))


@pytest.mark.parametrize("name", ["dm", "dr", "sndr", "switch_dr"])
def test_model_based_estimators_require_q_hat(name: str) -> None:
    with pytest.raises(ValueError, match=f"q_hat is required by {name}, got None"):
        ESTIMATORS[name](**_with(q_hat=None))


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("clipped_ips", {"max_weight": 0.0}, "max_weight must be > 0"),
        ("switch_dr", {"threshold": -1.0}, "threshold must be >= 0"),
    ],
)
def test_invalid_hyperparameters(name: str, params: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ESTIMATORS[name](**_valid(), **params)


def test_unknown_hyperparameters_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"params of ips must be among \[\], got \['max_weight'\]"):
        evaluate("ips", **_valid(), max_weight=3.0)


# ---- hypothesis ---------------------------------------------------------------------------


@st.composite
def bandit_inputs(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 30))
    n_actions = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dist = rng.dirichlet(np.ones(n_actions), size=n)
    return {
        "reward": rng.normal(size=n),
        "action": rng.integers(0, n_actions, size=n),
        "pscore": rng.uniform(1e-3, 1.0, size=n),
        "action_dist": dist,
        "q_hat": rng.normal(size=(n, n_actions)),
    }


@settings(max_examples=60, deadline=None)
@given(bandit_inputs())
def test_valid_inputs_pass_and_give_one_term_per_event(kwargs: dict[str, Any]) -> None:
    for name, fn in ESTIMATORS.items():
        terms = fn(**kwargs)
        assert terms.shape == (kwargs["reward"].shape[0],), name
        assert np.isfinite(terms).all(), name


@settings(max_examples=60, deadline=None)
@given(
    bandit_inputs(),
    st.sampled_from(["reward", "pscore", "action_dist", "q_hat"]),
    st.integers(0, 10_000),
)
def test_nan_anywhere_is_rejected_naming_the_argument(
    kwargs: dict[str, Any], name: str, where: int
) -> None:
    arr = np.array(kwargs[name], dtype=np.float64)
    arr.flat[where % arr.size] = np.nan
    kwargs[name] = arr
    with pytest.raises(ValueError, match=f"^{name} must be"):
        dr(**kwargs)


@settings(max_examples=60, deadline=None)
@given(
    bandit_inputs(),
    st.one_of(
        st.floats(max_value=0.0, allow_nan=False),
        st.floats(min_value=1.0, exclude_min=True, allow_nan=False),
    ),
    st.integers(0, 10_000),
)
def test_pscore_outside_zero_one_is_rejected(
    kwargs: dict[str, Any], bad: float, where: int
) -> None:
    pscore = np.array(kwargs["pscore"])
    pscore[where % pscore.size] = bad
    kwargs["pscore"] = pscore
    with pytest.raises(ValueError, match=r"^pscore must be .*probabilities in \(0, 1\]"):
        ips(**kwargs)


@settings(max_examples=60, deadline=None)
@given(
    bandit_inputs(),
    st.sampled_from(["reward", "action", "pscore", "action_dist", "q_hat"]),
    st.sampled_from([-1, 1]),
)
def test_length_mismatch_is_rejected_naming_the_argument(
    kwargs: dict[str, Any], name: str, delta: int
) -> None:
    arr = np.asarray(kwargs[name])
    n = arr.shape[0]
    if n + delta < 1:
        delta = 1
    kwargs[name] = arr[: n + delta] if delta < 0 else np.concatenate([arr, arr[:1]])
    with pytest.raises(ValueError, match=rf"^{name} must (have one entry per event|be)"):
        dr(**kwargs)


@settings(max_examples=40, deadline=None)
@given(bandit_inputs(), st.integers(2, 4))
def test_wrong_ndim_is_rejected(kwargs: dict[str, Any], extra: int) -> None:
    kwargs["pscore"] = np.broadcast_to(kwargs["pscore"][:, None], (kwargs["pscore"].size, extra))
    with pytest.raises(ValueError, match=r"^pscore must be a non-empty 1-D array"):
        ips(**kwargs)
