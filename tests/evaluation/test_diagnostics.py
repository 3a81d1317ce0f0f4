"""Importance-weight diagnostics."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation import Diagnostics, diagnostics
from tests.evaluation.synth import make_world, sample


def _uniform(n: int, n_actions: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_actions, size=n), np.full(n, 1.0 / n_actions)


def test_target_equal_to_logging_has_full_ess_and_unit_weights() -> None:
    action, pscore = _uniform(1000, 4)
    d = diagnostics(action=action, pscore=pscore, action_dist=np.full((1000, 4), 0.25))
    assert d.n == 1000 and d.ess == pytest.approx(1000) and d.ess_ratio == pytest.approx(1)
    assert d.mean_weight == pytest.approx(1) and d.max_weight == pytest.approx(1)
    assert d.mean_weight_se == pytest.approx(0) and d.target_support == 1.0
    assert d.problems() == ()


def test_deterministic_target_under_uniform_logging() -> None:
    n, k = 20_000, 10
    action, pscore = _uniform(n, k)
    target = np.zeros((n, k))
    target[:, 3] = 1.0
    d = diagnostics(action=action, pscore=pscore, action_dist=target)
    assert d.target_support == pytest.approx(1 / k, abs=0.01)
    assert d.ess == pytest.approx(n / k, rel=0.05)
    assert d.max_weight == pytest.approx(k)
    assert abs(d.mean_weight - 1) < 3 * d.mean_weight_se + 1e-9
    assert d.problems(min_ess=100) == ()
    assert "max importance weight 10" in d.problems(max_weight=5)[0]


def test_unsupported_mass_and_mean_weight_flag_missing_support() -> None:
    world = make_world(0)
    s = sample(world, 20_000, seed=1)
    logging = s.logging_dist.copy()
    # Pretend the logging policy never took action 0 where the target likes it: remove it.
    logging[:, 0] = 0.0
    logging /= logging.sum(axis=1, keepdims=True)
    keep = s.action != 0
    d = diagnostics(
        action=s.action[keep],
        pscore=logging[keep, s.action[keep]],
        action_dist=s.action_dist[keep],
        logging_dist=logging[keep],
    )
    assert d.unsupported_mass == pytest.approx(s.action_dist[keep, 0].mean())
    problems = d.problems()
    assert any("never takes" in p for p in problems)
    assert any("mean importance weight" in p for p in problems)


def test_diagnostics_validates_and_serialises() -> None:
    action, pscore = _uniform(10, 2)
    with pytest.raises(ValueError, match="logging_dist must have the shape of action_dist"):
        diagnostics(
            action=action,
            pscore=pscore,
            action_dist=np.full((10, 2), 0.5),
            logging_dist=np.full((10, 3), 1 / 3),
        )
    with pytest.raises(ValueError, match="pscore must be"):
        diagnostics(action=action, pscore=pscore * 0, action_dist=np.full((10, 2), 0.5))
    d = Diagnostics(10, 5.0, 1.0, 0.1, 2.0, 0.5)
    assert d.to_dict()["ess_ratio"] == 0.5 and d.to_dict()["unsupported_mass"] is None
    assert d.problems(min_ess=6) == ("effective sample size 5.0 is below 6",)
