"""Exports: DSJSON read back and learned by Vowpal Wabbit, Parquet read back by pyarrow."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg
import pyarrow.parquet as pq
import pytest
import vowpalwabbit
from sqlalchemy import Engine, event, update

from explore.types import Action
from log.export import ExportStats, LoggedDecision, SlotOutcome, iter_decisions
from log.export_dsjson import cb_line, export_dsjson, timestamp, vw_features
from log.export_parquet import SCHEMA, export_parquet
from log.joiner import join_loop
from log.models import OutcomeRow
from log.ops import Op
from log.records import ActivationRecord, DecisionRecord, RewardRecord
from log.writer import GroupCommitWriter
from policies.vw_text import example_lines
from tests.log.helpers import T0, decision_row, reward_rec, reward_row

ITEMS = ["item0", "item1", "item2", "item3"]
FAVOURITE = {"u1": "item1", "u2": "item3"}
LABEL_KEYS = ("_label_cost", "_label_probability", "_label_Action", "_labelIndex")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$")


def decision(
    event_id: str,
    at_s: float,
    *,
    context: dict[str, Any] | None = None,
    actions: list[dict[str, Any]] | None = None,
    pmf: list[float] | None = None,
    excluded: tuple[str, ...] = (),
    chosen: tuple[tuple[str, float], ...] | None = None,
    deferred: bool = False,
) -> dict[str, Any]:
    """A decisions row; `chosen` = (action id, conditional probability) per slot."""
    row = decision_row(event_id, decided_at=T0 + timedelta(seconds=at_s), deferred=deferred)
    actions = actions or [
        {"id": a, "features": {"genre": f"g{i % 2}"}} for i, a in enumerate(ITEMS)
    ]
    if pmf is None:
        allowed = [a["id"] not in excluded for a in actions]
        pmf = [1 / sum(allowed) if ok else 0.0 for ok in allowed]
    chosen = chosen or ((next(a["id"] for a in actions if a["id"] not in excluded), 0.25),)
    slots = [{"slot": k, "action_id": a, "probability": p} for k, (a, p) in enumerate(chosen)]
    row.update(
        context=context or {"user": "u1"},
        actions=actions,
        pmf=pmf,
        excluded=list(excluded),
        chosen=chosen[0][0],
        slots=slots,
        n_slots=len(slots),
        is_slate=len(slots) > 1,
        model_version="m-7",
    )
    return row


def write(writer: GroupCommitWriter, ops: list[Op]) -> None:
    for i in range(0, len(ops), 5000):
        writer.write_sync(ops[i : i + 5000])


def join_all(engine: Engine) -> None:
    join_loop(
        engine,
        "default",
        default_reward=0.0,
        aggregation="sum",
        now=T0 + timedelta(days=1),
        batch_size=5000,
    )


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines()]


# --- DSJSON, single decisions ---------------------------------------------------------------


def test_dsjson_round_trip_through_vw_learns_the_favourites(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    rng = np.random.default_rng(11)
    ops: list[Op] = []
    n = 3000
    for i in range(n):
        user = "u1" if rng.random() < 0.5 else "u2"
        item = ITEMS[int(rng.integers(4))]
        eid = f"e{i:05d}"
        ops.append(
            DecisionRecord.from_row(
                decision(eid, i, context={"user": user}, chosen=((item, 0.25),))
            )
        )
        if item == FAVOURITE[user]:
            at = T0 + timedelta(seconds=i + 5)
            ops.append(reward_rec(eid, 1.0, received_at=at))
    write(writer, ops)
    join_all(engine)

    out = io.BytesIO()
    stats = export_dsjson(engine, "default", out)
    assert stats == ExportStats(rows=n, joined=n, slates=0, skipped=0)
    raw = out.getvalue().splitlines()
    lines = [orjson.loads(line) for line in raw]
    assert [x["EventId"] for x in lines] == [f"e{i:05d}" for i in range(n)]
    for x in lines:
        assert list(x)[:4] == list(LABEL_KEYS)  # VW reads the label only before `c`
        assert x["_label_Action"] == x["a"][0] and x["_labelIndex"] == x["a"][0] - 1
        assert sorted(x["a"]) == [1, 2, 3, 4] and x["p"] == [0.25] * 4
        assert x["_label_probability"] == x["p"][0]
        chosen = x["c"]["_multi"][x["_labelIndex"]]["a"]
        user = next(iter(x["c"]["c"])).removeprefix("user=")
        reward = 1.0 if chosen.get(f"id={FAVOURITE[user]}") else 0.0
        assert x["_label_cost"] == -reward
        assert x["o"] == (
            [{"v": 1.0, "EventId": x["EventId"], "ActionTaken": False}] * bool(reward)
        )
        assert x["Version"] == "1" and x["VWState"] == {"m": "m-7"}
        assert TIMESTAMP.match(x["Timestamp"])

    ws = vowpalwabbit.Workspace("--cb_explore_adf --dsjson -q ca --epsilon 0.1 --quiet")
    try:
        for line in raw:
            ws.learn(line.decode())
        assert ws.get_weighted_examples() == n
        assert ws.get_sum_loss() < 0  # labels were read: costs are -1 or 0
        for user, favourite in FAVOURITE.items():
            probe = next(x for x in lines if f"user={user}" in x["c"]["c"])
            for key in LABEL_KEYS:
                del probe[key]
            pmf = ws.predict(orjson.dumps(probe).decode())
            ids = [next(iter(m["a"])).removeprefix("id=") for m in probe["c"]["_multi"]]
            assert len(pmf) == 4
            assert ids[int(np.argmax(pmf))] == favourite
            assert max(pmf) == pytest.approx(0.925)
    finally:
        ws.finish()


def _logged(event_id: str, row: dict[str, Any], reward: float) -> LoggedDecision:
    record = DecisionRecord.from_row({**row, "event_id": event_id})
    return LoggedDecision(record, T0, 1, {0: SlotOutcome(reward, False)})


def test_dsjson_features_hash_like_serving() -> None:
    """A model trained on the export equals one trained on serving's text encoding.

    (Not with a repeated string in a list: JSON keys are unique, the export sums them into one
    feature of value 2 where the text has the feature twice; see test_vw_features.)"""
    rng = np.random.default_rng(5)
    actions: list[dict[str, Any]] = [
        {"id": "soup du jour", "features": {"price": 3.5, "tags": ["hot", "veg"], "new": True}},
        {"id": "a:b|c", "features": {"price": 0, "origin": {"country": "FR", "lat": 48.1}}},
        {"id": "salad", "features": {"tags": ["veg", "raw"], "emb": [0.25, -1.5], "new": False}},
        {"id": "pie", "features": {"price": 2.25, "sweet": "very much"}},
    ]
    text = vowpalwabbit.Workspace("--cb_adf -q ca --quiet")
    dsjson = vowpalwabbit.Workspace("--cb_adf -q ca --dsjson --quiet")
    try:
        probes = []
        for i in range(300):
            context = {"user": f"u{i % 3}", "hour": int(rng.integers(24)), "vip": bool(i % 2)}
            excluded = ("pie",) if i % 4 == 0 else ()
            row = decision(f"e{i}", i, context=context, actions=actions, excluded=excluded)
            candidates = [a for a in actions if a["id"] not in excluded]
            k = int(rng.integers(len(candidates)))
            p = 1 / len(candidates)
            row["chosen"] = candidates[k]["id"]
            row["slots"] = [{"slot": 0, "action_id": candidates[k]["id"], "probability": p}]
            reward = float(rng.random() < 0.2 + 0.2 * k)
            line = cb_line(_logged(f"e{i}", row, reward))
            dsjson.learn(orjson.dumps(line).decode())
            typed = [Action(a["id"], a["features"]) for a in candidates]
            text.learn(example_lines(context, typed, label=(k, -reward, p)))
            if i % 50 == 0:
                probes.append((line, context, typed))
        for line, context, typed in probes:
            for key in LABEL_KEYS:
                del line[key]
            got = dsjson.predict(orjson.dumps(line).decode())
            want = text.predict(example_lines(context, typed))
            assert got == pytest.approx(want, abs=1e-6)
            assert len(set(np.round(want, 6))) > 1  # the model is not trivially flat
    finally:
        text.finish()
        dsjson.finish()


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        ({"user": "u 1", "n": 2, "ok": True, "no": False}, {"user=u_1": 1.0, "n": 2.0, "ok": 1.0}),
        ({"geo": {"city": "Paris", "km": 1.5}}, {"geo.city=Paris": 1.0, "geo.km": 1.5}),
        ({"t": ["a", "a", None, True, 0.5]}, {"t=a": 2.0, "t=true": 1.0, "t_4": 0.5}),
        ({"a:b": 1 / 3, "x": float("inf")}, {"a_b": 0.333333333}),
    ],
)
def test_vw_features(features: dict[str, Any], expected: dict[str, float]) -> None:
    assert vw_features(features) == expected


def test_timestamp() -> None:
    when = datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=UTC)
    assert timestamp(when) == "2024-05-01T14:00:00.1234560Z"
    assert timestamp(when.astimezone(timezone(timedelta(hours=-5)))) == timestamp(when)


def test_dsjson_leaves_out_unjoined_and_encodes_outcomes(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    rows = {
        # joined with a reward; one action excluded: it is not a candidate
        "joined": decision(
            "joined",
            0,
            pmf=[0.0, 0.2, 0.5, 0.3],
            excluded=("item0",),
            chosen=(("item3", 0.3),),
        ),
        # joined, no reward: the default applies, `o` is empty
        "defaulted": decision("defaulted", 1),
        # deferred, activated, joined: the activation is an `o` entry
        "activated": decision("activated", 2, deferred=True),
        # deferred, never activated: never joined, left out
        "dormant": decision("dormant", 3, deferred=True),
        # window still open at join time: left out
        "open": decision("open", 10 * 86400),
    }
    write(writer, [DecisionRecord.from_row(r) for r in rows.values()])
    at = T0 + timedelta(seconds=30)
    write(
        writer,
        [
            reward_rec("joined", 0.5, received_at=at),
            RewardRecord.from_row(
                reward_row("joined", 0.25, received_at=at + timedelta(seconds=1))
            ),
            ActivationRecord("default", "activated", at, at + timedelta(seconds=60)),
            RewardRecord.from_row(
                reward_row("activated", 2.0, received_at=at + timedelta(seconds=2))
            ),
        ],
    )
    join_all(engine)
    out = io.BytesIO()
    assert export_dsjson(engine, "default", out) == ExportStats(3, 3, 0, 2)
    got = {x["EventId"]: x for x in lines_of(out.getvalue())}
    assert list(got) == ["joined", "defaulted", "activated"]

    j = got["joined"]
    ids = [next(iter(m["a"])) for m in j["c"]["_multi"]]
    assert ids == ["id=item1", "id=item2", "id=item3"]
    assert j["a"] == [3, 2, 1] and j["p"] == [0.3, 0.5, 0.2]
    assert (j["_label_Action"], j["_labelIndex"], j["_label_probability"]) == (3, 2, 0.3)
    assert j["_label_cost"] == -0.75
    assert j["o"] == [{"v": 0.75, "EventId": "joined", "ActionTaken": False}]
    assert j["c"]["c"] == {"user=u1": 1.0}
    assert j["c"]["_multi"][2] == {"a": {"id=item3": 1.0, "genre=g1": 1.0}}
    assert j["Timestamp"] == "2026-01-01T12:00:00.0000000Z"

    assert got["defaulted"]["o"] == [] and got["defaulted"]["_label_cost"] == 0.0
    assert got["activated"]["o"] == [
        {"v": 2.0, "EventId": "activated", "ActionTaken": False},
        {"EventId": "activated", "ActionTaken": True},
    ]


@pytest.mark.parametrize(
    ("since_s", "until_s", "expected"),
    [(None, None, [0, 1, 2, 3]), (1, None, [1, 2, 3]), (None, 2, [0, 1]), (1, 3, [1, 2])],
)
def test_dsjson_since_until(
    engine: Engine,
    writer: GroupCommitWriter,
    since_s: int | None,
    until_s: int | None,
    expected: list[int],
) -> None:
    write(writer, [DecisionRecord.from_row(decision(f"e{i}", i)) for i in range(4)])
    join_all(engine)
    out = io.BytesIO()
    export_dsjson(
        engine,
        "default",
        out,
        since=None if since_s is None else T0 + timedelta(seconds=since_s),
        until=None if until_s is None else T0 + timedelta(seconds=until_s),
    )
    assert [x["EventId"] for x in lines_of(out.getvalue())] == [f"e{i}" for i in expected]


# --- DSJSON, slates (CCB) -------------------------------------------------------------------


def test_ccb_export_parses_and_trains(engine: Engine, writer: GroupCommitWriter) -> None:
    rng = np.random.default_rng(2)
    ops: list[Op] = []
    n = 400
    truth: dict[str, list[str]] = {}
    for i in range(n):
        eid = f"s{i:04d}"
        slate = [ITEMS[j] for j in rng.permutation(4)[:2]]
        truth[eid] = slate
        row = decision(eid, i, chosen=((slate[0], 0.25), (slate[1], 1 / 3)))
        ops.append(DecisionRecord.from_row(row))
        for k, item in enumerate(slate):
            if item == "item2":
                at = T0 + timedelta(seconds=i + 1)
                ops.append(reward_rec(eid, 1.0, received_at=at, slot=k))
    write(writer, ops)
    join_all(engine)

    out = io.BytesIO()
    assert export_dsjson(engine, "default", out) == ExportStats(n, n, n, 0)
    raw = out.getvalue().splitlines()
    for x in map(orjson.loads, raw):
        slate = truth[x["EventId"]]
        assert list(x) == [
            "Timestamp",
            "Version",
            "EventId",
            "c",
            "_outcomes",
            "VWState",
            "_policy_arm",
            "_arm_probability",
        ]
        assert x["c"]["_slots"] == [{"_id": "0"}, {"_id": "1"}]
        ids = [next(iter(m["a"])).removeprefix("id=") for m in x["c"]["_multi"]]
        assert ids == ITEMS
        first, second = x["_outcomes"]
        assert first["_id"] == "0" and second["_id"] == "1"
        assert ids[first["_a"][0]] == slate[0] and sorted(first["_a"]) == [0, 1, 2, 3]
        assert first["_p"] == [0.25] * 4
        assert [ids[i] for i in second["_a"]] == [slate[1]] and second["_p"] == [1 / 3]
        for k, o in enumerate(x["_outcomes"]):
            reward = 1.0 if slate[k] == "item2" else 0.0
            assert o["_label_cost"] == -reward
            expected_o = [
                {"v": 1.0, "EventId": x["EventId"], "Index": str(k), "ActionTaken": False}
            ]
            assert o["_o"] == expected_o * bool(reward)

    ws = vowpalwabbit.Workspace("--ccb_explore_adf --dsjson --quiet")
    try:
        for line in raw:
            ws.learn(line.decode())
        assert ws.get_weighted_examples() == n  # a malformed line would be skipped, not counted
        assert ws.get_sum_loss() < 0
    finally:
        ws.finish()


# --- rollout fields: arm, arm probability, shadow -------------------------------------------

ROLLOUT_KEYS = ("_policy_arm", "_arm_probability", "_shadow")


def _rollout_log(writer: GroupCommitWriter, engine: Engine) -> dict[str, dict[str, Any]]:
    """Canary- and live-served decisions, with and without a shadow, singles and a slate."""
    rows: dict[str, dict[str, Any]] = {}
    rng = np.random.default_rng(5)
    for i in range(40):
        excluded = ("item0",) if i % 4 == 0 else ()
        pmf = [
            0.0 if a in excluded else float(x) for a, x in zip(ITEMS, rng.random(4), strict=True)
        ]
        pmf = [x / sum(pmf) for x in pmf]
        shadow = [
            0.0 if a in excluded else float(x) for a, x in zip(ITEMS, rng.random(4), strict=True)
        ]
        shadow = [x / sum(shadow) for x in shadow]
        chosen_i = 1 + i % 3
        slate = i % 10 == 9
        chosen = ((ITEMS[chosen_i], pmf[chosen_i]),)
        if slate:
            second = next(k for k in range(4) if k != chosen_i and ITEMS[k] not in excluded)
            chosen = (*chosen, (ITEMS[second], pmf[second] / (1 - pmf[chosen_i])))
        row = decision(f"r{i}", i, pmf=pmf, excluded=excluded, chosen=chosen)
        canary = i % 2 == 0
        row.update(
            policy_arm="canary" if canary else "live",
            arm_probability=0.3 if canary else 0.7,
            model_version="m-canary" if canary else "m-live",
            shadow={"version": "m-shadow", "pmf": shadow} if i % 3 else None,
        )
        rows[row["event_id"]] = row
    write(writer, [DecisionRecord.from_row(r) for r in rows.values()])
    write(
        writer,
        [reward_rec(eid, 1.0, received_at=T0 + timedelta(seconds=50)) for eid in list(rows)[::2]],
    )
    join_all(engine)
    return rows


def test_exports_carry_the_arm_its_probability_and_the_shadow(
    engine: Engine, writer: GroupCommitWriter, tmp_path: Path
) -> None:
    rows = _rollout_log(writer, engine)
    path = tmp_path / "rollout.parquet"
    export_parquet(engine, "default", path)
    table = pq.read_table(path)
    assert table.schema.equals(SCHEMA)
    for r in table.to_pylist():
        row = rows[r["event_id"]]
        assert (r["policy_arm"], r["arm_probability"]) == (
            row["policy_arm"],
            row["arm_probability"],
        )
        assert r["model_version"] == row["model_version"] and r["probabilities"] == row["pmf"]
        if row["shadow"] is None:
            assert r["shadow_version"] is None and r["shadow_probabilities"] is None
        else:
            assert r["shadow_version"] == "m-shadow"
            assert r["shadow_probabilities"] == row["shadow"]["pmf"]

    out = io.BytesIO()
    export_dsjson(engine, "default", out)
    lines = lines_of(out.getvalue())
    assert len(lines) == len(rows)
    for x in lines:
        row = rows[x["EventId"]]
        assert (x["_policy_arm"], x["_arm_probability"]) == (
            row["policy_arm"],
            row["arm_probability"],
        )
        assert x["VWState"] == {"m": row["model_version"]}
        kept = [a for a in ITEMS if a not in row["excluded"]]
        order = x["a"] if "a" in x else [i + 1 for i in x["_outcomes"][0]["_a"]]
        if row["shadow"] is None:
            assert "_shadow" not in x
        else:
            full = dict(zip(ITEMS, row["shadow"]["pmf"], strict=True))
            assert x["_shadow"] == {"m": "m-shadow", "p": [full[kept[i - 1]] for i in order]}
        if "a" in x:  # p (the serving arm's) and _shadow.p follow the same order
            assert x["p"] == [dict(zip(ITEMS, row["pmf"], strict=True))[kept[i - 1]] for i in order]
        assert [k for k in x if k in ROLLOUT_KEYS] == list(ROLLOUT_KEYS[: 2 + ("_shadow" in x)])
        assert list(x)[-(2 + ("_shadow" in x)) :] == [k for k in x if k in ROLLOUT_KEYS]

    # VW skips the rollout fields: a model learns exactly the same with and without them
    for slates, args in ((False, "--cb_explore_adf"), (True, "--ccb_explore_adf")):
        chosen = [x for x in lines if ("_outcomes" in x) == slates]
        assert chosen
        stripped = [{k: v for k, v in x.items() if k not in ROLLOUT_KEYS} for x in chosen]
        predictions = []
        for variant in (chosen, stripped):
            ws = vowpalwabbit.Workspace(f"{args} --dsjson -q ca --quiet")
            try:
                for x in variant * 3:
                    ws.learn(orjson.dumps(x).decode())
                assert ws.get_weighted_examples() == 3 * len(chosen)
                predictions.append([ws.predict(orjson.dumps(x).decode()) for x in variant])
            finally:
                ws.finish()
        assert predictions[0] == predictions[1]


# --- Parquet --------------------------------------------------------------------------------


def _mixed_log(writer: GroupCommitWriter, engine: Engine) -> dict[str, dict[str, Any]]:
    rows = {
        "single": decision(
            "single", 0, pmf=[0.0, 0.2, 0.5, 0.3], excluded=("item0",), chosen=(("item2", 0.5),)
        ),
        "slate": decision("slate", 1, chosen=(("item2", 0.25), ("item0", 1 / 3))),
        "dormant": decision("dormant", 2, deferred=True),
        "open": decision("open", 10 * 86400, context={"user": "u2", "geo": {"c": "FR"}}),
    }
    write(writer, [DecisionRecord.from_row(r) for r in rows.values()])
    write(
        writer,
        [
            reward_rec("single", 0.5, received_at=T0 + timedelta(seconds=1)),
            RewardRecord.from_row(
                reward_row("slate", 1.0, received_at=T0 + timedelta(seconds=2), slot=1)
            ),
        ],
    )
    join_all(engine)
    return rows


def test_parquet_round_trip(engine: Engine, writer: GroupCommitWriter, tmp_path: Path) -> None:
    rows = _mixed_log(writer, engine)
    path = tmp_path / "log.parquet"
    assert export_parquet(engine, "default", path) == ExportStats(4, 2, 1, 0)
    table = pq.read_table(path)
    assert table.schema.equals(SCHEMA)
    got = {r["event_id"]: r for r in table.to_pylist()}
    assert list(got) == ["single", "slate", "dormant", "open"]
    rewards = {"single": {0: 0.5}, "slate": {0: 0.0, 1: 1.0}}
    for eid, row in rows.items():
        r = got[eid]
        joined = eid in rewards
        assert r["loop"] == "default" and r["model_version"] == "m-7"
        assert r["decided_at"] == row["decided_at"]
        assert orjson.loads(r["context"]) == row["context"]
        assert r["action_ids"] == [a["id"] for a in row["actions"]]
        assert [orjson.loads(f) for f in r["action_features"]] == [
            a["features"] for a in row["actions"]
        ]
        assert r["probabilities"] == row["pmf"]
        assert r["excluded"] == row["excluded"]
        assert r["chosen"] == row["chosen"]
        assert r["chosen_probability"] == row["slots"][0]["probability"]
        slot_rewards = rewards.get(eid, {})
        assert r["slots"] == [{**s, "reward": slot_rewards.get(s["slot"])} for s in row["slots"]]
        assert r["reward"] == (slot_rewards[0] if joined else None)
        assert r["default_applied"] == ({"single": False, "slate": True}.get(eid))
        assert r["joined"] is joined
        assert r["deferred"] is row["deferred"]
        assert r["activated"] is (eid != "dormant")


def test_parquet_since_until_and_empty(
    engine: Engine, writer: GroupCommitWriter, tmp_path: Path
) -> None:
    _mixed_log(writer, engine)
    path = tmp_path / "window.parquet"
    stats = export_parquet(
        engine, "default", path, since=T0 + timedelta(seconds=1), until=T0 + timedelta(days=2)
    )
    assert stats == ExportStats(2, 1, 1, 0)
    assert pq.read_table(path).column("event_id").to_pylist() == ["slate", "dormant"]
    empty = tmp_path / "empty.parquet"
    assert export_parquet(engine, "other-loop", empty) == ExportStats()
    table = pq.read_table(empty)
    assert table.num_rows == 0 and table.schema.equals(SCHEMA)


def test_outcome_with_another_decided_at_is_still_found(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    write(writer, [DecisionRecord.from_row(decision(f"e{i}", i)) for i in range(3)])
    join_all(engine)
    with engine.begin() as conn:  # the range read misses it; the by-key read finds it
        conn.execute(
            update(OutcomeRow)
            .where(OutcomeRow.event_id == "e1")
            .values(decided_at=T0 + timedelta(days=30))
        )
    got = list(iter_decisions(engine, "default", yield_per=2))
    assert [(d.event_id, d.joined) for d in got] == [("e0", True), ("e1", True), ("e2", True)]


# --- arguments and streaming ----------------------------------------------------------------

NAIVE = datetime(2026, 1, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"since": NAIVE}, "since must be timezone-aware"),
        ({"until": NAIVE}, "until must be timezone-aware"),
        ({"since": "2026-01-01"}, "since must be a datetime or None"),
        ({"since": T0, "until": T0}, "since must be before until"),
        ({"yield_per": 0}, "yield_per must be an int >= 1"),
        ({"batch_rows": 0}, "batch_rows must be an int >= 1"),
    ],
)
def test_invalid_arguments_write_nothing(
    engine: Engine, tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    ds, pa_path = tmp_path / "x.dsjson", tmp_path / "x.parquet"
    kwargs = dict(kwargs)
    with pytest.raises(ValueError, match=match):
        export_parquet(engine, "default", pa_path, **kwargs)
    kwargs.pop("batch_rows", None)
    if kwargs:
        with pytest.raises(ValueError, match=match):
            export_dsjson(engine, "default", ds, **kwargs)
    assert not ds.exists() and not pa_path.exists()


def test_large_export_streams(engine: Engine, writer: GroupCommitWriter, tmp_path: Path) -> None:
    n = 20_000
    write(writer, [DecisionRecord.from_row(decision(f"e{i:05d}", i)) for i in range(n)])
    join_all(engine)

    cursors: list[Any] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _seen(conn: Any, cursor: Any, stmt: str, params: Any, context: Any, many: bool) -> None:
        if "FROM decisions" in stmt:
            cursors.append((cursor, context.execution_options.get("yield_per")))

    stream = iter_decisions(engine, "default", yield_per=100)
    first = next(stream)
    assert first.event_id == "e00000" and first.outcomes == {0: SlotOutcome(0.0, True)}
    stream.close()  # type: ignore[attr-defined]

    ds = tmp_path / "big.dsjson"
    assert export_dsjson(engine, "default", ds, yield_per=500) == ExportStats(n, n, 0, 0)
    with ds.open("rb") as fh:
        assert sum(1 for _ in fh) == n
    pa_path = tmp_path / "big.parquet"
    stats = export_parquet(engine, "default", pa_path, yield_per=500, batch_rows=4000)
    assert stats == ExportStats(n, n, 0, 0)
    meta = pq.ParquetFile(pa_path).metadata
    assert (meta.num_rows, meta.num_row_groups) == (n, 5)
    assert [y for _, y in cursors] == [100, 500, 500]
    if engine.dialect.name == "postgresql":  # a named (server-side) cursor: rows come in batches
        assert all(isinstance(c, psycopg.ServerCursor) for c, _ in cursors)
