"""Simulated environments with known ground truth, for demos and off-policy-evaluation tests.

Seeded users with latent preferences, items with features, a known click model, delayed (and
sometimes lost) rewards, single decisions and K-slot slates with position bias, and the exact
expected reward of any policy. See :class:`SimulatorConfig` for the model. numpy only.

Typical use::

    sim = Simulator(SimulatorConfig(seed=7))
    rng = np.random.default_rng(1)
    ctx = sim.sample_context(rng)
    items = sim.candidates(ctx, rng)
    body = sim.to_request(ctx, items)          # POST it to the service
    outcome = sim.reward(ctx, chosen_index, items, rng)
    sim.policy_value(my_policy) / sim.oracle_value()
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from evaluation.simulator_types import (
    DEVICES,
    HOUR_BUCKETS,
    FeatureValue,
    PolicyFn,
    SimBatch,
    SimContext,
    SimItem,
    SimReward,
    SimulatorConfig,
    SlatePolicyFn,
    as_pmf_row,
    check_n,
    check_slate,
    uniform_policy,
)
from evaluation.simulator_world import World
from evaluation.types import LoggedBandit
from evaluation.validation import PMF_ATOL, check_action_dist

__all__ = [
    "PolicyFn",
    "SimBatch",
    "SimContext",
    "SimItem",
    "SimReward",
    "Simulator",
    "SimulatorConfig",
    "SlatePolicyFn",
    "uniform_policy",
]

DEFAULT_N_CONTEXTS = 20_000


class Simulator:
    """A seeded environment; see :class:`SimulatorConfig` for the click and reward model.

    The world (users, items, effects) is fixed by ``config.seed``; every other random draw takes
    the ``numpy.random.Generator`` (or seed) passed to the method, so runs are reproducible.
    Ground-truth methods take ``seed`` and draw their contexts from ``default_rng(seed)``: the
    same ``(n_contexts, seed)`` gives the same contexts, so policies are compared on them.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.world = World.build(self.config)
        w = self.world
        d = self.config.n_features
        self._segment_names = [f"s{g}" for g in w.segment.tolist()]
        self._user_numeric: list[dict[str, FeatureValue]] = [
            {f"u{j}": float(w.observed[u, j]) for j in range(d)} for u in range(self.config.n_users)
        ]
        width = len(str(self.config.n_items - 1))
        self.catalog: tuple[SimItem, ...] = tuple(
            SimItem(
                id=f"item-{i:0{width}d}",
                features={
                    "category": f"c{w.category[i]}",
                    "creator": f"cr{w.creator[i]}",
                    **{f"e{j}": float(w.vector[i, j]) for j in range(d)},
                },
                index=i,
            )
            for i in range(self.config.n_items)
        )
        self._position_bias = np.asarray(self.config.position_bias, dtype=np.float64)

    # ---------------------------------------------------------------- contexts and candidates

    @property
    def n_actions(self) -> int:
        """Candidates per request (``n_actions_per_request`` capped by the catalog size)."""
        return self.config.n_actions

    def _features(self, user: int, device: int, hour: int) -> dict[str, FeatureValue]:
        features: dict[str, FeatureValue] = {
            "segment": self._segment_names[user],
            "device": DEVICES[device],
            "hour_bucket": HOUR_BUCKETS[hour],
        }
        features.update(self._user_numeric[user])
        return features

    def _context(self, user: int, device: int, hour: int) -> SimContext:
        return SimContext(
            features=self._features(user, device, hour),
            user_id=f"user-{user}",
            user_index=user,
            device_index=device,
            hour_index=hour,
            latent=self.world.latent[user],
        )

    def sample_context(self, rng: np.random.Generator | int | None = None) -> SimContext:
        """One context: a random user, their (usual or other) device, an hour bucket."""
        user, device, hour = self.world.sample_contexts(1, np.random.default_rng(rng))
        return self._context(int(user[0]), int(device[0]), int(hour[0]))

    def candidates(
        self, ctx: SimContext, rng: np.random.Generator | int | None = None
    ) -> list[SimItem]:
        """The request's actions: a uniform random subset of the catalog, in random order."""
        del ctx  # candidates do not depend on the context
        g = np.random.default_rng(rng)
        row = g.choice(self.config.n_items, size=self.n_actions, replace=False, shuffle=True)
        return [self.catalog[i] for i in row.tolist()]

    def sample_batch(self, n: int, rng: np.random.Generator | int | None = None) -> SimBatch:
        """``n`` contexts with their candidate sets, as arrays (vectorised)."""
        check_n("n", n)
        return self.world.sample_batch(int(n), np.random.default_rng(rng))

    def batch_context(self, batch: SimBatch, i: int) -> SimContext:
        """Row ``i`` of a batch as a :class:`SimContext`."""
        return self._context(int(batch.user[i]), int(batch.device[i]), int(batch.hour[i]))

    def batch_items(self, batch: SimBatch, i: int) -> list[SimItem]:
        """Row ``i``'s candidates as :class:`SimItem` objects."""
        return [self.catalog[j] for j in batch.items[i]]

    def to_request(
        self, ctx: SimContext, items: Sequence[SimItem], slots: int | None = None
    ) -> dict[str, Any]:
        """The service's request body: ``{"context", "actions", "slots"?}`` (JSON-ready)."""
        body: dict[str, Any] = {
            "context": dict(ctx.features),
            "actions": [{"id": it.id, "features": dict(it.features)} for it in items],
        }
        if slots is not None:
            check_n("slots", slots)
            body["slots"] = int(slots)
        return body

    # ---------------------------------------------------------------- ground truth per context

    def click_probability(self, ctx: SimContext, items: Sequence[SimItem]) -> np.ndarray:
        """True click probability of each item if it alone is shown (single decision)."""
        if len(items) == 0:
            raise ValueError("items must not be empty")
        idx = np.array([[it.index for it in items]], dtype=np.int64)
        return self.world.click_probabilities(
            np.array([ctx.user_index]),
            np.array([ctx.device_index]),
            np.array([ctx.hour_index]),
            idx,
        )[0]

    def expected_reward(self, batch: SimBatch) -> np.ndarray:
        """True click probabilities, shape (n, n_actions), for every row of a batch."""
        return self.world.batch_click_probabilities(batch)

    def oracle_action(self, ctx: SimContext, items: Sequence[SimItem]) -> int:
        """Index of the item with the highest true click probability."""
        return int(np.argmax(self.click_probability(ctx, items)))

    def _draw_reward(self, p: float, rng: np.random.Generator) -> SimReward:
        value = 1.0 if rng.random() < p else 0.0
        delay = float(rng.exponential(self.config.reward_delay_mean_s))
        lost = bool(rng.random() < self.config.p_lost)
        return SimReward(value=value, delay_s=delay, lost=lost)

    def reward(
        self,
        ctx: SimContext,
        item_index: int,
        items: Sequence[SimItem],
        rng: np.random.Generator | int | None = None,
    ) -> SimReward:
        """The outcome of showing ``items[item_index]``: click drawn from its true probability."""
        if not 0 <= item_index < len(items):
            raise ValueError(f"item_index must be in [0, {len(items)}), got {item_index!r}")
        p = float(self.click_probability(ctx, items)[item_index])
        return self._draw_reward(p, np.random.default_rng(rng))

    # ---------------------------------------------------------------- slates

    def slate_click_probabilities(
        self, ctx: SimContext, items: Sequence[SimItem], slate: Sequence[int] | np.ndarray
    ) -> np.ndarray:
        """Per slot ``k``: ``position_bias[k] * click probability of items[slate[k]]``."""
        s = check_slate(slate, len(items), len(self._position_bias))
        return self._position_bias[: s.size] * self.click_probability(ctx, items)[s]

    def slate_rewards(
        self,
        ctx: SimContext,
        items: Sequence[SimItem],
        slate: Sequence[int] | np.ndarray,
        rng: np.random.Generator | int | None = None,
    ) -> list[SimReward]:
        """One outcome per slot; slots click independently (position-based model)."""
        p = self.slate_click_probabilities(ctx, items, slate)
        g = np.random.default_rng(rng)
        return [self._draw_reward(float(pk), g) for pk in p]

    # ---------------------------------------------------------------- ground truth of policies

    def _eval_batch(self, n_contexts: int, seed: int) -> tuple[SimBatch, np.ndarray]:
        check_n("n_contexts", n_contexts)
        batch = self.sample_batch(n_contexts, np.random.default_rng(seed))
        return batch, self.expected_reward(batch)

    def policy_pmfs(self, policy: PolicyFn, batch: SimBatch) -> np.ndarray:
        """The policy's pmf for every row of a batch, shape (n, n_actions), validated."""
        out = np.empty(batch.items.shape, dtype=np.float64)
        k = batch.items.shape[1]
        for i, (features, items) in enumerate(self._rows(batch)):
            out[i] = as_pmf_row(policy(features, items), k, "policy")
        return check_action_dist(out, "the policy's pmfs (one row per context)")

    def _rows(self, batch: SimBatch) -> Iterator[tuple[dict[str, FeatureValue], list[SimItem]]]:
        """(features, candidates) of each row of a batch, without building SimContexts."""
        catalog = self.catalog
        for user, device, hour, row in zip(
            batch.user.tolist(),
            batch.device.tolist(),
            batch.hour.tolist(),
            batch.items.tolist(),
            strict=True,
        ):
            yield self._features(user, device, hour), [catalog[j] for j in row]

    def policy_value(
        self, policy: PolicyFn, n_contexts: int = DEFAULT_N_CONTEXTS, seed: int = 0
    ) -> float:
        """True expected reward of ``policy``: mean over the seeded contexts of sum_a pmf * q."""
        batch, q = self._eval_batch(n_contexts, seed)
        return float(np.mean(np.sum(self.policy_pmfs(policy, batch) * q, axis=1)))

    def oracle_value(self, n_contexts: int = DEFAULT_N_CONTEXTS, seed: int = 0) -> float:
        """True expected reward of always choosing the best candidate (vectorised)."""
        _, q = self._eval_batch(n_contexts, seed)
        return float(q.max(axis=1).mean())

    def uniform_value(self, n_contexts: int = DEFAULT_N_CONTEXTS, seed: int = 0) -> float:
        """True expected reward of the uniform random policy (vectorised)."""
        _, q = self._eval_batch(n_contexts, seed)
        return float(q.mean())

    def _check_n_slots(self, n_slots: int) -> int:
        check_n("n_slots", n_slots)
        limit = min(len(self._position_bias), self.n_actions)
        if n_slots > limit:
            raise ValueError(
                f"n_slots must be <= {limit} (position_bias length and candidates), got {n_slots}"
            )
        return int(n_slots)

    def slate_policy_value(
        self,
        slate_policy: SlatePolicyFn,
        n_slots: int,
        n_contexts: int = DEFAULT_N_CONTEXTS,
        seed: int = 0,
    ) -> float:
        """True expected total reward (sum over slots) of a slate policy.

        ``slate_policy`` returns a slate (``n_slots`` distinct candidate indices) or an
        ``(n_slots, n_actions)`` array of per-slot marginal probabilities.
        """
        n_slots = self._check_n_slots(n_slots)
        batch, q = self._eval_batch(n_contexts, seed)
        bias = self._position_bias[:n_slots]
        k = batch.items.shape[1]
        total = 0.0
        for i, (features, items) in enumerate(self._rows(batch)):
            out = np.asarray(slate_policy(features, items))
            if out.ndim == 2:
                if out.shape != (n_slots, k):
                    raise ValueError(
                        f"slate_policy marginals must have shape ({n_slots}, {k}), got {out.shape}"
                    )
                rows = check_action_dist(out, "slate_policy marginals (one row per slot)")
                if np.any(rows.sum(axis=0) > 1.0 + PMF_ATOL):
                    raise ValueError("slate_policy marginals put an item in slots > 1 times")
                total += float(bias @ (rows @ q[i]))
            else:
                s = check_slate(out, k, n_slots)
                if s.size != n_slots:
                    raise ValueError(f"slate_policy must return {n_slots} slots, got {s.size}")
                total += float(bias @ q[i][s])
        return total / len(batch)

    def oracle_slate_value(
        self, n_slots: int, n_contexts: int = DEFAULT_N_CONTEXTS, seed: int = 0
    ) -> float:
        """Best slate's expected total reward: the top-``n_slots`` items by true click
        probability, the most likely in the slot with the largest position bias."""
        n_slots = self._check_n_slots(n_slots)
        _, q = self._eval_batch(n_contexts, seed)
        top = -np.sort(-q, axis=1)[:, :n_slots]
        bias = np.sort(self._position_bias[:n_slots])[::-1]
        return float((top @ bias).mean())

    def oracle_slate(self, ctx: SimContext, items: Sequence[SimItem], n_slots: int) -> np.ndarray:
        """The optimal slate for one context (candidate indices, slot 0 first)."""
        n_slots = self._check_n_slots(n_slots)
        best = np.argsort(-self.click_probability(ctx, items), kind="stable")[:n_slots]
        slots_by_bias = np.argsort(-self._position_bias[:n_slots], kind="stable")
        slate = np.empty(n_slots, dtype=np.int64)
        slate[slots_by_bias] = best
        return slate

    def uniform_slate_value(
        self, n_slots: int, n_contexts: int = DEFAULT_N_CONTEXTS, seed: int = 0
    ) -> float:
        """Expected total reward of a uniform random slate (each slot's marginal is uniform)."""
        n_slots = self._check_n_slots(n_slots)
        _, q = self._eval_batch(n_contexts, seed)
        return float(self._position_bias[:n_slots].sum() * q.mean())

    # ---------------------------------------------------------------- logged data for OPE

    def logged_bandit(
        self, n: int, logging_policy: PolicyFn, target_policy: PolicyFn, seed: int = 0
    ) -> dict[str, Any]:
        """Logged bandit feedback in Open Bandit Pipeline vocabulary, with the truth attached.

        Contexts are ``sample_batch(n, default_rng(seed))`` (the same ones as
        ``policy_value(..., n_contexts=n, seed=seed)``); actions are drawn from the logging
        policy and rewards (clicks, never lost) from the true click probabilities.

        Returns ``n_rounds``, ``n_actions``, ``action`` (n,), ``reward`` (n,), ``pscore`` (n,),
        ``action_dist`` (n, n_actions) of the target, ``logging_action_dist`` (n, n_actions),
        ``expected_reward`` (n, n_actions) the true q, ``true_value`` (the target's exact mean of
        sum_a action_dist * q), ``logging_value``, ``item_index`` (n, n_actions) catalog indices,
        ``contexts`` (the n feature dicts), ``batch``, and ``logged``: the same events as an
        :class:`evaluation.types.LoggedBandit` (every candidate offered) for the estimators.
        """
        check_n("n", n)
        rng = np.random.default_rng(seed)
        batch = self.world.sample_batch(int(n), rng)
        q = self.expected_reward(batch)
        logging = self.policy_pmfs(logging_policy, batch)
        target = self.policy_pmfs(target_policy, batch)
        cdf = np.cumsum(logging, axis=1)
        u = rng.random(int(n)) * cdf[:, -1]
        # First index whose cdf exceeds u: a zero-probability action never wins (the cap guards
        # against u rounding up to cdf[-1]).
        last_positive = logging.shape[1] - 1 - np.argmax(logging[:, ::-1] > 0.0, axis=1)
        action = np.minimum((cdf <= u[:, None]).sum(axis=1), last_positive)
        rows = np.arange(int(n))
        reward = (rng.random(int(n)) < q[rows, action]).astype(np.float64)
        pscore = logging[rows, action]
        logged = LoggedBandit(
            reward=reward,
            action=action.astype(np.int64),
            pscore=pscore,
            candidates_mask=np.ones(q.shape, dtype=np.bool_),
        )
        return {
            "n_rounds": int(n),
            "n_actions": int(q.shape[1]),
            "action": action,
            "reward": reward,
            "pscore": pscore,
            "action_dist": target,
            "logging_action_dist": logging,
            "expected_reward": q,
            "true_value": float(np.mean(np.sum(target * q, axis=1))),
            "logging_value": float(np.mean(np.sum(logging * q, axis=1))),
            "item_index": batch.items,
            "contexts": [features for features, _ in self._rows(batch)],
            "batch": batch,
            "logged": logged,
        }
