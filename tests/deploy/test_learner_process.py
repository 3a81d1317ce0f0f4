"""The learner process: ticks dispatch per loop by due time, settings are re-read every tick, a
failing track does not stop the others, Ctrl-C/SIGTERM stop it cleanly (a training in progress
registers nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

import deploy.learner.process as process
import deploy.registry as registry
from deploy.learner import Learner, LearnerOptions
from learn import Stopped, learn_once
from log.learner_state import get_learner_state
from log.schema import make_engine, migrate
from log.writer import GroupCommitWriter
from tests.deploy.learner_helpers import LOOP, configure, log_joined, recent

GOOD = "-q ca --cb_type mtr"


def test_ticks_run_what_is_due_with_the_settings_read_at_that_tick(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    configure(engine, learner={"freshness_s": 0})
    configure(engine, "other", learner={"freshness_s": 0})
    log_joined(engine, writer, 200, seed=1, start=recent(30), prefix="a")
    learn_once(engine, LOOP, registry=registry, promote=True, progress=False)
    log_joined(engine, writer, 100, seed=2, start=recent(20), prefix="b")
    learner = Learner(engine, LearnerOptions(settle_s=0.0, rollout_every_s=60.0))
    now = datetime.now(UTC)
    runs = learner.tick(now)
    assert {loop: [r.track for r in rs] for loop, rs in runs.items()} == {
        LOOP: ["rollout"],
        "other": ["rollout"],
    }
    assert learner.tick(now + timedelta(seconds=1)) == {}  # nothing due
    # the loop's settings change while the learner runs: the next tick uses them
    configure(engine, learner={"freshness_s": 5, "freshness_min_events": 50, "candidates": [GOOD]})
    runs = learner.tick(now + timedelta(seconds=2))
    assert [(r.track, r.outcome) for r in runs[LOOP]] == [
        ("freshness", "swapped"),
        ("candidates", "registered"),
    ]
    assert "other" not in runs
    state = get_learner_state(engine, LOOP)
    assert state.last_freshness_at == now + timedelta(seconds=2)
    assert learner.tick(now + timedelta(seconds=3)) == {}
    runs = learner.tick(now + timedelta(seconds=7))
    assert [(r.track, r.outcome) for r in runs[LOOP]] == [("freshness", "waiting")]
    runs = learner.tick(now + timedelta(seconds=61))
    assert [r.track for r in runs[LOOP]] == ["freshness", "rollout"]
    assert [r.track for r in runs["other"]] == ["rollout"]


def test_a_failing_track_is_recorded_and_the_others_run(
    engine: Engine, writer: GroupCommitWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(engine, learner={"freshness_s": 0, "candidates": [GOOD]})
    configure(engine, "other", learner={"freshness_s": 0, "candidates": [GOOD]})
    log_joined(engine, writer, 200, seed=1, start=recent(30), prefix="a")
    log_joined(engine, writer, 200, seed=1, start=recent(30), prefix="a", loop="other")
    real = process.run_candidates

    def broken(engine: Engine, stored: Any, **kwargs: Any) -> Any:
        if stored.name == LOOP:
            raise RuntimeError("disk on fire")
        return real(engine, stored, **kwargs)

    monkeypatch.setattr(process, "run_candidates", broken)
    runs = Learner(engine, LearnerOptions(settle_s=0.0)).tick()
    assert [(r.track, r.outcome) for r in runs[LOOP]] == [
        ("candidates", "failed"),
        ("rollout", "idle"),
    ]
    assert "RuntimeError: disk on fire" in runs[LOOP][0].message
    assert (runs["other"][0].track, runs["other"][0].outcome) == ("candidates", "registered")
    state = get_learner_state(engine, LOOP)
    assert state.last_candidate_at is None  # a failed run is tried again next tick
    assert state.runs[-1].outcome == "failed"


class StopAfter(threading.Event):
    """A stop event that turns set after `n` looks (a Ctrl-C in the middle of a training)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.looks = n

    def is_set(self) -> bool:
        self.looks -= 1
        return self.looks < 0 or super().is_set()


def test_a_stop_during_training_registers_nothing(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    configure(engine, learner={"freshness_s": 1, "freshness_min_events": 10})
    log_joined(engine, writer, 100, seed=1, start=recent(30), prefix="a")
    learn_once(engine, LOOP, registry=registry, promote=True, progress=False)
    log_joined(engine, writer, 100, seed=2, start=recent(20), prefix="b")
    before = registry.list_versions(engine, LOOP)
    learner = Learner(engine, LearnerOptions(settle_s=0.0), stop=StopAfter(5))
    with pytest.raises(Stopped):
        learner.tick()
    assert registry.list_versions(engine, LOOP) == before
    assert get_learner_state(engine, LOOP).runs == ()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_the_learner_command_stops_cleanly_on_sigterm_and_ctrl_c(
    tmp_path: Path, how: signal.Signals
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = make_engine(url)
    migrate(engine)
    configure(engine)
    engine.dispose()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from decision_service.cli import main; main()", "learner"],
        env={**os.environ, "DS_DATABASE_URL": url},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the scheduler has started and the first tick ran
        seen.append(line)
        if "learner tick" in line and "executed successfully" in line:
            break
    proc.send_signal(how)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(seen) + rest
    assert "learner stopped" in rest
    assert "Traceback" not in "".join(seen) + rest


def test_a_stop_of_the_freshness_track_is_among_the_last_runs(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    from tests.deploy.learner_helpers import untrained_live

    configure(
        engine,
        exploration="softmax",
        softmax_lambda=50.0,
        learner={"freshness_s": 1, "freshness_min_events": 50, "collapse_ratio": 1.0},
    )
    log_joined(engine, writer, 100, seed=1, start=recent(30), prefix="a")
    untrained_live(engine)
    learner = Learner(engine, LearnerOptions(settle_s=0.0))
    now = datetime.now(UTC)
    runs = learner.tick(now)
    assert [(r.track, r.outcome) for r in runs[LOOP]] == [
        ("freshness", "stopped"),
        ("rollout", "idle"),
    ]
    state = get_learner_state(engine, LOOP)
    assert state.freshness_stopped and [r.outcome for r in state.runs] == ["idle", "stopped"]
    # stopped: later ticks leave the track alone
    runs = learner.tick(now + timedelta(hours=1))
    assert [r.track for r in runs[LOOP]] == ["rollout"]
