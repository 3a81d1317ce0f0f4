"""The OpenAPI document is the contract: schemathesis runs every operation against it.

The document itself: every `$ref` resolves, every route documents the statuses it answers
(with the error body's schema), required bodies are marked required, and no route shows a loop's
sampling key. Then schemathesis generates requests from it (valid and invalid, a bounded,
derandomised number per operation) and sends them to the ASGI app on a fresh SQLite store:
0 server errors, every status documented, every body and header conforming to its schema,
every content type the documented one, invalid requests rejected.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from decision_service import create_app, routes_evaluations
from tests.conftest import ADMIN_HEADERS, TEST_ADMIN_KEY, admin_client, make_settings

MAX_EXAMPLES = 25


def document(tmp_path: Path) -> dict[str, Any]:
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'doc.db'}", tmp_path))
    with admin_client(app) as client:
        doc: dict[str, Any] = client.get("/openapi.json").json()
    return doc


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def test_every_reference_resolves(tmp_path: Path) -> None:
    doc = document(tmp_path)
    found = set(refs(doc))
    assert found, "the document references its components"
    for ref in found:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], f"unresolved {ref}"
    assert "$defs" not in json.dumps(doc)


_MOVE = {"200", "400", "404", "409", "413", "422"}  # the deploy routes that change a state
AUTH = {"401", "403"}  # every operation needs a key
_RETRIEVER_MOVE = {"200", "400", "404", "409", "422"} | AUTH
EXPECTED = {
    ("put", "/v1/loops/{loop}/items"): {"200", "400", "404", "413", "422"} | AUTH,
    ("post", "/v1/loops/{loop}/items/deactivate"): {"200", "400", "404", "413", "422"} | AUTH,
    ("delete", "/v1/loops/{loop}/items/{item_id}"): {"200", "404", "422"} | AUTH,
    ("get", "/v1/loops/{loop}/items"): {"200", "404", "422"} | AUTH,
    ("get", "/v1/loops/{loop}/items/{item_id}"): {"200", "404", "422"} | AUTH,
    ("get", "/v1/loops/{loop}/retrievers"): {"200", "404", "422"} | AUTH,
    ("post", "/v1/loops/{loop}/retrievers/{version}/promote"): _RETRIEVER_MOVE,
    ("post", "/v1/loops/{loop}/retrievers/{version}/reject"): _RETRIEVER_MOVE,
    ("post", "/v1/loops/{loop}/retrievers/{version}/check"): _RETRIEVER_MOVE,
    ("post", "/v1/loops/{loop}/retrievers/{version}/rollout"): _RETRIEVER_MOVE | {"413"},
    ("post", "/v1/loops/{loop}/retrievers/rollback"): _RETRIEVER_MOVE | {"413"},
    ("get", "/v1/loops/{loop}/retrievers/rollout"): {"200", "404", "422"} | AUTH,
    ("get", "/v1/status"): {"200"} | AUTH,
    ("get", "/v1/loops"): {"200"} | AUTH,
    ("get", "/v1/loops/{loop}"): {"200", "404", "422"} | AUTH,
    ("put", "/v1/loops/{loop}"): {"200", "201", "400", "413", "422"} | AUTH,
    ("post", "/v1/loops/{loop}/rank"): {"201", "400", "404", "409", "413", "422", "503"} | AUTH,
    ("post", "/v1/loops/{loop}/events/{event_id}/reward"): {
        "202", "400", "404", "409", "413", "422", "503",
    } | AUTH,
    ("post", "/v1/loops/{loop}/events/{event_id}/activate"): {
        "200", "202", "404", "409", "422", "503",
    } | AUTH,
    ("post", "/v1/loops/{loop}/evaluations"): {"202", "400", "404", "413", "422", "429"} | AUTH,
    ("get", "/v1/loops/{loop}/evaluations"): {"200", "404", "422"} | AUTH,
    ("post", "/v1/loops/{loop}/tune"): {"202", "400", "404", "413", "422", "429"} | AUTH,
    ("get", "/v1/loops/{loop}/evaluations/{evaluation_id}"): {"200", "404"} | AUTH,
    ("get", "/v1/loops/{loop}/evaluations/{evaluation_id}/report"): {"200", "404", "409"} | AUTH,
    ("post", "/v1/keys"): {"201", "400", "413", "422"} | AUTH,
    ("get", "/v1/keys"): {"200"} | AUTH,
    ("delete", "/v1/keys/{key_id}"): {"200", "404", "409", "422"} | AUTH,
    ("get", "/v1/audit"): {"200", "422"} | AUTH,
    ("get", "/v1/loops/{loop}/audit"): {"200", "404", "422"} | AUTH,
    ("get", "/v1/loops/{loop}/shadow"): {"200", "404", "422"} | AUTH,
    ("get", "/v1/loops/{loop}/models"): {"200", "404", "422"} | AUTH,
    ("get", "/v1/loops/{loop}/models/{version}"): {"200", "404"} | AUTH,
    ("post", "/v1/loops/{loop}/models/{version}/approve"): _MOVE | AUTH,
    ("post", "/v1/loops/{loop}/models/{version}/reject"): _MOVE | AUTH,
    ("post", "/v1/loops/{loop}/models/{version}/rollout"): _MOVE | AUTH,
    ("post", "/v1/loops/{loop}/rollback"): _MOVE | AUTH,
    ("get", "/v1/loops/{loop}/rollout"): {"200", "404"} | AUTH,
    ("get", "/v1/loops/{loop}/learner"): {"200", "404", "422"} | AUTH,
    ("get", "/v1/loops/{loop}/alarms"): {"200", "404", "422"} | AUTH,
    ("post", "/v1/loops/{loop}/freshness/resume"): _MOVE | AUTH,
    ("post", "/v1/loops/{loop}/alarms/{alarm_id}/clear"): {
        "200", "400", "404", "409", "413", "422",
    } | AUTH,
    # issue 12 (operate)
    ("get", "/metrics"): {"200"} | AUTH,
    ("get", "/v1/loops/{loop}/metrics"): {"200", "404", "422"} | AUTH,
}  # fmt: skip
BODIES = {
    ("post", "/v1/keys"): "KeyCreateIn",
    ("put", "/v1/loops/{loop}"): "LoopConfigIn",
    ("post", "/v1/loops/{loop}/rank"): "RankRequest",
    ("post", "/v1/loops/{loop}/events/{event_id}/reward"): "RewardRequest",
    ("post", "/v1/loops/{loop}/evaluations"): "EvaluationRequest",
    ("post", "/v1/loops/{loop}/tune"): "TuneRequest",
    ("post", "/v1/loops/{loop}/models/{version}/approve"): "ApproveRequest",
    ("post", "/v1/loops/{loop}/models/{version}/reject"): "RejectRequest",
    ("post", "/v1/loops/{loop}/models/{version}/rollout"): "RolloutRequest",
    ("post", "/v1/loops/{loop}/rollback"): "RollbackRequest",
    ("post", "/v1/loops/{loop}/freshness/resume"): "ResumeRequest",
    ("post", "/v1/loops/{loop}/alarms/{alarm_id}/clear"): "ResumeRequest",
}


def test_every_status_and_body_is_documented(tmp_path: Path) -> None:
    doc = document(tmp_path)
    operations = {
        (method, path): op for path, item in doc["paths"].items() for method, op in item.items()
    }
    assert set(operations) == set(EXPECTED)
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for key, statuses in EXPECTED.items():
        responses = operations[key]["responses"]
        assert set(responses) == statuses, key
        for status in statuses:
            content = responses[status]["content"]
            if status >= "400":
                assert content == {"application/json": {"schema": error}}, (key, status)
            elif key[1].endswith("/report"):
                assert set(content) == {"text/html"}
            elif key[1] == "/metrics":  # the Prometheus text format
                assert set(content) == {"text/plain"}
            else:
                assert content["application/json"]["schema"].get("$ref"), (key, status)
        for status in {"429", "503"} & statuses:
            assert "Retry-After" in responses[status]["headers"]
        assert "WWW-Authenticate" in responses["401"]["headers"]
        assert operations[key]["security"] == [{"bearerAuth": []}, {"subscriptionKey": []}]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["subscriptionKey"]["name"] == "Ocp-Apim-Subscription-Key"
    for key, model in BODIES.items():
        body = operations[key]["requestBody"]
        assert body["required"] is True, key
        ref = body["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model}"
    assert "requestBody" not in operations[("post", "/v1/loops/{loop}/events/{event_id}/activate")]
    loop_config = doc["components"]["schemas"]["LoopConfigIn"]
    assert "seed" not in loop_config["properties"]
    assert "sampling_key" not in loop_config["properties"]
    assert loop_config["properties"]["reward_wait_s"]["maximum"] == 30 * 86400
    assert "sampling_key" not in json.dumps(doc["components"]["schemas"]["LoopConfigOut"])


# ------------------------------------------------------------------------------- schemathesis
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, str]]]:
    """The schema loaded from the app (schemathesis runs the app's lifespan), the app with one
    decision of each kind and one queued evaluation, so generated requests can reach them."""
    tmp = tmp_path_factory.mktemp("contract")
    app = create_app(
        make_settings(
            f"sqlite:///{tmp / 'store.db'}",
            tmp,
            max_body_bytes=64 * 1024,
            max_evaluations_per_loop=64,
        )
    )
    spawn = routes_evaluations.spawn_job
    routes_evaluations.spawn_job = lambda *_a, **_k: True  # accepted runs stay queued
    try:
        # every generated request carries the admin key, except those whose credentials
        # schemathesis makes invalid on purpose (negative mode): those must answer 401
        config = SchemathesisConfig.from_dict(
            {"auth": {"openapi": {"bearerAuth": {"bearer": TEST_ADMIN_KEY}}}}
        )
        loaded = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
        known = seed_state(loaded)
        yield loaded, known
    finally:
        routes_evaluations.spawn_job = spawn
        shutdown_lifespans()


def seed_state(loaded: Any) -> dict[str, str]:
    """Through the API itself: a decision, a deferred one and a queued evaluation."""
    ops = {(op.method.lower(), op.path): op for op in (r.ok() for r in loaded.get_all_operations())}
    rank = ops[("post", "/v1/loops/{loop}/rank")]
    actions = [{"id": "a"}, {"id": "b"}]
    for event_id, defer in (("evt-1", False), ("evt-deferred", True)):
        case = rank.Case(
            path_parameters={"loop": "default"},
            body={"event_id": event_id, "actions": actions, "defer_activation": defer},
            media_type="application/json",
        )
        assert case.call(headers=ADMIN_HEADERS).status_code == 201
    create = ops[("post", "/v1/loops/{loop}/evaluations")]
    answer = create.Case(
        path_parameters={"loop": "default"}, body={}, media_type="application/json"
    ).call(headers=ADMIN_HEADERS)
    assert answer.status_code == 202, answer.text
    return {"loop": "default", "event_id": "evt-1", "evaluation_id": answer.json()["id"]}


def exercise(strategy: Any, label: str, counts: Counter[str], failures: list[str]) -> None:
    """Send MAX_EXAMPLES derandomised cases of `strategy`; record statuses and failures."""

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case: Any) -> None:
        response = case.call()
        counts[f"{label} {response.status_code}"] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except AssertionError as err:  # schemathesis raises a failure group
            failures.append(f"{label}: {err}"[:2000])

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (an operation without inputs)
        counts[f"{label} (no invalid input exists)"] += 0


def test_the_api_keeps_its_contract(api: tuple[Any, dict[str, str]]) -> None:
    """Per operation: valid requests with any parameters, valid requests on the known loop,
    event and evaluation, and invalid requests; MAX_EXAMPLES each, derandomised."""
    loaded, known = api
    failures: list[str] = []
    counts: Counter[str] = Counter()
    for result in loaded.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        names = {p.name for p in operation.path_parameters}
        fixed = {k: v for k, v in known.items() if k in names} or None
        for mode, path_parameters in (
            (GenerationMode.POSITIVE, None),
            (GenerationMode.POSITIVE, fixed),
            (GenerationMode.NEGATIVE, None),
        ):
            strategy = operation.as_strategy(mode, path_parameters=path_parameters)
            exercise(strategy, label, counts, failures)
    print("\nstatuses seen:", json.dumps(dict(sorted(counts.items())), indent=1))
    print(f"requests: {sum(counts.values())}, contract failures: {len(failures)}")
    assert not failures, "\n\n".join(failures[:10])
