"""Value types of the simulator: its configuration, contexts, items, rewards and batches.

Pure data, validated in ``__post_init__``, and the simulator's input checks; the behaviour lives
in :mod:`evaluation.simulator`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FeatureValue = str | float
Features = Mapping[str, FeatureValue]

DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
HOUR_BUCKETS: tuple[str, ...] = ("night", "morning", "afternoon", "evening")


def _finite(name: str, value: float, *, low: float | None = None) -> None:
    if not math.isfinite(value) or (low is not None and value < low):
        bound = "" if low is None else f" and >= {low}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")


def check_n(name: str, n: int) -> None:
    """``n`` must be a positive integer (numpy integers accepted, bools refused)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")


def as_pmf_row(pmf: Any, k: int, who: str) -> np.ndarray:
    """``pmf`` as a float array of shape (k,); the values are checked by the shared validator
    (:func:`evaluation.validation.check_action_dist`) once all rows are in."""
    p = np.asarray(pmf, dtype=np.float64)
    if p.shape != (k,):
        raise ValueError(f"{who} must return a pmf of shape ({k},), got shape {p.shape}")
    return p


def check_slate(slate: Any, k: int, max_slots: int) -> np.ndarray:
    """A slate: 1 to ``max_slots`` distinct integer indices into ``k`` candidates."""
    s = np.asarray(slate)
    if s.ndim != 1 or s.size == 0 or not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"slate must be a non-empty 1-d sequence of integers, got {slate!r}")
    if s.size > max_slots:
        raise ValueError(f"slate has {s.size} slots, at most {max_slots} are configured/possible")
    if s.min() < 0 or s.max() >= k or np.unique(s).size != s.size:
        raise ValueError(f"slate must hold distinct candidate indices in [0, {k}), got {slate!r}")
    return s.astype(np.int64)


@dataclass(frozen=True)
class SimulatorConfig:
    """Parameters of a simulated environment. Everything random derives from ``seed``.

    The world: ``n_users`` users, each in one of ``n_segments`` taste segments, with a latent
    preference vector of dimension ``n_features``: its segment's taste (a unit vector) plus a
    personal deviation, Normal with per-coordinate sd ``user_noise``; ``n_items`` items, each
    with a category, a creator and a latent vector (its category's unit centre + noise). The
    click probability of a user for an item is::

        sigmoid(base_logit + affinity_scale * <user latent, item latent>
                + creator effect + device x category + hour x category + item noise)

    Observable features: context ``segment``, ``device``, ``hour_bucket`` and ``u0..u{d-1}``
    (the user latent plus per-coordinate noise of sd ``feature_noise``, fixed per user); item
    ``category``, ``creator`` and ``e0..e{d-1}`` (the item latent). The click logit is therefore,
    up to the hidden noise terms, a sum of pairwise products of observable context and item
    features (segment x e*, u* x e*, device x category, hour_bucket x category, creator): a
    linear model with context x action interactions can learn it.

    Ground truth (``policy_value`` and friends) is the expected click (value 1) rate; it ignores
    ``p_lost``, which only affects what the service observes.

    Rewards: a click is worth 1, no click 0. Each outcome is reported ``delay_s`` seconds after
    the decision, ``delay_s ~ Exponential(mean=reward_delay_mean_s)``; independently of its value,
    with probability ``p_lost`` it is never reported (the joiner's default reward applies).

    Slates: the click probability of the item in slot ``k`` is ``position_bias[k]`` times its
    single-decision click probability (position-based model; slots click independently).
    """

    n_items: int = 200
    n_actions_per_request: int = 10
    n_segments: int = 4
    n_features: int = 6
    n_categories: int = 8
    n_creators: int = 30
    n_users: int = 5000
    base_logit: float = -3.0
    affinity_scale: float = 3.0
    user_noise: float = 0.4
    feature_noise: float = 0.2
    context_effect: float = 0.4
    creator_effect: float = 0.3
    item_noise: float = 0.15
    reward_delay_mean_s: float = 30.0
    p_lost: float = 0.05
    position_bias: tuple[float, ...] = (1.0, 0.6, 0.4, 0.3, 0.2)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "n_items",
            "n_actions_per_request",
            "n_segments",
            "n_features",
            "n_categories",
            "n_creators",
            "n_users",
        ):
            check_n(name, getattr(self, name))
        _finite("base_logit", self.base_logit)
        for name in (
            "affinity_scale",
            "user_noise",
            "feature_noise",
            "context_effect",
            "creator_effect",
            "item_noise",
        ):
            _finite(name, getattr(self, name), low=0.0)
        if not (math.isfinite(self.reward_delay_mean_s) and self.reward_delay_mean_s > 0):
            raise ValueError(
                f"reward_delay_mean_s must be a finite number > 0, got {self.reward_delay_mean_s!r}"
            )
        if not (0.0 <= self.p_lost < 1.0):
            raise ValueError(f"p_lost must be in [0, 1), got {self.p_lost!r}")
        if len(self.position_bias) == 0:
            raise ValueError("position_bias must have at least one slot")
        if any(not (0.0 <= float(b) <= 1.0) for b in self.position_bias):
            raise ValueError(f"position_bias values must be in [0, 1], got {self.position_bias!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def n_actions(self) -> int:
        """Number of candidates per request: ``n_actions_per_request`` capped by ``n_items``."""
        return min(self.n_actions_per_request, self.n_items)


@dataclass(frozen=True)
class SimItem:
    """An item of the catalog: ``id`` and observable ``features``; ``index`` in the catalog."""

    id: str
    features: Features
    index: int

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("id must be a non-empty string")


@dataclass(frozen=True)
class SimContext:
    """A decision context: what the service sees (``features``, ``user_id``) plus hidden truth.

    ``latent`` (the user's true preference vector) and the indices are not part of ``features``;
    only the simulator's ground truth uses them.
    """

    features: Features
    user_id: str
    user_index: int
    device_index: int
    hour_index: int
    latent: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class SimReward:
    """The outcome of one decision (or one slate slot).

    ``value`` is 1.0 for a click, else 0.0. The outcome is reported ``delay_s`` seconds after the
    decision unless ``lost``, in which case it is never reported.
    """

    value: float
    delay_s: float
    lost: bool

    def __post_init__(self) -> None:
        if self.value not in (0.0, 1.0):
            raise ValueError(f"value must be 0.0 or 1.0, got {self.value!r}")
        if not (math.isfinite(self.delay_s) and self.delay_s >= 0):
            raise ValueError(f"delay_s must be a finite number >= 0, got {self.delay_s!r}")

    def observed(self, default: float = 0.0) -> float:
        """The reward the service ends up with: ``value``, or ``default`` when lost."""
        return default if self.lost else self.value


@dataclass(frozen=True)
class SimBatch:
    """``n`` contexts and their candidate sets as arrays (the vectorised form of the simulator).

    ``user``, ``device``, ``hour``: (n,) indices; ``items``: (n, n_actions) catalog indices.
    """

    user: np.ndarray
    device: np.ndarray
    hour: np.ndarray
    items: np.ndarray

    def __post_init__(self) -> None:
        n = self.user.shape[0]
        if self.device.shape != (n,) or self.hour.shape != (n,):
            raise ValueError("user, device and hour must be 1-d arrays of the same length")
        if self.items.ndim != 2 or self.items.shape[0] != n:
            raise ValueError("items must be a 2-d array with one row per context")

    def __len__(self) -> int:
        return int(self.user.shape[0])


PolicyFn = Callable[[Features, Sequence[SimItem]], np.ndarray]
"""A policy: ``(context features, candidate items) -> pmf`` over the candidates."""

SlatePolicyFn = Callable[[Features, Sequence[SimItem]], np.ndarray]
"""A slate policy: ``(context features, candidate items) ->`` either an integer array of
``n_slots`` distinct candidate indices (a deterministic slate), or an ``(n_slots, n_items)`` array
whose row ``k`` is the probability of each candidate being in slot ``k`` (marginals)."""


def uniform_policy(features: Features, items: Sequence[SimItem]) -> np.ndarray:
    """The uniform random policy (a :data:`PolicyFn`)."""
    del features
    return np.full(len(items), 1.0 / len(items))
