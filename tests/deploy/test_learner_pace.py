"""Learning at the pace of events: consecutive freshness runs, with events joined between them
in batches of uneven sizes, learn every joined event exactly once (event counts), for a loop
that explores over the model's scores and for one whose model explores itself (VW RegCB-opt,
trained with its reduction, its pmf checked by the safety checks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

import deploy.registry as registry
from deploy.learner.candidates import run_candidates
from deploy.learner.faults import Faults
from deploy.learner.freshness import run_freshness
from learn import learn_once
from log.writer import GroupCommitWriter
from tests.deploy.learner_helpers import LOOP, configure, log_joined, recent, stored_loop

BATCHES = (40, 75, 1, 120)
STRATEGIES: dict[str, dict[str, Any]] = {
    "squarecb": {"exploration": "squarecb"},
    "regcbopt": {"exploration": "regcbopt", "exploration_options": {"floor": 0.05}},
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_joined_event_is_learned_once(
    engine: Engine, writer: GroupCommitWriter, name: str
) -> None:
    configure(
        engine,
        learner={"freshness_s": 1, "freshness_min_events": 1, "collapse_ratio": 0.0},
        **STRATEGIES[name],
    )
    log_joined(engine, writer, 300, seed=1, start=recent(30), prefix="a")
    first = learn_once(engine, LOOP, registry=registry, promote=True, progress=False).version
    assert first is not None and first.n_events == 300
    if name == "regcbopt":  # trained with the strategy's VW reduction
        assert "--cb_explore_adf --regcbopt" in first.vw_args
    learned: list[int] = []
    previous = first
    start = recent(20)
    for k, n in enumerate(BATCHES):
        start = start + timedelta(seconds=30)
        log_joined(engine, writer, n, seed=10 + k, start=start, prefix=f"b{k}-")
        now = datetime.now(UTC)
        counted: list[int] = []
        run, ran = run_freshness(
            engine, stored_loop(engine), now=now, faults=Faults(), on_event=counted.append
        )
        assert ran and run.outcome == "swapped", run.message
        live = registry.live_version(engine, LOOP)
        assert live is not None and live.parent == previous.version
        assert live.n_events == n and counted[-1] == n  # nothing skipped, nothing twice
        assert live.checkpoint_seq is not None and previous.checkpoint_seq is not None
        assert live.checkpoint_seq > previous.checkpoint_seq
        learned.append(live.n_events)
        previous = live
        # nothing new: the next run waits and registers nothing
        again, ran = run_freshness(engine, stored_loop(engine), now=now, faults=Faults())
        assert (again.outcome, ran) == ("waiting", False) and "0 new joined" in again.message
    assert sum(learned) == sum(BATCHES)
    assert len(registry.list_versions(engine, LOOP)) == 1 + len(BATCHES)


def test_candidates_of_a_vw_strategy_are_trained_with_its_reduction_once(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    configure(
        engine,
        exploration="bag",
        learner={"candidates": ["-q ca --cb_type mtr"], "candidate_interval_s": 60},
    )
    log_joined(engine, writer, 200, seed=3, start=recent(30), prefix="a")
    now = datetime.now(UTC)
    first = run_candidates(engine, stored_loop(engine), now=now, faults=Faults())
    assert first.outcome == "registered", first.message
    (version,) = registry.list_versions(engine, LOOP)
    assert version.vw_args.startswith("-q ca --cb_type mtr --cb_explore_adf --bag 4")
    # in rollout: not trained again although its stored arguments carry the reduction
    again = run_candidates(
        engine, stored_loop(engine), now=now + timedelta(seconds=60), faults=Faults()
    )
    assert again.outcome == "idle" and again.details["in_rollout"] == ["-q ca --cb_type mtr"]
    assert len(registry.list_versions(engine, LOOP)) == 1
