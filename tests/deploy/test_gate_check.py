"""check_candidate through the real evaluation runner: a VW model trained on the earlier events
of a loop is checked against live on the later ones; verdicts are stored with their numbers,
looks count, and the approval uses the latest verdict."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

import deploy.registry as registry
from deploy.gate import check_candidate, latest_gate_verdict, verdicts_of
from deploy.rollout import GateNotPassed, transition
from evaluation.simulator import Simulator, SimulatorConfig
from explore.errors import Conflict, NotFound
from learn import learn_once
from log.deploy_settings import GateSettings
from log.joiner import join_loop
from log.loops import LoopConfig, put_loop
from log.records import RewardRecord
from log.schema import make_engine, migrate
from log.writer import GroupCommitWriter
from tests.learn.helpers import T0, deadline, sim_events, write

LOOP = "default"
VW_ARGS = "-q ca --cb_type mtr"
SIM = Simulator(SimulatorConfig(seed=3))
N_TRAIN = 1500
N_EVAL = 2500
SPLIT = T0 + timedelta(seconds=N_TRAIN)


def _config(**gate: object) -> LoopConfig:
    settings: dict[str, object] = {"min_events": 200, "min_ess": 50, "max_weight": 1000}
    settings.update(gate)
    return LoopConfig(
        vw_args=VW_ARGS,
        default_reward=0.0,
        gate=GateSettings(**settings),  # type: ignore[arg-type]
    )


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    migrate(eng)
    put_loop(eng, LOOP, _config())
    yield eng
    eng.dispose()


@pytest.fixture
def writer(engine: Engine, tmp_path: Path) -> Iterator[GroupCommitWriter]:
    w = GroupCommitWriter(engine, tmp_path / "spool", delay_s=0.0, max_group=100_000)
    w.start()
    yield w
    w.stop()


def test_check_candidate_through_the_runner(engine: Engine, writer: GroupCommitWriter) -> None:
    n = N_TRAIN + N_EVAL
    write(writer, sim_events(SIM, n, seed=11))
    # the training window and the first 100 held-out events are joined
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=deadline(N_TRAIN + 99))
    learned = learn_once(engine, LOOP, registry=registry, mode="batch", until=SPLIT, progress=False)
    assert learned.version is not None
    version = learned.version.version

    first = check_candidate(engine, LOOP, version)
    assert (first.look, first.decision, first.passed) == (1, "pending", False)
    assert first.numbers["n"] == 100 and "100 held-out events of the 200 needed" in first.reason
    assert first.incumbent is None and first.criteria["interval"] == "cs"
    with pytest.raises(GateNotPassed, match="pending"):
        transition(engine, version, "live", actor="gk", role=None, reason="go")

    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=deadline(n - 1))
    at = datetime(2026, 6, 1, tzinfo=UTC)
    second = check_candidate(engine, LOOP, version, now=at)
    nums = second.numbers
    assert second.look == 2 and second.at == at and nums["n"] == N_EVAL
    assert nums["estimator"] == "dr" and nums["interval"] == "cs" and nums["alpha"] == 0.05
    diff = nums["difference"]
    assert diff["ci_low"] <= diff["value"] <= diff["ci_high"]
    assert nums["diagnostics"]["max_weight"] > 1.0 and nums["support"] == 1.0
    # the model learned the simulator's preferences: better than uniform logging
    assert diff["value"] > 0.0
    print(f"gate on {N_EVAL} held-out events: {second.decision}: {second.reason}")
    assert second.decision == "pass", second.reason
    assert latest_gate_verdict(engine, version) == second
    assert [v.look for v in verdicts_of(engine, version)] == [2, 1]
    live = transition(engine, version, "live", actor="gk", role=None, reason="passed the gate")
    assert live.status == "live"
    with pytest.raises(Conflict, match="gate checks candidates"):
        check_candidate(engine, LOOP, version)

    # a one-look bootstrap gate with a small max_weight: the same kind of model fails
    put_loop(engine, LOOP, _config(max_weight=1.5, sequential=False))
    again = learn_once(engine, LOOP, registry=registry, mode="batch", until=SPLIT, progress=False)
    assert again.version is not None
    failed = check_candidate(engine, LOOP, again.version.version)
    assert failed.decision == "fail" and "exceeds max_weight" in failed.reason
    assert failed.incumbent == version and failed.criteria["interval"] == "bootstrap"


def test_check_candidate_errors(engine: Engine) -> None:
    put_loop(engine, "other", LoopConfig())
    other = registry.register(engine, loop="other", kind="batch", vw_args="", artifact=b"o")
    with pytest.raises(NotFound, match="does not exist"):
        check_candidate(engine, "nope", other.version)
    with pytest.raises(NotFound, match="in loop 'default'"):
        check_candidate(engine, LOOP, other.version)
    with pytest.raises(NotFound):
        check_candidate(engine, LOOP, "v-unknown")
    # no joined events yet: a pending verdict that says so
    mine = registry.register(engine, loop=LOOP, kind="batch", vw_args=VW_ARGS, artifact=b"x")
    verdict = check_candidate(engine, LOOP, mine.version)
    assert verdict.decision == "pending" and "no estimate yet" in verdict.reason
    assert verdict.numbers["n"] == 0 and verdict.look == 1


def _with_reports(ops: list[Any], seed: int) -> list[Any]:
    """Half of the clicks also bring a "report" (negative feedback): a policy that gets more
    clicks gets more reports too."""
    rng = np.random.default_rng(seed)
    out = list(ops)
    for op in ops:
        if isinstance(op, RewardRecord) and op.value > 0 and rng.random() < 0.5:
            out.append(replace(op, reward_id=op.reward_id + "-report", metric="report"))
    return out


def test_a_candidate_better_on_reward_but_worse_on_a_guardrail_is_blocked(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    put_loop(engine, LOOP, _config(guardrails={"report": 0.01}))
    n = N_TRAIN + N_EVAL
    write(writer, _with_reports(sim_events(SIM, n, seed=11), seed=12))
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=deadline(n - 1))
    learned = learn_once(engine, LOOP, registry=registry, mode="batch", until=SPLIT, progress=False)
    assert learned.version is not None
    version = learned.version.version

    blocked = check_candidate(engine, LOOP, version)
    nums = blocked.numbers
    assert nums["difference"]["ci_low"] > 0.0  # better on the reward, conclusively
    report = nums["guardrails"]["report"]
    assert report["difference"]["value"] > 0.01 and report["candidate"]["n"] == N_EVAL
    print(f"guardrail-worse candidate: {blocked.decision}: {blocked.reason}")
    assert blocked.decision in ("fail", "pending") and "guardrail 'report'" in blocked.reason
    assert blocked.criteria["guardrails"] == {"report": 0.01}
    with pytest.raises(GateNotPassed, match="guardrail 'report'"):
        transition(engine, version, "live", actor="gk", role=None, reason="go")
    # the guardrail is what blocks it: allowing a large increase, the same candidate passes
    put_loop(engine, LOOP, _config(guardrails={"report": 0.5}))
    allowed = check_candidate(engine, LOOP, version)
    assert allowed.decision == "pass", allowed.reason
    assert allowed.look == 2
