"""The learner's freshness track: continue the live model, check it, swap it in or stop."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import Engine

import deploy.registry as registry
from deploy.learner.faults import Faults
from deploy.learner.freshness import freshness_due, resume, run_freshness
from deploy.learner.safety import SampleEvent, check_safety, entropy
from deploy.learner.versions import swap_in
from explore import make_explorer
from explore.errors import Conflict
from learn import learn_once, train_version
from log.alarms import list_alarms
from log.audit import read_audit
from log.learner_state import get_learner_state, record_run
from log.learner_versions import LiveVersionChanged
from log.writer import GroupCommitWriter
from tests.deploy.learner_helpers import (
    LOOP,
    actions,
    configure,
    log_joined,
    recent,
    stored_loop,
    untrained_live,
)

NO_FAULTS = Faults()


def clock() -> datetime:
    return datetime.now(UTC)


def test_a_passing_continuation_is_registered_live_with_its_audit_row(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    configure(engine, learner={"freshness_s": 5, "freshness_min_events": 50})
    log_joined(engine, writer, 300, seed=1, start=recent(30), prefix="a")
    first = learn_once(engine, LOOP, registry=registry, promote=True, progress=False).version
    assert first is not None
    log_joined(engine, writer, 200, seed=2, start=recent(20), prefix="b")

    now = datetime.now(UTC)
    stored = stored_loop(engine)
    assert freshness_due(stored, get_learner_state(engine, LOOP), now)
    run, ran = run_freshness(engine, stored, now=now, faults=NO_FAULTS)
    assert ran and run.outcome == "swapped", run.message
    record_run(engine, LOOP, run, ran=ran)

    live = registry.live_version(engine, LOOP)
    assert live is not None and live.version == run.version
    assert live.kind == "online" and live.parent == first.version
    assert live.vw_args == first.vw_args and live.n_events == 200
    assert live.live_since == now and live.replaced is None
    old = registry.get_version(engine, first.version)
    assert old is not None and old.status == "retired"
    registry.load_artifact(engine, live.version)  # sha256 checked
    entry = read_audit(engine, loop=LOOP)[-1]
    assert (entry.action, entry.actor, entry.target) == ("model.live", "learner", live.version)
    assert entry.details["track"] == "freshness" and entry.details["retired"] == first.version
    checks = entry.details["checks"]
    assert checks["n_sample"] == 200 and checks["n_nonfinite"] == 0
    assert checks["entropy_new"] >= 0.5 * checks["entropy_live"]
    assert checks["ips_difference_upper"] >= 0
    # the schedule: not due again before freshness_s
    state = get_learner_state(engine, LOOP)
    assert state.last_freshness_at == now and state.runs[0].outcome == "swapped"
    assert not freshness_due(stored, state, now + timedelta(seconds=4))
    assert freshness_due(stored, state, now + timedelta(seconds=5))


def test_without_a_live_version_the_track_is_idle(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    configure(engine, learner={"freshness_min_events": 50})
    log_joined(engine, writer, 200, seed=3, start=recent(20), prefix="a")
    run, ran = run_freshness(engine, stored_loop(engine), now=datetime.now(UTC), faults=NO_FAULTS)
    assert (run.outcome, ran) == ("idle", False) and "no live version" in run.message
    assert registry.list_versions(engine, LOOP) == []


def test_too_few_new_events_wait_and_register_nothing(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    configure(engine, learner={"freshness_min_events": 500})
    log_joined(engine, writer, 100, seed=4, start=recent(20), prefix="a")
    untrained_live(engine)
    run, ran = run_freshness(engine, stored_loop(engine), now=datetime.now(UTC), faults=NO_FAULTS)
    assert (run.outcome, ran) == ("waiting", False)
    assert "100 new joined events" in run.message
    assert len(registry.list_versions(engine, LOOP)) == 1
    # waiting runs are kept once, not piled up
    for _ in range(3):
        record_run(engine, LOOP, run, ran=ran)
    state = get_learner_state(engine, LOOP)
    assert [r.outcome for r in state.runs] == ["waiting"] and state.last_freshness_at is None


def test_a_failing_check_stops_the_track_raises_an_alarm_and_a_gatekeeper_resumes_it(
    engine: Engine, writer: GroupCommitWriter, caplog: pytest.LogCaptureFixture
) -> None:
    # softmax over a trained model's scores is less spread than over an untrained model's
    # equal scores (uniform, the highest entropy): with collapse_ratio 1 the check fails
    configure(
        engine,
        exploration="softmax",
        softmax_lambda=50.0,
        learner={"freshness_s": 1, "freshness_min_events": 50, "collapse_ratio": 1.0},
    )
    log_joined(engine, writer, 300, seed=5, start=recent(20), prefix="a")
    untrained_live(engine)
    now = datetime.now(UTC)
    stored = stored_loop(engine)
    run, ran = run_freshness(engine, stored, now=now, faults=NO_FAULTS)
    assert (run.outcome, ran) == ("stopped", True)
    assert "collapse of the served distribution" in run.message
    assert "freshness track of loop 'default' stopped" in caplog.text
    assert any(r.levelname == "ERROR" for r in caplog.records)
    assert len(registry.list_versions(engine, LOOP)) == 1  # nothing registered

    state = get_learner_state(engine, LOOP)
    assert state.freshness_stopped and state.freshness_stopped_at == now
    assert state.freshness_reason is not None and "collapse" in state.freshness_reason
    assert not freshness_due(stored, state, now + timedelta(hours=1))  # stays stopped
    (alarm,) = list_alarms(engine, LOOP, state="firing")
    assert alarm.kind == "freshness_stopped" and alarm.details["checks"]["n_sample"] == 300
    assert alarm.details["checks"]["entropy_new"] < alarm.details["checks"]["entropy_live"]
    stop = read_audit(engine, loop=LOOP)[-1]
    assert (stop.action, stop.actor) == ("freshness_stop", "learner")
    assert stop.details["alarm"] == alarm.id

    resumed = resume(engine, LOOP, actor="key:gk", role="gatekeeper", reason="checked it", now=now)
    assert not resumed.freshness_stopped
    assert list_alarms(engine, LOOP, state="firing") == []
    assert list_alarms(engine, LOOP, state="cleared")[0].cleared_at == now
    entry = read_audit(engine, loop=LOOP)[-1]
    assert (entry.action, entry.actor, entry.role, entry.reason) == (
        "freshness_resume",
        "key:gk",
        "gatekeeper",
        "checked it",
    )
    assert entry.details["cleared_alarms"] == [alarm.id]
    assert freshness_due(stored, resumed, now + timedelta(seconds=1))
    with pytest.raises(Conflict, match="not stopped"):
        resume(engine, LOOP, actor="key:gk", role="gatekeeper", reason="again", now=now)
    assert actions(engine)[-2:] == ["freshness_stop", "freshness_resume"]


def test_two_concurrent_resumes_make_one(engine: Engine, writer: GroupCommitWriter) -> None:
    configure(
        engine,
        exploration="softmax",
        softmax_lambda=50.0,
        learner={"freshness_min_events": 50, "collapse_ratio": 1.0},
    )
    log_joined(engine, writer, 100, seed=6, start=recent(20), prefix="a")
    untrained_live(engine)
    run, _ = run_freshness(engine, stored_loop(engine), now=datetime.now(UTC), faults=NO_FAULTS)
    assert run.outcome == "stopped"
    results: list[str] = []
    barrier = threading.Barrier(4)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            resume(
                engine, LOOP, actor=f"k{i}", role="gatekeeper", reason="ok", now=datetime.now(UTC)
            )
            results.append("ok")
        except Conflict:
            results.append("conflict")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict"] * 3 + ["ok"]
    assert actions(engine).count("freshness_resume") == 1


def test_a_continuation_is_not_stored_when_live_changed_meanwhile(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    configure(engine)
    log_joined(engine, writer, 100, seed=7, start=recent(30), prefix="a")
    first = learn_once(engine, LOOP, registry=registry, promote=True, progress=False).version
    assert first is not None
    log_joined(engine, writer, 50, seed=8, start=recent(20), prefix="b")
    parent = registry.live_version(engine, LOOP)
    assert parent is not None
    trained = train_version(engine, LOOP, registry=registry, progress=False)
    assert trained.artifact is not None and trained.parent is not None
    other = learn_once(engine, LOOP, registry=registry, mode="batch", progress=False).version
    assert other is not None
    registry.promote(engine, other.version)  # a gatekeeper's move, while the learner trained
    before = len(read_audit(engine, loop=LOOP))
    with pytest.raises(LiveVersionChanged):
        swap_in(engine, trained, parent=parent, now=clock(), reason="checks passed", details={})
    assert len(registry.list_versions(engine, LOOP)) == 2
    assert len(read_audit(engine, loop=LOOP)) == before
    live = registry.live_version(engine, LOOP)
    assert live is not None and live.version == other.version


# ------------------------------------------------------------------ the checks (pure functions)
EPS = make_explorer("epsilon_greedy", epsilon=0.2)
R = (0.0, 1.0)


def _events(
    new: list[list[float]], live: list[list[float]], rewards: list[float], action: int = 0
) -> list[SampleEvent]:
    return [
        SampleEvent(np.asarray(n), np.asarray(l_), action, 1.0 / len(n), r)
        for n, l_, r in zip(new, live, rewards, strict=True)
    ]


def test_non_finite_scores_fail() -> None:
    sample = _events([[1.0, float("nan")], [0.0, 1.0]], [[0.0, 0.0]] * 2, [1.0, 0.0])
    verdict = check_safety(sample, EPS, collapse_ratio=0.5, confidence=0.95, reward_range=R)
    assert not verdict.passed and "non-finite scores: 1 scores" in verdict.reason
    assert verdict.numbers.n_nonfinite == 1


def test_collapse_is_measured_on_the_served_pmf() -> None:
    soft = make_explorer("softmax", lam=100.0)
    sample = _events([[5.0, 0.0, 0.0]] * 10, [[0.0, 0.0, 0.0]] * 10, [0.0] * 10)
    verdict = check_safety(sample, soft, collapse_ratio=0.5, confidence=0.95, reward_range=R)
    assert not verdict.passed and "collapse" in verdict.reason
    assert verdict.numbers.entropy_live == pytest.approx(np.log(3))
    # epsilon-greedy serves the same pmf for any scores with one best action: no collapse
    trained = _events([[5.0, 0.0, 0.0]] * 10, [[0.1, 0.0, 0.0]] * 10, [0.0] * 10)
    verdict = check_safety(trained, EPS, collapse_ratio=1.0, confidence=0.95, reward_range=R)
    assert verdict.passed and verdict.numbers.entropy_new == verdict.numbers.entropy_live
    assert entropy(np.asarray([0.5, 0.5, 0.0])) == pytest.approx(np.log(2))


def test_a_significant_loss_of_ips_value_fails_and_noise_does_not() -> None:
    rng = np.random.default_rng(0)
    n = 400
    rewards = (rng.random(n) < 0.5).astype(float).tolist()
    # the logged action 0 was rewarded half the time: live puts its greedy mass on it, the new
    # version moves it elsewhere -> its IPS value is lower on every rewarded event
    new = [[0.0, 1.0, 0.0]] * n
    live = [[1.0, 0.0, 0.0]] * n
    verdict = check_safety(
        _events(new, live, rewards), EPS, collapse_ratio=0.5, confidence=0.95, reward_range=R
    )
    assert not verdict.passed and "significantly below" in verdict.reason
    assert verdict.numbers.ips_difference_upper is not None
    assert verdict.numbers.ips_difference_upper < 0
    # the same versions swapped: better, passes; equal versions: difference 0, passes
    assert check_safety(
        _events(live, new, rewards), EPS, collapse_ratio=0.5, confidence=0.95, reward_range=R
    ).passed
    assert check_safety(
        _events(live, live, rewards), EPS, collapse_ratio=0.5, confidence=0.95, reward_range=R
    ).passed


def test_one_event_leaves_the_ips_check_out() -> None:
    verdict = check_safety(
        _events([[0.0, 1.0]], [[1.0, 0.0]], [1.0]),
        EPS,
        collapse_ratio=0.5,
        confidence=0.95,
        reward_range=R,
    )
    assert verdict.passed and verdict.numbers.ips_difference_upper is None
    assert check_safety([], EPS, collapse_ratio=0.5, confidence=0.95, reward_range=R).passed


def test_a_continuation_that_is_not_worse_rarely_stops_the_track() -> None:
    """The IPS check's false stops: 100 trials where the new version differs from live on 10%
    of 300 events but every action has the same value (neither is worse): at most 5% may stop
    (the sequence is valid in finite samples)."""
    rng = np.random.default_rng(1)
    k, n, stops = 10, 300, 0
    for _ in range(100):
        best = rng.integers(0, k, n)
        moved = np.where(rng.random(n) < 0.1, rng.integers(0, k, n), best)
        action = rng.integers(0, k, n)
        reward = (rng.random(n) < 0.3).astype(float)
        sample = [
            SampleEvent(np.eye(k)[moved[i]], np.eye(k)[best[i]], int(action[i]), 1 / k, reward[i])
            for i in range(n)
        ]
        verdict = check_safety(sample, EPS, collapse_ratio=0.5, confidence=0.95, reward_range=R)
        stops += not verdict.passed
    assert stops <= 5
