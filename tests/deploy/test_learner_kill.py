"""Kill the learner (SIGKILL, from inside, at each step) and restart it: the store never holds a
partial version or a half-done transition, and the restarted learner takes the work on.

Each case: a loop with a live version, events not yet joined, one candidate configuration, a
gate that passes, rollout.auto "canary". Two ticks of an undisturbed learner would: join,
continue the live model and swap it in (freshness), train and register the candidate, gate it
and move it to shadow (tick 1), then to canary (tick 2). The learner runs in a child process
with DS_LEARNER_FAULT naming a step and kills itself there (inside the step's transaction,
before its COMMIT, or after the step with ":after"); the store is checked; a restarted learner
runs two ticks; the store is checked again and must hold exactly what an undisturbed run makes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

import deploy.registry as registry
from deploy.learner import FAULT_ENV, LearnerOptions, run_learner_process
from learn import learn_once
from log.learner_state import get_learner_state
from log.schema import make_engine, migrate
from log.writer import GroupCommitWriter
from tests.deploy.learner_helpers import LOOP, SIM, check_store, configure, log_joined, recent
from tests.learn.helpers import sim_events, write

GOOD = "-q ca --cb_type mtr"
OPTIONS = LearnerOptions(settle_s=0.0, rollout_every_s=0.0)
FAULTS = (
    "join",
    "freshness-train",
    "freshness-register",
    "freshness-register:after",
    "candidate-train",
    "candidate-register",
    "candidate-register:after",
    "gate",
    "gate:after",
    "transition",
    "transition:after",
)


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(database url, the initial live version) of a store set up as the module says."""
    engine = make_engine(db_url)
    migrate(engine)
    configure(
        engine,
        gate={"min_events": 10, "min_ess": 1, "margin": -1e9, "max_events": 100},
        rollout={"auto": "canary", "shadow_min_events": 0},
        learner={
            "freshness_s": 1,
            "freshness_min_events": 10,
            "candidates": [GOOD],
            "candidate_interval_s": 3600,
            "train_window_s": 7200,
        },
    )
    writer = GroupCommitWriter(engine, tmp_path / "spool", delay_s=0.0, max_group=100_000)
    writer.start()
    try:
        log_joined(engine, writer, 200, seed=1, start=recent(60), prefix="a")
        first = learn_once(engine, LOOP, registry=registry, promote=True, progress=False).version
        assert first is not None
        # decided 30 minutes ago, windows long closed, not joined yet: the learner joins them
        write(writer, sim_events(SIM, 200, seed=2, start=recent(30), prefix="b"))
    finally:
        writer.stop()
        engine.dispose()
    yield db_url, first.version


def _child(url: str, fault: str) -> None:
    os.environ[FAULT_ENV] = fault
    engine = make_engine(url)
    run_learner_process(
        engine, LearnerOptions(settle_s=0.0, rollout_every_s=0.0, fault=fault), rounds=2
    )
    os._exit(0)  # the fault should have killed it before


def _kill_run(url: str, fault: str) -> int | None:
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_child, args=(url, fault))
    proc.start()
    proc.join(300)
    return proc.exitcode


def _undisturbed_result(engine: Engine, first: str) -> None:
    """What two ticks of an undisturbed learner leave: one continuation live, the first
    version retired, one candidate of the configuration, in canary."""
    versions = registry.list_versions(engine, LOOP)
    fresh = [v for v in versions if v.kind == "online" and v.parent == first]
    assert len(fresh) == 1 and fresh[0].status == "live"
    assert fresh[0].n_events == 200
    candidates = [v for v in versions if v.vw_args == GOOD and v.kind == "batch"]
    assert len(candidates) == 1 and candidates[0].status == "canary"
    assert {v.version: v.status for v in versions} == {
        first: "retired",
        fresh[0].version: "live",
        candidates[0].version: "canary",
    }
    state = get_learner_state(engine, LOOP)
    # (a kill between a swap and its run's summary leaves last_freshness_at unset: the track then
    # looks for new events at every tick until the next continuation, which is harmless)
    assert state.last_candidate_at is not None
    assert {r.track for r in state.runs} == {"freshness", "candidates", "rollout"}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_learner_killed_at_any_step_resumes_on_restart(
    store: tuple[str, str], fault: str
) -> None:
    url, first = store
    assert _kill_run(url, fault) == -signal.SIGKILL
    engine = make_engine(url)
    try:
        check_store(engine)
        run_learner_process(engine, OPTIONS, rounds=2)
        check_store(engine)
        _undisturbed_result(engine, first)
    finally:
        engine.dispose()


def test_the_learner_command_kills_itself_where_told_and_restarts(
    store: tuple[str, str],
) -> None:
    """The same through `decision-service learner` (the environment variable, --rounds)."""
    url, first = store
    env = {**os.environ, "DS_DATABASE_URL": url, FAULT_ENV: "candidate-register"}
    cmd = [
        sys.executable,
        "-c",
        "from decision_service.cli import main; main()",
        "learner",
        "--rounds",
        "2",
        "--settle-s",
        "0",
        "--rollout-every-s",
        "0",
    ]
    killed = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert b"fault injection: killing the learner inside 'candidate-register'" in killed.stderr
    engine = make_engine(url)
    try:
        check_store(engine)
        assert [v.kind for v in registry.list_versions(engine, LOOP)] == ["online", "online"]
        del env[FAULT_ENV]
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        check_store(engine)
        _undisturbed_result(engine, first)
    finally:
        engine.dispose()
