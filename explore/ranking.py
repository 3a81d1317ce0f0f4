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
    rest = np.ones(p.size, dtype=bool)
    rest[picked] = False
    idx = np.flatnonzero(rest)
    order = np.lexsort((idx, -s[idx], -p[idx]))
    return picked + idx[order].tolist()
