"""Keys and roles over HTTP: every route x every kind of caller, key routes, audit, revocation
across workers, and what is stored of a key.

The table (`PERMISSION`) must name every route of the app (enumerated from `app.routes`): a
route added without an entry fails `test_every_route_x_every_caller`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import routing
from fastapi.testclient import TestClient
from sqlalchemy import text

from decision_service import Settings, create_app
from deploy.keys import ROLES
from log.api_keys import get_key
from log.schema import make_engine
from tests.conftest import TEST_ADMIN_KEY, admin_client, make_settings

# (method, path) -> (permission, whether the route acts on the loop in its path)
PERMISSION: dict[tuple[str, str], tuple[str, bool]] = {
    ("PUT", "/v1/loops/{loop}/items"): ("configure", True),
    ("POST", "/v1/loops/{loop}/items/deactivate"): ("configure", True),
    ("DELETE", "/v1/loops/{loop}/items/{item_id:path}"): ("configure", True),
    ("GET", "/v1/loops/{loop}/items"): ("read", True),
    ("GET", "/v1/loops/{loop}/items/{item_id:path}"): ("read", True),
    ("GET", "/v1/loops/{loop}/retrievers"): ("read", True),
    ("POST", "/v1/loops/{loop}/retrievers/{version}/promote"): ("gatekeep", True),
    ("POST", "/v1/loops/{loop}/retrievers/{version}/reject"): ("gatekeep", True),
    ("POST", "/v1/loops/{loop}/retrievers/{version}/check"): ("gatekeep", True),
    ("POST", "/v1/loops/{loop}/retrievers/{version}/rollout"): ("gatekeep", True),
    ("POST", "/v1/loops/{loop}/retrievers/rollback"): ("gatekeep", True),
    ("GET", "/v1/loops/{loop}/retrievers/rollout"): ("read", True),
    ("GET", "/v1/status"): ("read", False),
    ("GET", "/v1/loops"): ("read", False),
    ("GET", "/v1/loops/{loop}"): ("read", True),
    ("PUT", "/v1/loops/{loop}"): ("configure", True),
    ("POST", "/v1/loops/{loop}/rank"): ("decide", True),
    ("POST", "/v1/loops/{loop}/events/{event_id:path}/reward"): ("decide", True),
    ("POST", "/v1/loops/{loop}/events/{event_id:path}/activate"): ("decide", True),
    ("POST", "/v1/loops/{loop}/evaluations"): ("evaluate", True),
    ("POST", "/v1/loops/{loop}/tune"): ("evaluate", True),
    ("GET", "/v1/loops/{loop}/evaluations"): ("read", True),
    ("GET", "/v1/loops/{loop}/evaluations/{evaluation_id}"): ("read", True),
    ("GET", "/v1/loops/{loop}/evaluations/{evaluation_id}/report"): ("read", True),
    ("POST", "/v1/keys"): ("keys", False),
    ("GET", "/v1/keys"): ("keys", False),
    ("DELETE", "/v1/keys/{key_id}"): ("keys", False),
    ("GET", "/v1/audit"): ("read", False),
    ("GET", "/v1/loops/{loop}/audit"): ("read", True),
    ("GET", "/v1/loops/{loop}/shadow"): ("read", True),
    ("GET", "/v1/loops/{loop}/models"): ("read", True),
    ("GET", "/v1/loops/{loop}/models/{version}"): ("read", True),
    ("POST", "/v1/loops/{loop}/models/{version}/approve"): ("gatekeep", True),
    ("POST", "/v1/loops/{loop}/models/{version}/reject"): ("gatekeep", True),
    ("POST", "/v1/loops/{loop}/models/{version}/rollout"): ("gatekeep", True),
    ("POST", "/v1/loops/{loop}/rollback"): ("gatekeep", True),
    ("GET", "/v1/loops/{loop}/rollout"): ("read", True),
    ("GET", "/v1/loops/{loop}/learner"): ("read", True),
    ("GET", "/v1/loops/{loop}/alarms"): ("read", True),
    ("POST", "/v1/loops/{loop}/freshness/resume"): ("gatekeep", True),
    ("POST", "/v1/loops/{loop}/alarms/{alarm_id}/clear"): ("gatekeep", True),
    # issue 12 (operate)
    ("GET", "/metrics"): ("read", False),
    ("GET", "/v1/loops/{loop}/metrics"): ("read", True),
    ("GET", "/dashboard"): ("read", False),
    ("GET", "/dashboard/loops/{loop}"): ("read", True),
    ("POST", "/dashboard/loops/{loop}/models/{version}/approve"): ("gatekeep", True),
    ("POST", "/dashboard/loops/{loop}/models/{version}/reject"): ("gatekeep", True),
    ("POST", "/dashboard/loops/{loop}/rollback"): ("gatekeep", True),
}
# Azure Personalizer's routes (decision_service/personalizer): the loop is the one the key is
# scoped to (an unscoped key: `default`), never outside the key's scope, so about_loop is False.
_PERSONALIZER_COMMON = {
    ("POST", "/rank"): "decide",
    ("POST", "/events/{event_id:path}/reward"): "decide",
    ("POST", "/events/{event_id:path}/activate"): "decide",
    ("GET", "/configurations/service"): "read",
    ("PUT", "/configurations/service"): "configure",
    ("GET", "/configurations/policy"): "read",
    ("PUT", "/configurations/policy"): "configure",
    ("DELETE", "/configurations/policy"): "configure",
    ("GET", "/logs/properties"): "read",
    ("DELETE", "/logs"): "configure",
    ("GET", "/model/properties"): "read",
    ("GET", "/model"): "export",
    ("DELETE", "/model"): "configure",
    ("GET", "/evaluations"): "read",
    ("GET", "/evaluations/{evaluation_id}"): "read",
    ("DELETE", "/evaluations/{evaluation_id}"): "evaluate",
}
_PERSONALIZER_PREVIEW = {
    ("POST", "/multislot/rank"): "decide",
    ("POST", "/multislot/events/{event_id:path}/reward"): "decide",
    ("POST", "/multislot/events/{event_id:path}/activate"): "decide",
    ("PUT", "/model"): "configure",
    ("POST", "/configurations/applyFromEvaluation"): "configure",
}
_PERSONALIZER_V1 = {("POST", "/evaluations"): "evaluate"}
_PERSONALIZER_2022 = {
    ("PUT", "/evaluations/{evaluation_id}"): "evaluate",
    ("GET", "/featureImportances"): "read",
    ("GET", "/featureImportances/{feature_importance_id}"): "read",
    ("PUT", "/featureImportances/{feature_importance_id}"): "read",
    ("DELETE", "/featureImportances/{feature_importance_id}"): "read",
}
for _base, _extra in (
    ("/personalizer/v1.0", _PERSONALIZER_V1),
    ("/personalizer/v1.1-preview.3", _PERSONALIZER_PREVIEW | _PERSONALIZER_V1),
    ("/personalizer", _PERSONALIZER_PREVIEW | _PERSONALIZER_2022),
):
    for (_method, _path), _permission in (_PERSONALIZER_COMMON | _extra).items():
        PERMISSION[(_method, _base + _path)] = (_permission, False)
OPEN = {
    ("GET", "/healthz"),
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/dashboard/login"),  # the login form; POST checks the key itself
    ("POST", "/dashboard/login"),
    ("POST", "/dashboard/logout"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}
PATH_VALUES = {
    "{loop}": "default",
    "{event_id:path}": "evt-1",
    "{evaluation_id}": "0" * 32,
    "{key_id}": "000000000000",
    "{version}": "v0",
    "{alarm_id}": "0" * 32,
    "{feature_importance_id}": "fi-1",
}
PROBE = b'{"__auth_probe__": 1}'  # refused by every body model: nothing is written or started
UNKNOWN_KEY = "dsk_0000000000ff_" + "A" * 43
MALFORMED = ("not-a-key", "dsk_short", "Basic dXNlcjpwYXNz")


def app_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route the app answers (HEAD aside)."""
    return {
        (method, context.path)
        for context in routing.iter_route_contexts(app.routes)
        for method in (context.methods or ())
        if method != "HEAD"
    }


def concrete(path: str) -> str:
    for name, value in PATH_VALUES.items():
        path = path.replace(name, value)
    return path


def make_key(client: TestClient, role: str, loops: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": f"{role}-{loops}", "role": role}
    if loops is not None:
        body["loops"] = loops
    r = client.post("/v1/keys", json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def keyed(client: TestClient) -> dict[str, dict[str, str]]:
    """Headers of every kind of caller, on an app with one decision (evt-1)."""
    assert client.post(
        "/v1/loops/default/rank", json={"event_id": "evt-1", "actions": [{"id": "a"}]}
    ).is_success
    callers: dict[str, dict[str, str]] = {
        role: bearer(make_key(client, role)["key"]) for role in ROLES
    }
    callers["scoped-to-other"] = bearer(make_key(client, "admin", ["other"])["key"])
    revoked = make_key(client, "admin")
    assert client.delete(f"/v1/keys/{revoked['key_id']}").status_code == 200
    callers["revoked"] = bearer(revoked["key"])
    callers["no key"] = {}
    callers["unknown key"] = bearer(UNKNOWN_KEY)
    callers["wrong secret"] = bearer(make_key(client, "admin")["key"][:-4] + "AAAA")
    for i, value in enumerate(MALFORMED):
        callers[f"malformed {i}"] = {"Authorization": value}
    callers["empty bearer"] = {"Authorization": "Bearer "}
    callers["subscription key (app)"] = {
        "Ocp-Apim-Subscription-Key": callers["app"]["Authorization"].removeprefix("Bearer ")
    }
    return callers


def expected(route: tuple[str, str], caller: str) -> str:
    """'401', '403' or 'ok' (anything but 401 and 403)."""
    if route in OPEN:
        return "ok"
    permission, about_loop = PERMISSION[route]
    role = {"subscription key (app)": "app", "scoped-to-other": "admin"}.get(caller, caller)
    if role not in ROLES:
        return "401"
    if permission not in ROLES[role]:
        return "403"
    if caller == "scoped-to-other" and about_loop:
        return "403"
    return "ok"


def test_every_route_x_every_caller(settings: Settings, keyed: dict[str, dict[str, str]]) -> None:
    with TestClient(create_app(settings), raise_server_exceptions=False) as bare:
        routes = app_routes(bare.app)
        assert routes - OPEN - set(PERMISSION) == set(), "a route without an entry in the table"
        assert set(PERMISSION) | OPEN == routes, "an entry for a route that does not exist"
        mismatches = []
        seen: dict[str, int] = {}
        for route in sorted(routes):
            method, path = route
            for caller, headers in keyed.items():
                body = PROBE if method in ("POST", "PUT") else None
                r = bare.request(
                    method,
                    concrete(path),
                    content=body,
                    headers={**headers, "content-type": "application/json"},
                )
                got = str(r.status_code) if r.status_code in (401, 403) else "ok"
                seen[got] = seen.get(got, 0) + 1
                want = expected(route, caller)
                if got != want or r.status_code >= 500:
                    mismatches.append(f"{method} {path} as {caller}: {r.status_code} {r.text}")
                if got == "401":
                    assert r.headers["www-authenticate"].startswith("Bearer")
                    assert r.json()["error"]["code"] == "unauthorized"
                if got == "403":
                    assert r.json()["error"]["code"] == "forbidden"
    print(f"\n{len(routes)} routes x {len(keyed)} callers: {seen}")
    assert not mismatches, "\n".join(mismatches)
    assert seen["ok"] and seen["401"] and seen["403"]


def test_the_subscription_key_header_decides(client: TestClient) -> None:
    token = make_key(client, "app")["key"]
    r = client.post(
        "/v1/loops/default/rank",
        json={"actions": [{"id": "a"}, {"id": "b"}]},
        headers={"Authorization": "", "Ocp-Apim-Subscription-Key": token},
    )
    assert r.status_code == 201, r.text


# ------------------------------------------------------------------------------ scopes
def test_scoped_keys_see_and_act_on_their_loops_only(client: TestClient) -> None:
    for loop in ("news", "sports"):
        assert client.put(f"/v1/loops/{loop}", json={}).status_code == 201
    news = bearer(make_key(client, "admin", ["news"])["key"])
    listed = client.get("/v1/loops", headers=news).json()["loops"]
    assert [entry["loop"] for entry in listed] == ["news"]
    status = client.get("/v1/status", headers=news).json()
    assert set(status["loops"]) <= {"news"}
    assert client.put("/v1/loops/news", json={"epsilon": 0.1}, headers=news).status_code == 200
    assert client.put("/v1/loops/sports", json={}, headers=news).status_code == 403
    # keys: only within its loops, never for every loop
    for body in (
        {"name": "x", "role": "app"},
        {"name": "x", "role": "app", "loops": ["news", "sports"]},
        {"name": "x", "role": "app", "loops": ["sports"]},
    ):
        r = client.post("/v1/keys", json=body, headers=news)
        assert r.status_code == 403, (body, r.text)
    made = client.post(
        "/v1/keys", json={"name": "n", "role": "app", "loops": ["news"]}, headers=news
    )
    assert made.status_code == 201
    visible = {k["key_id"] for k in client.get("/v1/keys", headers=news).json()["keys"]}
    everything = {k["key_id"] for k in client.get("/v1/keys").json()["keys"]}
    assert made.json()["key_id"] in visible and len(everything) > len(visible)
    assert all(
        k["loops"] is not None and set(k["loops"]) <= {"news"}
        for k in client.get("/v1/keys", headers=news).json()["keys"]
    )
    # a key outside its scope cannot be revoked (nor is it shown to exist)
    outside = make_key(client, "app", ["sports"])["key_id"]
    assert client.delete(f"/v1/keys/{outside}", headers=news).status_code == 404
    assert client.delete(f"/v1/keys/{made.json()['key_id']}", headers=news).status_code == 200


def test_key_requests_are_validated(client: TestClient) -> None:
    for body in (
        {"name": "x", "role": "root"},
        {"name": "", "role": "app"},
        {"name": "x", "role": "app", "loops": []},
        {"name": "x", "role": "app", "loops": ["a/b"]},
        {"name": "x", "role": "app", "secret": "mine"},
        {"name": "x"},
    ):
        r = client.post("/v1/keys", json=body)
        assert r.status_code == 422, (body, r.text)
    assert len(client.get("/v1/keys").json()["keys"]) == 1  # the admin key only
    assert client.delete("/v1/keys/not-an-id").status_code == 404


def test_the_last_admin_key_cannot_be_revoked_over_http(client: TestClient) -> None:
    admin_id = TEST_ADMIN_KEY.split("_")[1]
    r = client.delete(f"/v1/keys/{admin_id}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "last_admin_key"
    other = make_key(client, "admin")
    assert client.delete(f"/v1/keys/{admin_id}").status_code == 200
    assert client.get("/v1/keys").status_code == 401  # revoked: at once in this worker
    with_other = bearer(other["key"])
    r = client.delete(f"/v1/keys/{other['key_id']}", headers=with_other)
    assert r.status_code == 409
    again = client.delete(f"/v1/keys/{admin_id}", headers=with_other)
    assert again.status_code == 200 and again.json()["revoked_at"] is not None


# ------------------------------------------------------------------------------ audit
def test_key_changes_are_audited(client: TestClient) -> None:
    made = make_key(client, "app", ["default"])
    client.delete(f"/v1/keys/{made['key_id']}", params={"reason": "leaked in a log"})
    client.delete(f"/v1/keys/{made['key_id']}")  # already revoked: no second entry
    entries = client.get("/v1/audit").json()["entries"]
    admin_id = TEST_ADMIN_KEY.split("_")[1]
    assert [(e["action"], e["target"]) for e in entries] == [
        ("key_create", admin_id),  # DS_ADMIN_KEY at start-up
        ("key_create", made["key_id"]),
        ("key_revoke", made["key_id"]),
    ]
    assert entries[0]["actor"].startswith("service:") and entries[0]["reason"] == "DS_ADMIN_KEY"
    create, revoke = entries[1], entries[2]
    assert create["actor"] == f"key:{admin_id}:bootstrap" and create["role"] == "admin"
    assert create["details"] == {"name": "app-['default']", "role": "app", "loops": ["default"]}
    assert revoke["reason"] == "leaked in a log"
    assert made["key"] not in str(entries)
    # paging
    first = client.get("/v1/audit", params={"limit": 2}).json()
    assert [e["seq"] for e in first["entries"]] == [entries[0]["seq"], entries[1]["seq"]]
    rest = client.get("/v1/audit", params={"after_seq": first["next_after_seq"]}).json()
    assert [e["seq"] for e in rest["entries"]] == [entries[2]["seq"]]
    assert rest["next_after_seq"] is None
    assert client.get("/v1/audit", params={"limit": 0}).status_code == 422
    # key changes belong to no loop: a loop's audit and a scoped reader do not see them
    assert client.get("/v1/loops/default/audit").json()["entries"] == []
    scoped = bearer(make_key(client, "experimenter", ["default"])["key"])
    assert client.get("/v1/audit", headers=scoped).json()["entries"] == []
    assert client.get("/v1/loops/nope/audit").status_code == 404


def test_no_secret_is_stored(db_url: str, tmp_path: Path) -> None:
    """The database holds the hash only: neither the key nor its secret appears in any row
    (PostgreSQL: the rows as text; SQLite: every byte of the database files)."""
    settings = make_settings(db_url, tmp_path)
    with admin_client(create_app(settings)) as client:
        made = make_key(client, "gatekeeper")
        token, secret = made["key"], made["key"].split("_", 2)[2]
        assert client.get("/v1/audit", headers=bearer(token)).status_code == 200
        listed = client.get("/v1/keys").text
        assert secret not in listed and "hmac" not in listed
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                dumped = " ".join(
                    str(row)
                    for table in ("api_keys", "audit_log")
                    for row in conn.execute(text(f"SELECT t::text FROM {table} t"))
                )
            else:
                conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
                dumped = ""
        stored = get_key(engine, made["key_id"])
        assert stored is not None
    finally:
        engine.dispose()
    if not dumped:
        files = [p for p in tmp_path.glob("store.db*") if p.is_file()]
        assert files
        dumped = b"".join(p.read_bytes() for p in files).decode("latin-1")
    assert made["key_id"] in dumped and stored.secret_hash in dumped
    assert secret not in dumped and token not in dumped


# ------------------------------------------------------------------------------ workers
@pytest.fixture
def two_workers(db_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, TestClient]]:
    """Two apps (two workers' Services) on one database; keys trusted 0.3 s."""
    a = make_settings(db_url, tmp_path / "a", key_cache_s=0.3)
    b = make_settings(db_url, tmp_path / "b", key_cache_s=0.3)
    with admin_client(create_app(a)) as one, admin_client(create_app(b)) as two:
        yield one, two


def test_a_revocation_reaches_every_worker(two_workers: tuple[TestClient, TestClient]) -> None:
    one, two = two_workers
    made = make_key(one, "app")
    app_key = bearer(made["key"])
    body = {"actions": [{"id": "a"}, {"id": "b"}]}
    assert two.post("/v1/loops/default/rank", json=body, headers=app_key).status_code == 201
    assert one.delete(f"/v1/keys/{made['key_id']}").status_code == 200
    # the revoking worker refuses it at once
    assert one.post("/v1/loops/default/rank", json=body, headers=app_key).status_code == 401
    # the other one within DS_KEY_CACHE_S (polled; the deadline only stops a hung test)
    deadline = time.monotonic() + 30
    while (r := two.post("/v1/loops/default/rank", json=body, headers=app_key)).status_code != 401:
        assert r.status_code == 201
        assert time.monotonic() < deadline, "the second worker never saw the revocation"
        time.sleep(0.05)
    assert "revoked" in r.json()["error"]["message"]


def test_a_cached_key_is_read_once_per_period(db_url: str, tmp_path: Path) -> None:
    """With a long DS_KEY_CACHE_S, 50 requests with one key read it from the database once;
    an unknown key id is remembered as unknown too."""
    settings = make_settings(db_url, tmp_path, key_cache_s=60)
    with admin_client(create_app(settings)) as client:
        cache = client.app.state.service.keys  # type: ignore[attr-defined]
        before = cache.reads
        for _ in range(50):
            assert client.get("/v1/loops/default").status_code == 200
        for _ in range(5):
            assert client.get("/v1/loops", headers=bearer(UNKNOWN_KEY)).status_code == 401
        assert cache.reads - before == 2


def test_a_key_made_on_one_worker_works_on_another(
    two_workers: tuple[TestClient, TestClient],
) -> None:
    one, two = two_workers
    token = make_key(one, "experimenter")["key"]
    assert two.get("/v1/loops/default", headers=bearer(token)).status_code == 200
    assert two.put("/v1/loops/default", json={}, headers=bearer(token)).status_code == 403


def test_pg_revocation_in_sql_is_seen(pg_url: str, tmp_path: Path) -> None:
    """A revocation made by another process (here: SQL) is seen after DS_KEY_CACHE_S."""
    settings = make_settings(pg_url, tmp_path, key_cache_s=0.2)
    with admin_client(create_app(settings)) as client:
        token = make_key(client, "app")["key"]
        key_id = token.split("_")[1]
        assert client.get("/v1/status", headers=bearer(token)).status_code == 403
        with psycopg.connect(pg_url) as conn:
            conn.execute(
                "UPDATE api_keys SET revoked_at = now(), revoked_by = 'sql' WHERE key_id = %s",
                (key_id,),
            )
        deadline = time.monotonic() + 30
        while client.get("/v1/status", headers=bearer(token)).status_code != 401:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/v1/status").status_code == 200  # the admin key still works


def test_the_key_cache_is_bounded(client: TestClient) -> None:
    """Unknown key ids (anyone can send them) fill the cache up to its bound, oldest out."""
    cache = client.app.state.service.keys  # type: ignore[attr-defined]
    cache.max_entries = 3
    for i in range(10):
        unknown = bearer(f"dsk_{i:012x}_" + "A" * 43)
        assert client.get("/v1/loops", headers=unknown).status_code == 401
    assert list(cache.entries) == [f"{i:012x}" for i in (7, 8, 9)]
    assert client.get("/v1/loops").status_code == 200  # the admin key is read again
    assert len(cache.entries) == 3


def test_keys_are_not_looked_up_before_the_start_up_is_done(client: TestClient) -> None:
    """Until the worker's start-up (migration, DS_ADMIN_KEY registered) is done, a key it has
    not verified is a 503 (retry), never a 401 remembered for DS_KEY_CACHE_S."""
    cache = client.app.state.service.keys  # type: ignore[attr-defined]
    cache.entries.clear()
    cache.ready = False
    r = client.get("/v1/loops")
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
    assert r.headers["retry-after"]
    cache.ready = True
    assert client.get("/v1/loops").status_code == 200
