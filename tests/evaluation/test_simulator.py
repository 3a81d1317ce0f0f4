"""Tests of the simulated environment: determinism, the click and reward model, ground truth,
slates, logged data for off-policy evaluation, and that the gap to the oracle is learnable."""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from scipy import stats

from evaluation.simulator import (
    Simulator,
    SimulatorConfig,
    uniform_policy,
)
from evaluation.simulator_types import Features, SimItem


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return Simulator(SimulatorConfig(seed=3))


def softmax_policy(features: Features, items: Sequence[SimItem]) -> np.ndarray:
    """A stochastic policy that uses the features (prefers items aligned with u0..u2)."""
    u = np.array([features["u0"], features["u1"], features["u2"]], dtype=np.float64)
    e = np.array([[it.features["e0"], it.features["e1"], it.features["e2"]] for it in items])
    s = 2.0 * (e.astype(np.float64) @ u)
    p = np.exp(s - s.max())
    return p / p.sum()


def first_policy(features: Features, items: Sequence[SimItem]) -> np.ndarray:
    del features
    p = np.zeros(len(items))
    p[0] = 1.0
    return p


def greedy_e0_policy(features: Features, items: Sequence[SimItem]) -> np.ndarray:
    del features
    p = np.zeros(len(items))
    p[int(np.argmax([float(it.features["e0"]) for it in items]))] = 1.0
    return p


# ------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_items": 0}, "n_items must be a positive integer"),
        ({"n_actions_per_request": -1}, "n_actions_per_request must be a positive integer"),
        ({"n_features": True}, "n_features must be a positive integer"),
        ({"n_users": 2.5}, "n_users must be a positive integer"),
        ({"base_logit": float("nan")}, "base_logit must be a finite number"),
        ({"affinity_scale": -1.0}, "affinity_scale must be a finite number and >= 0"),
        ({"user_noise": float("inf")}, "user_noise must be a finite number"),
        ({"reward_delay_mean_s": 0.0}, "reward_delay_mean_s must be a finite number > 0"),
        ({"p_lost": 1.0}, r"p_lost must be in \[0, 1\)"),
        ({"p_lost": -0.1}, r"p_lost must be in \[0, 1\)"),
        ({"position_bias": ()}, "position_bias must have at least one slot"),
        ({"position_bias": (1.0, 1.5)}, r"position_bias values must be in \[0, 1\]"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_config_rejects_invalid_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SimulatorConfig(**kwargs)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SimulatorConfig().seed = 1  # type: ignore[misc]


# ------------------------------------------------------------------------------ determinism


def test_same_seed_gives_the_same_world_contexts_and_rewards() -> None:
    a, b = Simulator(SimulatorConfig(seed=11)), Simulator(SimulatorConfig(seed=11))
    assert a.catalog == b.catalog

    def episode(s: Simulator) -> list[object]:
        rng = np.random.default_rng(5)
        out: list[object] = []
        for _ in range(20):
            ctx = s.sample_context(rng)
            items = s.candidates(ctx, rng)
            out += [ctx.features, ctx.user_id, [it.id for it in items]]
            out.append(s.reward(ctx, 0, items, rng))
            out.append(s.slate_rewards(ctx, items, [2, 1], rng))
        return out

    assert episode(a) == episode(b)
    assert a.policy_value(softmax_policy, 2000, seed=4) == b.policy_value(softmax_policy, 2000, 4)
    la = a.logged_bandit(500, uniform_policy, softmax_policy, seed=2)
    lb = b.logged_bandit(500, uniform_policy, softmax_policy, seed=2)
    for key in ("action", "reward", "pscore", "action_dist", "expected_reward", "item_index"):
        np.testing.assert_array_equal(la[key], lb[key])


def test_different_seeds_give_different_worlds() -> None:
    a, b = Simulator(SimulatorConfig(seed=1)), Simulator(SimulatorConfig(seed=2))
    assert [it.features for it in a.catalog] != [it.features for it in b.catalog]
    assert a.oracle_value(1000) != b.oracle_value(1000)


# ------------------------------------------------------------------------------ contexts, items


def test_context_exposes_only_observable_features(sim: Simulator) -> None:
    ctx = sim.sample_context(0)
    d = sim.config.n_features
    assert set(ctx.features) == {"segment", "device", "hour_bucket"} | {f"u{j}" for j in range(d)}
    assert ctx.user_id.startswith("user-")
    assert ctx.latent.shape == (d,)
    assert "latent" not in repr(ctx)


def test_candidates_are_distinct_catalog_items(sim: Simulator) -> None:
    rng = np.random.default_rng(0)
    ctx = sim.sample_context(rng)
    items = sim.candidates(ctx, rng)
    assert len(items) == sim.config.n_actions_per_request
    assert len({it.id for it in items}) == len(items)
    assert all(sim.catalog[it.index] is it for it in items)
    assert set(items[0].features) >= {"category", "creator", "e0"}


def test_small_catalog_gives_the_whole_catalog() -> None:
    small = Simulator(SimulatorConfig(n_items=4, n_actions_per_request=10, n_users=10))
    items = small.candidates(small.sample_context(0), 1)
    assert sorted(it.index for it in items) == [0, 1, 2, 3]
    assert small.sample_batch(50, 0).items.shape == (50, 4)


def test_batch_candidates_are_uniform_subsets_in_random_order(sim: Simulator) -> None:
    batch = sim.sample_batch(20_000, 7)
    rows = np.sort(batch.items, axis=1)
    assert np.all(np.diff(rows, axis=1) > 0)  # distinct within a row
    counts = np.bincount(batch.items.ravel(), minlength=sim.config.n_items)
    assert stats.chisquare(counts).pvalue > 1e-3
    # The item in the first position is uniform over the catalog too (the rows are shuffled).
    first = np.bincount(batch.items[:, 0], minlength=sim.config.n_items)
    assert stats.chisquare(first).pvalue > 1e-3


def test_to_request_has_the_service_shape(sim: Simulator) -> None:
    rng = np.random.default_rng(1)
    ctx = sim.sample_context(rng)
    items = sim.candidates(ctx, rng)
    body = sim.to_request(ctx, items)
    assert set(body) == {"context", "actions"}
    assert body["context"] == dict(ctx.features)
    assert [a["id"] for a in body["actions"]] == [it.id for it in items]
    assert json.loads(json.dumps(body)) == body  # JSON-ready, plain Python values
    assert sim.to_request(ctx, items, slots=3)["slots"] == 3
    with pytest.raises(ValueError, match="slots must be a positive integer"):
        sim.to_request(ctx, items, slots=0)


# ------------------------------------------------------------------------------ click model


def test_click_probabilities_are_probabilities_and_consistent(sim: Simulator) -> None:
    batch = sim.sample_batch(5000, 3)
    q = sim.expected_reward(batch)
    assert q.shape == (5000, sim.n_actions)
    assert np.all((q >= 0.0) & (q <= 1.0))
    for i in (0, 17, 4999):
        ctx, items = sim.batch_context(batch, i), sim.batch_items(batch, i)
        np.testing.assert_allclose(sim.click_probability(ctx, items), q[i], rtol=1e-12)


def test_default_config_has_a_wide_gap_between_oracle_and_uniform() -> None:
    default = Simulator()
    oracle, uniform = default.oracle_value(), default.uniform_value()
    assert oracle > 2.0 * uniform
    assert 0.45 < oracle < 0.7
    assert 0.1 < uniform < 0.25


def test_oracle_beats_every_policy_on_the_same_contexts(sim: Simulator) -> None:
    oracle = sim.oracle_value(5000, seed=1)
    values = {
        "uniform": sim.policy_value(uniform_policy, 5000, seed=1),
        "softmax": sim.policy_value(softmax_policy, 5000, seed=1),
        "first": sim.policy_value(first_policy, 5000, seed=1),
        "greedy_e0": sim.policy_value(greedy_e0_policy, 5000, seed=1),
    }
    assert all(v <= oracle for v in values.values()), values
    assert values["uniform"] == pytest.approx(sim.uniform_value(5000, seed=1), rel=1e-12)
    # A deterministic policy that does not look at the features is uniform in expectation.
    assert values["first"] == pytest.approx(values["uniform"], abs=0.02)
    assert values["softmax"] > values["uniform"]


@pytest.mark.parametrize(
    ("policy", "match"),
    [
        (lambda f, items: np.ones(len(items) + 1) / (len(items) + 1), "pmf of shape"),
        (lambda f, items: np.full(len(items), 0.5), "policy's pmfs .* got row 0 summing to"),
        (lambda f, items: np.r_[1.5, -0.5, np.zeros(len(items) - 2)], r"in \[0, 1\]"),
        (lambda f, items: np.full(len(items), np.nan), "got nan at index"),
    ],
)
def test_policy_value_rejects_invalid_pmfs(sim: Simulator, policy: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sim.policy_value(policy, 10)  # type: ignore[arg-type]


def test_ground_truth_arguments_are_checked(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="n_contexts must be a positive integer"):
        sim.oracle_value(0)
    with pytest.raises(ValueError, match="item_index must be in"):
        ctx = sim.sample_context(0)
        sim.reward(ctx, 10, sim.candidates(ctx, 0), 0)
    with pytest.raises(ValueError, match="items must not be empty"):
        sim.click_probability(sim.sample_context(0), [])


def test_policy_value_matches_simulated_mean_reward(sim: Simulator) -> None:
    """Exact value vs 50k end-to-end draws (context, candidates, sampled action, reward)."""
    n_ctx, n_draws = 50_000, 50_000
    truth = sim.policy_value(softmax_policy, n_contexts=n_ctx, seed=9)
    batch = sim.sample_batch(n_ctx, np.random.default_rng(9))  # the same contexts
    per_context = np.sum(sim.policy_pmfs(softmax_policy, batch) * sim.expected_reward(batch), 1)
    assert per_context.mean() == pytest.approx(truth, rel=1e-12)

    rng = np.random.default_rng(10)
    rewards = np.empty(n_draws)
    for t in range(n_draws):
        ctx = sim.sample_context(rng)
        items = sim.candidates(ctx, rng)
        cdf = np.cumsum(softmax_policy(ctx.features, items))
        a = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(items) - 1)
        rewards[t] = sim.reward(ctx, a, items, rng).value
    se = np.sqrt(rewards.var(ddof=1) / n_draws + per_context.var(ddof=1) / n_ctx)
    assert abs(rewards.mean() - truth) < 3 * se


def test_ground_truth_of_100k_contexts_takes_under_a_second(sim: Simulator) -> None:
    timings = []
    for seed in range(3):
        t0 = time.perf_counter()
        sim.oracle_value(100_000, seed=seed)
        timings.append(time.perf_counter() - t0)
    assert min(timings) < 1.0


# ------------------------------------------------------------------------------ rewards


def test_delays_are_positive_and_the_configured_share_is_lost() -> None:
    cfg = SimulatorConfig(seed=4, p_lost=0.2, reward_delay_mean_s=12.0)
    s = Simulator(cfg)
    rng = np.random.default_rng(0)
    ctx = s.sample_context(rng)
    items = s.candidates(ctx, rng)
    draws = [s.reward(ctx, 0, items, rng) for _ in range(20_000)]
    delays = np.array([r.delay_s for r in draws])
    lost = np.array([r.lost for r in draws])
    values = np.array([r.value for r in draws])
    assert np.all(delays > 0)
    assert abs(delays.mean() - 12.0) < 4 * 12.0 / np.sqrt(len(draws))
    assert stats.binomtest(int(lost.sum()), len(draws), 0.2).pvalue > 1e-3
    p = s.click_probability(ctx, items)[0]
    assert stats.binomtest(int(values.sum()), len(draws), p).pvalue > 1e-3
    # Loss does not depend on the value; a lost reward is observed as the default.
    lost_clicks = int((lost & (values == 1.0)).sum())
    assert stats.binomtest(lost_clicks, int((values == 1.0).sum()), 0.2).pvalue > 1e-3
    assert all(r.observed(default=-1.0) == (-1.0 if r.lost else r.value) for r in draws[:100])


def test_no_loss_when_p_lost_is_zero() -> None:
    s = Simulator(SimulatorConfig(p_lost=0.0, n_users=10))
    ctx = s.sample_context(0)
    items = s.candidates(ctx, 0)
    rng = np.random.default_rng(1)
    assert not any(s.reward(ctx, 1, items, rng).lost for _ in range(1000))


# ------------------------------------------------------------------------------ slates


def test_slate_click_probabilities_apply_position_bias(sim: Simulator) -> None:
    ctx = sim.sample_context(2)
    items = sim.candidates(ctx, 2)
    p = sim.click_probability(ctx, items)
    slate = [4, 0, 7]
    bias = np.array(sim.config.position_bias[:3])
    np.testing.assert_allclose(sim.slate_click_probabilities(ctx, items, slate), bias * p[slate])

    rng = np.random.default_rng(3)
    n = 20_000
    clicks = np.array(
        [[r.value for r in sim.slate_rewards(ctx, items, slate, rng)] for _ in range(n)]
    )
    expected = bias * p[slate]
    se = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(clicks.mean(axis=0) - expected) < 4 * se)


@pytest.mark.parametrize(
    ("slate", "match"),
    [
        ([], "non-empty 1-d sequence of integers"),
        ([0.5, 1.0], "non-empty 1-d sequence of integers"),
        ([0, 0], "distinct candidate indices"),
        ([0, 99], "distinct candidate indices"),
        ([-1], "distinct candidate indices"),
        ([0, 1, 2, 3, 4, 5], "at most 5"),
    ],
)
def test_invalid_slates_are_rejected(sim: Simulator, slate: list[int], match: str) -> None:
    ctx = sim.sample_context(0)
    with pytest.raises(ValueError, match=match):
        sim.slate_click_probabilities(ctx, sim.candidates(ctx, 0), slate)


def test_oracle_slate_is_best_and_beats_uniform(sim: Simulator) -> None:
    k = 3
    oracle = sim.oracle_slate_value(k, 5000, seed=2)
    uniform = sim.uniform_slate_value(k, 5000, seed=2)
    assert oracle >= uniform
    assert oracle > 2 * uniform

    def top_e0(features: Features, items: Sequence[SimItem]) -> np.ndarray:
        del features
        return np.argsort([-float(it.features["e0"]) for it in items])[:k]

    def uniform_marginals(features: Features, items: Sequence[SimItem]) -> np.ndarray:
        del features
        return np.full((k, len(items)), 1.0 / len(items))

    assert sim.slate_policy_value(top_e0, k, 5000, seed=2) <= oracle
    assert sim.slate_policy_value(uniform_marginals, k, 5000, seed=2) == pytest.approx(
        uniform, rel=1e-12
    )
    # The oracle's slate for a context is the best of all K-permutations (brute force).
    rng = np.random.default_rng(0)
    for _ in range(5):
        ctx = sim.sample_context(rng)
        items = sim.candidates(ctx, rng)
        best = max(
            sim.slate_click_probabilities(ctx, items, list(perm)).sum()
            for perm in itertools.permutations(range(len(items)), k)
        )
        got = sim.slate_click_probabilities(ctx, items, sim.oracle_slate(ctx, items, k)).sum()
        assert got == pytest.approx(best, rel=1e-12)


def test_slate_policy_and_slot_count_are_checked(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="n_slots must be <= 5"):
        sim.oracle_slate_value(6, 10)
    with pytest.raises(ValueError, match="slate_policy must return 3 slots"):
        sim.slate_policy_value(lambda f, items: np.array([0, 1]), 3, 10)
    with pytest.raises(ValueError, match="marginals must have shape"):
        sim.slate_policy_value(lambda f, items: np.ones((2, len(items))) / len(items), 3, 10)

    def twice(features: Features, items: Sequence[SimItem]) -> np.ndarray:
        m = np.zeros((2, len(items)))
        m[:, 0] = 1.0
        return m

    with pytest.raises(ValueError, match="slots > 1 times"):
        sim.slate_policy_value(twice, 2, 10)


# ------------------------------------------------------------------------------ logged bandit


def test_logged_bandit_arrays_and_true_value(sim: Simulator) -> None:
    n = 20_000
    logged = sim.logged_bandit(n, softmax_policy, greedy_e0_policy, seed=5)
    k = sim.n_actions
    assert logged["n_rounds"] == n and logged["n_actions"] == k
    assert logged["action"].shape == logged["reward"].shape == logged["pscore"].shape == (n,)
    assert logged["action_dist"].shape == logged["expected_reward"].shape == (n, k)
    rows = np.arange(n)
    np.testing.assert_array_equal(
        logged["pscore"], logged["logging_action_dist"][rows, logged["action"]]
    )
    assert np.all(logged["pscore"] > 0)
    direct = np.mean(np.sum(logged["action_dist"] * logged["expected_reward"], axis=1))
    assert logged["true_value"] == pytest.approx(direct, rel=1e-12)
    assert logged["true_value"] == pytest.approx(
        sim.policy_value(greedy_e0_policy, n_contexts=n, seed=5), rel=1e-12
    )
    assert logged["logging_value"] == pytest.approx(
        sim.policy_value(softmax_policy, n_contexts=n, seed=5), rel=1e-12
    )
    # The rewards are drawn from q at the logged action; IPS is unbiased for the target.
    q_logged = logged["expected_reward"][rows, logged["action"]]
    r = logged["reward"]
    assert abs(r.mean() - q_logged.mean()) < 4 * np.sqrt(q_logged.mean() / n)
    w = logged["action_dist"][rows, logged["action"]] / logged["pscore"]
    ips = w * r
    assert abs(ips.mean() - logged["true_value"]) < 4 * ips.std(ddof=1) / np.sqrt(n)
    assert len(logged["contexts"]) == n and "segment" in logged["contexts"][0]
    as_type = logged["logged"]
    assert as_type.n_rounds == n and as_type.n_actions == k
    np.testing.assert_array_equal(as_type.action, logged["action"])
    np.testing.assert_array_equal(as_type.pscore, logged["pscore"])
    as_type.check_action_dist(logged["action_dist"])


def test_logged_bandit_never_logs_a_zero_probability_action(sim: Simulator) -> None:
    def two_actions(features: Features, items: Sequence[SimItem]) -> np.ndarray:
        p = np.zeros(len(items))
        p[[1, 3]] = 0.5
        return p

    logged = sim.logged_bandit(5000, two_actions, uniform_policy, seed=0)
    assert set(np.unique(logged["action"]).tolist()) == {1, 3}
    np.testing.assert_array_equal(logged["pscore"], 0.5)


# ------------------------------------------------------------------------------ learnability


class _Featurizer:
    """One-hot for string features ("name=value"), raw value for numbers, plus a bias."""

    def __init__(self, examples: Sequence[Mapping[str, object]]) -> None:
        names: dict[str, int] = {}
        for features in examples:
            for key, value in features.items():
                names.setdefault(f"{key}={value}" if isinstance(value, str) else key, len(names))
        self.names = names
        self.size = len(names) + 1

    def __call__(self, features: Mapping[str, object]) -> np.ndarray:
        x = np.zeros(self.size)
        x[-1] = 1.0
        for key, value in features.items():
            if isinstance(value, str):
                j = self.names.get(f"{key}={value}")
                if j is not None:
                    x[j] = 1.0
            else:
                x[self.names[key]] = float(value)  # type: ignore[arg-type]
        return x


def test_a_linear_model_with_pairwise_interactions_learns_the_gap() -> None:
    """Ridge on context x action interactions of the OBSERVABLE features, from 20k
    uniform-logged events, gives a greedy policy worth >= 80% of the oracle."""
    s = Simulator()
    n = 20_000
    logged = s.logged_bandit(n, uniform_policy, uniform_policy, seed=1)
    ctx_f = _Featurizer(logged["contexts"][:2000])
    item_f = _Featurizer([it.features for it in s.catalog])
    item_x = np.stack([item_f(it.features) for it in s.catalog])
    xc = np.stack([ctx_f(f) for f in logged["contexts"]])
    xa = item_x[logged["item_index"][np.arange(n), logged["action"]]]
    x = (xc[:, :, None] * xa[:, None, :]).reshape(n, -1)
    gram = x.T @ x + 1.0 * np.eye(x.shape[1])
    w = np.linalg.solve(gram, x.T @ logged["reward"]).reshape(ctx_f.size, item_f.size)

    def greedy(features: Features, items: Sequence[SimItem]) -> np.ndarray:
        scores = item_x[[it.index for it in items]] @ (w.T @ ctx_f(features))
        p = np.zeros(len(items))
        p[int(np.argmax(scores))] = 1.0
        return p

    oracle = s.oracle_value(20_000, seed=2)
    learned = s.policy_value(greedy, 20_000, seed=2)
    assert learned >= 0.8 * oracle
    assert learned >= 2.0 * s.uniform_value(20_000, seed=2)
