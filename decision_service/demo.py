"""`decision-service demo`: the whole loop on the embedded SQLite default, against a simulator.

It starts the service (uvicorn, a subprocess), creates a loop, drives simulated users through
rank -> reward over HTTP (rewards arrive after the simulator's random delay, on a compressed
clock; some never arrive), and every `chunk` events runs the joiner and the learner (online
continuation of the live model, promoted directly; the service switches to it without a restart).
After each chunk it prints the average reward served and the TRUE expected reward of the learned
policy's greedy choice, next to the uniform-random policy and the oracle (exact values from the
simulator), and at the end writes a PNG of the learning curve. The last line printed is one JSON
object.

The demo calls the service with a key of its own: an admin key limited to the demo's loop, made
once the service has migrated the store and revoked when the demo ends (both audited as
`demo`). The service itself makes its first admin key as on any first start (DS_ADMIN_KEY, or a
new one written to DS_ADMIN_KEY_FILE: the path is printed).
"""

from __future__ import annotations

import asyncio
import heapq
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from deploy.keys import generate_key
from evaluation.simulator import Simulator, SimulatorConfig
from evaluation.simulator_types import SimItem
from explore import Action
from log.api_keys import create_key, revoke_key
from log.joiner import join_loop
from log.loops import get_loop
from log.schema import make_engine
from policies import VWPolicy


@dataclass
class DemoConfig:
    events: int = 20_000
    chunk: int = 2_000
    concurrency: int = 16
    seed: int = 0
    epsilon: float = 0.2
    vw_args: str = "-q ca --cb_type dm -l 0.05 --power_t 0"
    ms_per_sim_second: float = 2.0  # compressed clock: the simulator's 30 s mean delay -> 60 ms
    reward_wait_s: float = 0.25
    eval_contexts: int = 5_000
    database_url: str = "sqlite:///./decision_service.db"
    admin_key_file: str | None = None  # the service's DS_ADMIN_KEY_FILE (None: its setting)
    plot: str = "demo_learning_curve.png"
    loop: str = field(default_factory=lambda: f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}")


@dataclass
class ChunkRow:
    events: int
    served_reward: float
    learned_reward: float
    model_version: str
    late_rewards: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """The service as its own process (uvicorn, one worker) on a free loopback port."""

    def __init__(
        self, database_url: str, spool_dir: str, admin_key_file: str | None = None
    ) -> None:
        self.port = _free_port()
        env = dict(os.environ)
        env.update(
            DS_DATABASE_URL=database_url,
            DS_SPOOL_DIR=spool_dir,
            DS_LOOP_REFRESH_S="0.25",
            DS_JOIN_INTERVAL_S="3600",
            OMP_NUM_THREADS="1",
        )
        if admin_key_file is not None:
            env["DS_ADMIN_KEY_FILE"] = admin_key_file
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "decision_service:create_app",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=env,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the service exited during start-up")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the service did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()


def greedy_policy(policy: VWPolicy) -> Any:
    def choose(ctx: dict[str, Any], items: list[SimItem]) -> np.ndarray:
        scores = policy.scores(ctx, [Action(it.id, it.features) for it in items])
        pmf = (scores == scores.max()).astype(float)
        return pmf / pmf.sum()

    return choose


class Driver:
    """Simulated users: rank over HTTP, then report each reward after its simulated delay."""

    def __init__(self, sim: Simulator, cfg: DemoConfig, client: httpx.AsyncClient) -> None:
        self.sim, self.cfg, self.client = sim, cfg, client
        self.rng = np.random.default_rng(cfg.seed + 1)
        self.pending: list[tuple[float, int, str, float]] = []  # (due, seq, event_id, value)
        self.seq = 0
        self.rewards: list[float] = []
        self.late = 0

    async def one(self, n: int) -> None:
        ctx = self.sim.sample_context(self.rng)
        items = self.sim.candidates(ctx, self.rng)
        body = self.sim.to_request(ctx, items)
        body["event_id"] = f"{self.cfg.loop}-{n}"
        r = await self.client.post(f"/v1/loops/{self.cfg.loop}/rank", json=body)
        r.raise_for_status()
        chosen = r.json()["reward_action_id"]
        index = next(i for i, it in enumerate(items) if it.id == chosen)
        outcome = self.sim.reward(ctx, index, items, self.rng)
        self.rewards.append(outcome.value)
        if not outcome.lost and outcome.value != 0.0:  # zero is the loop's default reward
            due = time.monotonic() + outcome.delay_s * self.cfg.ms_per_sim_second / 1000
            self.seq += 1
            heapq.heappush(self.pending, (due, self.seq, body["event_id"], outcome.value))

    async def flush_due(self, everything: bool = False) -> None:
        now = time.monotonic()
        due = []
        while self.pending and (everything or self.pending[0][0] <= now):
            due.append(heapq.heappop(self.pending))
        for when, _, event_id, value in due:
            if everything and when > time.monotonic():
                await asyncio.sleep(when - time.monotonic())
            r = await self.client.post(
                f"/v1/loops/{self.cfg.loop}/events/{event_id}/reward", json={"value": value}
            )
            r.raise_for_status()
            self.late += r.json()["status"] == "late"

    async def run_chunk(self, start: int, n: int) -> None:
        next_n = start
        end = start + n

        async def worker() -> None:
            nonlocal next_n
            while next_n < end:
                k = next_n
                next_n += 1
                await self.one(k)
                await self.flush_due()

        await asyncio.gather(*(worker() for _ in range(self.cfg.concurrency)))
        await self.flush_due(everything=True)


def write_plot(rows: list[ChunkRow], oracle: float, uniform: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r.events for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(x, [r.learned_reward for r in rows], "o-", label="learned policy (greedy, true value)")
    ax.plot(x, [r.served_reward for r in rows], "s--", label="served (with exploration)")
    ax.axhline(oracle, color="green", linestyle=":", label="oracle")
    ax.axhline(uniform, color="grey", linestyle=":", label="uniform random")
    ax.set_xlabel("events")
    ax.set_ylabel("expected reward (click rate)")
    ax.set_title("decision-service demo: learning curve")
    ax.set_ylim(0, max(oracle * 1.1, 0.1))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_demo(cfg: DemoConfig, echo: Any = print) -> dict[str, Any]:
    from deploy import registry
    from deploy.registry import live_version, load_artifact
    from learn import learn_once

    sim = Simulator(SimulatorConfig(seed=cfg.seed))
    oracle = sim.oracle_value(n_contexts=cfg.eval_contexts, seed=cfg.seed)
    uniform = sim.uniform_value(n_contexts=cfg.eval_contexts, seed=cfg.seed)
    spool = tempfile.mkdtemp(prefix="ds-demo-spool-")
    service = ServiceProcess(cfg.database_url, spool, cfg.admin_key_file)
    engine = make_engine(cfg.database_url)
    rows: list[ChunkRow] = []
    key = generate_key()
    key_made = False
    try:
        service.wait_ready()  # the service has migrated the store
        create_key(
            engine,
            key_id=key.key_id,
            name="demo",
            role="admin",
            loops=(cfg.loop,),
            secret_hash=key.secret_hash,
            actor="demo",
            now=datetime.now(UTC),
            reason="decision-service demo",
        )
        key_made = True
        headers = {"Authorization": f"Bearer {key.token}"}
        loop_body = {
            "exploration": "epsilon_greedy",
            "epsilon": cfg.epsilon,
            "reward_wait_s": cfg.reward_wait_s,
            "default_reward": 0.0,
            "reward_aggregation": "earliest",
            "min_reward": 0.0,
            "max_reward": 1.0,
            "vw_args": cfg.vw_args,
        }
        httpx.put(
            f"{service.url}/v1/loops/{cfg.loop}", json=loop_body, headers=headers, timeout=30
        ).raise_for_status()
        stored = get_loop(engine, cfg.loop)
        assert stored is not None
        echo(f"loop {cfg.loop}: oracle {oracle:.3f}, uniform {uniform:.3f} (true expected reward)")
        echo(
            f"{'events':>8} {'served':>8} {'learned':>8} {'uniform':>8} {'oracle':>8} {'late':>6}"
            "  model"
        )

        async def drive() -> None:
            limits = httpx.Limits(max_connections=cfg.concurrency * 2)
            async with httpx.AsyncClient(
                base_url=service.url, timeout=30, limits=limits, headers=headers
            ) as client:
                driver = Driver(sim, cfg, client)
                done = 0
                while done < cfg.events:
                    n = min(cfg.chunk, cfg.events - done)
                    await driver.run_chunk(done, n)
                    served = float(np.mean(driver.rewards[done : done + n]))
                    done += n
                    await asyncio.sleep(cfg.reward_wait_s)  # let the last windows close
                    row = await asyncio.to_thread(learn_chunk, done, served, driver.late)
                    rows.append(row)
                    echo(
                        f"{row.events:>8} {row.served_reward:>8.3f} {row.learned_reward:>8.3f} "
                        f"{uniform:>8.3f} {oracle:>8.3f} {row.late_rewards:>6}  {row.model_version}"
                    )

        def learn_chunk(done: int, served: float, late: int) -> ChunkRow:
            join_loop(
                engine, cfg.loop, default_reward=0.0, aggregation="earliest", now=datetime.now(UTC)
            )
            learn_once(
                engine, cfg.loop, registry=registry, mode="online", promote=True, progress=False
            )
            live = live_version(engine, cfg.loop)
            assert live is not None
            policy = VWPolicy(
                live.vw_args, model=load_artifact(engine, live.version), version=live.version
            )
            value = sim.policy_value(
                greedy_policy(policy), n_contexts=cfg.eval_contexts, seed=cfg.seed
            )
            return ChunkRow(done, served, value, live.version, late)

        asyncio.run(drive())
    finally:
        service.stop()
        if key_made:
            revoke_key(engine, key.key_id, actor="demo", now=datetime.now(UTC),
                       reason="the demo ended", keep_one_admin=False)  # fmt: skip
        engine.dispose()
    write_plot(rows, oracle, uniform, cfg.plot)
    learned = rows[-1].learned_reward if rows else 0.0
    echo(
        f"learned/oracle {learned / oracle:.2f}, learned/uniform {learned / uniform:.2f}; "
        f"plot: {cfg.plot}"
    )
    summary = {
        "events": cfg.events,
        "learned_reward": round(learned, 4),
        "oracle_reward": round(oracle, 4),
        "uniform_reward": round(uniform, 4),
        "plot": str(Path(cfg.plot).resolve()),
    }
    echo(orjson.dumps(summary).decode())
    return summary
