"""Training from the store: it learns, continues online exactly, and registers atomically."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

import deploy.registry as registry
import log.registry_store
from evaluation.simulator import Simulator, SimulatorConfig
from explore.types import Action
from learn import iter_training_events, learn_once, train
from log.joiner import join_loop
from log.writer import GroupCommitWriter
from policies.vw import VWPolicy
from tests.learn.conftest import LOOP, VW_ARGS
from tests.learn.helpers import T0, deadline, greedy, sim_events, write

SIM = Simulator(SimulatorConfig(seed=3))


def _join(engine: Engine, now: datetime) -> None:
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=now)


def _model(engine: Engine, version: str) -> VWPolicy:
    return VWPolicy(VW_ARGS, model=registry.load_artifact(engine, version))


def _held_out(n: int = 50) -> list[tuple[dict[str, Any], list[Action]]]:
    rng = np.random.default_rng(99)
    out = []
    for _ in range(n):
        ctx = SIM.sample_context(rng)
        items = SIM.candidates(ctx, rng)
        out.append((dict(ctx.features), [Action(it.id, it.features) for it in items]))
    return out


def test_training_from_a_simulated_log_improves_the_true_reward(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    n = 4000
    write(writer, sim_events(SIM, n, seed=1))
    _join(engine, deadline(n))
    result = learn_once(engine, LOOP, registry=registry, mode="batch", progress=False)
    assert result.version is not None and result.n_events == n and result.n_skipped == 0
    assert result.version.status == "candidate"
    policy = _model(engine, result.version.version)
    trained = SIM.policy_value(greedy(policy), n_contexts=3000)
    untrained = SIM.policy_value(greedy(VWPolicy(VW_ARGS)), n_contexts=3000)
    uniform = SIM.uniform_value(n_contexts=3000)
    # uniform ~0.13, oracle ~0.46: the trained greedy policy gets most of the way there
    assert trained > uniform + 0.12, (trained, uniform)
    assert trained > untrained + 0.1, (trained, untrained)


def test_online_continuation_equals_one_pass(engine: Engine, writer: GroupCommitWriter) -> None:
    n = 600
    write(writer, sim_events(SIM, n, seed=2))
    _join(engine, deadline(299))
    first = learn_once(engine, LOOP, registry=registry, promote=True, progress=False)
    assert first.version is not None and first.n_events == 300
    v1 = registry.live_version(engine, LOOP)
    assert v1 is not None and v1.version == first.version.version
    assert (v1.kind, v1.parent, v1.checkpoint) == ("online", None, deadline(299))
    assert v1.checkpoint_seq == 1
    assert (v1.trained_from, v1.trained_until) == (T0, T0 + timedelta(seconds=299))

    _join(engine, deadline(n))
    second = learn_once(engine, LOOP, registry=registry, promote=True, progress=False)
    assert second.version is not None and second.n_events == 300
    v2 = registry.live_version(engine, LOOP)
    assert v2 is not None and v2.version == second.version.version
    assert (v2.parent, v2.checkpoint, v2.n_events) == (v1.version, deadline(n), 300)
    assert v2.checkpoint_seq == 2
    # the training window covers the lineage: v2's model has learned v1's events too
    assert (v2.trained_from, v2.trained_until) == (T0, T0 + timedelta(seconds=n - 1))

    one_pass = VWPolicy(VW_ARGS)
    stats = train(one_pass, iter_training_events(engine, LOOP))
    assert stats.n_events == n
    # the same bytes (saved before predicting: predictions move VW's example counters)
    assert one_pass.save() == registry.load_artifact(engine, v2.version)
    continued = _model(engine, v2.version)
    for context, actions in _held_out():
        np.testing.assert_allclose(
            continued.scores(context, actions), one_pass.scores(context, actions), rtol=1e-12
        )


def test_checkpoint_picks_up_late_joins_and_skips_when_nothing_is_new(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    write(writer, sim_events(SIM, 50, seed=3))
    _join(engine, deadline(49))
    assert learn_once(engine, LOOP, registry=registry, promote=True, progress=False).version

    nothing = learn_once(engine, LOOP, registry=registry, progress=False)
    assert nothing.version is None and nothing.n_events == 0
    assert "no new joined events" in nothing.message
    assert len(registry.list_versions(engine, LOOP)) == 1

    # decided before everything learned so far, joined after the checkpoint
    write(writer, sim_events(SIM, 5, seed=4, prefix="late", start=T0 - timedelta(days=1)))
    _join(engine, deadline(60))
    late = learn_once(engine, LOOP, registry=registry, progress=False)
    assert late.version is not None and late.n_events == 5
    assert late.version.checkpoint == deadline(60)
    assert late.version.status == "candidate"
    stored = registry.get_version(engine, late.version.version)
    assert stored is not None and stored.trained_from == T0 - timedelta(days=1)


def test_batch_retrains_a_window_from_scratch(engine: Engine, writer: GroupCommitWriter) -> None:
    write(writer, sim_events(SIM, 100, seed=5))
    _join(engine, deadline(99))
    assert learn_once(engine, LOOP, registry=registry, promote=True, progress=False).version
    since, until = T0 + timedelta(seconds=10), T0 + timedelta(seconds=40)
    result = learn_once(
        engine, LOOP, registry=registry, mode="batch", since=since, until=until, progress=False
    )
    v = result.version
    assert v is not None and result.n_events == 30
    stored = registry.get_version(engine, v.version)
    assert stored is not None
    assert (stored.kind, stored.parent, stored.status) == ("batch", None, "candidate")
    assert (stored.trained_from, stored.trained_until) == (since, until - timedelta(seconds=1))
    assert stored.checkpoint == deadline(99)

    fresh = VWPolicy(VW_ARGS)
    train(fresh, iter_training_events(engine, LOOP, order="decided"))
    assert fresh.save() != registry.load_artifact(engine, v.version)  # only the window

    empty = learn_once(
        engine, LOOP, registry=registry, mode="batch", since=T0 + timedelta(days=1), progress=False
    )
    assert empty.version is None and "in the window: nothing registered" in empty.message


def test_slate_log_trains_per_slot(engine: Engine, writer: GroupCommitWriter) -> None:
    n = 1500
    write(writer, sim_events(SIM, n, seed=6, n_slots=3, n_excluded=2))
    _join(engine, deadline(n))
    result = learn_once(engine, LOOP, registry=registry, mode="batch", progress=False)
    assert result.version is not None
    assert (result.n_events, result.n_examples, result.n_skipped) == (n, 3 * n, 0)
    policy = _model(engine, result.version.version)
    trained = SIM.policy_value(greedy(policy), n_contexts=2000)
    assert trained > SIM.uniform_value(n_contexts=2000) + 0.08


def test_interrupted_training_registers_nothing(engine: Engine, writer: GroupCommitWriter) -> None:
    write(writer, sim_events(SIM, 200, seed=7))
    _join(engine, deadline(99))
    live = learn_once(engine, LOOP, registry=registry, promote=True, progress=False).version
    assert live is not None
    _join(engine, deadline(199))

    def interrupt(n: int) -> None:
        if n == 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        learn_once(engine, LOOP, registry=registry, on_event=interrupt, progress=False)
    assert [v.version for v in registry.list_versions(engine, LOOP)] == [live.version]
    assert registry.live_version(engine, LOOP) == registry.get_version(engine, live.version)


def test_failed_registration_leaves_nothing(
    engine: Engine, writer: GroupCommitWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(writer, sim_events(SIM, 100, seed=8))
    _join(engine, deadline(99))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("connection lost")

    # the version row is inserted, then the transaction fails before it commits
    monkeypatch.setattr(log.registry_store, "_set_live", broken)
    with pytest.raises(RuntimeError, match="connection lost"):
        learn_once(engine, LOOP, registry=registry, promote=True, progress=False)
    assert registry.list_versions(engine, LOOP) == []


def test_progress_bar_on_stderr(
    engine: Engine, writer: GroupCommitWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    write(writer, sim_events(SIM, 20, seed=9))
    _join(engine, deadline(19))
    result = learn_once(engine, LOOP, registry=registry)
    captured = capsys.readouterr()
    assert result.n_events == 20
    assert "learn default (online)" in captured.err and "20/20" in captured.err
    assert captured.out == ""
    assert result.to_json()["version"]["version"] == result.version.version  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "nightly"}, ValueError, "mode must be one of"),
        ({"since": T0}, ValueError, "since/until apply to batch mode only"),
        ({"mode": "batch", "since": T0, "until": T0}, ValueError, "must be before until"),
        ({"loop": "nope"}, LookupError, "loop 'nope' does not exist"),
        (
            {"mode": "batch", "until": datetime(2026, 1, 1)},
            ValueError,
            "until must be a timezone-aware datetime, got 2026-01-01T00:00:00",
        ),
        ({"through_seq": -1}, ValueError, "through_seq must be an int >= 0"),
    ],
)
def test_invalid_arguments(
    engine: Engine, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    kwargs = dict(kwargs)
    loop = kwargs.pop("loop", LOOP)
    with pytest.raises(error, match=match):
        learn_once(engine, loop, registry=registry, progress=False, **kwargs)
