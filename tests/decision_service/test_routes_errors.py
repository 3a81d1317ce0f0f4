"""Every error path of every native route (DESIGN §7), as one table.

Each case runs on SQLite and PostgreSQL against an app with small limits (3 actions, 4 features,
ids of 8 characters, 3 slots, 2048-byte bodies) and a few stored decisions. For each case we
check the status, the `error.code`, that `error.message` is a non-empty string, that the body
is exactly ``{"error": {"code", "message"}}``, and that the request wrote nothing: the loops
(configurations and `updated_at`), every row of `decisions` (with activation and join state),
the row counts of `rewards` and `outcomes`, the per-loop counts and the local spool are the same
before and after.

Answers defined here (the contract the table pins down):

| what | status | code |
| --- | --- | --- |
| body not JSON, empty, NaN / Infinity / -Infinity / 1e999 anywhere | 400 | invalid_json |
| body larger than `max_body_bytes` (declared or chunked) | 413 | payload_too_large |
| not an object, wrong types, no / empty actions, unknown fields, bools | 422 | invalid_request |
| actions / features / slots / id length over the settings' limits | 422 | limit_exceeded |
| duplicate action ids | 422 | duplicate_action |
| excluded action not among the actions | 422 | unknown_excluded_action |
| every action excluded | 422 | all_actions_excluded |
| more slots than servable actions | 422 | too_many_slots |
| event_id reused with a different request | 409 | event_conflict |
| unknown loop (any route) | 404 | loop_not_found |
| invalid loop name on GET / PUT | 422 | invalid_loop_name |
| invalid loop name on rank / reward / activate (no such loop can exist) | 404 | loop_not_found |
| unknown event (or an event of another loop) | 404 | event_not_found |
| reward outside the loop's [min_reward, max_reward] | 422 | reward_out_of_range |
| reward for a slot the decision does not have | 422 | unknown_slot |
| activate a decision that was not deferred | 409 | not_deferred |
| loop configuration that does not validate (bounds, VW arguments) | 422 | invalid_config |
| `seed` or `sampling_key` in a loop configuration (server secrets) | 422 | invalid_request |
| unknown route / wrong method | 404 / 405 | not_found / method_not_allowed |

A late reward is not an error (202, status "late"): see test_rank.py.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from decision_service import Settings, create_app
from decision_service.errors import STATUS
from decision_service.errors import install as install_errors
from explore.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidJson,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from log.models import DecisionRow, Loop, OutcomeRow, RewardRow
from log.schema import make_engine
from log.store import loop_counts
from tests.conftest import admin_client, make_settings

LIMITS: dict[str, object] = {
    "max_actions": 3,
    "max_features": 4,
    "max_id_length": 8,
    "max_slots": 3,
    "max_body_bytes": 2048,
}

RANK = "/v1/loops/default/rank"
REWARD = "/v1/loops/default/events/single/reward"
SLATE_REWARD = "/v1/loops/default/events/slate/reward"
DROP = object()  # marks a key to leave out of a body


def rank_body(**changes: Any) -> dict[str, Any]:
    """A valid rank request within the limits, with `changes` applied."""
    body: dict[str, Any] = {
        "context": {"u": 1},
        "actions": [{"id": "a", "features": {"f": 1}}, {"id": "b"}, {"id": "c"}],
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not DROP}


def acts(*ids: str) -> list[dict[str, Any]]:
    return [{"id": i} for i in ids]


RANK_RAW = b'"actions": [{"id": "a"}, {"id": "b"}]'


@dataclass(frozen=True)
class Limited:
    client: TestClient
    settings: Settings
    engine: Engine
    tmp: Path


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    body: Any  # a JSON-able object (json.dumps, NaN allowed), raw bytes, or None (no body)
    status: int
    code: str
    chunked: bool = False  # send the body without Content-Length
    must_not_exist: tuple[str, ...] = ()  # files (relative to tmp_path) the request must not make


def _cases() -> list[Case]:
    c: list[Case] = []

    def add(*args: Any, **kw: Any) -> None:
        c.append(Case(*args, **kw))

    # ---------------------------------------------------------------- rank: JSON and size
    add("rank-malformed-json", "POST", RANK, b'{"actions": [', 400, "invalid_json")
    add("rank-empty-body", "POST", RANK, b"", 400, "invalid_json")
    add("rank-trailing-garbage", "POST", RANK, b'{"actions": []} x', 400, "invalid_json")
    add("rank-form-encoded", "POST", RANK, b"actions=a&actions=b", 400, "invalid_json")
    add(
        "rank-lone-surrogate",
        "POST",
        RANK,
        b'{"event_id": "\\ud800", ' + RANK_RAW + b"}",
        400,
        "invalid_json",
    )
    for name, lit in [
        ("nan", b"NaN"),
        ("inf", b"Infinity"),
        ("neg-inf", b"-Infinity"),
        ("1e999", b"1e999"),
        ("neg-1e999", b"-1e999"),
        ("huge-int", b"1" + b"0" * 400),
    ]:
        add(
            f"rank-{name}-in-context",
            "POST",
            RANK,
            b'{"context": {"x": ' + lit + b"}, " + RANK_RAW + b"}",
            400,
            "invalid_json",
        )
        add(
            f"rank-{name}-in-action-features",
            "POST",
            RANK,
            b'{"actions": [{"id": "a", "features": {"x": ' + lit + b'}}, {"id": "b"}]}',
            400,
            "invalid_json",
        )
    add(
        "rank-nan-nested-in-context-list",
        "POST",
        RANK,
        b'{"context": {"x": {"y": [1, NaN]}}, ' + RANK_RAW + b"}",
        400,
        "invalid_json",
    )
    add(
        "rank-nan-as-slots", "POST", RANK, b'{"slots": NaN, ' + RANK_RAW + b"}", 400, "invalid_json"
    )
    add(
        "rank-body-too-large",
        "POST",
        RANK,
        rank_body(context={"s": "x" * 3000}),
        413,
        "payload_too_large",
    )
    add(
        "rank-body-too-large-chunked",
        "POST",
        RANK,
        rank_body(context={"s": "x" * 3000}),
        413,
        "payload_too_large",
        chunked=True,
    )
    # ---------------------------------------------------------------- rank: shapes and types
    add("rank-body-is-list", "POST", RANK, [rank_body()], 422, "invalid_request")
    add("rank-body-is-string", "POST", RANK, "actions", 422, "invalid_request")
    add("rank-body-is-null", "POST", RANK, b"null", 422, "invalid_request")
    add("rank-missing-actions", "POST", RANK, rank_body(actions=DROP), 422, "invalid_request")
    add("rank-empty-actions", "POST", RANK, rank_body(actions=[]), 422, "invalid_request")
    add("rank-null-actions", "POST", RANK, rank_body(actions=None), 422, "invalid_request")
    add("rank-actions-object", "POST", RANK, rank_body(actions={"id": "a"}), 422, "invalid_request")
    add("rank-actions-strings", "POST", RANK, rank_body(actions=["a", "b"]), 422, "invalid_request")
    add("rank-action-id-int", "POST", RANK, rank_body(actions=[{"id": 1}]), 422, "invalid_request")
    add(
        "rank-action-id-empty",
        "POST",
        RANK,
        rank_body(actions=[{"id": ""}]),
        422,
        "invalid_request",
    )
    add(
        "rank-action-id-missing",
        "POST",
        RANK,
        rank_body(actions=[{"features": {}}]),
        422,
        "invalid_request",
    )
    add(
        "rank-action-features-list",
        "POST",
        RANK,
        rank_body(actions=[{"id": "a", "features": [1, 2]}]),
        422,
        "invalid_request",
    )
    add(
        "rank-action-features-object-in-list",
        "POST",
        RANK,
        rank_body(actions=[{"id": "a", "features": {"l": [{"x": 1}]}}]),
        422,
        "invalid_request",
    )
    add("rank-context-list", "POST", RANK, rank_body(context=[1, 2]), 422, "invalid_request")
    add("rank-context-string", "POST", RANK, rank_body(context="u=1"), 422, "invalid_request")
    add(
        "rank-context-list-in-list",
        "POST",
        RANK,
        rank_body(context={"l": [[1]]}),
        422,
        "invalid_request",
    )
    add(
        "rank-context-nested-too-deep",
        "POST",
        RANK,
        rank_body(context={"a": {"b": {"c": {"d": 1}}}}),
        422,
        "invalid_request",
    )
    add("rank-event-id-int", "POST", RANK, rank_body(event_id=5), 422, "invalid_request")
    add("rank-event-id-empty", "POST", RANK, rank_body(event_id=""), 422, "invalid_request")
    add(
        "rank-excluded-string",
        "POST",
        RANK,
        rank_body(excluded_actions="a"),
        422,
        "invalid_request",
    )
    add("rank-excluded-ints", "POST", RANK, rank_body(excluded_actions=[1]), 422, "invalid_request")
    add("rank-slots-string", "POST", RANK, rank_body(slots="2"), 422, "invalid_request")
    add("rank-slots-float", "POST", RANK, rank_body(slots=2.0), 422, "invalid_request")
    add("rank-slots-bool", "POST", RANK, rank_body(slots=True), 422, "invalid_request")
    add(
        "rank-defer-string", "POST", RANK, rank_body(defer_activation="yes"), 422, "invalid_request"
    )
    add("rank-defer-int", "POST", RANK, rank_body(defer_activation=1), 422, "invalid_request")
    add("rank-unknown-field", "POST", RANK, rank_body(user="u1"), 422, "invalid_request")
    add(
        "rank-unknown-action-field",
        "POST",
        RANK,
        rank_body(actions=[{"id": "a", "score": 1.0}]),
        422,
        "invalid_request",
    )
    # ---------------------------------------------------------------- rank: consistency
    add(
        "rank-duplicate-action-ids",
        "POST",
        RANK,
        rank_body(actions=acts("a", "b", "a")),
        422,
        "duplicate_action",
    )
    add(
        "rank-unknown-excluded",
        "POST",
        RANK,
        rank_body(excluded_actions=["zz"]),
        422,
        "unknown_excluded_action",
    )
    add(
        "rank-all-excluded",
        "POST",
        RANK,
        rank_body(excluded_actions=["a", "b", "c"]),
        422,
        "all_actions_excluded",
    )
    add("rank-slots-zero", "POST", RANK, rank_body(slots=0), 422, "invalid_request")
    add("rank-slots-negative", "POST", RANK, rank_body(slots=-1), 422, "invalid_request")
    add("rank-slots-over-limit", "POST", RANK, rank_body(slots=4), 422, "limit_exceeded")
    add(
        "rank-slots-over-available",
        "POST",
        RANK,
        rank_body(actions=acts("a", "b"), slots=3),
        422,
        "too_many_slots",
    )
    add(
        "rank-slots-over-available-after-exclusion",
        "POST",
        RANK,
        rank_body(slots=3, excluded_actions=["b"]),
        422,
        "too_many_slots",
    )
    # ---------------------------------------------------------------- rank: limits
    add(
        "rank-too-many-actions",
        "POST",
        RANK,
        rank_body(actions=acts("a", "b", "c", "d")),
        422,
        "limit_exceeded",
    )
    add("rank-event-id-too-long", "POST", RANK, rank_body(event_id="e" * 9), 422, "limit_exceeded")
    add("rank-user-id-too-long", "POST", RANK, rank_body(user_id="u" * 9), 422, "limit_exceeded")
    add("rank-user-id-empty", "POST", RANK, rank_body(user_id=""), 422, "invalid_request")
    add("rank-user-id-number", "POST", RANK, rank_body(user_id=7), 422, "invalid_request")
    add("rank-user-id-control", "POST", RANK, rank_body(user_id="u\x01"), 422, "invalid_request")
    add(
        "rank-action-id-too-long",
        "POST",
        RANK,
        rank_body(actions=acts("a", "b" * 9)),
        422,
        "limit_exceeded",
    )
    add(
        "rank-context-too-many-features",
        "POST",
        RANK,
        rank_body(context={k: 1 for k in "vwxyz"}),
        422,
        "limit_exceeded",
    )
    add(
        "rank-context-too-many-nested-features",
        "POST",
        RANK,
        rank_body(context={"n": {"a": 1, "b": {"c": 2, "d": 3}}, "l": [1, 2]}),
        422,
        "limit_exceeded",
    )
    add(
        "rank-action-too-many-features",
        "POST",
        RANK,
        rank_body(actions=[{"id": "a", "features": {k: "x" for k in "vwxyz"}}]),
        422,
        "limit_exceeded",
    )
    add(
        "rank-action-list-feature-too-long",
        "POST",
        RANK,
        rank_body(actions=[{"id": "a", "features": {"l": [1, 2, 3, 4, 5]}}]),
        422,
        "limit_exceeded",
    )
    # ---------------------------------------------------------------- rank: loops and events
    for name, body in [
        ("context-1e39", rank_body(context={"x": 1e39})),
        ("context-list-1e39", rank_body(context={"x": [1e39]})),
        ("action-feature-neg-1e39", rank_body(actions=[{"id": "a", "features": {"y": -1e39}}])),
        (
            "interaction-overflow",
            rank_body(context={"x": 1e20}, actions=[{"id": "a", "features": {"y": 1e20}}]),
        ),
    ]:
        add(
            f"rank-float32-overflow-{name}",
            "POST",
            RANK,
            body,
            422,
            "invalid_request",
        )
    add("rank-unknown-loop", "POST", "/v1/loops/nope/rank", rank_body(), 404, "loop_not_found")
    add(
        "rank-invalid-loop-name",
        "POST",
        "/v1/loops/bad%20name!/rank",
        rank_body(),
        404,
        "loop_not_found",
    )
    add(
        "rank-nul-in-loop-name",
        "POST",
        "/v1/loops/a%00b/rank",
        rank_body(),
        404,
        "loop_not_found",
    )
    add(
        "rank-event-id-conflict",
        "POST",
        RANK,
        rank_body(event_id="single", context={"u": 2}),
        409,
        "event_conflict",
    )
    add(
        "rank-event-id-conflict-slots",
        "POST",
        RANK,
        rank_body(event_id="single", slots=2),
        409,
        "event_conflict",
    )
    add(
        "rank-event-id-conflict-deferred",
        "POST",
        RANK,
        rank_body(event_id="single", defer_activation=True),
        409,
        "event_conflict",
    )

    # ---------------------------------------------------------------- reward
    add("reward-malformed-json", "POST", REWARD, b'{"value": ', 400, "invalid_json")
    add("reward-empty-body", "POST", REWARD, b"", 400, "invalid_json")
    for name, lit in [
        ("nan", b"NaN"),
        ("inf", b"Infinity"),
        ("neg-inf", b"-Infinity"),
        ("1e999", b"1e999"),
        ("neg-1e999", b"-1e999"),
    ]:
        add(f"reward-value-{name}", "POST", REWARD, b'{"value": ' + lit + b"}", 400, "invalid_json")
    add(
        "reward-body-too-large",
        "POST",
        REWARD,
        {"value": 1, "pad": "x" * 3000},
        413,
        "payload_too_large",
    )
    add("reward-body-is-list", "POST", REWARD, [{"value": 1}], 422, "invalid_request")
    add("reward-body-is-number", "POST", REWARD, 1, 422, "invalid_request")
    add("reward-missing-value", "POST", REWARD, {}, 422, "invalid_request")
    add("reward-value-null", "POST", REWARD, {"value": None}, 422, "invalid_request")
    add("reward-value-string", "POST", REWARD, {"value": "1"}, 422, "invalid_request")
    add("reward-value-bool-true", "POST", REWARD, {"value": True}, 422, "invalid_request")
    add("reward-value-bool-false", "POST", REWARD, {"value": False}, 422, "invalid_request")
    add("reward-value-list", "POST", REWARD, {"value": [1]}, 422, "invalid_request")
    add("reward-slot-string", "POST", REWARD, {"value": 1, "slot": "0"}, 422, "invalid_request")
    add("reward-slot-float", "POST", REWARD, {"value": 1, "slot": 0.0}, 422, "invalid_request")
    add("reward-slot-bool", "POST", REWARD, {"value": 1, "slot": False}, 422, "invalid_request")
    add("reward-slot-negative", "POST", REWARD, {"value": 1, "slot": -1}, 422, "invalid_request")
    add("reward-unknown-field", "POST", REWARD, {"value": 1, "weight": 2}, 422, "invalid_request")
    add("reward-above-max", "POST", REWARD, {"value": 1.5}, 422, "reward_out_of_range")
    add("reward-below-min", "POST", REWARD, {"value": -1.0001}, 422, "reward_out_of_range")
    add("reward-1e308", "POST", REWARD, {"value": 1e308}, 422, "reward_out_of_range")
    add("reward-huge-int", "POST", REWARD, {"value": 10**30}, 422, "reward_out_of_range")
    add("reward-u64-int", "POST", REWARD, {"value": 2**64 - 1}, 422, "reward_out_of_range")
    add("reward-single-slot-1", "POST", REWARD, {"value": 1, "slot": 1}, 422, "unknown_slot")
    add("reward-slate-slot-K", "POST", SLATE_REWARD, {"value": 1, "slot": 2}, 422, "unknown_slot")
    add(
        "reward-slate-slot-far",
        "POST",
        SLATE_REWARD,
        {"value": 1, "slot": 2**40},
        422,
        "unknown_slot",
    )
    add(
        "reward-unknown-event",
        "POST",
        "/v1/loops/default/events/nope/reward",
        {"value": 1},
        404,
        "event_not_found",
    )
    add(
        "reward-event-of-other-loop",
        "POST",
        "/v1/loops/default/events/inother/reward",
        {"value": 1},
        404,
        "event_not_found",
    )
    add(
        "reward-unknown-loop",
        "POST",
        "/v1/loops/nope/events/single/reward",
        {"value": 1},
        404,
        "loop_not_found",
    )
    add(
        "reward-invalid-loop-name",
        "POST",
        "/v1/loops/bad%20name!/events/single/reward",
        {"value": 1},
        404,
        "loop_not_found",
    )
    add(
        "reward-event-id-too-long",
        "POST",
        "/v1/loops/default/events/eeeeeeeee/reward",
        {"value": 1},
        422,
        "limit_exceeded",
    )
    add(
        "reward-nul-in-loop-name",
        "POST",
        "/v1/loops/a%00b/events/single/reward",
        {"value": 1},
        404,
        "loop_not_found",
    )
    add(
        "reward-nul-in-event-id",
        "POST",
        "/v1/loops/default/events/e%00x/reward",
        {"value": 1},
        404,
        "event_not_found",
    )

    add(
        "reward-unknown-event-with-slash",
        "POST",
        "/v1/loops/default/events/no/such/reward",
        {"value": 1},
        404,
        "event_not_found",
    )
    add(
        "reward-unknown-event-encoded-slash",
        "POST",
        "/v1/loops/default/events/single%2Fx/reward",
        {"value": 1},
        404,
        "event_not_found",
    )

    # ---------------------------------------------------------------- activate
    add(
        "activate-unknown-event",
        "POST",
        "/v1/loops/default/events/nope/activate",
        None,
        404,
        "event_not_found",
    )
    add(
        "activate-event-of-other-loop",
        "POST",
        "/v1/loops/default/events/inother/activate",
        None,
        404,
        "event_not_found",
    )
    add(
        "activate-unknown-loop",
        "POST",
        "/v1/loops/nope/events/single/activate",
        None,
        404,
        "loop_not_found",
    )
    add(
        "activate-not-deferred",
        "POST",
        "/v1/loops/default/events/single/activate",
        None,
        409,
        "not_deferred",
    )
    add(
        "activate-slate-not-deferred",
        "POST",
        "/v1/loops/default/events/slate/activate",
        None,
        409,
        "not_deferred",
    )
    add(
        "activate-event-id-too-long",
        "POST",
        "/v1/loops/default/events/eeeeeeeee/activate",
        None,
        422,
        "limit_exceeded",
    )
    add(
        "activate-nul-in-event-id",
        "POST",
        "/v1/loops/default/events/e%00x/activate",
        None,
        404,
        "event_not_found",
    )

    add(
        "activate-unknown-event-with-slash",
        "POST",
        "/v1/loops/default/events/a/b/activate",
        None,
        404,
        "event_not_found",
    )

    # ---------------------------------------------------------------- loops: names
    add("get-unknown-loop", "GET", "/v1/loops/nope", None, 404, "loop_not_found")
    add("get-invalid-loop-name", "GET", "/v1/loops/bad%20name", None, 422, "invalid_loop_name")
    add("get-loop-name-too-long", "GET", "/v1/loops/" + "l" * 129, None, 422, "invalid_loop_name")
    add("get-nul-in-loop-name", "GET", "/v1/loops/a%00b", None, 422, "invalid_loop_name")
    add("put-invalid-loop-name", "PUT", "/v1/loops/bad%20name", {}, 422, "invalid_loop_name")
    add("put-loop-name-slash-encoded", "PUT", "/v1/loops/a%2Fb", {}, 404, "not_found")
    add("put-loop-name-too-long", "PUT", "/v1/loops/" + "l" * 129, {}, 422, "invalid_loop_name")
    add(
        "put-loop-name-trailing-newline",
        "PUT",
        "/v1/loops/abc%0A",
        {},
        422,
        "invalid_loop_name",
    )
    add(
        "put-loop-name-over-max-id-length",
        "PUT",
        "/v1/loops/loopname9",
        {},
        422,
        "limit_exceeded",
    )
    # ---------------------------------------------------------------- loops: bodies
    put_new, put_default = "/v1/loops/fresh", "/v1/loops/default"
    add("put-malformed-json", "PUT", put_new, b'{"epsilon": ', 400, "invalid_json")
    add("put-empty-body", "PUT", put_new, b"", 400, "invalid_json")
    add("put-epsilon-nan", "PUT", put_new, b'{"epsilon": NaN}', 400, "invalid_json")
    add("put-lambda-inf", "PUT", put_new, b'{"softmax_lambda": Infinity}', 400, "invalid_json")
    add("put-wait-1e999", "PUT", put_new, b'{"reward_wait_s": 1e999}', 400, "invalid_json")
    add(
        "put-min-reward-neg-inf",
        "PUT",
        put_default,
        b'{"min_reward": -Infinity}',
        400,
        "invalid_json",
    )
    add(
        "put-body-too-large",
        "PUT",
        put_new,
        {"vw_args": "-q ca" + " " * 3000},
        413,
        "payload_too_large",
    )
    add("put-body-is-list", "PUT", put_new, [{}], 422, "invalid_request")
    add("put-unknown-field", "PUT", put_new, {"epsilon": 0.1, "alpha": 1}, 422, "invalid_request")
    add("put-extra-field", "PUT", put_default, {"extra": {"a": 1}}, 422, "invalid_request")
    add("put-epsilon-string", "PUT", put_new, {"epsilon": "0.1"}, 422, "invalid_request")
    add("put-epsilon-bool", "PUT", put_new, {"epsilon": True}, 422, "invalid_request")
    # the sampling key is the server's secret: neither the retired seed nor the key can be set
    add("put-seed", "PUT", put_new, {"seed": 42}, 422, "invalid_request")
    add("put-seed-existing", "PUT", put_default, {"seed": 7}, 422, "invalid_request")
    add("put-sampling-key", "PUT", put_new, {"sampling_key": "00" * 32}, 422, "invalid_request")
    add(
        "put-sampling-key-existing",
        "PUT",
        put_default,
        {"epsilon": 0.1, "sampling_key": "ab" * 32},
        422,
        "invalid_request",
    )
    add("put-vw-args-int", "PUT", put_new, {"vw_args": 5}, 422, "invalid_request")
    add("put-exploration-null", "PUT", put_new, {"exploration": None}, 422, "invalid_request")
    # ---------------------------------------------------------------- loops: invalid configs
    for path in (put_new, put_default):
        where = "new" if path == put_new else "existing"
        configs: list[tuple[str, dict[str, Any]]] = [
            ("bad-exploration", {"exploration": "thompson"}),
            ("epsilon-above-1", {"epsilon": 1.5}),
            ("epsilon-negative", {"epsilon": -0.1}),
            ("negative-reward-wait", {"reward_wait_s": -1}),
            ("negative-softmax-lambda", {"softmax_lambda": -1.0}),
            ("bad-aggregation", {"reward_aggregation": "median"}),
            ("min-above-max", {"min_reward": 1.0, "max_reward": 0.0}),
            ("default-above-range", {"default_reward": 2.0}),
            ("default-below-range", {"min_reward": 0, "max_reward": 1, "default_reward": -0.5}),
            ("reward-wait-1e12", {"reward_wait_s": 1e12}),
            ("reward-wait-over-30-days", {"reward_wait_s": 30 * 86400 + 1}),
            ("softmax-lambda-over-1000", {"softmax_lambda": 1000.5}),
            ("min-reward-below-minus-1e9", {"min_reward": -1.1e9}),
            ("max-reward-above-1e9", {"max_reward": 2e9}),
            ("rewards-1e308", {"min_reward": -1e308, "max_reward": 1e308}),
            ("vw-args-too-long", {"vw_args": "-q ca" + " " * 1000}),
            ("vw-nn", {"vw_args": "--nn 100000"}),
            ("vw-4-way-interaction", {"vw_args": "--interactions caca"}),
            ("vw-wildcard-interaction", {"vw_args": "-q ::"}),
            ("vw-too-many-interactions", {"vw_args": " ".join(["-q ca"] * 9)}),
            ("vw-bits-23", {"vw_args": "-b 23"}),
            ("vw-l2-out-of-range", {"vw_args": "--l2 5"}),
            ("vw-learning-rate-zero", {"vw_args": "-l 0"}),
            ("vw-daemon", {"vw_args": "--daemon"}),
            ("vw-lrq", {"vw_args": "--lrq ca5"}),
            ("vw-forbidden-cb-explore-adf", {"vw_args": "--cb_explore_adf"}),
            ("vw-forbidden-epsilon", {"vw_args": "-q ca --epsilon 0.1"}),
            ("vw-forbidden-epsilon-equals", {"vw_args": "--epsilon=0.1"}),
            ("vw-forbidden-final-regressor", {"vw_args": "-f model.vw"}),
            ("vw-forbidden-initial-regressor", {"vw_args": "--initial_regressor=/etc/hostname"}),
            ("vw-forbidden-quiet", {"vw_args": "--quiet"}),
            ("vw-unparseable-quote", {"vw_args": '-q "ca'}),
            ("vw-unknown-option", {"vw_args": "--no_such_option"}),
            ("vw-bad-choice", {"vw_args": "--cb_type bogus"}),
        ]
        for name, config in configs:
            add(f"put-{where}-{name}", "PUT", path, config, 422, "invalid_config")
    for name, args, made in [
        ("readable-model", "--readable_model {tmp}/readable.txt", "readable.txt"),
        ("invert-hash", "--invert_hash {tmp}/inverted.txt", "inverted.txt"),
        ("raw-predictions", "-r {tmp}/raw.txt", "raw.txt"),
        ("attached-final-regressor", "-f{tmp}/model.vw", "model.vw"),
        ("attached-predictions", "-p{tmp}/preds.txt", "preds.txt"),
    ]:
        add(
            f"put-vw-writes-file-{name}",
            "PUT",
            "/v1/loops/vwfile",
            {"vw_args": args},
            422,
            "invalid_config",
            must_not_exist=(made,),
        )

    # ---------------------------------------------------------------- routing
    add("unknown-route", "GET", "/v1/nope", None, 404, "not_found")
    add("rank-wrong-method", "GET", RANK, None, 405, "method_not_allowed")
    add("loop-wrong-method", "DELETE", "/v1/loops/default", None, 405, "method_not_allowed")
    add("loops-wrong-method", "POST", "/v1/loops", {}, 405, "method_not_allowed")
    add("reward-wrong-method", "GET", REWARD, None, 405, "method_not_allowed")
    return c


CASES = _cases()


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


def snapshot(settings: Settings, engine: Engine) -> dict[str, Any]:
    """Everything a request could have written."""
    with engine.connect() as conn:
        loops = {
            r.loop: (r.config, r.updated_at)
            for r in conn.execute(select(Loop.loop, Loop.config, Loop.updated_at))
        }
        decisions = sorted(
            tuple(r)
            for r in conn.execute(
                select(
                    DecisionRow.loop,
                    DecisionRow.event_id,
                    DecisionRow.request_digest,
                    DecisionRow.activated_at,
                    DecisionRow.reward_deadline,
                    DecisionRow.joined_at,
                )
            )
        )
        rewards = conn.execute(select(func.count()).select_from(RewardRow)).scalar_one()
        outcomes = conn.execute(select(func.count()).select_from(OutcomeRow)).scalar_one()
    counts = {name: loop_counts(engine, name) for name in loops}
    spool = Path(settings.spool_dir)
    files = sorted((p.name, p.stat().st_size) for p in spool.rglob("*") if p.is_file())
    return {
        "loops": loops,
        "decisions": decisions,
        "rewards": rewards,
        "outcomes": outcomes,
        "counts": counts,
        "spool": files,
    }


def setup_state(client: TestClient) -> None:
    """Loop `other` and three decisions: `single` and `slate` (K=2) in default, one in other."""
    answers = [
        client.put("/v1/loops/other", json={}),
        client.post(RANK, json=rank_body(event_id="single")),
        client.post(RANK, json=rank_body(event_id="slate", slots=2)),
        client.post("/v1/loops/other/rank", json=rank_body(event_id="inother")),
    ]
    assert [r.status_code for r in answers] == [201, 201, 201, 201], [r.text for r in answers]


def encode(body: Any, tmp_path: Path) -> bytes | None:
    if body is None:
        return None
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw.replace(b"{tmp}", str(tmp_path).encode())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def limited(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Limited]:
    """One app per database for the whole table: every case must leave the state unchanged,
    and each checks that against its own before/after snapshot."""
    tmp = tmp_path_factory.mktemp(f"errors-{request.param}")
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'store.db'}"
    else:
        base: str = request.getfixturevalue("pg_base_url")
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    settings = make_settings(url, tmp, **LIMITS)
    engine = make_engine(settings.database_url)
    try:
        with admin_client(create_app(settings), raise_server_exceptions=False) as client:
            setup_state(client)
            yield Limited(client, settings, engine, tmp)
    finally:
        engine.dispose()
        if schema is not None:
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert isinstance(message, str), body
    assert message.strip(), body


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_error(case: Case, limited: Limited) -> None:
    before = snapshot(limited.settings, limited.engine)
    raw = encode(case.body, limited.tmp)
    headers = {"content-type": "application/json"} if raw is not None else {}
    content: Any = raw
    if case.chunked and raw is not None:
        content = iter([raw[:1000], raw[1000:]])
    response = limited.client.request(case.method, case.path, content=content, headers=headers)
    assert_error(response, case.status, case.code)
    assert snapshot(limited.settings, limited.engine) == before
    for name in case.must_not_exist:
        assert not (limited.tmp / name).exists(), f"the request wrote {limited.tmp / name}"


def test_rejected_requests_leave_later_requests_working(db_url: str, tmp_path: Path) -> None:
    """After a run of rejected requests, valid ones still succeed and are counted once."""
    settings = make_settings(db_url, tmp_path, **LIMITS)
    with admin_client(create_app(settings), raise_server_exceptions=False) as client:
        setup_state(client)
        for case in CASES:
            client.request(case.method, case.path, content=encode(case.body, tmp_path))
        ok = client.post(RANK, json=rank_body(event_id="after"))
        assert ok.status_code == 201, ok.text
        assert client.post(REWARD, json={"value": 0.5}).status_code == 202
        counts = client.get("/v1/loops/default").json()["counts"]
        assert counts == {"decisions": 3, "rewards": 1, "late_rewards": 0, "outcomes": 0}


@pytest.mark.parametrize(
    "body",
    [
        rank_body(event_id="e\u0000x"),
        rank_body(event_id="nul", actions=[{"id": "a\u0000"}]),
        rank_body(event_id="nul-user", user_id="u\u0000"),
    ],
    ids=["nul-in-event-id", "nul-in-chosen-action-id", "nul-in-user-id"],
)
def test_rank_nul_in_ids_is_rejected(db_url: str, tmp_path: Path, body: dict[str, Any]) -> None:
    # Regression: a NUL once reached PostgreSQL's COPY and killed the writer thread, so every
    # later durable request hung. Fast mode answers without waiting on the writer; then the
    # writer must still answer within a timeout.
    settings = make_settings(db_url, tmp_path, durability="fast")
    with admin_client(create_app(settings), raise_server_exceptions=False) as client:
        engine = make_engine(settings.database_url)
        before = snapshot(settings, engine)
        response = client.post(RANK, json=body)
        try:
            assert_error(response, 422, "invalid_request")
            # The writer still answers, and nothing was written.
            writer = client.app.state.service.writer  # type: ignore[attr-defined]
            done = threading.Event()

            def flush() -> None:
                try:
                    writer.write_sync([], timeout=5)
                    done.set()
                except Exception:  # the writer thread is gone: `done` stays unset
                    pass

            threading.Thread(target=flush, daemon=True).start()
            assert done.wait(10), "the group-commit writer stopped answering"
            assert snapshot(settings, engine) == before
        finally:
            engine.dispose()


# ------------------------------------------------------------------ the one map to statuses
DOMAIN_CASES = [
    (InvalidJson("not json"), 400, "invalid_json", None),
    (Unauthorized("no key"), 401, "unauthorized", None),
    (Forbidden("wrong role"), 403, "forbidden", None),
    (NotFound("no loop", "loop_not_found"), 404, "loop_not_found", None),
    (Conflict("used", "event_conflict"), 409, "event_conflict", None),
    (PayloadTooLarge("too big"), 413, "payload_too_large", None),
    (InvalidInput("bad", "limit_exceeded"), 422, "limit_exceeded", None),
    (
        TooManyRequests("busy", "too_many_evaluations", retry_after_s=30),
        429,
        "too_many_evaluations",
        "30",
    ),
    (Unavailable("store down", retry_after_s=2), 503, "store_unavailable", "2"),
]


@pytest.fixture(scope="module")
def raising() -> Iterator[TestClient]:
    """A bare app with the service's error handling and routes that raise."""
    app = FastAPI()
    install_errors(app)

    @app.get("/domain/{i}")
    async def domain(i: int) -> None:
        raise DOMAIN_CASES[i][0]

    @app.get("/bug")
    async def bug() -> None:
        raise ZeroDivisionError("internal detail")

    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(("i", "case"), list(enumerate(DOMAIN_CASES)), ids=lambda x: str(x))
def test_each_domain_error_maps_to_its_status(raising: TestClient, i: int, case: Any) -> None:
    _, status, code, retry_after = case
    response = raising.get(f"/domain/{i}")
    assert_error(response, status, code)
    assert response.headers.get("retry-after") == retry_after
    assert (response.headers.get("www-authenticate") is not None) == (status == 401)
    assert STATUS[type(case[0])] == status


def test_every_domain_error_class_has_a_status() -> None:
    import explore.errors as domain

    classes = {getattr(domain, n) for n in domain.__all__} - {domain.DomainError}
    assert classes == set(STATUS)
    assert {type(c[0]) for c in DOMAIN_CASES} == classes


def test_an_unhandled_exception_is_a_json_500(raising: TestClient) -> None:
    response = raising.get("/bug")
    assert_error(response, 500, "internal_error")
    assert "internal detail" not in response.text


def test_405_says_which_methods_are_allowed(limited: Limited) -> None:
    response = limited.client.delete("/v1/loops/default")
    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "PUT"}
