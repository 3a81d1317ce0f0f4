"""Retrieval over a large catalog: ANN top-k, then rank, in-process; and over HTTP.

In-process (`--mode inprocess`, the default): a catalog of `--items` clustered synthetic
embeddings (`--dim`, 64 by default: 1,000 Gaussian clusters), the serving index
(`policies.ann_index.build_index`: exact below its threshold, IVF above) built once; then per
query (a user vector drawn near a random cluster) the top `--k` items by inner product, and the
first `--rank` of them ranked like a rank request (VW scores, exploration pmf, keyed sample),
in one math thread. recall@k is measured against exact search (IndexFlatIP) on `--recall-queries`
of the queries. Prints one JSON line:
{"bench": "retrieval", "items", "k", "p50_ms", "p99_ms", "recall_at_k", "build_s", "index_mb"}.

HTTP (`--mode http`): a scratch PostgreSQL database, a catalog of `--http-items` items loaded
through the catalog store with a seeded two-tower retriever promoted (its item tower embeds
them), the service under uvicorn with `--workers` workers (each builds its index at start), and
the closed-loop load generator sending `retrieve: {k: --rank}` requests. Prints one JSON line
{"bench": "retrieval_http", ...} with req/s and p50/p99.

Training (`--mode train`): two-tower training throughput (examples/s) on the catalog
simulator, on `--device` (cpu or cuda).

    .venv/bin/python -m benchmarks.retrieval --items 1000000
    .venv/bin/python -m benchmarks.retrieval --mode http --http-items 50000
    .venv/bin/python -m benchmarks.retrieval --mode train --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def clustered(
    n: int, dim: int, clusters: int, seed: int, spread: float
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    labels = rng.integers(clusters, size=n)
    x = centres[labels] + spread * rng.normal(size=(n, dim)).astype(np.float32)
    return x.astype(np.float32), centres


def inprocess(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from decision_service.decide import decide
    from decision_service.rank_input import RankInput, RetrieveSpec
    from decision_service.retrieval import Retrieved
    from decision_service.runtime import LoopRuntime, explorer_for
    from explore import Action
    from log.loops import LoopConfig
    from policies import VWPolicy
    from policies.ann_index import IndexParams, build_index, exact_top_k, one_math_thread

    x, centres = clustered(args.items, args.dim, args.clusters, args.seed, args.spread)
    log(f"catalog: {args.items} x {args.dim}")
    faiss.omp_set_num_threads(args.build_threads)
    params = IndexParams(
        exact_below=args.exact_below, nprobe=args.nprobe, recall_k=args.k, recall_sample=200
    )
    index = build_index(x, params)
    log(f"built {index.kind} in {index.build_s:.1f}s; recall@{args.k} at build {index.recall_at_k}")
    one_math_thread()
    rng = np.random.default_rng(args.seed + 1)
    queries = (
        centres[rng.integers(len(centres), size=args.queries)]
        + args.spread * rng.normal(size=(args.queries, args.dim))
    ).astype(np.float32)
    categories = ("news", "sports", "music", "movies")
    features = [{"category": categories[i % 4], "popularity": (i % 97) / 97.0} for i in range(4096)]
    config = LoopConfig(epsilon=0.1)
    runtime = LoopRuntime(
        "default", config, datetime.now(UTC), explorer_for(config), VWPolicy(config.vw_args)
    )
    now = datetime.now(UTC)
    created = np.full(args.rank, now.timestamp())
    req = RankInput(None, {"user": "u"}, [], [], None, False, None, RetrieveSpec(args.rank))
    times = []
    found_all = []
    for q in range(args.queries):
        start = time.perf_counter()
        _, positions = index.search(queries[q : q + 1], args.k)
        top = positions[0][: args.rank]
        actions = [Action.validated(f"item-{p}", features[p % 4096]) for p in top.tolist()]
        retrieved = Retrieved(actions, created, "bench", "bench")
        decide(req, {"q": q}, runtime, now, f"e{q}", retrieved)
        times.append((time.perf_counter() - start) * 1000)
        found_all.append(positions[0])
    m = min(args.recall_queries, args.queries)
    truth = exact_top_k(x, queries[:m], args.k)
    recall = float(
        np.mean(
            [
                len(set(f.tolist()) & set(t.tolist())) / args.k
                for f, t in zip(found_all[:m], truth, strict=True)
            ]
        )
    )
    times.sort()
    return {
        "bench": "retrieval",
        "items": args.items,
        "k": args.k,
        "rank": args.rank,
        "kind": index.kind,
        "nprobe": index.details()["nprobe"] if index.kind == "ivf" else None,
        "p50_ms": round(statistics.median(times), 3),
        "p99_ms": round(times[int(0.99 * (len(times) - 1))], 3),
        "recall_at_k": round(recall, 4),
        "recall_at_k_build": round(index.recall_at_k, 4),
        "build_s": round(index.build_s, 2),
        "index_mb": round(index.size_bytes() / 2**20, 1),
        "queries": args.queries,
        "spread": args.spread,
    }


def train(args: argparse.Namespace) -> dict[str, Any]:
    from evaluation.simulator_catalog import CatalogSimulator
    from learn.retriever_train import RetrieverTrainConfig, make_examples, train_two_tower
    from policies.two_tower import TwoTowerConfig

    sim = CatalogSimulator(n_items=args.sim_items, seed=0)
    events = sim.events(args.events, seed=1)
    items = sim.items()
    rows = [
        (events.contexts[i], items[j][0], items[j][1], bool(events.clicked[i]), events.times[i])
        for i, j in enumerate(events.item_index.tolist())
    ]
    tower = TwoTowerConfig(buckets=1 << 16, hidden=64, dim=32)
    ex = make_examples(rows, tower.buckets)
    config = RetrieverTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        tower=tower,
        patience=args.epochs,
        progress=False,
    )
    result = train_two_tower(ex, config)
    m = result.metrics
    validation = np.argsort(events.times, kind="stable")[m["train_examples"] :]
    return {
        "bench": "retriever_train",
        "device": args.device,
        "examples": len(ex),
        "batch_size": args.batch_size,
        "negatives_per_example": config.negatives,
        "examples_per_s": round(m["examples_per_s"]),
        "val_auc": round(m["val_auc"], 4),
        "ceiling_auc": round(sim.ceiling_auc(events, validation), 4),
        "recall_at_50": round(m["recall_at_50"], 4),
        "epochs_run": m["epochs_run"],
    }


def http(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from benchmarks.loadgen import BENCH_KEY
    from benchmarks.rank import premigrate, scratch_database, start_server, stop_server
    from decision_service.retrieval import RetrievalRegistry
    from log.catalog import ItemUpsert
    from log.retrievers import register_retriever
    from log.schema import make_engine
    from policies.two_tower import TwoTower, TwoTowerConfig, save_two_tower

    categories = ("news", "sports", "music", "movies", "games", "food", "travel", "tech")
    with scratch_database(args.database_url) as url, tempfile.TemporaryDirectory() as spool:
        premigrate(url)
        engine = make_engine(url)
        torch.manual_seed(0)
        model = TwoTower(TwoTowerConfig(buckets=1 << 14, hidden=32, dim=args.dim))
        record = register_retriever(engine, "default", save_two_tower(model), {}, datetime.now(UTC))
        registry = RetrievalRegistry(engine)
        start = time.perf_counter()
        for first in range(0, args.http_items, 1000):
            registry.upsert(
                "default",
                [
                    ItemUpsert(
                        f"item-{i:07d}",
                        {
                            "category": categories[i % 8],
                            "creator": f"c{i % 997}",
                            "popularity": (i % 101) / 101.0,
                        },
                    )
                    for i in range(first, min(args.http_items, first + 1000))
                ],
            )
        registry.promote(
            "default", record.version, "bench", reason="benchmark retriever", override=True
        )
        took = time.perf_counter() - start
        log(f"catalog of {args.http_items} loaded and embedded in {took:.1f}s")
        engine.dispose()
        env = {
            "DS_DATABASE_URL": url,
            "DS_DURABILITY": args.durability,
            "DS_SPOOL_DIR": spool,
            "DS_ADMIN_KEY": BENCH_KEY,
        }
        server = start_server("decision_service:create_app", env, args.workers, [])
        try:
            # each worker builds its index on its first retrieve request: warm them up
            import urllib.request

            body = orjson.dumps({"context": {"user": "w"}, "retrieve": {"k": args.rank}})
            for _ in range(4 * args.workers):
                request = urllib.request.Request(
                    f"http://127.0.0.1:{server.port}/v1/loops/default/rank",
                    data=body,
                    headers={
                        "Authorization": f"Bearer {BENCH_KEY}",
                        "Content-Type": "application/json",
                    },
                )
                urllib.request.urlopen(request, timeout=300).read()
            ns = argparse.Namespace(
                connections=args.connections,
                duration=args.duration,
                warmup=args.warmup,
                database_url=args.database_url,
            )
            result = drive_retrieve(server, ns, args.rank)
        finally:
            stop_server(server)
    return {
        "bench": "retrieval_http",
        "items": args.http_items,
        "k": args.rank,
        "workers": args.workers,
        "durability": args.durability,
        "rps": round(result["rps"], 1),
        "p50_ms": result.get("p50_ms"),
        "p99_ms": result.get("p99_ms"),
        "errors": result.get("errors"),
    }


def drive_retrieve(server: Any, ns: argparse.Namespace, k: int) -> dict[str, Any]:
    import subprocess

    cmd = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--port",
        str(server.port),
        "--retrieve",
        str(k),
        "--actions",
        "1",
        "--connections",
        str(ns.connections),
        "--duration",
        str(ns.duration),
        "--warmup",
        str(ns.warmup),
    ]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout
    result: dict[str, Any] = orjson.loads(out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mode", choices=("inprocess", "http", "train"), default="inprocess")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument(
        "--spread", type=float, default=0.7, help="noise around the cluster centres (unit: 1)"
    )
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--rank", type=int, default=100)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--exact-below", type=int, default=25_000)
    parser.add_argument("--nprobe", type=int, default=24)
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--http-items", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--durability", choices=("durable", "fast"), default="durable")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--sim-items", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8192)
    args = parser.parse_args(argv)
    run = {"inprocess": inprocess, "http": http, "train": train}[args.mode]
    sys.stdout.write(orjson.dumps(run(args)).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
