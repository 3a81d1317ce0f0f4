"""The cross-fitted ridge reward model."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation import RidgeRewardModel, cross_fit_q_hat


def _linear_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    coef = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0], [-1.0, 0.0, 2.0]])
    bias = np.array([0.5, -0.5, 1.0])
    action = rng.integers(0, 3, size=n)
    mean = x @ coef.T + bias
    reward = mean[np.arange(n), action] + rng.normal(scale=0.1, size=n)
    return x, action, reward, mean


def test_ridge_recovers_a_linear_reward() -> None:
    x, action, reward, mean = _linear_data(6000)
    model = RidgeRewardModel.fit(reward=reward, action=action, n_actions=3, context=x, l2=1e-3)
    assert model.n_actions == 3
    np.testing.assert_allclose(model.predict(x), mean, atol=0.05)


def test_without_context_it_predicts_shrunk_per_action_means() -> None:
    reward = np.array([1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    action = np.array([0, 0, 1, 1, 1, 2])
    model = RidgeRewardModel.fit(reward=reward, action=action, n_actions=4, l2=1.0)
    overall = reward.mean()
    expected = [
        overall + (2 - 2 * overall) / (2 + 1),
        overall + (0 - 3 * overall) / (3 + 1),
        overall + (1 - overall) / (1 + 1),
        overall,  # never logged: the overall mean
    ]
    np.testing.assert_allclose(model.predict(n_rounds=2), np.tile(expected, (2, 1)))


def test_cross_fitting_never_uses_an_events_own_reward() -> None:
    x, action, reward, _ = _linear_data(300, seed=1)
    q1 = cross_fit_q_hat(reward=reward, action=action, n_actions=3, context=x, seed=4)
    changed = reward.copy()
    changed[17] += 100.0
    q2 = cross_fit_q_hat(reward=changed, action=action, n_actions=3, context=x, seed=4)
    np.testing.assert_allclose(q1[17], q2[17])  # event 17's own row does not move
    assert np.abs(q1 - q2).max() > 1.0  # other folds' rows do
    again = cross_fit_q_hat(reward=reward, action=action, n_actions=3, context=x, seed=4)
    np.testing.assert_array_equal(q1, again)


def test_cross_fit_without_context() -> None:
    rng = np.random.default_rng(0)
    action = rng.integers(0, 4, size=2000)
    reward = (rng.random(2000) < np.array([0.1, 0.3, 0.5, 0.7])[action]).astype(float)
    q = cross_fit_q_hat(reward=reward, action=action, n_actions=4, seed=0)
    assert q.shape == (2000, 4)
    np.testing.assert_allclose(q.mean(axis=0), [0.1, 0.3, 0.5, 0.7], atol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_folds": 1}, r"n_folds must be an integer in \[2, n=10\], got 1"),
        ({"n_folds": 11}, r"n_folds must be an integer in \[2, n=10\], got 11"),
        ({"l2": 0.0}, "l2 must be > 0"),
        ({"context": np.ones((9, 2))}, r"context must have one entry per event \(10"),
        ({"context": np.ones(10)}, "context must be a non-empty 2-D array"),
        ({"n_actions": 2}, r"action must be .*\[0, 2\)"),
    ],
)
def test_cross_fit_rejects(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {
        "reward": np.ones(10),
        "action": np.arange(10) % 3,
        "n_actions": 3,
    }
    with pytest.raises(ValueError, match=match):
        cross_fit_q_hat(**{**base, **kwargs})  # type: ignore[arg-type]


def test_predict_rejects_mismatched_features() -> None:
    x, action, reward, _ = _linear_data(100)
    model = RidgeRewardModel.fit(reward=reward, action=action, n_actions=3, context=x)
    with pytest.raises(ValueError, match="context must have 3 features, got 2"):
        model.predict(x[:, :2])
    with pytest.raises(ValueError, match="context is required"):
        model.predict(n_rounds=3)
    with pytest.raises(ValueError, match="n_actions must be an integer >= 1"):
        RidgeRewardModel.fit(reward=reward, action=action, n_actions=0)
