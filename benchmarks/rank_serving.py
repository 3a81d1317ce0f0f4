"""Serving configurations of the rank benchmark: plain, a canary split, a shadow candidate.

Every configuration serves a registered live version (a VW model of the default loop's
arguments, trained briefly on requests like the load generator's), so the three are measured on
equal terms: `plain` serves it alone; `canary` adds a second version serving `CANARY_PERCENT` %
of the requests (the unit is the event id: the load generator sends no user id); `shadow` adds a
second version that scores every request beside live (its pmf logged, never served: two VW
predictions per request). The versions are put into their states directly in the store (the
rollout state machine's transitions are not what is measured).

After a run, `serving_counts` reads how the logged decisions split by arm and how many carry a
shadow pmf: the canary's share must be near its percent, and with a shadow every decision
must carry one.

Run as a script, it measures the decision path alone, in-process (no HTTP, no database): the
cost of `decide` (validation included) per request in each configuration, the configurations
alternated in every repeat, medians reported; one JSON line per action count. This is what the
shadow adds to a worker's CPU per request, free of the HTTP stack and of other load's noise:

    .venv/bin/python -m benchmarks.rank_serving --actions 10,50
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from typing import Any

import psycopg

from benchmarks.loadgen import rank_body

__all__ = ["CANARY_PERCENT", "SERVINGS", "install_versions", "serving_counts"]

SERVINGS = ("plain", "canary", "shadow")
CANARY_PERCENT = 10.0
LOOP = "default"


def _trained(actions: int, seed: int, vw_args: str) -> bytes:
    from explore import Action
    from policies import VWPolicy

    policy = VWPolicy(vw_args)
    rng = random.Random(seed)
    try:
        for i in range(300):
            body = rank_body(actions, rng, f"train-{i}")
            acts = [Action(a["id"], a["features"]) for a in body["actions"]]
            chosen = rng.randrange(actions)
            reward = float(rng.random() < 0.2 + 0.6 * (acts[chosen].features["fresh"] is True))
            policy.learn(
                body["context"], acts, chosen=chosen, reward=reward, probability=1 / actions
            )
        return policy.save()
    finally:
        policy.close()


def install_versions(url: str, serving: str, actions: int) -> dict[str, str]:
    """Register the configuration's versions in the migrated database at `url`."""
    if serving not in SERVINGS:
        raise ValueError(f"serving must be one of {SERVINGS}, got {serving!r}")
    from deploy.registry import promote, register
    from log.loops import LoopConfig
    from log.schema import make_engine

    vw_args = LoopConfig().vw_args
    engine = make_engine(url, pool_size=1)
    try:
        live = register(
            engine, loop=LOOP, kind="batch", vw_args=vw_args, artifact=_trained(actions, 1, vw_args)
        ).version
        promote(engine, live)
        out = {"live": live}
        if serving != "plain":
            other = register(
                engine,
                loop=LOOP,
                kind="batch",
                vw_args=vw_args,
                artifact=_trained(actions, 2, vw_args),
            ).version
            with psycopg.connect(url) as conn:
                conn.execute(
                    "UPDATE models SET status = %s, canary_percent = %s WHERE version = %s",
                    (serving, CANARY_PERCENT if serving == "canary" else None, other),
                )
            out[serving] = other
        return out
    finally:
        engine.dispose()


def serving_counts(url: str) -> dict[str, Any]:
    """Logged decisions per serving arm, and how many carry a shadow pmf."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT policy_arm, count(*), count(shadow) FROM decisions WHERE loop = %s "
            "GROUP BY policy_arm",
            (LOOP,),
        ).fetchall()
    by_arm = {str(arm): int(n) for arm, n, _ in rows}
    total = sum(by_arm.values())
    return {
        "by_arm": by_arm,
        "canary_share": round(by_arm.get("canary", 0) / total, 4) if total else None,
        "shadowed": sum(int(s) for _, _, s in rows),
    }


def decide_costs(actions: int, n: int, repeats: int) -> dict[str, Any]:
    """Median CPU µs per `decide` (parse included) in each configuration, alternated per
    repeat."""
    import dataclasses
    from datetime import UTC, datetime

    import orjson

    from decision_service.decide import decide
    from decision_service.rank_input import parse_rank
    from decision_service.runtime import LoopRuntime, explorer_for
    from decision_service.settings import Settings
    from explore.arms import ArmSplit
    from log.loops import LoopConfig
    from policies import VWPolicy

    config = LoopConfig(sampling_key=bytes(range(32)))
    settings = Settings(database_url="sqlite://")
    models = [
        VWPolicy(config.vw_args, model=_trained(actions, seed, config.vw_args), version=f"v{seed}")
        for seed in (1, 2)
    ]
    plain = LoopRuntime("default", config, datetime.now(UTC), explorer_for(config), models[0])
    runtimes = {
        "plain": plain,
        "canary": dataclasses.replace(
            plain, canary=models[1], split=ArmSplit(config.sampling_key, "v2", CANARY_PERCENT / 100)
        ),
        "shadow": dataclasses.replace(plain, shadow=models[1]),
    }
    rng = random.Random(7)
    bodies = [orjson.loads(orjson.dumps(rank_body(actions, rng, f"ev-{i}"))) for i in range(64)]
    now = datetime.now(UTC)
    samples: dict[str, list[float]] = {name: [] for name in runtimes}
    names = list(runtimes)
    for r in range(repeats):
        for name in names[r % 3 :] + names[: r % 3]:
            runtime = runtimes[name]
            t0 = time.process_time()  # CPU time: other load on the machine counts less
            for i in range(n):
                body = bodies[i % 64]
                event_id = f"x-{r}-{i}"
                decide(parse_rank(body, settings), body, runtime, now, event_id)
            samples[name].append((time.process_time() - t0) / n * 1e6)
    med = {name: statistics.median(v) for name, v in samples.items()}
    return {
        "bench": "rank_serving_decide",
        "actions": actions,
        "cpu_us_per_decide": {name: round(v, 1) for name, v in med.items()},
        "vs_plain": {name: round(v / med["plain"], 3) for name, v in med.items()},
        "shadow_extra_us": round(med["shadow"] - med["plain"], 1),
        "canary_extra_us": round(med["canary"] - med["plain"], 1),
        "n_per_repeat": n,
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="decide() cost: plain vs canary vs shadow")
    parser.add_argument("--actions", default="10,50")
    parser.add_argument("-n", type=int, default=500, help="decides per configuration and repeat")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    for actions in (int(a) for a in args.actions.split(",") if a.strip()):
        line = decide_costs(actions, args.n, args.repeats)
        print(orjson_dumps(line), flush=True)
    return 0


def orjson_dumps(data: Any) -> str:
    import orjson

    return orjson.dumps(data).decode()


if __name__ == "__main__":
    sys.exit(main())
