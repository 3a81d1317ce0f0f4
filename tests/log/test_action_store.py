"""Action features stored once (revision 0012, log/action_store.py): decisions keep references
to content-addressed bodies; every read gives back the record as written, for rows stored by
reference and rows stored inline before 0012; a body is committed with the first decision
that needs it and never assumed stored after a failed transaction."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, exc, func, insert, inspect, select, text

import log.action_store as action_store
import log.apply
from log.action_store import (
    BodyReader,
    KnownBodies,
    MissingActionBody,
    ReferencePolicy,
    action_reference,
)
from log.apply import apply_records
from log.decision_reads import iter_decisions
from log.models import ActionFeaturesRow, DecisionRow
from log.records import DecisionRecord, new_event_id
from log.spool import SpoolIndex
from log.store import get_stored_decision
from log.writer import GroupCommitWriter
from tests.log.helpers import T0, decision_rec, decision_row
from tests.log.test_writer import wait_until

# a catalog whose features take every JSON shape, ids with the characters a text cut might
# trip on, and two items with the same features (one body, two ids)
CATALOG: list[dict[str, Any]] = [
    {"id": "plain", "features": {"x": 1}},
    {"id": "same-as-plain", "features": {"x": 1}},
    {"id": 'odd "],[" id', "features": {"s": "a],[b", "n": -2.5e-7}},
    {"id": "nested", "features": {"d": {"e": [1, 2.5, "z"], "f": None}, "b": True}},
    {"id": "unicode é", "features": {"città": "Zürich", "emoji": "🙂"}},
    {"id": "empty", "features": {}},
    *({"id": f"item{i}", "features": {"price": i * 1.25, "cat": f"c{i % 3}"}} for i in range(14)),
]


def _decisions(n: int, seed: int, prefix: str = "e") -> list[DecisionRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        actions = rng.sample(CATALOG, rng.randint(1, 8))
        out.append(
            dataclasses.replace(
                decision_rec(f"{prefix}{i:04d}", decided_at=T0),
                actions=[dict(a) for a in actions],
                pmf=[1 / len(actions)] * len(actions),
                chosen=actions[0]["id"],
                slots=[{"slot": 0, "action_id": actions[0]["id"], "probability": 1 / len(actions)}],
            )
        )
    return out


@pytest.fixture(autouse=True)
def always_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests exercise references: every decision refers (the policy's own tests below
    set it back), and each test starts with an empty memo of digests."""
    monkeypatch.setattr(action_store, "POLICY", ReferencePolicy(seen=False, gain=0.0))
    monkeypatch.setattr(action_store, "_DIGESTS", action_store._DigestMemo(16 * 1024 * 1024))


def _count(engine: Engine, model: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def _stored_actions(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT CAST(actions AS TEXT) FROM decisions")).scalars()
        return [orjson.loads(r) for r in rows]


def _distinct_bodies(records: list[DecisionRecord]) -> set[str]:
    return {action_reference(a)[1] for r in records for a in r.actions}


def test_each_body_is_stored_once_and_reads_give_the_records_back(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    records = _decisions(200, seed=1)
    for lo in range(0, len(records), 25):
        assert all(writer.write_sync(list(records[lo : lo + 25])).inserted)
    # every row refers; each distinct body (19: two items share theirs) is stored once
    stored = _stored_actions(engine)
    assert len(stored) == 200
    assert all(isinstance(a, list) and len(a) == 2 for row in stored for a in row)
    assert len(_distinct_bodies(records)) == 19
    assert _count(engine, ActionFeaturesRow) == 19
    # the exports' stream, the replay lookup: the records as written
    read = [d.record for d in iter_decisions(engine, "default", yield_per=16)]
    assert sorted(read, key=lambda r: r.event_id) == records
    index = SpoolIndex(writer.spool.directory)
    for rec in records[:20]:
        assert get_stored_decision(engine, index, rec.loop, rec.event_id) == rec


def test_rows_stored_inline_before_0012_read_alongside_references(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    """Rows written before revision 0012 keep their inline actions; a read mixing them with
    references gives every record as written."""
    old = [decision_row(f"old{i}") for i in range(5)]
    with engine.begin() as conn:
        conn.execute(insert(DecisionRow), old)
    new = _decisions(5, seed=2)
    writer.write_sync(list(new))
    read = {d.record.event_id: d.record for d in iter_decisions(engine, "default")}
    assert len(read) == 10
    for row in old:
        assert read[row["event_id"]] == DecisionRecord.from_row(row)
    for rec in new:
        assert read[rec.event_id] == rec
    forms = {isinstance(row[0], list) for row in _stored_actions(engine)}
    assert forms == {True, False}


def test_a_rolled_back_group_leaves_no_body_assumed_stored(engine: Engine) -> None:
    """Bodies become known to a writer only once their transaction committed: after a
    rollback the next group writes them again (otherwise it would store references to
    nothing)."""
    known = KnownBodies()
    first, second = _decisions(2, seed=3)
    second = dataclasses.replace(second, actions=first.actions, chosen=first.chosen)
    with engine.connect() as conn:
        tx = conn.begin()
        apply_records(conn, [first], known=known)
        tx.rollback()
    known.discard()
    assert _count(engine, ActionFeaturesRow) == 0
    with engine.begin() as conn:
        apply_records(conn, [second], known=known)
    known.commit()
    assert _count(engine, ActionFeaturesRow) == len(_distinct_bodies([second]))
    # known now: a third decision with the same actions writes no body
    with engine.begin() as conn:
        sent = log.apply.write_bodies(conn, log.apply.stored_actions([second])[1], known)
    assert sent == 0
    assert [d.record for d in iter_decisions(engine, "default")] == [second]


def test_a_failed_commit_spools_and_ships_with_every_body(
    engine: Engine, writer: GroupCommitWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fails after a group's bodies were written (inside its transaction): the
    group is spooled, then shipped; nothing is lost and every reference has its body."""
    warm = _decisions(3, seed=4, prefix="warm")
    writer.write_sync(list(warm))  # some bodies committed and known to the writer
    real = log.apply._insert_decisions
    calls = {"n": 0}

    def failing(conn: Any, records: Any, refs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise exc.OperationalError("INSERT", None, Exception("connection lost"))
        return real(conn, records, refs)

    monkeypatch.setattr(log.apply, "_insert_decisions", failing)
    monkeypatch.setattr(log.apply, "copy_decisions", _failing_copy(log.apply.copy_decisions))
    records = [dataclasses.replace(r, event_id=new_event_id()) for r in _decisions(40, seed=5)]
    result = writer.write_sync(list(records))
    assert result.spooled and all(result.inserted)
    spool_dir = writer.spool.directory
    wait_until(lambda: not list(spool_dir.glob("*.seg")))
    read = {d.record.event_id: d.record for d in iter_decisions(engine, "default")}
    assert len(read) == 43
    assert all(read[r.event_id] == r for r in records)
    assert _count(engine, ActionFeaturesRow) == len(_distinct_bodies([*warm, *records]))


def _failing_copy(real: Any) -> Any:
    """PostgreSQL's first try is a direct COPY: fail the first one."""
    calls = {"n": 0}

    def copy(conn: Any, records: Any, refs: Any, *, direct: bool = False) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise exc.OperationalError("COPY", None, Exception("connection lost"))
        return real(conn, records, refs, direct=direct)

    return copy


def test_a_missing_body_fails_the_read_loudly(engine: Engine, writer: GroupCommitWriter) -> None:
    writer.write_sync(_decisions(3, seed=6))
    with engine.begin() as conn:
        conn.execute(ActionFeaturesRow.__table__.delete())
    with pytest.raises(MissingActionBody, match="not stored"):
        list(iter_decisions(engine, "default"))
    with engine.connect() as conn:
        reader = BodyReader(conn, "default")
        with pytest.raises(MissingActionBody):
            reader.expand([["a", "0" * 32]])


def test_bodies_are_scoped_to_their_loop(engine: Engine, writer: GroupCommitWriter) -> None:
    a = _decisions(3, seed=7)
    b = [dataclasses.replace(r, loop="other") for r in a]
    writer.write_sync([*a, *b])
    assert _count(engine, ActionFeaturesRow) == 2 * len(_distinct_bodies(a))
    assert [d.record for d in iter_decisions(engine, "other")] == sorted(
        b, key=lambda r: r.event_id
    )


def test_downgrade_puts_the_bodies_back_inline(engine: Engine, writer: GroupCommitWriter) -> None:
    from alembic import command

    from log.db import database_url
    from log.schema import alembic_config, migrate

    records = _decisions(1100, seed=8)  # the downgrade works in batches of 500
    for lo in range(0, len(records), 100):
        writer.write_sync(list(records[lo : lo + 100]))
    writer.stop()
    cfg = alembic_config(database_url(engine))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0011")
    assert "action_features" not in inspect(engine).get_table_names()
    stored = _stored_actions(engine)
    assert all(isinstance(a, dict) for row in stored for a in row)
    by_id = {r.event_id: r for r in records}
    with engine.connect() as conn:
        for event_id, actions in conn.execute(
            text("SELECT event_id, CAST(actions AS TEXT) FROM decisions")
        ):
            assert orjson.loads(actions) == by_id[event_id].actions
    migrate(engine)
    assert sorted(
        (d.record for d in iter_decisions(engine, "default")), key=lambda r: r.event_id
    ) == sorted(records, key=lambda r: r.event_id)


def test_storage_per_decision_shrinks(engine: Engine, tmp_path: Path) -> None:
    """The stored actions of a decision are its references: for 20 catalog items of 12
    features each, a fraction of the inline text."""
    rng = random.Random(9)
    items = [
        {"id": f"item{i}", "features": {f"f{k}": rng.random() for k in range(12)}}
        for i in range(200)
    ]
    rec = dataclasses.replace(decision_rec("big"), actions=rng.sample(items, 20))
    with engine.begin() as conn:
        apply_records(conn, [rec])
    inline = len(orjson.dumps(rec.actions))
    referenced = len(orjson.dumps(_stored_actions(engine)[0]))
    assert referenced * 5 < inline, (referenced, inline)


def test_the_digest_memo_is_bounded_in_bytes() -> None:
    """A client sending ever new, large features cannot grow the writer's memo of digests."""
    from log.action_store import _DigestMemo

    memo = _DigestMemo(64 * 1024)
    digests = set()
    for i in range(1000):
        digests.add(memo.digest(orjson.dumps({"features": {"text": "y" * 500, "i": i}})))
    assert len(digests) == 1000 and 0 < memo.nbytes <= 64 * 1024
    big = b'{"features":{"x":"' + b"z" * 4096 + b'"}}'
    assert memo.digest(big) == action_reference({"id": "a", "features": {"x": "z" * 4096}})[1]
    assert big not in memo.data


def _rich(i: int) -> dict[str, Any]:
    return {"id": f"item{i}", "features": {f"feature_{k}": i * 0.5 + k for k in range(14)}}


def test_the_default_policy_refers_only_to_repeated_large_bodies(engine: Engine) -> None:
    """Small features stay inline (PostgreSQL compresses them better than references), so do
    features seen for the first time (they may never repeat); a decision whose bodies are all
    known and large is stored by reference."""
    policy = ReferencePolicy()
    small = dataclasses.replace(decision_rec("small"), actions=[{"id": "a", "features": {"x": 1}}])
    rich = [_rich(i) for i in range(20)]
    first = dataclasses.replace(decision_rec("first"), actions=rich)
    again = dataclasses.replace(decision_rec("again"), actions=list(reversed(rich)))
    stored, bodies = action_store.stored_actions([small, small, first, again], policy)
    assert stored[0] == small.actions and stored[1] == small.actions
    assert stored[2] == rich  # first sight: inline
    assert all(isinstance(a, list) for a in stored[3])
    assert len(bodies) == 20
    with engine.begin() as conn:
        apply_records(conn, [small, first, again])
    read = {d.record.event_id: d.record for d in iter_decisions(engine, "default")}
    assert read == {"small": small, "first": first, "again": again}


def test_features_new_with_each_request_stay_inline(engine: Engine) -> None:
    rng = random.Random(10)
    records = [
        dataclasses.replace(
            decision_rec(f"n{i}"),
            actions=[
                {"id": f"i{k}", "features": {f"f{j}": rng.random() for j in range(14)}}
                for k in range(20)
            ],
        )
        for i in range(5)
    ]
    stored, bodies = action_store.stored_actions(records, ReferencePolicy())
    assert stored == [r.actions for r in records] and not bodies
