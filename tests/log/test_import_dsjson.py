"""DSJSON import: a loop exported and imported into another holds the same events (its export is
byte for byte the same) and gives the same OPE values; malformed lines are reported with their
numbers and fail the import or are skipped; Personalizer's own CB and CCB lines are read."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

import deploy.registry as registry
from decision_service import create_app
from decision_service.cli import app as cli
from decision_service.settings import get_settings
from learn.offline_eval import resolve_spec, run_evaluation
from learn.offline_eval_spec import EvaluationSpec
from log.export import iter_decisions
from log.export_dsjson import export_dsjson
from log.import_dsjson import LineError, import_dsjson, parse_line
from log.joiner import join_loop
from log.loops import LoopConfig, put_loop
from log.schema import make_engine
from tests.conftest import admin_client, make_settings

WAIT_S = 3.0  # rewards are sent at once; joined events must be joined in the past (OPE)
ACTIONS = [
    {"id": "pasta", "features": {"cuisine": "italian", "spicy": True}},
    {"id": "salad", "features": {"kcal": 120, "tags": ["green", "cold"]}},
    {"id": "soup"},
]


def fill(db_url: str, tmp_path: Path, n: int = 160) -> None:
    """Loop `src` with single decisions and slates, exclusions, deferred decisions (activated
    or not), rewards on some (the others get the default), the last ones in Apprentice mode, all
    served by the real path."""
    settings = make_settings(db_url, tmp_path)
    with admin_client(create_app(settings)) as c:
        assert c.put("/v1/loops/src", json={"reward_wait_s": WAIT_S}).status_code == 201
        for i in range(n):
            body: dict[str, Any] = {
                "event_id": f"e{i}",
                "context": {"user": f"u{i % 3}", "n": i % 5, "geo": {"city": "Paris"}},
                "actions": ACTIONS,
                "excluded_actions": ["soup"] if i % 4 == 0 else [],
                "defer_activation": i % 10 == 5,
            }
            if i % 7 == 0:
                body["slots"] = 2
            r = c.post("/v1/loops/src/rank", json=body)
            assert r.status_code == 201, r.text
            if i % 20 == 5:
                assert c.post(f"/v1/loops/src/events/e{i}/activate").status_code == 202
            if i == n - 20:  # the last 20 are served in Apprentice mode (baseline, pmf beside)
                apprentice = {
                    "reward_wait_s": WAIT_S,
                    "personalizer": {"learning_mode": "Apprentice"},
                }
                assert c.put("/v1/loops/src", json=apprentice).status_code == 200
            if i % 3:
                value = float(i % 2)
                assert c.post(f"/v1/loops/src/events/e{i}/reward", json={"value": value}).is_success
                if i % 7 == 0:
                    reward = {"value": 1.0 - value, "slot": 1}
                    assert c.post(f"/v1/loops/src/events/e{i}/reward", json=reward).is_success
    time.sleep(WAIT_S + 0.1)  # every window closed (the writer stopped with the app)
    engine = make_engine(db_url)
    join_loop(engine, "src", default_reward=0.0, aggregation="earliest")
    engine.dispose()


def exported(engine: Any, loop: str) -> bytes:
    buf = io.BytesIO()
    export_dsjson(engine, loop, buf)
    return buf.getvalue()


def evaluate(engine: Any, loop: str) -> dict[str, Any]:
    spec = EvaluationSpec.from_json(
        {
            "policies": [
                {"kind": "live"},
                {"kind": "first_action"},
                {"kind": "uniform"},
                {"kind": "vw_args", "name": "vw", "args": "-q ca --cb_type mtr"},
            ],
            "estimators": ["ips", "snips", "dr"],
            "slates": "slot0",
        }
    )
    spec = resolve_spec(engine, loop, spec, registry=registry)
    result = run_evaluation(engine, loop, spec, registry=registry)
    return {p["name"]: p["estimates"] for p in result["policies"]} | {"n": result["n_events"]}


def test_export_import_round_trip(db_url: str, tmp_path: Path) -> None:
    fill(db_url, tmp_path)
    engine = make_engine(db_url)
    try:
        source = exported(engine, "src")
        lines = source.splitlines()
        assert len(lines) > 100 and any(b"_outcomes" in line for line in lines)
        put_loop(engine, "dst", LoopConfig())
        stats = import_dsjson(engine, "dst", io.BytesIO(source))
        assert stats.invalid == 0 and stats.imported == len(lines) == stats.joined
        assert stats.slates == sum(b"_outcomes" in line for line in lines)
        # the same events: the export of the imported loop is the same bytes
        assert exported(engine, "dst") == source
        src = {d.event_id: d for d in iter_decisions(engine, "src") if d.joined}
        dst = {d.event_id: d for d in iter_decisions(engine, "dst")}
        assert set(src) == set(dst)
        for event_id, d in src.items():
            other = dst[event_id]
            assert other.record.chosen == d.record.chosen
            assert other.record.decided_at == d.record.decided_at
            assert dict(other.outcomes) == dict(d.outcomes)
            assert [s["probability"] for s in other.record.slots] == [
                s["probability"] for s in d.record.slots
            ]
        modes = [d.record.shadow["mode"] for d in dst.values() if d.record.shadow]
        assert modes and set(modes) == {"Apprentice"}
        # the same OPE values (VW-trained target included)
        assert evaluate(engine, "dst") == evaluate(engine, "src")
        # importing again writes nothing new
        again = import_dsjson(engine, "dst", io.BytesIO(source))
        assert again.imported == 0 and again.already_present == len(lines)
    finally:
        engine.dispose()


CB = {
    "_label_cost": -1.0,
    "_label_probability": 0.8,
    "_label_Action": 2,
    "_labelIndex": 1,
    "o": [{"v": 1.0, "EventId": "evt-1", "ActionTaken": False}],
    "Timestamp": "2024-05-01T12:00:00.0000000Z",
    "Version": "1",
    "EventId": "evt-1",
    "a": [2, 1, 3],
    "c": {
        "User": {"tod": "morning", "device": "mobile"},
        "_multi": [
            {"Action": {"id": "pasta", "cuisine": "italian"}},
            {"Action": {"id": "salad", "cuisine": "greek"}},
            {"Action": {"id": "soup", "cuisine": "french"}},
        ],
    },
    "p": [0.8, 0.1, 0.1],
    "VWState": {"m": "modelid-123/456"},
}
CCB = {
    "Timestamp": "2024-05-01T12:00:00.0000000Z",
    "Version": "1",
    "EventId": "ms-1",
    "c": {
        "User": {"tod": "morning"},
        "_multi": [{"Action": {"id": "a"}}, {"Action": {"id": "b"}}, {"Action": {"id": "c"}}],
        "_slots": [{"_id": "Main", "Slot": {"size": "large"}}, {"_id": "Side"}],
    },
    "_outcomes": [
        {
            "_label_cost": -1.0,
            "_id": "Main",
            "_a": [1, 0, 2],
            "_p": [0.8, 0.1, 0.1],
            "_o": [{"v": 1.0, "EventId": "ms-1", "Index": "Main", "ActionTaken": False}],
        },
        {"_label_cost": 0.0, "_id": "Side", "_a": [0, 2], "_p": [0.9, 0.1], "_o": []},
    ],
    "_ba": [0, 1],
    "VWState": {"m": "N/A"},
}


def test_personalizer_lines() -> None:
    cb = parse_line(CB, "L", orjson.dumps(CB))
    r = cb.record
    assert [a["id"] for a in r.actions] == ["pasta", "salad", "soup"]
    assert r.actions[0]["features"] == {"Action": {"cuisine": "italian"}}
    assert r.context == {"User": {"tod": "morning", "device": "mobile"}}
    assert r.chosen == "salad" and r.pmf == [0.1, 0.8, 0.1]
    assert cb.outcomes == {0: (1.0, False)}
    assert r.decided_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
    ccb = parse_line(CCB, "L", orjson.dumps(CCB))
    s = ccb.record
    assert s.is_slate and [x["action_id"] for x in s.slots] == ["b", "a"]
    assert [x["probability"] for x in s.slots] == [0.8, 0.9]
    assert s.pmf == [0.1, 0.8, 0.1]
    assert ccb.outcomes == {0: (1.0, False), 1: (0.0, True)}
    apprentice = {**CB, "_original_label_cost": -0.25}
    assert parse_line(apprentice, "L", b"x").outcomes == {0: (0.25, False)}
    skipped = {**CB, "_skipLearn": True}
    assert parse_line(skipped, "L", b"x").outcomes == {}
    for bad, why in (
        ({**CB, "p": [0.5, 0.1, 0.1]}, "sum to 1"),
        ({**CB, "a": [4, 1, 3]}, "1-based"),
        ({k: v for k, v in CB.items() if k != "EventId"}, "EventId"),
        ({**CB, "Timestamp": "yesterday"}, "Timestamp"),
    ):
        with pytest.raises(LineError, match=why):
            parse_line(bad, "L", b"x")


def test_malformed_lines_fail_or_are_skipped(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DS_DATABASE_URL", db_url)
    get_settings.cache_clear()
    path = tmp_path / "log.dsjson"
    good = [orjson.dumps({**CB, "EventId": f"g{i}"}) for i in range(3)]
    path.write_bytes(b"\n".join([good[0], b"{not json", good[1], b'{"EventId": "x"}', good[2]]))
    try:
        runner = CliRunner()
        failed = runner.invoke(cli, ["import", "dsjson", str(path), "--loop", "imp"])
        assert failed.exit_code == 1
        assert "line 2:" in failed.output and "line 4:" in failed.output
        assert orjson.loads(failed.stdout[: failed.stdout.rindex("}") + 1])["imported"] == 0
        engine = make_engine(db_url)
        assert list(iter_decisions(engine, "imp")) == []  # nothing half-imported
        done = runner.invoke(
            cli, ["import", "dsjson", str(path), "--loop", "imp", "--skip-invalid"]
        )
        assert done.exit_code == 0, done.output
        summary = orjson.loads(done.stdout[done.stdout.index("{") :])
        assert summary["imported"] == 3 and summary["invalid"] == 2
        assert [e["line"] for e in summary["errors"]] == [2, 4]
        assert sorted(d.event_id for d in iter_decisions(engine, "imp")) == ["g0", "g1", "g2"]
        engine.dispose()
    finally:
        get_settings.cache_clear()
