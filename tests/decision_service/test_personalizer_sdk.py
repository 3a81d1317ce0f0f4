"""Azure Personalizer's own SDKs as clients of the service (real HTTP, uvicorn on a loopback port).

`azure-cognitiveservices-personalizer` (REST v1.0, msrest) and `azure-ai-personalizer`
(2022-09-01-preview, azure-core) are used unchanged: only the endpoint and the key differ from an
app written for Azure. One server per module (SQLite); what is checked on the store goes through
the native API. The tests share the module's server, so the module runs in one xdist group
(`scripts/test` uses `--dist loadgroup`).
"""

from __future__ import annotations

import gc
import io
import time
import warnings
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from decision_service import create_app
from deploy.registry import register
from policies import VWPolicy
from tests.conftest import ADMIN_HEADERS, make_settings
from tests.decision_service.test_durability import database_down
from tests.serving_helpers import UvicornThread

pytestmark = pytest.mark.xdist_group("personalizer_sdk")

with warnings.catch_warnings():  # the legacy SDK's dependencies warn on import
    warnings.simplefilter("ignore")
    from azure.ai.personalizer import PersonalizerAdministrationClient, PersonalizerClient
    from azure.cognitiveservices.personalizer import PersonalizerClient as LegacyClient
    from azure.cognitiveservices.personalizer.models import (
        ErrorResponseException,
        RankableAction,
        RankRequest,
    )
    from azure.core.credentials import AzureKeyCredential
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
    from msrest.authentication import CognitiveServicesCredentials
    from msrest.exceptions import HttpOperationError

LOOP = "shop"


class Running(UvicornThread):
    """The service under uvicorn in a thread, with an admin client of the native API."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.native = httpx.Client(base_url=self.url, headers=ADMIN_HEADERS, timeout=30)

    def __exit__(self, *exc: object) -> None:
        self.native.close()
        super().__exit__(*exc)

    def key(self, role: str, loops: list[str] | None) -> str:
        body: dict[str, Any] = {"name": f"pz-{role}", "role": role}
        if loops is not None:
            body["loops"] = loops
        r = self.native.post("/v1/keys", json=body)
        assert r.status_code == 201, r.text
        key: str = r.json()["key"]
        return key


@pytest.fixture(autouse=True)
def _garbage_collected() -> Iterator[None]:
    """Collect unreachable objects before and after each test of this module, with a
    ResourceWarning reported in the summary rather than raised. In full runs a client socket
    (of an SDK's HTTP session: msrest's or azure-core's requests pool) became garbage and was
    collected at a random later moment, often in this module's server thread, where the
    warning (an error under the suite's filterwarnings) failed whichever SDK test was running
    (seen 4 times in full runs, never with the module alone). Collecting at the tests'
    boundaries keeps that from failing an unrelated test; a leak still shows in the warnings
    summary."""

    def collect() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("default", ResourceWarning)
            gc.collect()

    collect()
    yield
    collect()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp: Path = tmp_path_factory.mktemp("personalizer")
    settings = make_settings(f"sqlite:///{tmp / 'store.db'}", tmp, join_grace_s=0.0)
    with Running(create_app(settings)) as server:
        assert server.native.put(f"/v1/loops/{LOOP}", json={}).status_code == 201
        yield server


@pytest.fixture(scope="module")
def admin_key(running: Running) -> str:
    """A Personalizer resource = a key scoped to one loop (admin: it may also configure)."""
    return running.key("admin", [LOOP])


@pytest.fixture(scope="module")
def legacy(running: Running, admin_key: str) -> Iterator[LegacyClient]:
    with LegacyClient(running.url, CognitiveServicesCredentials(admin_key)) as c:
        yield c


@pytest.fixture(scope="module")
def client(running: Running, admin_key: str) -> Iterator[PersonalizerClient]:
    with PersonalizerClient(running.url, AzureKeyCredential(admin_key), retry_total=0) as c:
        yield c


@pytest.fixture(scope="module")
def admin(running: Running, admin_key: str) -> Iterator[PersonalizerAdministrationClient]:
    with PersonalizerAdministrationClient(
        running.url, AzureKeyCredential(admin_key), retry_total=0
    ) as c:
        yield c


FOOD = [
    RankableAction(id="pasta", features=[{"taste": "salty", "spice": "medium"}, {"level": 5}]),
    RankableAction(id="salad", features=[{"taste": "salty", "spice": "low"}, {"level": 8}]),
    RankableAction(id="soup", features=[{"taste": "warm"}]),
]


# ------------------------------------------------------------------------------ REST v1.0
def test_legacy_sdk_rank_reward_activate(running: Running, legacy: LegacyClient) -> None:
    counts = running.native.get(f"/v1/loops/{LOOP}").json()["counts"]
    response = legacy.rank(
        RankRequest(
            actions=FOOD,
            context_features=[{"timeOfDay": "Morning"}, {"user": {"lastBrowse": "ok"}}],
            excluded_actions=["salad"],
            event_id="evt-legacy-1",
        )
    )
    assert response.event_id == "evt-legacy-1"
    ranking = {r.id: r.probability for r in response.ranking}
    assert set(ranking) == {"pasta", "salad", "soup"}
    assert ranking["salad"] == 0  # excluded: listed with probability 0
    assert response.reward_action_id in ("pasta", "soup")
    assert response.ranking[0].id == response.reward_action_id
    assert sum(ranking.values()) == pytest.approx(1.0)
    legacy.events.reward(event_id="evt-legacy-1", value=1.0)
    after = running.native.get(f"/v1/loops/{LOOP}").json()["counts"]
    assert after["decisions"] == counts["decisions"] + 1
    assert after["rewards"] == counts["rewards"] + 1
    # an event id with '/' and a space travels percent-encoded and is the same id
    odd = "nope/x y"
    legacy.rank(RankRequest(actions=FOOD, context_features=[{"t": 1}], event_id=odd))
    legacy.events.reward(event_id=odd, value=0.5)
    legacy.events.activate(event_id=odd)  # not deferred: Personalizer answers 204 all the same
    r = running.native.post(
        f"/v1/loops/{LOOP}/events/nope%2Fx%20y/reward", json={"value": 0.0, "reward_id": "n"}
    )
    assert r.status_code == 202, r.text


def test_legacy_sdk_errors_are_its_own_exceptions(running: Running, legacy: LegacyClient) -> None:
    many = [RankableAction(id=f"a{i}", features=[{"i": i}]) for i in range(51)]
    with pytest.raises(ErrorResponseException) as err:
        legacy.rank(RankRequest(actions=many, context_features=[{"t": 1}]))
    assert err.value.response.status_code == 400
    assert err.value.error.error.code == "BadRequest"
    assert "limit is 50" in err.value.error.error.message
    with pytest.raises(HttpOperationError) as missing:
        legacy.events.reward(event_id="never-ranked", value=1.0)
    assert missing.value.response.status_code == 404
    assert missing.value.response.json()["error"]["code"] == "ResourceNotFound"
    unknown = CognitiveServicesCredentials("dsk_0000000000ff_" + "A" * 43)
    with (
        LegacyClient(running.url, unknown) as wrong,
        pytest.raises(ErrorResponseException) as denied,
    ):
        wrong.rank(RankRequest(actions=FOOD, context_features=[{"t": 1}]))
    assert denied.value.response.status_code == 401


# ---------------------------------------------------------------------- 2022-09-01-preview
def test_deferred_activation(running: Running, client: PersonalizerClient) -> None:
    out = client.rank(
        {
            "contextFeatures": [{"timeOfDay": "Morning"}],
            "actions": [
                {"id": "pasta", "features": [{"taste": "salty"}]},
                {"id": "salad", "features": [{"taste": "sour"}]},
            ],
            "excludedActions": [],
            "eventId": "evt-456",
            "deferActivation": True,
        }
    )
    assert out["eventId"] == "evt-456" and out["rewardActionId"] in ("pasta", "salad")
    assert sorted(r["id"] for r in out["ranking"]) == ["pasta", "salad"]
    client.activate("evt-456")
    client.reward("evt-456", {"value": 0.5})
    client.activate("evt-456")  # again: still 204
    # an id with '/', a space, '?' and '%' travels percent-encoded and is the same id
    odd = "deferred/x y?z%20"
    client.rank({"actions": [{"id": "a", "features": [{"f": 1}]}], "eventId": odd})
    client.reward(odd, {"value": 1.0})
    client.activate(odd)
    r = running.native.post(
        f"/v1/loops/{LOOP}/events/deferred%2Fx%20y%3Fz%2520/reward",
        json={"value": 0.0, "reward_id": "odd"},
    )
    assert r.status_code == 202, r.text  # the decision exists under exactly that id
    # the native view of the same decision: deferred, now activated
    r = running.native.post(f"/v1/loops/{LOOP}/events/evt-456/activate")
    assert r.status_code == 200 and r.json()["status"] == "already_activated"


def test_multi_slot(running: Running, client: PersonalizerClient) -> None:
    out = client.rank_multi_slot(
        {
            "eventId": "ms-1",
            "contextFeatures": [{"x": 1}],
            "actions": [
                {"id": "a", "features": [{"f": 1}]},
                {"id": "b", "features": [{"f": 2}]},
                {"id": "c", "features": [{"f": 3}]},
            ],
            "slots": [
                {"id": "Main", "baselineAction": "a", "features": [{"size": "large"}]},
                {"id": "Side", "baselineAction": "b"},
            ],
            "deferActivation": False,
        }
    )
    assert out["eventId"] == "ms-1"
    assert [s["id"] for s in out["slots"]] == ["Main", "Side"]
    served = [s["rewardActionId"] for s in out["slots"]]
    assert len(set(served)) == 2 and set(served) <= {"a", "b", "c"}
    client.reward_multi_slot("ms-1", {"reward": [{"slotId": "Main", "value": 1.0}]})
    client.reward_multi_slot("ms-1", {"reward": [{"slotId": "Side", "value": 0.0}]})
    client.activate_multi_slot("ms-1")
    with pytest.raises(HttpResponseError) as err:
        client.reward_multi_slot("ms-1", {"reward": [{"slotId": "Nope", "value": 1.0}]})
    assert err.value.status_code == 400
    assert err.value.error.code == "InvalidMultiSlotRewardRequest"
    with pytest.raises(HttpResponseError) as bad:
        client.rank_multi_slot(
            {
                "actions": [{"id": "a", "features": [{"f": 1}]}],
                "slots": [{"id": "Main", "baselineAction": "zz"}],
            }
        )
    assert bad.value.status_code == 400 and bad.value.error.code == "InvalidMultiSlotRankRequest"


def test_errors_and_wrong_key(running: Running, client: PersonalizerClient) -> None:
    too_long = "x" * 257
    with pytest.raises(HttpResponseError) as err:
        client.rank({"actions": [{"id": too_long, "features": [{"f": 1}]}]})
    assert err.value.status_code == 400 and err.value.error.code == "InvalidRankRequest"
    with pytest.raises(HttpResponseError) as err:
        client.reward("never-ranked", {"value": 1.0})
    assert err.value.status_code == 404 and err.value.error.code == "ResourceNotFound"
    client.rank({"actions": [{"id": "a", "features": [{"f": 1}]}], "eventId": "evt-range"})
    with pytest.raises(HttpResponseError) as err:
        client.reward("evt-range", {"value": 5.0})  # outside the loop's reward range
    assert err.value.status_code == 400 and err.value.error.code == "InvalidRewardRequest"
    wrong = PersonalizerClient(running.url, AzureKeyCredential("not-a-key"), retry_total=0)
    with wrong, pytest.raises(ClientAuthenticationError) as denied:
        wrong.rank({"actions": [{"id": "a", "features": [{"f": 1}]}]})
    assert denied.value.status_code == 401
    app_only = PersonalizerAdministrationClient(
        running.url, AzureKeyCredential(running.key("app", [LOOP])), retry_total=0
    )
    with app_only, pytest.raises(HttpResponseError) as forbidden:
        app_only.get_service_configuration()
    assert forbidden.value.status_code == 403


def test_service_configuration_round_trip(
    running: Running, admin: PersonalizerAdministrationClient
) -> None:
    config = admin.get_service_configuration()
    assert config["learningMode"] == "Online"
    assert config["explorationPercentage"] == pytest.approx(0.2)
    assert config["rewardWaitTime"] == "PT10M"
    config["explorationPercentage"] = 0.3
    config["rewardWaitTime"] = "PT4H"
    config["rewardAggregation"] = "sum"
    config["modelExportFrequency"] = "PT5M"
    updated = admin.update_service_configuration(config)
    assert updated["explorationPercentage"] == pytest.approx(0.3)
    assert updated["rewardWaitTime"] == "PT4H"
    assert "lastConfigurationEditDate" in updated
    native = running.native.get(f"/v1/loops/{LOOP}").json()["config"]
    assert native["epsilon"] == pytest.approx(0.3)
    assert native["reward_wait_s"] == 4 * 3600
    assert native["reward_aggregation"] == "sum"
    assert native["learner"]["freshness_s"] == 300 and updated["modelExportFrequency"] == "PT5M"
    assert admin.get_service_configuration() == updated
    refused = ({"logRetentionDays": 90}, {"explorationPercentage": 1.5})
    for bad in (*refused, {"rewardAggregation": "median"}):
        with pytest.raises(HttpResponseError) as err:
            admin.update_service_configuration({**updated, **bad})
        assert err.value.status_code == 400
        assert err.value.error.code == "InvalidServiceConfiguration"
    # mode and reward settings are two calls (as in Personalizer)
    with pytest.raises(HttpResponseError) as err:
        admin.update_service_configuration(
            {**updated, "learningMode": "Apprentice", "rewardWaitTime": "PT12H"}
        )
    assert err.value.status_code == 400
    back = admin.update_service_configuration(
        {**updated, "explorationPercentage": 0.2, "rewardWaitTime": "PT10M"}
    )
    assert back["explorationPercentage"] == pytest.approx(0.2)


def test_policy_round_trip(running: Running, admin: PersonalizerAdministrationClient) -> None:
    policy = admin.get_policy()
    assert policy["arguments"].startswith("--cb_explore_adf --epsilon 0.2")
    assert admin.update_policy(policy) == policy  # what GET shows, PUT takes
    personalizer_default = "--cb_explore_adf --epsilon 0.2 --power_t 0 -l 0.001 --cb_type mtr -q ::"
    updated = admin.update_policy({"name": "app-default", "arguments": personalizer_default})
    assert updated["name"] == "app-default"
    assert running.native.get(f"/v1/loops/{LOOP}").json()["config"]["vw_args"] == (
        "--power_t 0 -l 0.001 --cb_type mtr -q ca"
    )
    assert admin.get_policy() == updated
    with pytest.raises(HttpResponseError) as err:
        admin.update_policy({"name": "evil", "arguments": "--cb_explore_adf -f /etc/passwd"})
    assert err.value.status_code == 400
    assert err.value.error.code == "InvalidPolicyConfiguration"
    assert admin.get_policy() == updated  # nothing changed
    reset = admin.reset_policy()
    assert reset["name"] == "default" and reset == admin.get_policy()


def test_logs_and_model(running: Running, admin: PersonalizerAdministrationClient) -> None:
    props = admin.get_log_properties()
    assert props["dateRange"]["from"] <= props["dateRange"]["to"]
    with pytest.raises(HttpResponseError) as err:
        admin.delete_logs()
    assert err.value.status_code == 409
    assert admin.get_model_properties() == {}  # untrained
    with pytest.raises(HttpResponseError) as err:
        b"".join(admin.export_model(signed=True))
    assert err.value.status_code == 404
    with pytest.raises(HttpResponseError) as err:
        admin.reset_model()  # the live version changes through the gate and rollback only
    assert err.value.status_code == 409 and err.value.error.code == "OperationNotAllowed"
    with pytest.raises(HttpResponseError) as err:
        admin.import_model(io.BytesIO(b"not a zip"))
    assert err.value.status_code == 400


def test_apprentice_mode(running: Running, admin: PersonalizerAdministrationClient) -> None:
    """The baseline (first non-excluded action) is always served, with probability 1; the
    apprentice metrics count the joined events."""
    key = running.key("admin", ["apprentice"])
    assert running.native.put("/v1/loops/apprentice", json={}).status_code == 201
    with (
        PersonalizerClient(running.url, AzureKeyCredential(key), retry_total=0) as pz,
        PersonalizerAdministrationClient(
            running.url, AzureKeyCredential(key), retry_total=0
        ) as pz_admin,
    ):
        apprentice(running, pz, pz_admin)


def apprentice(
    running: Running, pz: PersonalizerClient, pz_admin: PersonalizerAdministrationClient
) -> None:
    config = pz_admin.get_service_configuration()
    config = pz_admin.update_service_configuration({**config, "rewardWaitTime": "PT1S"})
    config = pz_admin.update_service_configuration({**config, "learningMode": "Apprentice"})
    assert config["learningMode"] == "Apprentice"
    actions = [{"id": x, "features": [{"k": x}]} for x in ("first", "second", "third")]
    n = 40
    for i in range(n):
        out = pz.rank(
            {
                "contextFeatures": [{"i": i % 3}],
                "actions": actions,
                "excludedActions": ["first"] if i % 2 else [],
            }
        )
        baseline = "second" if i % 2 else "first"
        assert out["rewardActionId"] == baseline
        probabilities = {r["id"]: r["probability"] for r in out["ranking"]}
        assert probabilities[baseline] == 1.0 and sum(probabilities.values()) == 1.0
        pz.reward(out["eventId"], {"value": float(i % 2)})
    time.sleep(1.6)
    running.app.state.service.join_due()
    metrics = pz_admin.get_service_configuration()["latestApprenticeModeMetrics"]
    assert metrics["numberOfEvents"] == n
    assert metrics["sumOfRewards"] == pytest.approx(n / 2)
    # the untrained model scores every action alike: its top choice (ties: the first candidate)
    # is the baseline every time, so every event is imitated
    assert metrics["numberOfImitatedEvents"] == n
    assert metrics["sumOfImitatedRewards"] == pytest.approx(n / 2)
    ms = pz.rank_multi_slot(
        {
            "actions": actions,
            "slots": [
                {"id": "A", "baselineAction": "third"},
                {"id": "B", "baselineAction": "first"},
            ],
        }
    )
    assert [s["rewardActionId"] for s in ms["slots"]] == ["third", "first"]
    pz_admin.update_service_configuration({**config, "learningMode": "Online"})


# ------------------------------------------------------------------ evaluations and the model
EVAL_LOOP = "evals"


@pytest.fixture(scope="module")
def logged(running: Running) -> dict[str, Any]:
    """A loop with 300 joined decisions made through the 2022 SDK: the reward is 1 when the
    served action matches the user's kind. Returns the key and what the true estimates are."""
    key = running.key("admin", [EVAL_LOOP])
    assert running.native.put(f"/v1/loops/{EVAL_LOOP}", json={}).status_code == 201
    credential = AzureKeyCredential(key)
    with (
        PersonalizerClient(running.url, credential, retry_total=0) as pz,
        PersonalizerAdministrationClient(running.url, credential, retry_total=0) as pz_admin,
    ):
        config = pz_admin.get_service_configuration()
        pz_admin.update_service_configuration({**config, "rewardWaitTime": "PT1S"})
        rewards, baseline_terms = [], []
        for i in range(300):
            kind = i % 2
            out = pz.rank(
                {
                    "contextFeatures": [{"user": {"kind": kind}}],
                    "actions": [
                        {"id": "a", "features": [{"k": "a"}]},
                        {"id": "b", "features": [{"k": "b"}]},
                    ],
                }
            )
            served = out["rewardActionId"]
            reward = 1.0 if served == ("a" if kind == 0 else "b") else 0.0
            pz.reward(out["eventId"], {"value": reward})
            rewards.append(reward)
            p = {r["id"]: r["probability"] for r in out["ranking"]}[served]
            baseline_terms.append(reward / p if served == "a" else 0.0)
    time.sleep(1.6)
    running.app.state.service.join_due()
    return {
        "key": key,
        "online": sum(rewards) / len(rewards),
        "baseline": sum(baseline_terms) / len(baseline_terms),
    }


def test_evaluations_2022(running: Running, logged: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    credential = AzureKeyCredential(logged["key"])
    with PersonalizerAdministrationClient(running.url, credential, retry_total=0) as pz_admin:
        pz_admin.create_evaluation(
            "e1",
            {
                "name": "e1",
                "startTime": start.isoformat(),
                "endTime": end.isoformat(),
                "enablePolicyOptimization": True,
                "policies": [
                    {"name": "custom", "arguments": "--cb_explore_adf --epsilon 0.2 --cb_type ips"}
                ],
            },
        )
        with pytest.raises(HttpResponseError) as taken:
            pz_admin.create_evaluation(
                "e1", {"name": "e1", "startTime": start.isoformat(), "endTime": end.isoformat()}
            )
        assert taken.value.status_code == 409
        for _ in range(600):
            got = pz_admin.get_evaluation(
                "e1", start_time=start, end_time=end, interval_in_minutes=60, window="Rolling"
            )
            if got["status"] != "Running":
                break
            time.sleep(0.2)
        assert got["status"] == "Succeeded", got
        results = {p["name"]: p for p in got["content"]["value"]}
        assert {n: p["policySource"] for n, p in results.items()} == {
            "Online": "Online",
            "Baseline": "Baseline",
            "Random": "Random",
            "custom": "Custom",
            **{f"Optimized{k}": "OfflineExperimentation" for k in range(1, 5)},
        }
        # on-policy IPS is the mean logged reward; the baseline's IPS is computed from the
        # probabilities the service answered
        assert results["Online"]["summary"]["expectedReward"] == pytest.approx(logged["online"])
        assert results["Baseline"]["summary"]["expectedReward"] == pytest.approx(logged["baseline"])
        low, high = results["Online"]["summary"]["confidenceInterval"]
        assert low <= logged["online"] <= high
        assert got["content"]["intervalInMinutes"] == 60 and got["content"]["window"] == "Rolling"
        # the run estimates the whole window: one point per policy, at the evaluation's start
        for p in results.values():
            assert p["timeseries"]["data"] == [{"timeStamp": got["startTime"], **p["summary"]}]
        assert got["optimalPolicy"] in results
        listed = list(pz_admin.list_evaluations())
        assert [e["id"] for e in listed] == ["e1"]
        pz_admin.apply_from_evaluation({"evaluationId": "e1", "policyName": "custom"})
        learner = running.native.get(f"/v1/loops/{EVAL_LOOP}").json()["config"]["learner"]
        assert learner["candidates"] == ["--cb_type ips"]
        with pytest.raises(HttpResponseError) as err:
            pz_admin.apply_from_evaluation({"evaluationId": "e1", "policyName": "Random"})
        assert err.value.status_code == 400
        with pytest.raises(HttpResponseError) as err:
            pz_admin.get_evaluation("e1", start_time=start, end_time=end, interval_in_minutes=7)
        assert err.value.error.code == "InvalidEvaluationContract"
        with pytest.raises(HttpResponseError) as err:
            pz_admin.get_feature_importance("f1")
        assert err.value.error.code == "OperationNotAllowed"
        pz_admin.delete_evaluation("e1")
        with pytest.raises(HttpResponseError) as gone:
            pz_admin.get_evaluation("e1", start_time=start, end_time=end)
        assert gone.value.status_code == 404 and gone.value.error.code == "EvaluationNotFound"


def test_evaluations_v1_are_a_json_array(running: Running, logged: dict[str, Any]) -> None:
    base = "/personalizer/v1.1-preview.3"
    headers = {"Ocp-Apim-Subscription-Key": logged["key"]}
    now = datetime.now(UTC)
    body = {
        "name": "v1",
        "startTime": (now - timedelta(hours=1)).isoformat(),
        "endTime": (now + timedelta(hours=1)).isoformat(),
        "policies": [],
    }
    with httpx.Client(base_url=running.url, headers=headers) as http:
        created = http.post(f"{base}/evaluations", json=body)
        assert created.status_code == 201, created.text
        location = created.headers["Location"]
        assert location == f"{base}/evaluations/{created.json()['id']}"
        listed = http.get(f"{base}/evaluations")
        assert isinstance(listed.json(), list) and created.json()["id"] in {
            e["id"] for e in listed.json()
        }
        one = http.get(location).json()
        assert {p["name"] for p in one["policyResults"]} == {"Online", "Baseline", "Random"}
        bad = http.post(f"{base}/evaluations", json={**body, "endTime": body["startTime"]})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "InvalidEvaluationContract"


def test_model_export_import(running: Running, logged: dict[str, Any]) -> None:
    service = running.app.state.service
    args = "-q ca --cb_type mtr"
    policy = VWPolicy(args)
    artifact = policy.save()
    policy.close()
    live = register(
        service.engine,
        loop=EVAL_LOOP,
        kind="manual",
        vw_args=args,
        artifact=artifact,
        promote_now=True,
        actor="test",
    )
    credential = AzureKeyCredential(logged["key"])
    with PersonalizerAdministrationClient(running.url, credential, retry_total=0) as pz_admin:
        props = pz_admin.get_model_properties()
        assert props["creationTime"] == live.created_at.isoformat()
        exported = b"".join(pz_admin.export_model(signed=True))
        pz_admin.import_model(io.BytesIO(exported))
        models = running.native.get(f"/v1/loops/{EVAL_LOOP}/models").json()["models"]
        candidates = [m for m in models if m["status"] == "candidate"]
        assert [m["sha256"] for m in candidates] == [live.sha256]
        with zipfile.ZipFile(io.BytesIO(exported)) as zf:  # another model, same manifest
            manifest = zf.read("manifest.json")
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zf:
            zf.writestr("manifest.json", manifest)
            zf.writestr("model.vw", artifact + b"tampered")
        tampered = out.getvalue()
        with pytest.raises(HttpResponseError) as err:
            pz_admin.import_model(io.BytesIO(tampered))
        assert err.value.status_code == 400
        assert err.value.error.code == "InvalidModelImportSignature"


def test_evaluations_2022_are_paged(running: Running) -> None:
    """A loop of its own with two evaluations: listed one per page, following nextLink."""
    loop = "pages"
    assert running.native.put(f"/v1/loops/{loop}", json={}).status_code == 201
    key = running.key("admin", [loop])
    now = datetime.now(UTC)
    window = {
        "startTime": (now - timedelta(hours=1)).isoformat(),
        "endTime": (now + timedelta(hours=1)).isoformat(),
    }
    with PersonalizerAdministrationClient(
        running.url, AzureKeyCredential(key), retry_total=0
    ) as pz_admin:
        for name in ("p1", "p2"):
            pz_admin.create_evaluation(name, {"name": name, **window})
        paged = [e["id"] for e in pz_admin.list_evaluations(top=1)]  # follows nextLink
    assert sorted(paged) == ["p1", "p2"]
    native = running.native.get(f"/v1/loops/{loop}/evaluations").json()["evaluations"]
    assert len(native) == 2
    page = httpx.get(
        f"{running.url}/personalizer/evaluations",
        params={"api-version": "2022-09-01-preview", "top": 1},
        headers={"Ocp-Apim-Subscription-Key": key},
    ).json()
    assert len(page["value"]) == 1 and page["value"][0]["id"] == paged[0]
    assert "skip=1" in page["nextLink"]


def test_store_unreachable_is_the_sdks_503(tmp_path: Path) -> None:
    """The store down: both SDKs raise their own exception with 503 `ServiceUnavailable` (a
    server of its own: the module's server keeps its store)."""
    settings = make_settings(f"sqlite:///{tmp_path / 'store.db'}", tmp_path, join_grace_s=0.0)
    with Running(create_app(settings)) as server:
        key = server.key("admin", None)  # unscoped: the default loop
        service = server.app.state.service
        with (
            PersonalizerClient(server.url, AzureKeyCredential(key), retry_total=0) as pz,
            LegacyClient(server.url, CognitiveServicesCredentials(key)) as legacy,
        ):
            assert pz.rank({"actions": [{"id": "a", "features": [{"f": 1}]}]})  # key verified
            with database_down(service, tmp_path):
                with pytest.raises(HttpResponseError) as err:
                    pz.rank({"actions": [{"id": "a", "features": [{"f": 1}]}], "eventId": "d1"})
                assert err.value.status_code == 503
                assert err.value.error.code == "ServiceUnavailable"
                assert int(err.value.response.headers["Retry-After"]) >= 0
                with pytest.raises(ErrorResponseException) as legacy_err:
                    legacy.rank(
                        RankRequest(actions=FOOD, context_features=[{"t": 1}], event_id="d2")
                    )
                assert legacy_err.value.response.status_code == 503
                assert legacy_err.value.error.error.code == "ServiceUnavailable"
