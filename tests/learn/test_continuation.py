"""Online continuation never skips nor repeats a joined event (issue 7, defect 7).

The learner resumes after its parent's `checkpoint_seq`, a commit-ordered join watermark.
Before, it resumed after a wall-clock `joined_at` with a strict `>`: every batch of one join
run shares one `joined_at`, so a learner running between two batches of a run learned the
first and skipped the others forever; a joiner host whose clock is behind had the same effect.
Each test counts what every version learned: the counts add up to the events joined, and the
last model is byte for byte the model of one pass over every event in join order (so each was
learned exactly once, in order).
"""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import Engine

import deploy.registry as registry
from evaluation.simulator import Simulator, SimulatorConfig
from learn import count_training_events, iter_training_events, learn_once, train
from log.joiner import join_loop
from log.writer import GroupCommitWriter
from policies.vw import VWPolicy
from tests.learn.conftest import LOOP, VW_ARGS
from tests.learn.helpers import T0, deadline, sim_events, write

SIM = Simulator(SimulatorConfig(seed=17))


def _learn(engine: Engine) -> int:
    """One online continuation, promoted; the number of events it learned."""
    result = learn_once(engine, LOOP, registry=registry, promote=True, progress=False)
    return result.n_events


def _check_exactly_once(engine: Engine, learned: list[int], n: int) -> None:
    versions = registry.list_versions(engine, LOOP)
    assert sum(learned) == n == count_training_events(engine, LOOP)
    assert sum(v.n_events for v in versions) == n
    assert [v.n_events for v in versions] == [k for k in learned if k]
    # a chain: each version continues the previous one
    assert [v.parent for v in versions] == [None] + [v.version for v in versions[:-1]]
    live = registry.live_version(engine, LOOP)
    assert live is not None and live.version == versions[-1].version
    assert live.checkpoint_seq == max(e.join_seq for e in iter_training_events(engine, LOOP))
    one_pass = VWPolicy(VW_ARGS)
    stats = train(one_pass, iter_training_events(engine, LOOP))
    assert stats.n_events == n
    assert one_pass.save() == registry.load_artifact(engine, live.version)


def test_learning_between_the_batches_of_one_join_run(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    n, batch = 40, 4
    write(writer, sim_events(SIM, n, seed=1))
    now = deadline(n)  # one join run: every batch gets this joined_at
    learned = []
    for _ in range(n // batch):
        stats = join_loop(
            engine,
            LOOP,
            default_reward=0.0,
            aggregation="earliest",
            now=now,
            batch_size=batch,
            max_batches=1,
        )
        assert stats.decisions == batch
        learned.append(_learn(engine))
    assert learned == [batch] * (n // batch)
    assert _learn(engine) == 0
    _check_exactly_once(engine, learned, n)


def test_a_joiner_whose_clock_is_behind(engine: Engine, writer: GroupCommitWriter) -> None:
    join = {"default_reward": 0.0, "aggregation": "earliest"}
    write(writer, sim_events(SIM, 20, seed=2))
    join_loop(engine, LOOP, now=deadline(19), **join)  # a host with the right time
    learned = [_learn(engine)]
    first = registry.live_version(engine, LOOP)
    assert first is not None and first.checkpoint == deadline(19)
    # decisions that reached the database late (spooled an hour), then joined by another
    # host whose clock is 5 minutes behind: their joined_at is before the checkpoint
    write(writer, sim_events(SIM, 10, seed=3, prefix="late", start=T0 - timedelta(hours=1)))
    join_loop(engine, LOOP, now=deadline(19) - timedelta(minutes=5), **join)
    late = [e for e in iter_training_events(engine, LOOP) if e.event_id.startswith("late")]
    assert len(late) == 10 and all(e.joined_at < first.checkpoint for e in late)
    learned.append(_learn(engine))
    assert learned == [20, 10]
    _check_exactly_once(engine, learned, 30)


def test_joiner_and_learner_running_concurrently(engine: Engine, writer: GroupCommitWriter) -> None:
    n = 120
    write(writer, sim_events(SIM, n, seed=4))
    done = threading.Event()
    errors: list[BaseException] = []

    def joiner() -> None:
        try:
            for i in range(2, n + 1, 2):  # many small runs, each of small batches
                join_loop(
                    engine,
                    LOOP,
                    default_reward=0.0,
                    aggregation="earliest",
                    now=deadline(i),
                    batch_size=1,
                )
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)
        finally:
            done.set()

    thread = threading.Thread(target=joiner)
    thread.start()
    learned = []
    try:
        while not done.is_set():
            learned.append(_learn(engine))
    finally:
        thread.join()
    assert not errors
    learned.append(_learn(engine))
    assert len([k for k in learned if k]) > 1  # the learner ran while the joiner did
    _check_exactly_once(engine, learned, n)
