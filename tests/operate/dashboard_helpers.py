"""A simulated run for the dashboard tests: a loop with a live model and a candidate, ranks
and rewards sent over HTTP, joined, and the operate round (rollup, alarms) run."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import deploy.registry as registry
from decision_service.service import Service
from deploy.operate import OperateOptions, run_operate
from log.loops import LoopConfig, put_loop
from policies.vw import VWPolicy

LOOP = "sim"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Poster(Protocol):
    def post(self, url: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Run:
    live: str
    candidate: str
    decisions: int


def _model(engine: Any, *, live: bool) -> str:
    policy = VWPolicy("--cb_type mtr")
    try:
        artifact = policy.save()
    finally:
        policy.close()
    return registry.register(
        engine, loop=LOOP, kind="manual", vw_args="--cb_type mtr", artifact=artifact,
        promote_now=live,
    ).version  # fmt: skip


def simulate(service: Service, client: Poster, *, n: int = 60) -> Run:
    """Store the loop (1 s reward window), its live model and a candidate; send `n` ranks over
    HTTP (`client` carries an app or admin key) with a reward for two thirds of them; join them
    and run the operate round."""
    engine = service.engine
    config = LoopConfig(
        exploration="epsilon_greedy", epsilon=0.3, vw_args="--cb_type mtr", reward_wait_s=1.0
    )
    put_loop(engine, LOOP, config)
    live = _model(engine, live=True)
    candidate = _model(engine, live=False)
    for i in range(n):
        r = client.post(
            f"/v1/loops/{LOOP}/rank",
            json={
                "event_id": f"sim-{i}",
                "context": {"user": f"u{i % 7}"},
                "actions": [{"id": a, "features": {"k": a}} for a in ("a", "b", "c")],
            },
        )
        assert r.status_code == 201, r.text
        if i % 3:
            value = 1.0 if r.json()["reward_action_id"] == "a" else 0.0
            assert (
                client.post(
                    f"/v1/loops/{LOOP}/events/sim-{i}/reward", json={"value": value}
                ).status_code
                == 202
            )
    time.sleep(2.5)  # every window (1 s) closed and behind the writer's watermark
    service.join_due(now=datetime.now(UTC))
    service.flush_metrics()
    run_operate(engine, OperateOptions(), now=datetime.now(UTC), loops=(LOOP,))
    return Run(live, candidate, n)
