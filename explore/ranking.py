"""Order of the actions in a response ranking."""

from __future__ import annotations

import numpy as np

from explore.validation import check_int, check_pmf, check_scores

__all__ = ["rank_order"]


def rank_order(pmf: np.ndarray, scores: np.ndarray, chosen: list[int]) -> list[int]:
    """Chosen indices first (slot order), then by descending probability, descending score,
    ascending index; zero-probability actions therefore come last."""
    p = check_pmf(pmf)
    s = check_scores(scores)
    if s.shape != p.shape:
        raise ValueError(f"scores must have the shape of pmf {p.shape}, got {s.shape}")
    picked = [check_int(c, f"chosen[{k}]", minimum=0) for k, c in enumerate(chosen)]
    for k, c in enumerate(picked):
        if c >= p.size:
            raise ValueError(f"chosen[{k}] must be an index < {p.size}, got {c}")
    if len(set(picked)) != len(picked):
        raise ValueError(f"chosen must hold distinct indices, got {picked}")
    taken = set(picked)
    # A plain sort on Python floats: faster than numpy's lexsort at the sizes a response has.
    probs, scores = p.tolist(), s.tolist()
    rest = sorted(
        (i for i in range(len(probs)) if i not in taken),
        key=lambda i: (-probs[i], -scores[i], i),
    )
    return picked + rest
