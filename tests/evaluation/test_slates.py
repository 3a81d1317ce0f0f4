"""Slate estimators on per-slot probabilities: accuracy against exact truth and invariants."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation import (
    SLATE_ESTIMATORS,
    evaluate_slate,
    ips,
    slate_cascade_dr,
    slate_q_hat,
    slate_rips,
    slate_sn_standard_ips,
)
from tests.evaluation.synth import (
    make_slate_world,
    make_world,
    sample,
    sample_product_slates,
    sample_slates,
)

N = 40_000


def _relative_errors(kwargs: dict[str, object], truth: float, names: list[str]) -> dict[str, float]:
    return {n: abs(SLATE_ESTIMATORS[n](**kwargs).mean() - truth) / truth for n in names}


def test_cascade_reward_without_replacement_logging() -> None:
    world = make_slate_world(0, cascade=True)
    s = sample_slates(world, N, seed=1)
    errors = _relative_errors(
        s.kwargs(),
        world.true_value(),
        ["standard_ips", "rips", "cascade_dr", "sn_standard_ips", "sn_rips"],
    )
    assert max(errors.values()) <= 0.10, errors
    # Cascade DR is unbiased whatever the model: a constant q_hat still works.
    const = {
        **s.kwargs(),
        "q_hat": np.full_like(s.q_hat, 0.3),
        "q_hat_target": np.full_like(s.q_hat, 0.3),
    }
    assert abs(slate_cascade_dr(**const).mean() - world.true_value()) / world.true_value() <= 0.10


def test_additive_reward_independent_ips_uses_marginals() -> None:
    world = make_slate_world(1, cascade=False)
    s = sample_slates(world, N, seed=2)
    errors = _relative_errors(
        s.kwargs(),
        world.true_value(),
        ["standard_ips", "independent_ips", "sn_independent_ips", "rips", "cascade_dr"],
    )
    assert max(errors.values()) <= 0.10, errors


def test_product_logging_pseudo_inverse() -> None:
    s, truth = sample_product_slates(N, seed=3)
    errors = _relative_errors(
        s.kwargs(),
        truth,
        ["standard_ips", "independent_ips", "pseudo_inverse", "sn_pseudo_inverse", "rips"],
    )
    assert max(errors.values()) <= 0.10, errors


def test_cascade_dr_with_zero_model_is_rips_and_with_true_model_has_lower_variance() -> None:
    world = make_slate_world(0, cascade=True)
    s = sample_slates(world, N, seed=4)
    zero = {**s.kwargs(), "q_hat": np.zeros_like(s.q_hat), "q_hat_target": np.zeros_like(s.q_hat)}
    np.testing.assert_allclose(slate_cascade_dr(**zero), slate_rips(**s.kwargs()), rtol=1e-12)
    # Events are i.i.d., so the variance of the estimate is the terms' variance over n.
    assert np.var(slate_cascade_dr(**s.kwargs())) < 0.8 * np.var(slate_rips(**s.kwargs()))


def test_one_slot_slates_reduce_to_bandit_ips() -> None:
    world = make_world(0)
    b = sample(world, 3000, seed=5)
    rows = np.arange(3000)
    target = b.action_dist[rows, b.action]
    one = {
        "reward": b.reward[:, None],
        "pscore": b.pscore[:, None],
        "target_pscore": target[:, None],
        "pscore_marginal": b.pscore[:, None],
        "target_marginal": target[:, None],
        "q_hat": np.zeros((3000, 1)),
        "q_hat_target": np.zeros((3000, 1)),
    }
    expected = ips(**b.kwargs())
    for name in ("standard_ips", "independent_ips", "pseudo_inverse", "rips", "cascade_dr"):
        np.testing.assert_allclose(SLATE_ESTIMATORS[name](**one), expected, rtol=1e-12)


def test_self_normalised_slate_ips_of_the_logging_policy_is_the_mean_reward() -> None:
    world = make_slate_world(0)
    s = sample_slates(world, 2000, seed=6)
    kw = {**s.kwargs(), "target_pscore": s.pscore, "target_marginal": s.pscore_marginal}
    assert slate_sn_standard_ips(**kw).mean() == pytest.approx(s.reward.sum(axis=1).mean())


def test_evaluate_slate_gives_an_estimate() -> None:
    world = make_slate_world(0)
    s = sample_slates(world, 5000, seed=7)
    e = evaluate_slate("rips", **s.kwargs(), interval="normal")
    assert e.method == "slate_rips/normal" and e.n == 5000 and 0 < e.ess < 5000
    assert e.contains(world.true_value())
    with pytest.raises(ValueError, match="name must be one of"):
        evaluate_slate("nope", **s.kwargs())


def test_slate_q_hat_from_per_candidate_arrays() -> None:
    action = np.array([[2, 0]])
    dist = np.array([[[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]]])
    q = np.array([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
    logged, expected = slate_q_hat(action=action, action_dist=dist, q_hat=q)
    np.testing.assert_allclose(logged, [[3.0, 4.0]])
    np.testing.assert_allclose(expected, [[1.5, 0.25 * 5 + 0.75 * 6]])
    with pytest.raises(ValueError, match=r"action must hold item indices in \[0, 3\)"):
        slate_q_hat(action=action + 1, action_dist=dist, q_hat=q)


def _slate_inputs() -> dict[str, object]:
    return {
        "reward": np.ones((3, 2)),
        "pscore": np.full((3, 2), 0.5),
        "target_pscore": np.full((3, 2), 0.5),
    }


@pytest.mark.parametrize(
    ("name", "changes", "match"),
    [
        (
            "independent_ips",
            {},
            "pscore_marginal and target_marginal are required by independent_ips",
        ),
        (
            "pseudo_inverse",
            {},
            "pscore_marginal and target_marginal are required by pseudo_inverse",
        ),
        ("cascade_dr", {}, "q_hat and q_hat_target are required by cascade_dr"),
        ("rips", {"pscore": np.full((3, 3), 0.5)}, r"pscore must be .*of shape \(3, 2\)"),
        ("rips", {"pscore": np.zeros((3, 2))}, r"pscore must be .*\(0, 1\]"),
        ("rips", {"target_pscore": np.full((3, 2), 1.5)}, r"target_pscore must be .*\[0, 1\]"),
        ("rips", {"reward": np.ones(3)}, "reward must be a non-empty 2-D array"),
        ("rips", {"q_hat": np.zeros((3, 2))}, "q_hat and q_hat_target must be given together"),
        (
            "rips",
            {"pscore_marginal": np.full((3, 2), 0.5)},
            "pscore_marginal and target_marginal must be given together",
        ),
    ],
)
def test_slate_inputs_are_validated(name: str, changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SLATE_ESTIMATORS[name](**{**_slate_inputs(), **changes})


def test_padding_short_slates_changes_no_estimate() -> None:
    world = make_slate_world(0)
    s = sample_slates(world, 3000, seed=8)
    kw = s.kwargs()
    pad: dict[str, object] = {}
    for key, value in kw.items():
        fill = 0.0 if key in ("reward", "q_hat", "q_hat_target") else 1.0
        pad[key] = np.hstack([np.asarray(value), np.full((3000, 2), fill)])
    for name, fn in SLATE_ESTIMATORS.items():
        np.testing.assert_allclose(fn(**pad), fn(**kw), rtol=1e-12, atol=1e-12, err_msg=name)
