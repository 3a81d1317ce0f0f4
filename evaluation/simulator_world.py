"""The hidden world of the simulator: users, items and the true click model, as numpy arrays.

Built once from ``SimulatorConfig.seed``; everything here is ground truth. Observable features
are derived from it in :mod:`evaluation.simulator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluation.simulator_types import DEVICES, HOUR_BUCKETS, SimBatch, SimulatorConfig

_HOME_DEVICE_SHARE = 0.8
"""Probability that a context's device is the user's usual device."""

_ITEM_SPREAD = 0.25
"""Per-coordinate sd of an item's latent vector around its category's centre."""

_DECIMALS = 4
"""Observable numeric features are rounded to this many decimals (compact JSON)."""


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass(frozen=True)
class World:
    """Ground-truth arrays. Users: ``segment`` (U,), ``latent`` (U, d), ``observed`` (U, d),
    ``home_device`` (U,). Items: ``category`` (I,), ``creator`` (I,), ``vector`` (I, d),
    ``offset`` (I,) (base logit + creator effect + item noise). Context effects:
    ``device_category`` (n_devices, C), ``hour_category`` (n_hours, C)."""

    config: SimulatorConfig
    segment: np.ndarray
    latent: np.ndarray
    observed: np.ndarray
    home_device: np.ndarray
    category: np.ndarray
    creator: np.ndarray
    vector: np.ndarray
    offset: np.ndarray
    device_category: np.ndarray
    hour_category: np.ndarray

    @classmethod
    def build(cls, config: SimulatorConfig) -> World:
        """Draw the world from ``config.seed`` (the same seed gives the same world)."""
        rng = np.random.default_rng(config.seed)
        d, n_users, n_items = config.n_features, config.n_users, config.n_items
        seg_centres = _unit_rows(rng.standard_normal((config.n_segments, d)))
        segment = rng.integers(0, config.n_segments, n_users)
        latent = seg_centres[segment] + config.user_noise * rng.standard_normal((n_users, d))
        observed = np.round(
            latent + config.feature_noise * rng.standard_normal((n_users, d)), _DECIMALS
        )
        home_device = rng.integers(0, len(DEVICES), n_users)

        cat_centres = _unit_rows(rng.standard_normal((config.n_categories, d)))
        category = rng.integers(0, config.n_categories, n_items)
        vector = np.round(
            cat_centres[category] + _ITEM_SPREAD * rng.standard_normal((n_items, d)), _DECIMALS
        )
        creator = rng.integers(0, config.n_creators, n_items)
        creator_effect = config.creator_effect * rng.standard_normal(config.n_creators)
        offset = (
            config.base_logit
            + creator_effect[creator]
            + config.item_noise * rng.standard_normal(n_items)
        )
        device_category = config.context_effect * rng.standard_normal(
            (len(DEVICES), config.n_categories)
        )
        hour_category = config.context_effect * rng.standard_normal(
            (len(HOUR_BUCKETS), config.n_categories)
        )
        return cls(
            config=config,
            segment=segment,
            latent=latent,
            observed=observed,
            home_device=home_device,
            category=category,
            creator=creator,
            vector=vector,
            offset=offset,
            device_category=device_category,
            hour_category=hour_category,
        )

    def sample_contexts(
        self, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` contexts as (user, device, hour) index arrays."""
        user = rng.integers(0, self.config.n_users, n)
        at_home = rng.random(n) < _HOME_DEVICE_SHARE
        other = rng.integers(0, len(DEVICES), n)
        device = np.where(at_home, self.home_device[user], other)
        hour = rng.integers(0, len(HOUR_BUCKETS), n)
        return user, device, hour

    def sample_candidates(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, n_actions) catalog indices: per row a uniform random subset in random order.

        Floyd's algorithm, vectorised over rows, then a per-row shuffle.
        """
        n_items, k = self.config.n_items, self.config.n_actions
        chosen = np.empty((n, k), dtype=np.int64)
        for t, j in enumerate(range(n_items - k, n_items)):
            r = rng.integers(0, j + 1, n)
            taken = (chosen[:, :t] == r[:, None]).any(axis=1)
            chosen[:, t] = np.where(taken, j, r)
        order = np.argsort(rng.random((n, k)), axis=1)
        return np.take_along_axis(chosen, order, axis=1)

    def sample_batch(self, n: int, rng: np.random.Generator) -> SimBatch:
        user, device, hour = self.sample_contexts(n, rng)
        return SimBatch(user=user, device=device, hour=hour, items=self.sample_candidates(n, rng))

    def click_probabilities(
        self, user: np.ndarray, device: np.ndarray, hour: np.ndarray, items: np.ndarray
    ) -> np.ndarray:
        """True click probabilities, shape (n, k), for (n,) contexts and (n, k) catalog items."""
        cat = self.category[items]
        affinity = np.einsum("nd,nkd->nk", self.latent[user], self.vector[items])
        logit = (
            self.offset[items]
            + self.config.affinity_scale * affinity
            + self.device_category[device[:, None], cat]
            + self.hour_category[hour[:, None], cat]
        )
        return _sigmoid(logit)

    def batch_click_probabilities(self, batch: SimBatch) -> np.ndarray:
        return self.click_probabilities(batch.user, batch.device, batch.hour, batch.items)
