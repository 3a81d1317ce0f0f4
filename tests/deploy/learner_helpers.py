"""Shared pieces of the learner's tests: a store with a loop, simulated logged events joined."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from evaluation.simulator import Simulator, SimulatorConfig
from log.audit import read_audit
from log.joiner import join_loop
from log.loops import LoopConfig, get_loop, put_loop
from log.writer import GroupCommitWriter
from tests.learn.helpers import WAIT_S, sim_events, write

LOOP = "default"
SIM = Simulator(SimulatorConfig(seed=11))


def configure(engine: Engine, loop: str = LOOP, **fields: Any) -> LoopConfig:
    """Store `loop` with `fields` (sections given as dicts) over the test defaults."""
    values: dict[str, Any] = {"vw_args": "--cb_type mtr", "default_reward": 0.0, "min_reward": 0.0}
    values.update(fields)
    config = LoopConfig(**values)
    put_loop(engine, loop, config)
    stored = get_loop(engine, loop)
    assert stored is not None
    return stored.config


def log_joined(
    engine: Engine,
    writer: GroupCommitWriter,
    n: int,
    *,
    seed: int,
    start: datetime,
    prefix: str,
    loop: str = LOOP,
    spacing_s: float = 0.01,
) -> datetime:
    """Log `n` simulated uniform-logging decisions from `start` with their clicks, and join them;
    returns the join time used."""
    write(
        writer,
        sim_events(SIM, n, seed=seed, loop=loop, start=start, prefix=prefix, spacing_s=spacing_s),
    )
    at = start + timedelta(seconds=n * spacing_s + WAIT_S + 1)
    stored = get_loop(engine, loop)
    assert stored is not None
    join_loop(engine, loop, default_reward=0.0, aggregation="earliest", now=at)
    return at


def untrained_live(engine: Engine, loop: str = LOOP) -> str:
    """Make an untrained model of the loop's VW arguments live (its scores are all equal: the
    served pmf splits the greedy mass evenly, the highest entropy there is); its version."""
    import deploy.registry as registry
    from policies.vw import VWPolicy

    stored = get_loop(engine, loop)
    assert stored is not None
    policy = VWPolicy(stored.config.vw_args)
    try:
        artifact = policy.save()
    finally:
        policy.close()
    version = registry.register(
        engine, loop=loop, kind="manual", vw_args=stored.config.vw_args, artifact=artifact,
        promote_now=True,
    )  # fmt: skip
    return version.version


def recent(minutes: float) -> datetime:
    """A start time `minutes` ago (events the learner's windows, relative to now, contain)."""
    return datetime.now(UTC) - timedelta(minutes=minutes)


def actions(engine: Engine, loop: str = LOOP) -> list[str]:
    return [e.action for e in read_audit(engine, loop=loop, limit=1000)]
