"""Shared pieces of the learner's tests: a store with a loop, simulated logged events joined."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from evaluation.simulator import Simulator, SimulatorConfig
from log.audit import read_audit
from log.joiner import join_loop
from log.loops import LoopConfig, StoredLoop, get_loop, put_loop
from log.writer import GroupCommitWriter
from tests.learn.helpers import WAIT_S, sim_events, write

LOOP = "default"
SIM = Simulator(SimulatorConfig(seed=11))


def configure(engine: Engine, loop: str = LOOP, **fields: Any) -> LoopConfig:
    """Store `loop` with `fields` (sections given as dicts) over the test defaults (the
    learner's tests assume a strategy computed by the service: epsilon-greedy)."""
    values: dict[str, Any] = {
        "exploration": "epsilon_greedy",
        "vw_args": "--cb_type mtr",
        "default_reward": 0.0,
        "min_reward": 0.0,
    }
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


def replay_statuses(engine: Engine, loop: str = LOOP) -> dict[str, str]:
    """Each version's status as the audit log tells it (its model.* rows, in order)."""
    statuses: dict[str, str] = {}
    for entry in read_audit(engine, loop=loop, limit=1000):
        if not entry.action.startswith("model.") or entry.target is None:
            continue
        if entry.action == "model.rollback":
            statuses[entry.target] = "retired"
            statuses[entry.details["restored"]] = "live"
            continue
        statuses[entry.target] = entry.details["to"]
        retired = entry.details.get("retired")
        if retired:
            statuses[retired] = "retired"
    return statuses


def check_store(engine: Engine, loop: str = LOOP) -> None:
    """What a kill must never break: every version whole (its artifact matches its sha256),
    at most one live, one canary and one shadow version, every status the audit log's (every
    status change has its audit row and every audit row its change), a stopped freshness track
    exactly when its alarm fires."""
    import deploy.registry as registry
    from log.alarms import list_alarms
    from log.learner_state import get_learner_state

    versions = registry.list_versions(engine, loop)
    for v in versions:
        registry.load_artifact(engine, v.version)  # raises IntegrityError on a mismatch
    for status in ("live", "canary", "shadow"):
        assert sum(v.status == status for v in versions) <= 1, status
    audited = replay_statuses(engine, loop)
    assert {v.version: v.status for v in versions} == audited
    state = get_learner_state(engine, loop)
    firing = [a for a in list_alarms(engine, loop, state="firing") if a.kind == "freshness_stopped"]
    assert state.freshness_stopped == bool(firing)


def stored_loop(engine: Engine) -> StoredLoop:
    """The test loop as stored."""
    stored = get_loop(engine, LOOP)
    assert stored is not None
    return stored
