"""A catalog world with known click probabilities, for training and testing retrievers.

Users belong to one of `n_segments` segments (context: ``segment``, a ``device``, an ``age``
number); items to one of `n_categories` categories, by one of `n_creators` creators, with a
``quality`` number and a creation time. The true click probability is

    p(user, item) = sigmoid(scale * <P[segment], Q[category]> + quality_weight * quality + bias)

with P and Q random low-rank factors: a two-tower model over these features can represent it
exactly, so its validation AUC can approach `ceiling_auc` (the AUC of the true probabilities on
the same examples), the best any model can do. Logged events show one uniformly drawn item per
request (a uniform logging policy). numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CatalogEvents", "CatalogSimulator", "roc_auc"]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties get their average rank)."""
    from scipy.stats import rankdata

    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class CatalogEvents:
    """Logged events: each a context, the item shown, whether it was clicked, when, and the
    true click probability (for the ceiling AUC)."""

    contexts: list[dict[str, Any]]
    item_index: np.ndarray
    clicked: np.ndarray
    times: np.ndarray  # seconds from the start
    true_p: np.ndarray


class CatalogSimulator:
    def __init__(
        self,
        n_items: int = 2_000,
        n_segments: int = 40,
        n_categories: int = 30,
        n_creators: int = 200,
        rank: int = 4,
        scale: float = 2.5,
        quality_weight: float = 0.8,
        bias: float = -1.5,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.n_items = n_items
        self.P = rng.normal(size=(n_segments, rank)) / np.sqrt(rank)
        self.Q = rng.normal(size=(n_categories, rank))
        self.scale, self.quality_weight, self.bias = scale, quality_weight, bias
        self.n_segments = n_segments
        self.category = rng.integers(n_categories, size=n_items)
        self.creator = rng.integers(n_creators, size=n_items)
        self.quality = rng.normal(size=n_items)
        self.age_s = rng.exponential(7 * 86_400.0, size=n_items)

    def item_id(self, i: int) -> str:
        return f"item-{i:07d}"

    def item_features(self, i: int) -> dict[str, Any]:
        return {
            "category": f"c{int(self.category[i])}",
            "creator": f"u{int(self.creator[i])}",
            "quality": round(float(self.quality[i]), 4),
        }

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        return [(self.item_id(i), self.item_features(i)) for i in range(self.n_items)]

    def context(self, segment: int, rng: np.random.Generator) -> dict[str, Any]:
        return {
            "segment": f"s{segment}",
            "device": str(rng.choice(["ios", "android", "web"])),
            "age": int(rng.integers(18, 70)),
        }

    def probability(self, segments: np.ndarray, items: np.ndarray) -> np.ndarray:
        affinity = np.einsum("ij,ij->i", self.P[segments], self.Q[self.category[items]])
        logit = self.scale * affinity + self.quality_weight * self.quality[items] + self.bias
        return 1.0 / (1.0 + np.exp(-logit))

    def events(self, n: int, seed: int = 1) -> CatalogEvents:
        """`n` logged events, one second apart, each showing a uniformly drawn item."""
        rng = np.random.default_rng(seed)
        segments = rng.integers(self.n_segments, size=n)
        items = rng.integers(self.n_items, size=n)
        p = self.probability(segments, items)
        clicked = rng.random(n) < p
        contexts = [self.context(int(s), rng) for s in segments]
        return CatalogEvents(contexts, items, clicked, np.arange(n, dtype=float), p)

    def ceiling_auc(self, events: CatalogEvents, which: np.ndarray | None = None) -> float:
        """The AUC of the true probabilities on these events: no model can do better."""
        sel = slice(None) if which is None else which
        return roc_auc(events.true_p[sel], events.clicked[sel])
