"""The ANN index: exact below its threshold, IVF above with its recall@k measured at build;
builds are deterministic in one math thread."""

from __future__ import annotations

import numpy as np

from policies.ann_index import IndexParams, build_index, exact_top_k, one_math_thread


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, dim))
    x = centres[rng.integers(64, size=n)] + 0.3 * rng.normal(size=(n, dim))
    return x.astype(np.float32)


def test_exact_below_the_threshold() -> None:
    x = _clustered(2_000, 16)
    index = build_index(x, IndexParams(exact_below=5_000))
    assert index.kind == "exact" and index.recall_at_k == 1.0
    queries = _clustered(20, 16, seed=1)
    _, found = index.search(queries, 50)
    assert np.array_equal(found, exact_top_k(x, queries, 50))


def test_ivf_above_the_threshold_measures_its_recall() -> None:
    one_math_thread()
    x = _clustered(30_000, 16)
    params = IndexParams(exact_below=10_000, recall_sample=100, recall_k=50)
    index = build_index(x, params)
    assert index.kind == "ivf" and index.n == 30_000
    assert index.recall_at_k >= 0.9, index.details()
    # the stored figure is what an independent sample of queries sees (within noise)
    rng = np.random.default_rng(5)
    queries = x[rng.choice(len(x), 100, replace=False)] + 0.1 * rng.normal(size=(100, 16)).astype(
        np.float32
    ) * float(np.std(x))
    truth = exact_top_k(x, queries, 50)
    _, found = index.search(queries, 50)
    recall = np.mean([len(set(f) & set(t)) / 50 for f, t in zip(found, truth, strict=True)])
    assert abs(recall - index.recall_at_k) < 0.05
    # deterministic: the same vectors give the same index (and the same answers)
    again = build_index(x, params)
    assert np.array_equal(again.search(queries, 50)[1], found)
