"""The learner's candidate track: batch candidates of each configured VW argument set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

import deploy.registry as registry
from deploy.learner.candidates import candidates_due, run_candidates, training_window
from deploy.learner.faults import Faults
from learn.events import EventWindow, count_training_events
from log.audit import read_audit
from log.learner_state import get_learner_state, record_run
from log.writer import GroupCommitWriter
from tests.deploy.learner_helpers import LOOP, configure, log_joined, recent, stored_loop

NO_FAULTS = Faults()
GOOD = "-q ca --cb_type mtr"


def test_each_configuration_is_trained_on_the_window_but_its_newest_part(
    engine: Engine, writer: GroupCommitWriter, caplog: pytest.LogCaptureFixture
) -> None:
    configure(
        engine,
        learner={
            "candidates": [GOOD, "--cb_type dr -l 0.1", "--daemon"],
            "train_window_s": 3600,
            "holdout_fraction": 0.25,
        },
    )
    log_joined(engine, writer, 100, seed=1, start=recent(120), prefix="old")  # out of the window
    log_joined(engine, writer, 400, seed=2, start=recent(30), prefix="a", spacing_s=1.0)
    now = datetime.now(UTC)
    window = training_window(engine, stored_loop(engine), now)
    assert window is not None
    since, until, n_train, n_holdout = window
    assert since == now - timedelta(seconds=3600)
    assert (n_train, n_holdout) == (300, 100)

    run = run_candidates(engine, stored_loop(engine), now=now, faults=NO_FAULTS)
    assert run.outcome == "registered", run.message
    assert "2 candidate(s) registered on 300 events (100 held out for the gate)" in run.message
    assert "--daemon" in run.details["refused"]
    assert "vw_args may not set --daemon" in caplog.text
    versions = registry.list_versions(engine, LOOP)
    assert sorted(v.vw_args for v in versions) == sorted([GOOD, "--cb_type dr -l 0.1"])
    for v in versions:
        assert (v.kind, v.status, v.parent, v.n_events) == ("batch", "candidate", None, 300)
        assert v.trained_until is not None and v.trained_until < until
        assert v.trained_from is not None and v.trained_from >= since
        registry.load_artifact(engine, v.version)  # sha256 checked
        # the gate has its held-out events at once: decided after the version's window
        held_out = EventWindow(since=v.trained_until + timedelta(microseconds=1))
        assert count_training_events(engine, LOOP, held_out) == 100
    entries = [e for e in read_audit(engine, loop=LOOP) if e.action == "model.register"]
    assert {e.target for e in entries} == {v.version for v in versions}
    assert all(e.actor == "learner" and e.details["to"] == "candidate" for e in entries)
    assert entries[0].details["n_holdout"] == 100


def test_a_configuration_in_rollout_is_not_trained_again(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    configure(engine, learner={"candidates": [GOOD], "candidate_interval_s": 60})
    log_joined(engine, writer, 200, seed=3, start=recent(30), prefix="a")
    now = datetime.now(UTC)
    first = run_candidates(engine, stored_loop(engine), now=now, faults=NO_FAULTS)
    record_run(engine, LOOP, first)
    state = get_learner_state(engine, LOOP)
    assert state.last_candidate_at == now
    assert not candidates_due(stored_loop(engine), state, now + timedelta(seconds=59))
    assert candidates_due(stored_loop(engine), state, now + timedelta(seconds=60))

    again = run_candidates(
        engine, stored_loop(engine), now=now + timedelta(seconds=60), faults=NO_FAULTS
    )
    assert again.outcome == "idle" and again.details["in_rollout"] == [GOOD]
    assert len(registry.list_versions(engine, LOOP)) == 1
    # once it is decided (here: live), the configuration is trained again
    registry.promote(engine, first.details["registered"][0])
    third = run_candidates(
        engine, stored_loop(engine), now=now + timedelta(seconds=120), faults=NO_FAULTS
    )
    assert third.outcome == "registered"
    assert len(registry.list_versions(engine, LOOP)) == 2


def test_no_candidates_or_too_few_events(engine: Engine, writer: GroupCommitWriter) -> None:
    configure(engine)
    now = datetime.now(UTC)
    assert not candidates_due(stored_loop(engine), get_learner_state(engine, LOOP), now)
    configure(engine, learner={"candidates": [GOOD]})
    assert candidates_due(stored_loop(engine), get_learner_state(engine, LOOP), now)
    run = run_candidates(engine, stored_loop(engine), now=now, faults=NO_FAULTS)
    assert run.outcome == "idle" and "too few" in run.message
    log_joined(engine, writer, 1, seed=4, start=recent(5), prefix="a")
    assert training_window(engine, stored_loop(engine), datetime.now(UTC)) is None
    assert registry.list_versions(engine, LOOP) == []


def test_a_configuration_vw_refuses_with_the_loop_exploration_is_skipped(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    """A stored cover loop's candidate with --cb_type dm (which VW's cover refuses) is reported
    as refused and skipped; the others are trained with the reduction appended."""
    dm = "-q ca --cb_type dm"
    config = configure(
        engine,
        exploration="cover",
        epsilon=0.1,
        learner={"candidates": [dm, GOOD], "train_window_s": 3600, "holdout_fraction": 0.25},
    )
    log_joined(engine, writer, 200, seed=5, start=recent(30), prefix="c", spacing_s=0.1)
    run = run_candidates(engine, stored_loop(engine), now=datetime.now(UTC), faults=NO_FAULTS)
    assert run.outcome == "registered", run.message
    assert list(run.details["refused"]) == [dm]
    assert "--cb_type" in run.details["refused"][dm]
    versions = registry.list_versions(engine, LOOP)
    assert [v.vw_args for v in versions] == [config.with_explore_args(GOOD)]
