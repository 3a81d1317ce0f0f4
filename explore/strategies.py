"""Exploration strategies: turn scores (higher is better) into a probability distribution."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from explore.validation import check_probability, check_real, check_scores

__all__ = [
    "EpsilonGreedy",
    "Explorer",
    "Greedy",
    "Softmax",
    "epsilon_greedy",
    "make_explorer",
    "softmax",
]


@runtime_checkable
class Explorer(Protocol):
    """Maps a 1-D array of scores to a pmf over the same actions."""

    def pmf(self, scores: np.ndarray) -> np.ndarray: ...


def epsilon_greedy(scores: np.ndarray, epsilon: float) -> np.ndarray:
    """Epsilon spread uniformly; 1 - epsilon split evenly among all tied maxima."""
    s = check_scores(scores)
    eps = check_probability(epsilon, "epsilon")
    n = s.size
    best = s == s.max()
    p = np.full(n, eps / n)
    p[best] += (1.0 - eps) / int(best.sum())
    return p


def softmax(scores: np.ndarray, lam: float) -> np.ndarray:
    """p proportional to exp(lam * score); lam = 0 gives the uniform distribution."""
    s = check_scores(scores)
    lam = check_real(lam, "lam", minimum=0.0)
    if lam == 0.0:
        return np.full(s.size, 1.0 / s.size)
    # Halving is exact, so the half difference equals (s - max) / 2 and cannot overflow; the
    # product may overflow only towards -inf, where exp gives the right answer, 0.
    with np.errstate(over="ignore", under="ignore"):
        z = (lam * (0.5 * s - 0.5 * s.max())) * 2.0
        e = np.exp(z)
    return e / e.sum()


@dataclass(frozen=True)
class EpsilonGreedy:
    """Epsilon-greedy exploration; see `epsilon_greedy`."""

    epsilon: float

    def __post_init__(self) -> None:
        check_probability(self.epsilon, "epsilon")

    def pmf(self, scores: np.ndarray) -> np.ndarray:
        return epsilon_greedy(scores, self.epsilon)


@dataclass(frozen=True)
class Greedy(EpsilonGreedy):
    """EpsilonGreedy with epsilon = 0: all mass on the (tied) best actions."""

    epsilon: float = field(default=0.0, init=False)


@dataclass(frozen=True)
class Softmax:
    """Softmax (Boltzmann) exploration with inverse temperature `lam` >= 0; see `softmax`."""

    lam: float

    def __post_init__(self) -> None:
        check_real(self.lam, "lam", minimum=0.0)

    def pmf(self, scores: np.ndarray) -> np.ndarray:
        return softmax(scores, self.lam)


_KINDS: dict[str, tuple[type[Any], tuple[str, ...]]] = {
    "epsilon_greedy": (EpsilonGreedy, ("epsilon",)),
    "greedy": (Greedy, ()),
    "softmax": (Softmax, ("lam",)),
}


def make_explorer(kind: str, **params: Any) -> Explorer:
    """Build an explorer by name: "epsilon_greedy" (epsilon), "softmax" (lam), "greedy" ()."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    cls, names = _KINDS[kind]
    missing = [n for n in names if n not in params]
    unknown = sorted(set(params) - set(names))
    if missing or unknown:
        raise ValueError(
            f"params for {kind!r} must be exactly {list(names)}, "
            f"got missing {missing} and unknown {unknown}"
        )
    explorer: Explorer = cls(**params)
    return explorer
