"""The learner's rollout steps: gate each candidate, then shadow -> canary -> live as far as the
loop's rollout.auto allows; a failing candidate is rejected."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine

import deploy.registry as registry
from deploy.gate import verdicts_of
from deploy.learner.candidates import run_candidates
from deploy.learner.faults import Faults
from deploy.learner.progress import run_rollout
from log.alarms import list_alarms
from log.audit import read_audit
from log.joiner import join_loop
from log.records import DecisionRecord, RewardRecord
from log.rollout_counts import count_shadowed
from log.writer import GroupCommitWriter
from tests.deploy.learner_helpers import LOOP, SIM, configure, log_joined, recent, stored_loop
from tests.learn.helpers import sim_events, write

NO_FAULTS = Faults()
GOOD = "-q ca --cb_type mtr"
PASSING = {"min_events": 10, "min_ess": 1, "margin": -1e9, "max_events": 100}
FAILING = {"min_events": 10, "min_ess": 1, "margin": 1e9, "max_events": 100}
PENDING = {"min_events": 10_000_000, "min_ess": 1, "margin": -1e9, "max_events": 10_000_000}


def _candidate(engine: Engine, writer: GroupCommitWriter, **fields: Any) -> str:
    """A loop with `fields`, 300 joined events and one registered batch candidate."""
    configure(engine, learner={"candidates": [GOOD]}, **fields)
    log_joined(engine, writer, 300, seed=1, start=recent(30), prefix="a")
    run = run_candidates(engine, stored_loop(engine), now=datetime.now(UTC), faults=NO_FAULTS)
    (version,) = run.details["registered"]
    return str(version)


def _status(engine: Engine, version: str) -> str:
    found = registry.get_version(engine, version)
    assert found is not None
    return found.status


def _tick(engine: Engine) -> str:
    run = run_rollout(engine, stored_loop(engine), now=datetime.now(UTC), faults=NO_FAULTS)
    return run.outcome


def _log_as(
    writer: GroupCommitWriter, n: int, *, prefix: str, **changes: Any
) -> list[DecisionRecord]:
    """`n` decisions (now) with `changes` applied (a shadow, a canary arm)."""
    ops = sim_events(SIM, n, seed=9, start=datetime.now(UTC), prefix=prefix, spacing_s=0.001)
    records = [dataclasses.replace(op, **changes) for op in ops if isinstance(op, DecisionRecord)]
    write(writer, list(records))
    return records


def test_auto_none_a_passing_candidate_waits_for_a_gatekeeper(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    version = _candidate(engine, writer, gate=PASSING, rollout={"auto": "none"})
    assert _tick(engine) == "checked"
    (verdict,) = verdicts_of(engine, version)
    assert verdict.decision == "pass" and verdict.look == 1
    assert _status(engine, version) == "candidate"
    _tick(engine)  # a passed candidate is not gated again
    assert len(verdicts_of(engine, version)) == 1 and _status(engine, version) == "candidate"


def test_auto_shadow_stops_at_shadow(engine: Engine, writer: GroupCommitWriter) -> None:
    version = _candidate(
        engine, writer, gate=PASSING, rollout={"auto": "shadow", "shadow_min_events": 0}
    )
    assert _tick(engine) == "moved"
    assert _status(engine, version) == "shadow"
    assert _tick(engine) == "idle"
    assert _status(engine, version) == "shadow"
    entry = read_audit(engine, loop=LOOP)[-1]
    assert (entry.action, entry.actor, entry.target) == ("model.shadow", "learner", version)
    assert entry.details["from"] == "candidate" and entry.details["verdict"]["decision"] == "pass"


def test_auto_canary_moves_a_shadow_on_after_enough_shadowed_decisions(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    version = _candidate(
        engine,
        writer,
        gate=PASSING,
        rollout={"auto": "canary", "shadow_min_events": 20, "canary_percent": 5},
    )
    _tick(engine)
    assert _status(engine, version) == "shadow"
    _log_as(writer, 19, prefix="s", shadow={"version": version, "pmf": [0.1] * 10})
    _log_as(writer, 5, prefix="o", shadow={"version": "another", "pmf": [0.1] * 10})
    shadow = registry.get_version(engine, version)
    assert shadow is not None
    assert count_shadowed(engine, LOOP, version, since=shadow.updated_at) == 19
    _tick(engine)
    assert _status(engine, version) == "shadow"  # 19 < 20
    _log_as(writer, 1, prefix="t", shadow={"version": version, "pmf": [0.1] * 10})
    assert _tick(engine) == "moved"
    canary = registry.get_version(engine, version)
    assert canary is not None and canary.status == "canary" and canary.canary_percent == 5
    entry = read_audit(engine, loop=LOOP)[-1]
    assert entry.action == "model.canary" and entry.details["shadowed"] == 20
    assert [e.details.get("to") for e in read_audit(engine, loop=LOOP) if e.target == version] == [
        "candidate",
        "shadow",
        "canary",
    ]


def test_a_failing_candidate_is_rejected_with_the_verdicts_reason(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    version = _candidate(engine, writer, gate=FAILING, rollout={"auto": "live"})
    assert _tick(engine) == "moved"
    assert _status(engine, version) == "rejected"
    (verdict,) = verdicts_of(engine, version)
    entry = read_audit(engine, loop=LOOP)[-1]
    assert (entry.action, entry.actor, entry.target) == ("model.rejected", "learner", version)
    assert entry.reason is not None and verdict.reason in entry.reason
    assert entry.details["verdict"] == verdict.id and entry.details["numbers"]["n"] > 0


def test_a_pending_candidate_is_looked_at_again_every_step(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    version = _candidate(engine, writer, gate=PENDING, rollout={"auto": "live"})
    for look in (1, 2, 3):
        _tick(engine)
        assert verdicts_of(engine, version)[0].look == look
        assert verdicts_of(engine, version)[0].decision == "pending"
    assert _status(engine, version) == "candidate"


def test_the_shadow_slot_is_one_per_loop(engine: Engine, writer: GroupCommitWriter) -> None:
    configure(
        engine,
        gate=PASSING,
        rollout={"auto": "shadow"},
        learner={"candidates": [GOOD, "--cb_type dr -l 0.1"]},
    )
    log_joined(engine, writer, 300, seed=1, start=recent(30), prefix="a")
    run = run_candidates(engine, stored_loop(engine), now=datetime.now(UTC), faults=NO_FAULTS)
    versions = run.details["registered"]
    _tick(engine)
    statuses = {v: _status(engine, v) for v in versions}
    assert sorted(statuses.values()) == ["candidate", "shadow"]
    first = next(v for v, s in statuses.items() if s == "shadow")
    second = next(v for v, s in statuses.items() if s == "candidate")
    # the second passed too and waits for the slot; rejecting the shadow frees it
    from deploy.rollout import transition

    transition(engine, first, "rejected", actor="key:gk", role="gatekeeper", reason="no")
    _tick(engine)
    assert _status(engine, second) == "shadow"


def _canary(engine: Engine, writer: GroupCommitWriter, **rollout: Any) -> str:
    """A candidate taken to canary by two rollout steps."""
    version = _candidate(
        engine,
        writer,
        gate=PASSING,
        rollout={"shadow_min_events": 0, "canary_percent": 50, **rollout},
    )
    _tick(engine)
    _tick(engine)
    assert _status(engine, version) == "canary"
    return version


def _split(
    engine: Engine,
    writer: GroupCommitWriter,
    version: str,
    n: int,
    *,
    canary_reward: float,
    live_reward: float,
    prefix: str,
) -> None:
    """`n` joined decisions of a 50 % split served alternately by the canary and live, with
    these rewards."""
    ops = [
        op
        for op in sim_events(SIM, n, seed=5, start=datetime.now(UTC), prefix=prefix, spacing_s=1e-4)
        if isinstance(op, DecisionRecord)
    ]
    records: list[Any] = []
    for i, op in enumerate(ops):
        canary = i % 2 == 0
        records.append(
            dataclasses.replace(
                op,
                policy_arm="canary" if canary else "live",
                model_version=version if canary else "live-version",
                arm_probability=0.5,
                reward_deadline=op.decided_at,  # a window that closes at once
            )
        )
        records.append(
            RewardRecord.from_row(
                {
                    "reward_id": f"{op.event_id}-r",
                    "loop": LOOP,
                    "event_id": op.event_id,
                    "slot": 0,
                    "value": canary_reward if canary else live_reward,
                    "received_at": op.decided_at,
                    "late": False,
                }
            )
        )
    write(writer, records)
    # the joiner closes no window past the writers' published watermark (every 0.5 s)
    last = ops[-1].decided_at
    for _ in range(600):
        if writer.stats.watermark is not None and writer.stats.watermark > last:
            break
        time.sleep(0.05)
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=datetime.now(UTC))


def test_auto_live_a_canary_not_worse_goes_live_after_enough_events(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    version = _canary(engine, writer, auto="live", canary_min_events=30)
    live_before = registry.live_version(engine, LOOP)
    _split(engine, writer, version, 40, canary_reward=1.0, live_reward=1.0, prefix="x")
    _tick(engine)  # 20 canary events: not enough
    assert _status(engine, version) == "canary"
    _split(engine, writer, version, 40, canary_reward=1.0, live_reward=1.0, prefix="y")
    assert _tick(engine) == "moved"
    live = registry.live_version(engine, LOOP)
    assert live is not None and live.version == version
    assert live.replaced == (None if live_before is None else live_before.version)
    entry = read_audit(engine, loop=LOOP)[-1]
    assert (entry.action, entry.actor) == ("model.live", "learner")
    assert entry.details["canary_decisions"] == 40
    assert entry.details["analysis"]["decision"] in ("undecided", "better")


def test_auto_canary_a_good_canary_waits_for_a_gatekeeper(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    version = _canary(engine, writer, auto="canary", canary_min_events=10)
    _split(engine, writer, version, 100, canary_reward=1.0, live_reward=0.0, prefix="x")
    _tick(engine)
    assert _status(engine, version) == "canary"
    from deploy.rollout import transition

    transition(engine, version, "live", actor="key:gk", role="gatekeeper", reason="approved")
    assert _status(engine, version) == "live"


def test_a_worse_canary_is_rolled_back_with_an_alarm(
    engine: Engine, writer: GroupCommitWriter, caplog: pytest.LogCaptureFixture
) -> None:
    version = _canary(engine, writer, auto="live", canary_min_events=10_000)
    _split(engine, writer, version, 200, canary_reward=0.0, live_reward=1.0, prefix="x")
    assert _tick(engine) == "moved"
    assert _status(engine, version) == "rejected"
    entry = read_audit(engine, loop=LOOP)[-1]
    assert (entry.action, entry.actor, entry.target) == ("model.rejected", "learner", version)
    assert entry.details["auto_rollback"] is True
    analysis = entry.details["analysis"]
    assert analysis["decision"] == "worse" and analysis["difference"]["ci_high"] < 0
    (alarm,) = list_alarms(engine, LOOP, state="firing")
    assert alarm.kind == "canary_rolled_back" and alarm.details["version"] == version
    assert alarm.details["analysis"]["n_canary"] == 100
    assert "significantly worse than live: rolled back" in caplog.text


def test_without_auto_rollback_a_worse_canary_raises_one_alarm_and_stays(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    version = _canary(engine, writer, auto="live", auto_rollback=False)
    _split(engine, writer, version, 200, canary_reward=0.0, live_reward=1.0, prefix="x")
    _tick(engine)
    _tick(engine)
    assert _status(engine, version) == "canary"
    (alarm,) = list_alarms(engine, LOOP, state="firing")
    assert alarm.kind == "canary_worse" and "auto_rollback is off" in alarm.message
