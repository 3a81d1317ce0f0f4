"""The Personalizer policy and service configuration mapped onto a loop never pair VW's `cover`
with `--cb_type dm` (VW refuses it, the default `vw_args` use it): a policy VW would refuse
with the loop's exploration is refused like a native PUT (nothing changed), and resetting the
policy of a cover loop gives it `-q ca --cb_type mtr` instead of the default."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from decision_service.personalizer import config as pconfig
from explore.errors import InvalidInput
from log.loops import DEFAULT_VW_ARGS, LoopConfig
from policies import check_model_args

V1 = "/personalizer/v1.0"
NOW = datetime(2026, 12, 3, tzinfo=UTC)
COVER = LoopConfig(exploration="cover", epsilon=0.1, vw_args="-q ca --cb_type mtr")
PERSONALIZER_DEFAULT = "--cb_explore_adf --epsilon 0.2 --power_t 0 -l 0.001 --cb_type mtr -q ::"


def test_reset_gives_the_default_or_for_cover_arguments_cover_accepts() -> None:
    assert pconfig.DEFAULT_POLICY == DEFAULT_VW_ARGS
    plain = pconfig.reset_policy(LoopConfig(vw_args="-q ca --cb_type ips"), NOW)
    assert plain.vw_args == DEFAULT_VW_ARGS
    cover = pconfig.reset_policy(replace_args(COVER, "-q ca --cb_type dr -l 0.1"), NOW)
    assert (cover.exploration, cover.vw_args) == ("cover", pconfig.COVER_POLICY)
    for config in (plain, cover):
        assert config.personalizer.policy_name == "default"
        assert check_model_args(config.model_args) == config.model_args


def replace_args(config: LoopConfig, vw_args: str) -> LoopConfig:
    return LoopConfig.from_json({**config.storage_json(), "vw_args": vw_args})


def test_a_policy_is_checked_with_the_loop_exploration() -> None:
    dm = {"name": "dm", "arguments": "--cb_explore_adf --epsilon 0.2 --cb_type dm -q ::"}
    with pytest.raises(InvalidInput, match=r"--cb_type dr, ips or mtr") as err:
        pconfig.apply_policy(COVER, dm, NOW)
    assert err.value.code == "invalid_config"
    # the same policy suits a loop on the default exploration
    assert pconfig.apply_policy(LoopConfig(), dm, NOW).vw_args == "--cb_type dm -q ca"
    # Personalizer's own default policy suits a cover loop
    applied = pconfig.apply_policy(COVER, {"name": "pz", "arguments": PERSONALIZER_DEFAULT}, NOW)
    assert applied.vw_args == "--power_t 0 -l 0.001 --cb_type mtr -q ca"
    assert check_model_args(applied.model_args) == applied.model_args


def test_exploration_percentage_gives_epsilon_greedy_with_the_loop_arguments() -> None:
    for config in (LoopConfig(), COVER):
        changed = pconfig.apply_service_configuration(config, {"explorationPercentage": 0.3}, NOW)
        assert (changed.exploration, changed.epsilon) == ("epsilon_greedy", 0.3)
        assert changed.vw_args == config.vw_args
        assert check_model_args(changed.model_args) == changed.model_args


def test_policy_routes_on_a_cover_loop(client: TestClient) -> None:
    """The unscoped admin key acts on the `default` loop through the Personalizer routes."""
    assert client.delete(f"{V1}/configurations/policy").status_code == 200
    assert client.get("/v1/loops/default").json()["config"]["vw_args"] == DEFAULT_VW_ARGS
    cover = {"exploration": "cover", "epsilon": 0.1, "vw_args": "-q ca --cb_type ips"}
    assert client.put("/v1/loops/default", json=cover).status_code == 200
    before = client.get("/v1/loops/default").json()
    r = client.put(
        f"{V1}/configurations/policy", json={"name": "dm", "arguments": "--cb_type dm -q ::"}
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "BadRequest"  # v1.0's code for every 400
    assert error["innerError"]["code"] == "invalid_config" and "--cb_type" in error["message"]
    assert client.get("/v1/loops/default").json() == before  # nothing changed
    r = client.delete(f"{V1}/configurations/policy")
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "default"
    config = client.get("/v1/loops/default").json()["config"]
    assert (config["exploration"], config["vw_args"]) == ("cover", pconfig.COVER_POLICY)
    rank = {"actions": [{"id": "a"}, {"id": "b"}]}
    assert client.post("/v1/loops/default/rank", json=rank).status_code == 201
