"""Bounds on every loop setting, the defaults, and the loop's secret sampling key in the store.

Each bound is tested at both edges (accepted) and just beyond (refused: 422 `invalid_config`
naming the field and the bound), through `LoopConfig` and through `PUT /v1/loops/{loop}`. The
defaults (README "Defaults") are accepted by VW as they are; `cover`, which VW refuses with the
default `--cb_type dm`, is refused by the PUT (nothing stored) unless `vw_args` suit it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select

from decision_service import Settings
from decision_service.schemas import LoopConfigIn
from log.explore_settings import ExploreSettings
from log.loops import (
    BOUNDS,
    DEFAULT_EXPLORATION,
    DEFAULT_VW_ARGS,
    LoopConfig,
    get_loop,
    list_loops,
    put_loop,
)
from log.models import Loop
from log.schema import make_engine
from policies import VWPolicy, check_model_args, check_vw_args

DAY = 86400.0
# field -> (lowest accepted, highest accepted, refused below, refused above, message)
EDGES: dict[str, tuple[float, float, float, float, str]] = {
    "epsilon": (0.0, 1.0, -1e-9, 1.0 + 1e-9, r"epsilon must be a number in \[0, 1\]"),
    "softmax_lambda": (0.0, 1000.0, -1e-9, 1000.001, r"softmax_lambda must be .* \[0, 1000\]"),
    "reward_wait_s": (
        0.0,
        30 * DAY,
        -1e-9,
        30 * DAY + 0.001,
        r"reward_wait_s must be a number in \[0, 2592000\] seconds \(30 days\)",
    ),
    "min_reward": (-1e9, 1e9, -1e9 - 1, 1e9 + 1, r"min_reward must be a number in \[-1e9, 1e9\]"),
    "max_reward": (-1e9, 1e9, -1e9 - 1, 1e9 + 1, r"max_reward must be a number in \[-1e9, 1e9\]"),
    "default_reward": (-1e9, 1e9, -1e9 - 1, 1e9 + 1, r"default_reward must be a number in"),
}


def config_with(field: str, value: float) -> dict[str, Any]:
    """A configuration where `field` is `value` and the others are consistent with it."""
    out: dict[str, Any] = {field: value}
    if field == "min_reward":
        out["max_reward"] = max(value, 1.0)
        out["default_reward"] = value
    elif field == "max_reward":
        out["min_reward"] = min(value, -1.0)
        out["default_reward"] = value
    elif field == "default_reward":
        out["min_reward"], out["max_reward"] = -1e9, 1e9
    return out


def test_every_numeric_setting_has_a_tested_bound() -> None:
    assert set(EDGES) == set(BOUNDS)


@pytest.mark.parametrize("field", sorted(EDGES))
def test_loop_config_bounds(field: str) -> None:
    lo, hi, below, above, message = EDGES[field]
    assert BOUNDS[field] == (lo, hi)
    for ok in (lo, hi):
        assert getattr(LoopConfig(**config_with(field, ok)), field) == ok
    for bad in (below, above, float("nan"), float("inf"), -float("inf")):
        # (the consistent companions of the out-of-range value may be refused first: the
        # message then names them; only the field's own bound is checked here)
        with pytest.raises(ValueError, match=r"must be a number in"):
            LoopConfig(**config_with(field, bad))
    with pytest.raises(ValueError, match=message):
        LoopConfig(**{field: above})
    with pytest.raises(ValueError, match=rf"{field} must be a number in .*got True"):
        LoopConfig(**{field: True})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"exploration": "thompson"}, r"exploration must be one of"),
        ({"reward_aggregation": "median"}, r"reward_aggregation must be one of"),
        ({"min_reward": 1.0, "max_reward": 0.0}, r"min_reward \(1.0\) must not exceed"),
        ({"default_reward": 2.0}, r"default_reward must be in \[min_reward, max_reward\]"),
        ({"vw_args": "x" * 1001}, r"vw_args must be a string of at most 1000 characters"),
        ({"sampling_key": b"short"}, r"sampling_key must be 32 bytes, got 5 bytes"),
        ({"sampling_key": "00" * 32}, r"sampling_key must be 32 bytes, got str"),
    ],
)
def test_loop_config_other_rules(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LoopConfig(**changes)


def test_public_and_storage_json_are_separate() -> None:
    config = LoopConfig(sampling_key=bytes(range(32)), extra={"note": 1})
    public = config.to_json()
    assert "sampling_key" not in public and "extra" not in public and "seed" not in public
    stored = config.storage_json()
    assert stored["sampling_key"] == bytes(range(32)).hex() and stored["extra"] == {"note": 1}
    assert LoopConfig.from_json(stored) == config
    assert bytes(range(32)).hex() not in repr(config)  # nor in logs and tracebacks


def test_the_defaults_are_the_chosen_ones_and_vw_accepts_them() -> None:
    config = LoopConfig()
    assert (config.exploration, config.vw_args) == (DEFAULT_EXPLORATION, DEFAULT_VW_ARGS)
    # the decision-quality suite's choice (README "Defaults")
    assert (DEFAULT_EXPLORATION, DEFAULT_VW_ARGS) == (
        "regcbopt",
        "-q ca --cb_type mtr",
    )
    options = config.exploration_options
    assert (options.regcb_mellowness, options.floor) == (0.02, 0.003)
    body = LoopConfigIn.model_validate({})  # the PUT body's defaults are the same
    assert (body.exploration, body.vw_args) == (DEFAULT_EXPLORATION, DEFAULT_VW_ARGS)
    assert body.exploration_options.model_dump() == asdict(ExploreSettings())
    assert check_vw_args(DEFAULT_VW_ARGS) == DEFAULT_VW_ARGS  # already in normal form
    # RegCB runs as VW's reduction: the models are trained with it, its cost range the loop's,
    # every importance weight 1 (tests/policies/test_regcb_unweighted.py)
    assert config.model_args == (
        f"{DEFAULT_VW_ARGS} --cb_explore_adf --regcbopt --mellowness 0.02 "
        "--cb_min_cost -1.0 --cb_max_cost 1.0 --clip_p 1"
    )
    assert check_model_args(config.model_args) == config.model_args
    VWPolicy(config.model_args).close()  # VW accepts them


@pytest.mark.parametrize("clip", ["--clip_p 0.1", "--clip_p=0.5", "--clip_p 1"])
def test_a_regcb_loop_s_own_clip_gives_way_to_unweighted_learning(clip: str) -> None:
    """A stored RegCB loop of the third round's defaults (`--clip_p 0.1`), or one that sets its
    own: VW refuses two disagreeing values, so the reduction's `--clip_p 1` replaces it."""
    config = LoopConfig(vw_args=f"-q ca {clip} --cb_type mtr")
    assert config.model_args.startswith("-q ca --cb_type mtr --cb_explore_adf --regcbopt")
    assert config.model_args.count("--clip_p") == 1 and config.model_args.endswith("--clip_p 1")
    VWPolicy(config.model_args).close()
    # a strategy computed outside VW keeps the loop's own
    plain = LoopConfig(exploration="epsilon_greedy", vw_args=f"-q ca {clip} --cb_type mtr")
    assert plain.model_args == f"-q ca {clip} --cb_type mtr"


@pytest.mark.parametrize("cb_type", ["dr", "ips", "mtr"])
def test_cover_is_accepted_with_the_cb_types_vw_allows(cb_type: str) -> None:
    args = LoopConfig(exploration="cover", vw_args=f"-q ca --cb_type {cb_type}").model_args
    assert "--cover" in args.split()
    assert check_model_args(args) == args
    # without --cb_type VW uses mtr
    plain = LoopConfig(exploration="cover", vw_args="-q ca").model_args
    assert check_model_args(plain) == plain


def test_cover_with_dm_is_refused_naming_cb_type() -> None:
    for vw_args in ("-q ca --cb_type dm --ignore_linear c --noconstant", "-q ca --cb_type=dm"):
        args = LoopConfig(exploration="cover", vw_args=vw_args).model_args
        with pytest.raises(ValueError, match=r"--cb_type dr, ips or mtr.*refuses --cb_type dm"):
            check_model_args(args)


# ------------------------------------------------------------------------------- over HTTP
@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_engine(settings.database_url)
    yield eng
    eng.dispose()


@pytest.mark.parametrize("field", sorted(EDGES))
def test_put_accepts_each_edge_and_refuses_beyond(client: TestClient, field: str) -> None:
    lo, hi, below, above, message = EDGES[field]
    for i, ok in enumerate((lo, hi)):
        r = client.put(f"/v1/loops/edge{i}", json=config_with(field, ok))
        assert r.status_code == 201, r.text
        assert r.json()["config"][field] == ok
    for bad in (below, above):
        r = client.put("/v1/loops/edge0", json=config_with(field, bad))
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_config"
        assert "must be a number in [" in error["message"]
    r = client.put("/v1/loops/edge0", json={field: above})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_config"
    assert re.search(message, r.json()["error"]["message"]), r.json()


def test_longest_window_serves_and_rewards(client: TestClient) -> None:
    """Regression: reward_wait_s=1e12 once made every rank a 500 (timedelta overflow). The
    largest accepted window serves, rewards and activates."""
    assert client.put("/v1/loops/long", json={"reward_wait_s": 30 * DAY}).status_code == 201
    body = {"event_id": "e1", "actions": [{"id": "a"}, {"id": "b"}]}
    assert client.post("/v1/loops/long/rank", json=body).status_code == 201
    r = client.post("/v1/loops/long/events/e1/reward", json={"value": 1})
    assert r.status_code == 202 and r.json()["status"] == "accepted"
    deferred = {"event_id": "d1", "actions": [{"id": "a"}], "defer_activation": True}
    assert client.post("/v1/loops/long/rank", json=deferred).status_code == 201
    assert client.post("/v1/loops/long/events/d1/activate").status_code == 202
    assert client.put("/v1/loops/long", json={"reward_wait_s": 1e12}).status_code == 422


def test_legacy_rows_get_a_key_once_and_are_clamped(client: TestClient, engine: Engine) -> None:
    """A loop stored before sampling keys and bounds (public seed, reward_wait_s=1e12) is read
    with its numbers clamped into bounds and given a fresh secret key, stored once: every later
    read (any worker) sees that same key."""
    now = datetime.now(UTC)
    legacy = {
        "exploration": "epsilon_greedy",
        "epsilon": 0.2,
        "softmax_lambda": 1.0,
        "reward_wait_s": 1e12,
        "default_reward": 0.0,
        "reward_aggregation": "earliest",
        "min_reward": -1.0,
        "max_reward": 1.0,
        "vw_args": "-q ca --cb_type mtr",
        "seed": 12345,
        "extra": {},
    }
    with engine.begin() as conn:
        conn.execute(
            insert(Loop).values(loop="legacy", config=legacy, created_at=now, updated_at=now)
        )
    first = get_loop(engine, "legacy")
    assert first is not None
    assert first.config.reward_wait_s == 30 * DAY
    # its stored strategy and VW arguments are kept, whatever the defaults are now
    assert (first.config.exploration, first.config.vw_args) == ("epsilon_greedy", legacy["vw_args"])
    key = first.config.sampling_key
    with engine.connect() as conn:
        stored = conn.execute(select(Loop.config).where(Loop.loop == "legacy")).scalar_one()
    assert stored["sampling_key"] == key.hex()
    assert [s.config.sampling_key for s in list_loops(engine) if s.name == "legacy"] == [key]
    again = get_loop(engine, "legacy")
    assert again is not None and again.config.sampling_key == key
    # and it serves (the clamped window does not overflow)
    r = client.post("/v1/loops/legacy/rank", json={"actions": [{"id": "a"}, {"id": "b"}]})
    assert r.status_code == 201, r.text
    assert "seed" not in client.get("/v1/loops/legacy").json()["config"]


def test_put_keeps_the_stored_key_unless_rotated(engine: Engine, client: TestClient) -> None:
    k1, k2 = bytes(32), bytes(range(32))
    stored, created = put_loop(engine, "rot", LoopConfig(sampling_key=k1))
    assert created and stored.config.sampling_key == k1
    stored, created = put_loop(engine, "rot", LoopConfig(epsilon=0.5, sampling_key=k2))
    assert not created and stored.config.sampling_key == k1
    assert client.put("/v1/loops/rot", json={"epsilon": 0.3}).status_code == 200
    got = get_loop(engine, "rot")
    assert got is not None and got.config.sampling_key == k1 and got.config.epsilon == 0.3
    stored, _ = put_loop(engine, "rot", LoopConfig(sampling_key=k2), keep_key=False)
    got = get_loop(engine, "rot")
    assert got is not None and got.config.sampling_key == k2


def test_put_cover_needs_vw_args_that_cover_accepts(client: TestClient) -> None:
    assert client.put("/v1/loops/cov", json={"epsilon": 0.1}).status_code == 201
    before = client.get("/v1/loops/cov").json()
    assert before["config"]["exploration"] == DEFAULT_EXPLORATION
    for refused in (
        {"exploration": "cover", "vw_args": "-q ca --cb_type dm"},
        {"exploration": "cover", "vw_args": "-q ca --cb_type=dm --noconstant"},
    ):
        r = client.put("/v1/loops/cov", json=refused)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_config"
        assert "--cb_type" in error["message"] and "cover" in error["message"]
        assert client.get("/v1/loops/cov").json() == before  # nothing written
    r = client.put(
        "/v1/loops/cov-new", json={"exploration": "cover", "vw_args": "-q ca --cb_type dm"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_config"
    assert client.get("/v1/loops/cov-new").status_code == 404  # not created either
    # a candidate is checked with the loop's exploration too
    body: dict[str, Any] = {
        "exploration": "cover",
        "vw_args": "-q ca --cb_type mtr",
        "learner": {"candidates": ["-q ca --cb_type ips", "-q ca --cb_type dm"]},
    }
    r = client.put("/v1/loops/cov", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith("learner.candidates[1]: ")
    assert "--cb_type" in r.json()["error"]["message"]
    assert client.get("/v1/loops/cov").json() == before
    body["learner"] = {"candidates": ["-q ca --cb_type ips"]}
    r = client.put("/v1/loops/cov", json=body)
    assert r.status_code == 200, r.text
    config = r.json()["config"]
    assert (config["exploration"], config["vw_args"]) == ("cover", "-q ca --cb_type mtr")
    assert config["learner"]["candidates"] == ["-q ca --cb_type ips"]
    rank = {"actions": [{"id": "a"}, {"id": "b"}]}
    assert client.post("/v1/loops/cov/rank", json=rank).status_code == 201
