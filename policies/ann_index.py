"""Approximate nearest neighbours by inner product over item embeddings (faiss).

Below `exact_below` items the index is exact (`IndexFlatIP`); above, an IVF index
(`IndexIVFFlat`, inner product, ``nlist ~ 4 sqrt(n)`` lists; per query as many lists as scan
about `min_scan` items, at least `nprobe`). The kind and
its parameters were chosen by `benchmarks/retrieval.py` (1M clustered 64-d items on this 2-core
host: see the README). Every build measures recall@k against exact search on a sample of
queries and keeps it with the index.

faiss runs its own OpenMP threads: a serving process calls `one_math_thread()` once at start-up
(never at import time), so that concurrent requests do not oversubscribe the cores and a build
is deterministic (k-means and list assignment in one thread, seeded).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import faiss
import numpy as np

__all__ = ["AnnIndex", "IndexParams", "build_index", "exact_top_k", "one_math_thread"]


def one_math_thread() -> None:
    """One OpenMP thread for faiss in this process (call at start-up, not at import)."""
    faiss.omp_set_num_threads(1)


@dataclass(frozen=True)
class IndexParams:
    """`exact_below`: below this many items the index is exact; an IVF index searches at least
    `nprobe` lists and at least enough lists to scan `min_scan` items per query (small IVF
    indexes need a larger share of their lists for a good recall@200); `recall_sample`: queries
    used to measure recall@k at build; `seed`."""

    exact_below: int = 25_000
    nprobe: int = 24
    min_scan: int = 8192
    recall_sample: int = 200
    recall_k: int = 100
    seed: int = 1234


@dataclass(frozen=True)
class AnnIndex:
    index: faiss.Index
    kind: str  # "exact" | "ivf"
    n: int
    dim: int
    recall_at_k: float  # measured at build against exact search (1.0 for exact)
    recall_k: int
    build_s: float

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) of the top min(k, n) items per query, best first; positions of
        missing neighbours (an IVF probe with too few items) are dropped by the caller (-1)."""
        k = min(k, self.n)
        scores, positions = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        return scores, positions

    def size_bytes(self) -> int:
        return int(faiss.serialize_index(self.index).nbytes)

    def details(self) -> dict[str, float | int | str]:
        return {
            "kind": self.kind,
            "nprobe": int(getattr(self.index, "nprobe", 0)),
            "items": self.n,
            "dim": self.dim,
            "recall_at_k": self.recall_at_k,
            "recall_k": self.recall_k,
            "build_s": round(self.build_s, 3),
        }


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, np.float32))
    return flat.search(np.ascontiguousarray(queries, np.float32), min(k, len(vectors)))[1]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(
        len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)
    )
    return hits / max(1, truth.size)


def build_index(vectors: np.ndarray, params: IndexParams | None = None) -> AnnIndex:
    """An index over `vectors` (n x dim float32; row i is position i)."""
    params = params or IndexParams()
    start = time.perf_counter()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = x.shape
    if n == 0:
        raise ValueError("no items to index")
    if n < params.exact_below:
        index: faiss.Index = faiss.IndexFlatIP(dim)
        index.add(x)
        return AnnIndex(index, "exact", n, dim, 1.0, params.recall_k, time.perf_counter() - start)
    nlist = int(min(65_536, 2 ** round(math.log2(4 * math.sqrt(n)))))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = params.seed
    rng = np.random.default_rng(params.seed)
    train = x[rng.choice(n, size=min(n, nlist * 39), replace=False)]
    ivf.train(train)
    ivf.add(x)
    ivf.nprobe = min(nlist, max(params.nprobe, math.ceil(params.min_scan * nlist / n)))
    ivf.parallel_mode = 0
    # recall@k against exact search on a sample of queries: catalog vectors with noise
    sample = x[rng.choice(n, size=min(n, params.recall_sample), replace=False)]
    queries = sample + rng.normal(0, 0.1, sample.shape).astype(np.float32) * np.std(x)
    truth = exact_top_k(x, queries, params.recall_k)
    found = ivf.search(queries, min(params.recall_k, n))[1]
    recall = _recall(found, truth)
    return AnnIndex(ivf, "ivf", n, dim, recall, params.recall_k, time.perf_counter() - start)
