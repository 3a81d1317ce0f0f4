"""End to end: the simulator drives the service over HTTP, the learner runs its rounds, and a
better configuration goes candidate -> shadow -> canary -> live on its own.

The loop starts with poor VW arguments (no interaction between context and action features: the
model can only learn which items are popular); `learner.candidates` holds the configuration with
the context x action interactions the simulator's click model needs. An operator makes a first
model live (`decision-service learn --promote`); from then on only the learner acts: the
freshness track keeps continuing the live model, the candidate track trains the better
configuration, the gate passes it on events it was not trained on, it shadows live, serves a
canary share, and (rollout.auto "live") goes live once the canary is not worse. The TRUE
expected reward of what was served (from the simulator's click probabilities and the pmf each
rank answered) is higher after than before, and the audit log holds the path.

The service runs under uvicorn in a thread (real HTTP on a loopback port); simulated users send
their requests concurrently, so the writer commits them in groups.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import deploy.registry as registry
from decision_service import create_app
from deploy.learner import Learner, LearnerOptions
from evaluation.simulator import Simulator, SimulatorConfig
from learn import learn_once
from log.audit import read_audit
from log.joiner import join_loop
from log.schema import Engine
from tests.conftest import ADMIN_HEADERS, make_settings
from tests.serving_helpers import UvicornThread

LOOP = "e2e"
POOR = "--cb_type dm -l 0.05 --power_t 0"
BETTER = "-q ca --cb_type dm -l 0.05 --power_t 0"
BOOTSTRAP = 3000  # events before the learner starts (the first live model learns them)
CHUNK = 500  # events between two learner ticks
MAX_ROUNDS = 30
CONCURRENCY = 16
WAIT_S = 2.0  # the reward window: long enough for a reward sent right after its rank
LOOP_BODY: dict[str, Any] = {
    "exploration": "epsilon_greedy",
    "epsilon": 0.4,
    "reward_wait_s": WAIT_S,
    "default_reward": 0.0,
    "min_reward": 0.0,
    "max_reward": 1.0,
    "vw_args": POOR,
    "gate": {"confidence": 0.8, "min_events": 300, "min_ess": 50, "max_events": 100_000},
    "rollout": {
        "auto": "live",
        "shadow_min_events": 200,
        "canary_percent": 50,
        "canary_min_events": 200,
    },
    "learner": {
        "freshness_s": 1,
        "freshness_min_events": 300,
        "candidates": [BETTER],
        "candidate_interval_s": 3600,
        "holdout_fraction": 0.2,
    },
}


@dataclass
class Served:
    """One rank as served: its event id, the true expected reward of the pmf it answered."""

    event_id: str
    true_reward: float


class Driver:
    """Simulated users over HTTP: rank, then report the click at once. `CONCURRENCY` threads,
    each with its own keep-alive connection, so the writer commits requests in groups; the
    simulator's draws are made in order beforehand (a run does not depend on the threads)."""

    def __init__(self, url: str, sim: Simulator, seed: int) -> None:
        self.url, self.sim = url, sim
        self.rng = np.random.default_rng(seed)
        self.served: list[Served] = []

    def _one(self, client: httpx.Client, ctx: Any, items: list[Any], u: float) -> Served:
        body = {**self.sim.to_request(ctx, items), "user_id": ctx.user_id}
        r = client.post(f"/v1/loops/{LOOP}/rank", json=body)
        assert r.status_code == 201, r.text
        answer = r.json()
        pmf = {a["id"]: a["probability"] for a in answer["ranking"]}
        p_click = self.sim.click_probability(ctx, items)
        probs = np.asarray([pmf[it.id] for it in items])
        assert abs(probs.sum() - 1.0) < 1e-9
        index = next(i for i, it in enumerate(items) if it.id == answer["reward_action_id"])
        if u < p_click[index]:
            reward = client.post(
                f"/v1/loops/{LOOP}/events/{answer['event_id']}/reward", json={"value": 1.0}
            )
            assert reward.status_code == 202, reward.text
        return Served(answer["event_id"], float(probs @ p_click))

    def run(self, n: int) -> None:
        jobs = []
        for _ in range(n):
            ctx = self.sim.sample_context(self.rng)
            jobs.append((ctx, self.sim.candidates(ctx, self.rng), float(self.rng.random())))
        results: list[Served | None] = [None] * n
        errors: list[BaseException] = []

        def user(k: int) -> None:
            try:
                with httpx.Client(base_url=self.url, timeout=60, headers=ADMIN_HEADERS) as client:
                    for i in range(k, n, CONCURRENCY):
                        results[i] = self._one(client, *jobs[i])
            except BaseException as err:  # reported by the test thread
                errors.append(err)

        threads = [threading.Thread(target=user, args=(k,)) for k in range(CONCURRENCY)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        self.served.extend(r for r in results if r is not None)

    def true_reward(self, start: int, end: int | None = None) -> float:
        return float(np.mean([s.true_reward for s in self.served[start:end]]))


class ServiceThread(UvicornThread):
    """The service under uvicorn in a thread, with a wait for its reward windows."""

    def settle(self) -> None:
        """Wait until the windows of the events sent closed and the writer published a
        watermark past them (the joiner closes none past it; it is published every 0.5 s)."""
        writer = self.app.state.service.writer
        target = time.time() + WAIT_S + 0.1
        for _ in range(1200):
            mark = writer.stats.watermark
            if mark is not None and mark.timestamp() > target:
                return
            time.sleep(0.05)
        raise AssertionError("the writer's watermark did not advance")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceThread]:
    """On the embedded default (SQLite): the run takes about a minute and a half on two busy
    cores, twice that with PostgreSQL as well; every piece it exercises is tested on both
    databases on its own (tests/deploy/test_learner_*.py)."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = make_settings(url, tmp_path, loop_refresh_s=0.1, join_interval_s=3600)
    with ServiceThread(create_app(settings)) as running:
        yield running


def test_a_better_configuration_goes_live_through_shadow_and_canary(
    service: ServiceThread,
) -> None:
    sim = Simulator(SimulatorConfig(seed=3))
    created = httpx.put(f"{service.url}/v1/loops/{LOOP}", json=LOOP_BODY, headers=ADMIN_HEADERS)
    assert created.status_code == 201, created.text
    engine: Engine = service.app.state.service.engine
    driver = Driver(service.url, sim, seed=7)

    # an operator makes a first model of the loop's (poor) configuration live
    driver.run(BOOTSTRAP)
    service.settle()
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=datetime.now(UTC))
    first = learn_once(engine, LOOP, registry=registry, promote=True, progress=False).version
    assert first is not None and first.vw_args == POOR

    # from here on only the learner acts
    learner = Learner(engine, LearnerOptions(loops=(LOOP,), settle_s=0.0, rollout_every_s=0.0))
    poor_from = len(driver.served)
    statuses: list[str] = []
    candidate = None
    live_from = None
    for _ in range(MAX_ROUNDS):
        driver.run(CHUNK)
        service.settle()
        learner.tick()
        found = [v for v in registry.list_versions(engine, LOOP) if v.vw_args == BETTER]
        if found:
            candidate = found[0]
            if not statuses or statuses[-1] != candidate.status:
                statuses.append(candidate.status)
            if candidate.status in ("live", "rejected"):
                live_from = len(driver.served)
                break
    assert candidate is not None and statuses[-1:] == ["live"], statuses
    assert live_from is not None
    driver.run(2 * CHUNK)  # the better model live (and continued by the freshness track)
    service.settle()
    learner.tick()

    audit = read_audit(engine, loop=LOOP, limit=1000)
    path = [(e.action, e.actor) for e in audit if e.target == candidate.version]
    assert path == [
        ("model.register", "learner"),
        ("model.shadow", "learner"),
        ("model.canary", "learner"),
        ("model.live", "learner"),
    ]
    moves = {e.action: e.details for e in audit if e.target == candidate.version}
    assert moves["model.shadow"]["verdict"]["decision"] == "pass"
    assert moves["model.canary"]["shadowed"] >= 200  # the workers scored it beside live
    assert moves["model.live"]["canary_decisions"] >= 200  # it served its share
    assert moves["model.live"]["analysis"]["decision"] in ("better", "undecided")
    live = registry.live_version(engine, LOOP)
    assert live is not None and live.vw_args == BETTER
    assert any(e.details.get("track") == "freshness" for e in audit)

    poor = driver.true_reward(poor_from, poor_from + 2 * CHUNK)
    better = driver.true_reward(live_from)
    print(
        f"\ntrue expected reward served: poor live {poor:.3f}, better live {better:.3f}; "
        f"the candidate went live after {live_from - poor_from} events; path {statuses}"
    )
    assert better > poor + 0.02  # each mean is over >= 1000 served pmfs: sd ~0.005
