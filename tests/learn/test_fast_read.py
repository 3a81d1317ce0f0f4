"""The training read path (`iter_training_rows` + `LineBuilder.row_lines`) gives exactly what
the record path (`iter_training_events` + `LineBuilder.event_lines`) gives: the same events in
the same order, byte-identical VW lines, the same skips, and so the same model."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, event, inspect, text

from evaluation.simulator import Simulator, SimulatorConfig
from explore.types import Action
from learn.events import EventWindow, iter_training_events, iter_training_rows
from learn.examples import LineBuilder, prepare, prepare_rows
from learn.reader import iter_forked
from learn.train import learn_frames, learn_prepared
from log.joiner import join_loop
from log.ops import Op
from log.records import DecisionRecord, RewardRecord
from log.writer import GroupCommitWriter
from policies.vw import VWPolicy
from tests.learn.conftest import LOOP, VW_ARGS
from tests.learn.helpers import T0, WAIT_S, deadline, sim_events, write

SIM = Simulator(SimulatorConfig(seed=5))

# features whose JSON holds the element separator inside a string and in a nested list of
# objects (the cut must fall back to a whole parse), nested objects, lists, booleans, ints
ODD_FEATURES: list[dict[str, Any]] = [
    {"note": 'a}, {"id": "x"} b', "n": 3},
    {"tags": [{"a": 1}, {"b": 2}], "on": True, "off": False},
    {"deep": {"x": 1.5, "y": {"z": "w"}}, "v": [1, 2.5, "s"]},
    {"k": "v", "big": 12345678901234, "tiny": 1e-300},
]


def _odd_events(n: int, start_i: int) -> list[Op]:
    ops: list[Op] = []
    for j in range(n):
        i = start_i + j
        decided_at = T0 + timedelta(seconds=i)
        event_id = f"odd{j:04d}"
        actions = [{"id": f"o{k}", "features": f} for k, f in enumerate(ODD_FEATURES)]
        # an id holding the separator of stored references (log/action_store.py)
        actions.append({"id": 'plain "],[" id', "features": {"x": j % 3}})
        mode = ("LoggingOnly", "Apprentice", None, None)[j % 4]
        shadow = None if mode is None else {"mode": mode, "version": "v0", "pmf": [0.2] * 5}
        chosen = "missing" if j % 7 == 6 else actions[j % 5]["id"]  # some cannot be learned
        ops.append(
            DecisionRecord.from_row(
                {
                    "loop": LOOP,
                    "event_id": event_id,
                    "decided_at": decided_at,
                    "model_version": "untrained",
                    "policy_arm": "live",
                    "request_digest": "0" * 64,
                    "context": {"u": f"user {j % 4}", "h": j % 24, "nested": {"a": [1, 2]}},
                    "actions": actions,
                    "pmf": [0.2] * 5,
                    "excluded": [],
                    "chosen": chosen,
                    "slots": [{"slot": 0, "action_id": chosen, "probability": 0.2}],
                    "n_slots": 1,
                    "is_slate": False,
                    "deferred": False,
                    "activated_at": None,
                    "reward_deadline": decided_at + timedelta(seconds=WAIT_S),
                    "response": {"event_id": event_id},
                    "shadow": shadow,
                }
            )
        )
        ops.append(
            RewardRecord.from_row(
                {
                    "reward_id": f"{event_id}-0",
                    "loop": LOOP,
                    "event_id": event_id,
                    "slot": 0,
                    "value": float(j % 2),
                    "received_at": decided_at + timedelta(seconds=1),
                    "late": False,
                }
            )
        )
    return ops


@pytest.fixture
def logged(engine: Engine, writer: GroupCommitWriter, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """Every event stored by reference (log/action_store.py; the 0011 downgrade test reads
    them again inline)."""
    import log.action_store as action_store

    monkeypatch.setattr(action_store, "POLICY", action_store.ReferencePolicy(seen=False, gain=0.0))
    write(writer, sim_events(SIM, 300, seed=11))
    write(writer, sim_events(SIM, 120, seed=12, n_slots=3, n_excluded=2, prefix="s"))
    write(writer, _odd_events(40, 300))
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=deadline(200))
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=deadline(400))
    return engine


@pytest.mark.parametrize("order", ["seq", "decided"])
def test_rows_give_byte_identical_examples(logged: Engine, order: Any) -> None:
    window = EventWindow()
    old = list(
        prepare(
            iter_training_events(logged, LOOP, window, order=order, chunk_size=64), LineBuilder()
        )
    )
    new = list(
        prepare_rows(
            iter_training_rows(logged, LOOP, window, order=order, chunk_size=64), LineBuilder()
        )
    )
    assert len(old) == 300 + 120 + 40
    assert new == old
    skipped = [p for p in new if isinstance(p[4], str)]
    not_learned = [p for p in new if p[4] == []]
    # chosen not a candidate (j % 7 == 6, but j = 20 is LoggingOnly); LoggingOnly (j % 4 == 0)
    assert len(skipped) == 4 and len(not_learned) == 10
    assert sum(isinstance(p[4], list) and len(p[4]) == 3 for p in new) == 120  # slates


def test_rows_train_the_same_model(logged: Engine) -> None:
    window = EventWindow(through_seq=1)
    models = []
    for prepared in (
        prepare(iter_training_events(logged, LOOP, window), LineBuilder()),
        prepare_rows(iter_training_rows(logged, LOOP, window), LineBuilder(max_cached=7)),
    ):
        policy = VWPolicy(VW_ARGS)
        stats = learn_prepared(policy, prepared)
        assert stats.n_events > 150
        models.append(policy)
    rng = np.random.default_rng(3)
    context = SIM.sample_context(rng)
    items = [Action(f"o{k}", f) for k, f in enumerate(ODD_FEATURES)]
    items += [Action(it.id, it.features) for it in SIM.candidates(context, rng)]
    ctx = dict(context.features)
    assert models[0].scores(ctx, items).tolist() == models[1].scores(ctx, items).tolist()
    assert models[0].save() == models[1].save()
    # the forked reader: the same examples, sent as one text each, give the same model
    # (models[0] has predicted since: VW counts predictions in the saved model)
    inline, forked = VWPolicy(VW_ARGS), VWPolicy(VW_ARGS)
    expected = learn_prepared(
        inline, prepare(iter_training_events(logged, LOOP, window), LineBuilder())
    )
    got = learn_frames(forked, iter_forked(logged, LOOP, window, order="seq", chunk_size=16))
    assert got == expected
    assert forked.save() == inline.save()


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "training-read-ahead"]


def test_the_read_ahead_ends_with_its_reader(logged: Engine) -> None:
    rows = iter_training_rows(logged, LOOP, EventWindow(), chunk_size=16)
    assert next(rows).event_id
    # PostgreSQL reads ahead in a thread; SQLite in the caller's (no GIL contention)
    assert len(_read_ahead_threads()) == (logged.dialect.name == "postgresql")
    rows.close()
    assert _read_ahead_threads() == []
    assert len(list(iter_training_rows(logged, LOOP, EventWindow(), chunk_size=16))) == 460
    assert _read_ahead_threads() == []


def test_a_failing_read_ahead_raises_in_the_reader(logged: Engine) -> None:
    with logged.begin() as conn:  # the keys read; the chunk fetch then fails on outcomes
        conn.execute(text("DROP TABLE outcomes"))
    with pytest.raises(Exception, match="outcomes"):
        list(iter_training_rows(logged, LOOP, EventWindow(), chunk_size=16))
    assert _read_ahead_threads() == []


def _statements(engine: Engine, read: Any) -> list[tuple[str, Any]]:
    """The SELECTs on decisions that `read()` sends to the database, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "decisions" in statement:
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        read()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return seen


def _plan(engine: Engine, statement: str, params: Any) -> str:
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
            return "\n".join(str(r[-1]) for r in rows)
        # no sort unless nothing else gives the order (a tiny table would rather sort)
        conn.exec_driver_sql("SET enable_sort = off")
        conn.exec_driver_sql("SET enable_seqscan = off")
        rows = conn.exec_driver_sql("EXPLAIN " + statement, params)
        return "\n".join(str(r[0]) for r in rows)


@pytest.mark.parametrize("order", ["seq", "decided"])
def test_ordered_reads_need_no_sort(logged: Engine, order: Any) -> None:
    """Revision 0011: the (loop, join_seq, event_id) and (loop, decided_at, event_id) indexes
    give the reads their whole order, so no read sorts the window (SQLite sorted each join
    batch's rows, whole, in a temporary b-tree)."""
    window = EventWindow()

    def read() -> None:
        list(iter_training_rows(logged, LOOP, window, order=order, chunk_size=64))
        list(iter_training_events(logged, LOOP, window, order=order, chunk_size=64))

    statements = [s for s in _statements(logged, read) if "ORDER BY" in s[0].upper()]
    assert len(statements) == 2
    for statement, params in statements:
        plan = _plan(logged, statement, params)
        assert "TEMP B-TREE" not in plan.upper() and "Sort" not in plan, plan
        index = (
            "ix_decisions_loop_seq_event" if order == "seq" else "ix_decisions_loop_decided_event"
        )
        assert index in plan, plan


def test_ordered_read_indexes_downgrade_and_upgrade(logged: Engine) -> None:
    from alembic import command

    from log.db import database_url
    from log.schema import alembic_config, migrate

    def events() -> list[Any]:
        return list(prepare_rows(iter_training_rows(logged, LOOP), LineBuilder()))

    def indexes() -> set[str]:
        return {ix["name"] for ix in inspect(logged).get_indexes("decisions") if ix["name"]}

    assert {"ix_decisions_loop_seq_event", "ix_decisions_loop_decided_event"} <= indexes()
    before = events()
    cfg = alembic_config(database_url(logged))
    with logged.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0010")
    assert {"ix_decisions_loop_join_seq", "ix_decisions_loop_decided"} <= indexes()
    assert not {"ix_decisions_loop_seq_event", "ix_decisions_loop_decided_event"} & indexes()
    migrate(logged)
    assert {"ix_decisions_loop_seq_event", "ix_decisions_loop_decided_event"} <= indexes()
    assert len(before) == 460 and events() == before


def test_bodies_are_looked_up_only_for_lines_not_memoised(logged: Engine) -> None:
    """Actions are stored by reference (log/action_store.py): a read looks their bodies up only
    when the builder meets a reference it has not memoised, once per chunk. A second pass with
    the same builder (a catalog's steady state) looks nothing up and builds the same lines."""
    lookups: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "action_features" in statement:
            lookups.append(statement)

    builder = LineBuilder()

    def read() -> list[Any]:
        return list(prepare_rows(iter_training_rows(logged, LOOP, chunk_size=64), builder))

    event.listen(logged, "before_cursor_execute", capture)
    try:
        first = read()
        n_first = len(lookups)
        second = read()
    finally:
        event.remove(logged, "before_cursor_execute", capture)
    assert 1 <= n_first <= len(first) // 64 + 1
    assert len(lookups) == n_first
    assert second == first


def test_a_small_body_cache_still_gives_every_line(logged: Engine) -> None:
    """A read whose bodies outgrow its mapping (100 bytes here) starts a new one: every row still
    finds its bodies (a fresh builder per chunk, so every chunk looks its bodies up)."""
    import log.action_store as action_store

    window = EventWindow()
    expected = list(prepare(iter_training_events(logged, LOOP, window), LineBuilder()))
    real = action_store.BodyReader.__init__

    def small(self: Any, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **{**kwargs, "max_bytes": 100})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(action_store.BodyReader, "__init__", small)
        got = []
        for rows in _chunks(iter_training_rows(logged, LOOP, window, chunk_size=32), 32):
            got.extend(prepare_rows(rows, LineBuilder(max_cached=4)))
    assert got == expected


def _chunks(rows: Any, n: int) -> Any:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
