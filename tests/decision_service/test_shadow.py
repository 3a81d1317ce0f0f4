"""Shadow mode end to end: the shadow scores every request and never changes what is served.

A loop with a live version and a shadow version (real VW models preferring opposite actions; the
shadow is put into its state directly in the store, see tests/serving_helpers.py). Over many
requests: every response and every logged served field is exactly what the same request gives
without the shadow (the decision is recomputed with the shadow removed from the worker's
snapshot: same event id, same key, same draws); the served frequencies match live's pmf
(chi-square); the logged shadow pmf is the one the shadow model gives on that request (computed
on its own from its artifact), with exclusions and for slates (its first-slot pmf). A shadow that
fails to score logs null, is counted, and the request is served all the same.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from decision_service import Settings
from decision_service.decide import decide
from decision_service.rank_input import parse_rank
from deploy.registry import promote
from log.decision_reads import iter_decisions
from log.loops import LoopConfig, put_loop
from log.ops import op_from_json, op_to_line
from log.records import DECISION_COLUMNS
from tests.decision_service.test_propensity import P_MIN, chi2
from tests.serving_helpers import (
    model_pmf,
    rank_many,
    register_version,
    set_status,
    trained_artifact,
)

LOOP = "shadowed"
KEY = bytes.fromhex("0bad" * 16)
LAMBDA = 2.0
CONTEXT = {"user": "u1", "hour": 9}
ACTIONS: list[dict[str, Any]] = [{"id": f"a{i}", "features": {"kind": f"k{i}"}} for i in range(5)]
MEANS = [0.9, 0.5, 0.2, 0.0, -0.4]
IDS = [a["id"] for a in ACTIONS]
SIZES = {"postgresql": 6_000, "sqlite": 2_500}
# Fields of a decision that the shadow must leave exactly as they are without it (decided_at
# and reward_deadline are clock readings; shadow is what it adds).
SERVED_FIELDS = [
    f for f in DECISION_COLUMNS if f not in ("decided_at", "reward_deadline", "shadow")
]


def size(settings: Settings) -> int:
    return SIZES["postgresql" if settings.database_url.startswith("postgresql") else "sqlite"]


class Shadowed:
    def __init__(self, client: TestClient, *, canary_percent: float | None = None) -> None:
        service = client.app.state.service  # type: ignore[attr-defined]
        self.service = service
        self.settings: Settings = service.settings
        self.engine: Engine = service.engine
        config = LoopConfig(exploration="softmax", softmax_lambda=LAMBDA, sampling_key=KEY)
        put_loop(self.engine, LOOP, config)
        self.live_art = trained_artifact(CONTEXT, ACTIONS, MEANS, seed=3)
        self.shadow_art = trained_artifact(CONTEXT, ACTIONS, MEANS[::-1], seed=5)
        self.live = register_version(self.engine, LOOP, self.live_art)
        promote(self.engine, self.live)
        self.shadow = register_version(self.engine, LOOP, self.shadow_art)
        set_status(self.engine, self.shadow, "shadow")
        self.canary: str | None = None
        if canary_percent is not None:
            art = trained_artifact(CONTEXT, ACTIONS, [0.0, 0.9, 0.5, 0.2, -0.4], seed=6)
            self.canary = register_version(self.engine, LOOP, art)
            set_status(self.engine, self.canary, "canary", canary_percent)
        service.loops.refresh()
        runtime = service.loops.loops[LOOP]
        assert runtime.shadow is not None and runtime.shadow.version == self.shadow

    def runtime(self) -> Any:
        return self.service.loops.loops[LOOP]

    def without_shadow(self, body: dict[str, Any]) -> Any:
        """The decision the same request gets from this worker's snapshot without its shadow."""
        runtime = dataclasses.replace(self.runtime(), shadow=None)
        req = parse_rank(body, self.settings)
        return decide(req, body, runtime, datetime.now(UTC), body["event_id"])

    def rows(self) -> dict[str, Any]:
        return {d.record.event_id: d.record for d in iter_decisions(self.engine, LOOP)}


def check_unchanged(
    sh: Shadowed, bodies: Sequence[dict[str, Any]], responses: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Every response and logged served field is what the request gets without the shadow."""
    rows = sh.rows()
    for body, resp in zip(bodies, responses, strict=True):
        alone = sh.without_shadow(body)
        assert alone.shadow is None
        assert resp == alone.response
        row = rows[body["event_id"]]
        assert {f: getattr(row, f) for f in SERVED_FIELDS} == {
            f: getattr(alone, f) for f in SERVED_FIELDS
        }
    return rows


def test_shadow_never_changes_what_is_served_and_logs_its_own_pmf(
    client: TestClient, settings: Settings
) -> None:
    sh = Shadowed(client)
    n = size(settings)
    excluded = ["a1"]
    bodies = [
        {"event_id": f"e{i}", "context": CONTEXT, "actions": ACTIONS}
        | ({"excluded_actions": excluded} if i % 5 == 0 else {})
        for i in range(n)
    ]
    responses = rank_many(client, LOOP, bodies)
    rows = check_unchanged(sh, bodies, responses)

    live = model_pmf(sh.live_art, CONTEXT, ACTIONS, LAMBDA)
    shadow = model_pmf(sh.shadow_art, CONTEXT, ACTIONS, LAMBDA)
    live_ex = model_pmf(sh.live_art, CONTEXT, ACTIONS, LAMBDA, excluded)
    shadow_ex = model_pmf(sh.shadow_art, CONTEXT, ACTIONS, LAMBDA, excluded)
    assert int(np.argmax(live)) == 0 and int(np.argmax(shadow)) == 4
    plain = []
    for body, resp in zip(bodies, responses, strict=True):
        row = rows[body["event_id"]]
        ex = "excluded_actions" in body
        assert resp["model_version"] == row.model_version == sh.live
        assert (row.policy_arm, row.arm_probability) == ("live", 1.0)
        np.testing.assert_allclose(row.pmf, live_ex if ex else live, rtol=1e-12, atol=1e-15)
        assert row.shadow["version"] == sh.shadow
        np.testing.assert_allclose(
            row.shadow["pmf"], shadow_ex if ex else shadow, rtol=1e-12, atol=1e-15
        )
        if ex:
            assert row.shadow["pmf"][1] == 0.0
        else:
            plain.append(resp)
    # the served distribution is live's
    served = Counter(r["reward_action_id"] for r in plain)
    assert chi2([served[a] for a in IDS], len(plain) * live) > P_MIN, served
    counters = client.get("/v1/status").json()["serving"][LOOP]
    assert counters["shadow"] == sh.shadow
    assert (counters["shadow_scored"], counters["shadow_failed"]) == (n, 0)


def test_shadow_with_a_canary_and_slates(client: TestClient, settings: Settings) -> None:
    """With a canary as well, the shadow scores both arms' requests and changes neither; for a
    slate it logs its first-slot pmf over all actions."""
    sh = Shadowed(client, canary_percent=40.0)
    n = size(settings) // 3
    bodies = [
        {"event_id": f"s{i}", "user_id": f"user-{i % 97}", "context": CONTEXT,
         "actions": ACTIONS, "slots": 1 + i % 3}
        for i in range(n)
    ]  # fmt: skip
    responses = rank_many(client, LOOP, bodies)
    rows = check_unchanged(sh, bodies, responses)
    shadow = model_pmf(sh.shadow_art, CONTEXT, ACTIONS, LAMBDA)
    arms = Counter(rows[b["event_id"]].policy_arm for b in bodies)
    assert set(arms) == {"live", "canary"}
    for body in bodies:
        row = rows[body["event_id"]]
        assert row.shadow["version"] == sh.shadow
        np.testing.assert_allclose(row.shadow["pmf"], shadow, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("failure", ["nan", "error"])
def test_a_failing_shadow_logs_null_and_serves_anyway(
    client: TestClient, settings: Settings, failure: str
) -> None:
    sh = Shadowed(client)
    policy = sh.runtime().shadow

    def broken(*args: Any, **kwargs: Any) -> np.ndarray:
        if failure == "error":
            raise RuntimeError("the shadow's workspace is broken")
        return np.full(len(args[1]), np.nan)

    policy.scores = broken  # this worker's shadow only
    n = 200
    bodies = [{"event_id": f"f{i}", "context": CONTEXT, "actions": ACTIONS} for i in range(n)]
    responses = rank_many(client, LOOP, bodies)
    rows = check_unchanged(sh, bodies, responses)
    assert all(rows[b["event_id"]].shadow is None for b in bodies)
    counters = client.get("/v1/status").json()["serving"][LOOP]
    assert (counters["shadow_scored"], counters["shadow_failed"]) == (0, n)


def test_a_shadow_overflowing_floats_logs_null(client: TestClient) -> None:
    """A real shadow model that refuses a request live accepts (its 3-way interaction of large
    features overflows float32, live has only 2-way ones): the request is served, the shadow
    logged as null."""
    sh = Shadowed(client)
    cubic = "--cubic cca"
    art = trained_artifact(CONTEXT, ACTIONS, MEANS, seed=7, vw_args=cubic)
    set_status(sh.engine, register_version(sh.engine, LOOP, art, vw_args=cubic), "shadow")
    sh.service.loops.refresh()
    body = {
        "event_id": "huge",
        "context": {"x": 1e13},  # x x y = 1e39 in the shadow; at most 1e26 in live
        "actions": [{"id": "a0", "features": {"y": 1e13}}, {"id": "a1", "features": {"y": 2.0}}],
    }
    live = sh.runtime().policy.scores(body["context"], parse_rank(body, sh.settings).actions)
    assert np.isfinite(live).all()
    r = client.post(f"/v1/loops/{LOOP}/rank", json=body)
    assert r.status_code == 201, r.text
    row = sh.rows()["huge"]
    assert row.shadow is None and row.model_version == sh.live
    assert client.get("/v1/status").json()["serving"][LOOP]["shadow_failed"] == 1


def test_arm_and_shadow_survive_the_spool_encoding(client: TestClient) -> None:
    """A decision spooled while the database is away keeps its arm, arm probability and shadow
    (the spool line is the record's columns)."""
    sh = Shadowed(client, canary_percent=50.0)
    body = {"event_id": "sp", "user_id": "someone", "context": CONTEXT, "actions": ACTIONS}
    record = decide(parse_rank(body, sh.settings), body, sh.runtime(), datetime.now(UTC), "sp")
    assert record.shadow is not None and record.arm_probability == 0.5
    assert op_from_json(orjson.loads(op_to_line(record))) == record
