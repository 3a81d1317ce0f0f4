"""Simulated environments with exactly known ground truth for the estimator tests.

Bandit: a fixed pool of contexts (drawn uniformly per event) with known click probabilities
``q[c, a]``, a logging policy and a target policy given as pmfs per context; the target's true
value is ``mean_c sum_a target[c, a] q[c, a]``, computed exactly.

Slates: K slots filled from m items without replacement by Plackett-Luce policies (the pmf over
the items left, renormalised), the way the service samples slates. Every ordered slate is
enumerated, so slate probabilities, per-position marginals, the true value and the cascade
Q-functions are exact.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def _softmax(x: FloatArray) -> FloatArray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class BanditWorld:
    """Contexts (n_contexts, n_features), truth q and the two policies per context."""

    features: FloatArray
    q: FloatArray
    logging: FloatArray
    target: FloatArray

    @property
    def n_actions(self) -> int:
        return int(self.q.shape[1])

    def value(self, policy: FloatArray) -> float:
        """Exact value of a policy given as (n_contexts, n_actions) pmfs."""
        return float(np.mean(np.sum(policy * self.q, axis=1)))

    @property
    def true_value(self) -> float:
        return self.value(self.target)


def make_world(
    seed: int = 0,
    *,
    n_contexts: int = 200,
    n_actions: int = 5,
    n_features: int = 3,
    epsilon: float = 0.2,
    target_temperature: float = 0.15,
) -> BanditWorld:
    """A world where the logging policy is a noisy softmax and the target prefers good actions.

    The logging policy mixes in ``epsilon`` uniform exploration, so every importance weight is
    at most ``n_actions / epsilon``.
    """
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_contexts, n_features))
    theta = rng.normal(size=(n_features, n_actions))
    bias = rng.normal(scale=0.5, size=n_actions)
    q = 1.0 / (1.0 + np.exp(-(features @ theta + bias)))
    logging_scores = features @ rng.normal(size=(n_features, n_actions))
    logging = (1.0 - epsilon) * _softmax(logging_scores) + epsilon / n_actions
    target = _softmax(q / target_temperature)
    return BanditWorld(features, q, logging, target)


@dataclass(frozen=True)
class BanditSample:
    """Logged events from a world, in the estimators' vocabulary."""

    context: NDArray[np.int64]
    reward: FloatArray
    action: NDArray[np.int64]
    pscore: FloatArray
    action_dist: FloatArray
    logging_dist: FloatArray
    q_true: FloatArray
    features: FloatArray

    def kwargs(self, q_hat: Any = None) -> dict[str, Any]:
        """The keyword arguments of every estimator."""
        return {
            "reward": self.reward,
            "action": self.action,
            "pscore": self.pscore,
            "action_dist": self.action_dist,
            "q_hat": q_hat,
        }


def _draw(pmf: FloatArray, rng: np.random.Generator) -> NDArray[np.int64]:
    cdf = np.cumsum(pmf, axis=-1)
    u = rng.random(pmf.shape[:-1])[..., None] * cdf[..., -1:]
    return np.minimum((cdf <= u).sum(axis=-1), pmf.shape[-1] - 1).astype(np.int64)


def sample(
    world: BanditWorld,
    n: int,
    seed: int | np.random.Generator,
    *,
    target: FloatArray | None = None,
    noise_free: bool = False,
) -> BanditSample:
    """n events: context uniform over the pool, action from the logging policy, Bernoulli reward
    (or its mean when ``noise_free``). ``target`` overrides the world's target policy."""
    rng = np.random.default_rng(seed)
    ctx = rng.integers(0, world.features.shape[0], size=n)
    logging = world.logging[ctx]
    action = _draw(logging, rng)
    rows = np.arange(n)
    q_true = world.q[ctx]
    mean = q_true[rows, action]
    reward = mean.copy() if noise_free else (rng.random(n) < mean).astype(np.float64)
    dist = (world.target if target is None else target)[ctx]
    return BanditSample(
        ctx, reward, action, logging[rows, action], dist, logging, q_true, world.features[ctx]
    )


# ---- slates -------------------------------------------------------------------------------


def _pl_slate_prob(pmf: FloatArray, slate: tuple[int, ...]) -> tuple[float, list[float]]:
    """Plackett-Luce probability of an ordered slate and its per-slot conditional probabilities."""
    left = pmf.copy()
    conditional = []
    for item in slate:
        total = left.sum()
        conditional.append(float(left[item] / total) if total > 0 else 0.0)
        left[item] = 0.0
    return float(np.prod(conditional)), conditional


@dataclass(frozen=True)
class SlateWorld:
    """Items, slots, two Plackett-Luce policies and a reward model with exact expectations."""

    n_items: int
    n_slots: int
    logging_pmf: FloatArray
    target_pmf: FloatArray
    attraction: FloatArray  # per item click probability, examined slots only
    cascade: bool  # True: slot k examined only if no click above (cascade); False: additive

    def slates(self) -> list[tuple[int, ...]]:
        return list(itertools.permutations(range(self.n_items), self.n_slots))

    def expected_slot_reward(self, slate: tuple[int, ...]) -> FloatArray:
        """E[r_k | slate] for every slot."""
        out = np.zeros(self.n_slots)
        examine = 1.0
        for k, item in enumerate(slate):
            out[k] = examine * self.attraction[item] * (1.0 if self.cascade else 0.8**k)
            if self.cascade:
                examine *= 1.0 - self.attraction[item]
        return out

    def true_value(self) -> float:
        return float(
            sum(
                _pl_slate_prob(self.target_pmf, s)[0] * self.expected_slot_reward(s).sum()
                for s in self.slates()
            )
        )

    def marginals(self, pmf: FloatArray) -> FloatArray:
        """(n_slots, n_items) probability that item j is at slot k."""
        out = np.zeros((self.n_slots, self.n_items))
        for s in self.slates():
            p = _pl_slate_prob(pmf, s)[0]
            for k, item in enumerate(s):
                out[k, item] += p
        return out

    def q_to_go(self, prefix: tuple[int, ...], _cache: dict[Any, float] | None = None) -> float:
        """Exact E[sum_{j >= k} r_j | slots 1..k = prefix, the rest from the target], k = len."""
        cache = {} if _cache is None else _cache
        if prefix in cache:
            return cache[prefix]
        now = self.expected_slot_reward_prefix(prefix)
        if len(prefix) < self.n_slots:
            now += self.expected_q(prefix, cache)
        cache[prefix] = now
        return now

    def expected_q(self, prefix: tuple[int, ...], _cache: dict[Any, float] | None = None) -> float:
        """E over the target's next item a of q_to_go(prefix + (a,))."""
        cache = {} if _cache is None else _cache
        left = self.target_pmf.copy()
        left[list(prefix)] = 0.0
        left /= left.sum()
        return float(
            sum(
                left[a] * self.q_to_go((*prefix, a), cache)
                for a in range(self.n_items)
                if left[a] > 0
            )
        )

    def expected_slot_reward_prefix(self, prefix: tuple[int, ...]) -> float:
        """E[r_k | slots 1..k = prefix] (the reward of the last slot of the prefix)."""
        padded = prefix + tuple(i for i in range(self.n_items) if i not in prefix)
        return float(self.expected_slot_reward(padded[: self.n_slots])[len(prefix) - 1])


def make_slate_world(
    seed: int = 0,
    *,
    n_items: int = 6,
    n_slots: int = 3,
    cascade: bool = True,
    uniform_logging: bool = False,
) -> SlateWorld:
    rng = np.random.default_rng(seed)
    attraction = rng.uniform(0.05, 0.6, size=n_items)
    logging = (
        np.full(n_items, 1.0 / n_items)
        if uniform_logging
        else _softmax(rng.normal(scale=0.5, size=n_items))
    )
    target = _softmax(3.0 * attraction + rng.normal(scale=0.3, size=n_items))
    return SlateWorld(n_items, n_slots, logging, target, attraction, cascade)


@dataclass(frozen=True)
class SlateSample:
    slate: NDArray[np.int64]  # (n, K)
    reward: FloatArray  # (n, K)
    pscore: FloatArray
    target_pscore: FloatArray
    pscore_marginal: FloatArray
    target_marginal: FloatArray
    q_hat: FloatArray  # exact cascade Q at the logged prefix
    q_hat_target: FloatArray

    def kwargs(self, with_q: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reward": self.reward,
            "pscore": self.pscore,
            "target_pscore": self.target_pscore,
            "pscore_marginal": self.pscore_marginal,
            "target_marginal": self.target_marginal,
        }
        if with_q:
            out["q_hat"], out["q_hat_target"] = self.q_hat, self.q_hat_target
        return out


def sample_slates(world: SlateWorld, n: int, seed: int | np.random.Generator) -> SlateSample:
    """n slates from the logging policy with Bernoulli slot rewards."""
    rng = np.random.default_rng(seed)
    slates = world.slates()
    probs = np.array([_pl_slate_prob(world.logging_pmf, s)[0] for s in slates])
    drawn = rng.choice(len(slates), size=n, p=probs / probs.sum())
    table = np.array(slates, dtype=np.int64)
    cond_log = np.array([_pl_slate_prob(world.logging_pmf, s)[1] for s in slates])
    cond_tgt = np.array([_pl_slate_prob(world.target_pmf, s)[1] for s in slates])
    mean = np.array([world.expected_slot_reward(s) for s in slates])
    marg_log, marg_tgt = world.marginals(world.logging_pmf), world.marginals(world.target_pmf)
    slots = np.arange(world.n_slots)
    cache: dict[Any, float] = {}
    q = np.array([[world.q_to_go(s[: k + 1], cache) for k in slots] for s in slates])
    q_target = np.array([[world.expected_q(s[:k], cache) for k in slots] for s in slates])
    chosen = table[drawn]
    reward = (rng.random((n, world.n_slots)) < mean[drawn]).astype(np.float64)
    return SlateSample(
        slate=chosen,
        reward=reward,
        pscore=cond_log[drawn],
        target_pscore=cond_tgt[drawn],
        pscore_marginal=marg_log[slots, chosen],
        target_marginal=marg_tgt[slots, chosen],
        q_hat=q[drawn],
        q_hat_target=q_target[drawn],
    )


def sample_product_slates(
    n: int, seed: int | np.random.Generator, *, n_items: int = 5, n_slots: int = 3
) -> tuple[SlateSample, float]:
    """Slots filled independently (one pool of ``n_items`` per slot) with an additive reward.

    Returns the sample (conditional = marginal probabilities; q_hat = 0) and the exact value.
    """
    rng = np.random.default_rng(12345)
    logging = _softmax(rng.normal(scale=0.5, size=(n_slots, n_items)))
    target = _softmax(rng.normal(scale=1.0, size=(n_slots, n_items)))
    click = rng.uniform(0.05, 0.6, size=(n_slots, n_items)) * 0.8 ** np.arange(n_slots)[:, None]
    truth = float(np.sum(target * click))
    draw = np.random.default_rng(seed)
    slate = np.stack([_draw(np.tile(logging[k], (n, 1)), draw) for k in range(n_slots)], axis=1)
    slots = np.arange(n_slots)
    reward = (draw.random((n, n_slots)) < click[slots, slate]).astype(np.float64)
    pscore, tscore = logging[slots, slate], target[slots, slate]
    zeros = np.zeros((n, n_slots))
    return SlateSample(slate, reward, pscore, tscore, pscore, tscore, zeros, zeros), truth
