"""What a retriever in rollout costs: a request's decision path with a live retriever alone,
with a shadow retriever beside it, with a canary retriever splitting the units; and the time of
the moves (entering shadow embeds the catalog; promoting the canary reuses its embeddings,
promoting a candidate embeds the catalog).

A scratch SQLite store with `--items` items (8 categorical features), seeded (untrained)
two-tower retrievers of dimension `--dim`; `--requests` decisions per configuration through
`decision_service.decide_retrieved.decide_request` (retrieve `--k`, rank, sample), the three
configurations alternated `--repeats` times (the median of the repeats' medians is reported).
Prints one JSON line {"bench": "retriever_rollout", "items", "k", "p50_ms_live",
"p50_ms_shadow", "p50_ms_canary", "shadow_enter_s", "promote_canary_s",
"promote_candidate_s"}.

    .venv/bin/python -m benchmarks.retriever_rollout --items 20000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import torch

    from decision_service.decide_retrieved import decide_request
    from decision_service.rank_input import RankInput, RetrieveSpec
    from decision_service.retrieval import RetrievalRegistry
    from decision_service.runtime import LoopRuntime, explorer_for
    from log.catalog import ItemUpsert
    from log.loops import LoopConfig, put_loop
    from log.retrievers import register_retriever
    from log.schema import make_engine, migrate
    from log.verdicts import VerdictRecord, store_verdict
    from policies import VWPolicy
    from policies.ann_index import one_math_thread
    from policies.two_tower import TwoTower, TwoTowerConfig, save_two_tower

    one_math_thread()
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        migrate(engine)
        config = LoopConfig(epsilon=0.2, default_reward=0.0)
        put_loop(engine, "default", config)

        def register(seed: int) -> str:
            torch.manual_seed(seed)
            model = TwoTower(TwoTowerConfig(buckets=1 << 14, hidden=32, dim=args.dim))
            artifact = save_two_tower(model)
            return register_retriever(engine, "default", artifact, {}, datetime.now(UTC)).version

        def passed(version: str) -> None:
            store_verdict(
                engine, VerdictRecord("default", version, None, datetime.now(UTC), "pass", "bench")
            )

        registry = RetrievalRegistry(engine)
        live = register(0)
        registry.promote("default", live, "bench", reason="bench", override=True)
        start = time.perf_counter()
        for first in range(0, args.items, 1000):
            registry.upsert(
                "default",
                [
                    ItemUpsert(f"i{j}", {f"f{c}": f"v{(j * (c + 3)) % 97}" for c in range(8)})
                    for j in range(first, min(args.items, first + 1000))
                ],
            )
        log(f"{args.items} items loaded in {time.perf_counter() - start:.1f}s")
        shadow = register(1)
        start = time.perf_counter()
        registry.move("default", shadow, "shadow", "bench")
        shadow_enter_s = time.perf_counter() - start
        canary = register(2)
        passed(canary)
        registry.move("default", canary, "canary", "bench", canary_percent=50.0)
        held = registry.loops["default"]
        runtime = LoopRuntime(
            "default", config, datetime.now(UTC), explorer_for(config), VWPolicy(config.vw_args)
        )
        configurations: dict[str, Any] = {
            "live": replace(held, shadow=None, canary=None, canary_percent=None),
            "shadow": replace(held, canary=None, canary_percent=None),
            "canary": replace(held, shadow=None),
        }
        medians: dict[str, list[float]] = {name: [] for name in configurations}
        now = datetime.now(UTC)
        for repeat in range(args.repeats):
            for name, indexes in configurations.items():
                times = []
                for i in range(args.requests):
                    req = RankInput(
                        None,
                        {"user": f"u{i % 500}", "segment": f"s{i % 7}"},
                        [],
                        [],
                        None,
                        False,
                        None,
                        RetrieveSpec(k=args.k),
                    )
                    t0 = time.perf_counter()
                    decide_request(req, {"i": i}, runtime, now, f"e{repeat}-{i}", indexes)
                    times.append(time.perf_counter() - t0)
                medians[name].append(statistics.median(times) * 1000)
        passed(shadow)  # shadow and canary are both taken: promote the canary, then a candidate
        start = time.perf_counter()
        registry.promote("default", canary, "bench")
        promote_canary_s = time.perf_counter() - start
        candidate = register(3)
        passed(candidate)
        start = time.perf_counter()
        registry.promote("default", candidate, "bench")
        promote_candidate_s = time.perf_counter() - start
        engine.dispose()
    print(
        orjson.dumps(
            {
                "bench": "retriever_rollout",
                "items": args.items,
                "k": args.k,
                **{
                    f"p50_ms_{name}": round(statistics.median(values), 3)
                    for name, values in medians.items()
                },
                "shadow_enter_s": round(shadow_enter_s, 2),
                "promote_canary_s": round(promote_canary_s, 2),
                "promote_candidate_s": round(promote_candidate_s, 2),
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
