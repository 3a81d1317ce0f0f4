"""The dashboard over HTTP (the browser test drives the same pages in Chromium): login with a
key -> server-side session in an HttpOnly SameSite cookie (never the key), CSRF on every
action, roles as in the API, actions through the deploy functions with their audit rows,
logout and revocation end the session."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from decision_service import Settings, create_app
from log.evaluations import claim_evaluation, create_evaluation, finish_evaluation
from log.models import DashboardSessionRow
from log.registry_store import list_models
from log.verdicts import VerdictRecord, store_verdict
from tests.conftest import admin_client
from tests.operate.dashboard_helpers import CSRF, LOOP, Run, simulate

HTML = {"Accept": "text/html"}


@pytest.fixture
def app_and_run(settings: Settings) -> Iterator[tuple[TestClient, Run, dict[str, str]]]:
    with admin_client(create_app(settings)) as admin:
        run = simulate(admin.app.state.service, admin)  # type: ignore[attr-defined]
        keys = {
            role: admin.post("/v1/keys", json={"name": f"{role}-1", "role": role}).json()["key"]
            for role in ("gatekeeper", "experimenter")
        }
        yield admin, run, keys


def login(admin: TestClient, key: str) -> TestClient:
    browser = TestClient(admin.app, headers=HTML)
    r = browser.post("/dashboard/login", data={"key": key}, follow_redirects=False)  # a form post
    assert r.status_code == 303, r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    assert key not in cookie and key.split("_", 2)[2] not in cookie  # the key never travels back
    return browser


def csrf_of(page: str) -> str:
    found = CSRF.search(page)
    assert found, "the page has a CSRF token"
    return found.group(1)


def test_gatekeeper_session_sees_charts_and_approves_with_csrf(
    app_and_run: tuple[TestClient, Run, dict[str, str]],
) -> None:
    admin, run, keys = app_and_run
    browser = login(admin, keys["gatekeeper"])
    assert LOOP in browser.get("/dashboard").text
    page = browser.get(f"/dashboard/loops/{LOOP}?window=1h")
    assert page.status_code == 200
    decisions = re.search(r'data-title="decisions" data-points="(\d+)"', page.text)
    assert decisions and int(decisions.group(1)) >= 1
    assert f'id="total-decisions">{run.decisions}<' in page.text
    url = f"/dashboard/loops/{LOOP}/models/{run.candidate}/approve"
    assert f'action="{url}"' in page.text  # the page's own form posts there
    form = {"reason": "looks good", "to": "live", "override": "on"}
    # no CSRF token, or a wrong one: refused, nothing changes
    assert browser.post(url, data=form, follow_redirects=False).status_code == 403
    bad = {**form, "csrf": "x" * 43}
    assert browser.post(url, data=bad, follow_redirects=False).status_code == 403
    assert browser.post(url, data={"csrf": csrf_of(page.text)}).status_code == 422  # no reason
    evil = {"Origin": "https://evil.example"}
    ok_form = {**form, "csrf": csrf_of(page.text)}
    assert browser.post(url, data=ok_form, headers=evil).status_code == 403  # cross-site
    engine = admin.app.state.service.engine  # type: ignore[attr-defined]
    assert [m.version for m in list_models(engine, LOOP, statuses=("live",))] == [run.live]
    r = browser.post(url, data={**form, "csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    assert [m.version for m in list_models(engine, LOOP, statuses=("live",))] == [run.candidate]
    after = browser.get(r.headers["location"]).text
    assert f'id="rollout-live">{run.candidate}' in after
    assert "model.live_override" in after and "looks good" in after
    # rollback through the same page
    r = browser.post(
        f"/dashboard/loops/{LOOP}/rollback",
        data={"reason": "undo", "csrf": csrf_of(after), "expected_live": run.candidate},
        follow_redirects=False,
    )
    assert r.status_code == 303 and "notice" in r.headers["location"]
    assert [m.version for m in list_models(engine, LOOP, statuses=("live",))] == [run.live]


def test_verdicts_and_evaluation_reports_are_plotted(
    app_and_run: tuple[TestClient, Run, dict[str, str]],
) -> None:
    admin, run, keys = app_and_run
    engine = admin.app.state.service.engine  # type: ignore[attr-defined]
    store_verdict(
        engine,
        VerdictRecord(
            loop=LOOP, version=run.candidate, incumbent=run.live, at=datetime.now(UTC),
            decision="pending", reason="needs more events",
            numbers={"difference": {"value": 0.02, "ci_low": -0.01, "ci_high": 0.05}},
        ),
    )  # fmt: skip
    ev = create_evaluation(engine, LOOP, {"policies": []})
    assert claim_evaluation(engine, ev.id) is not None
    estimate = {"value": 0.4, "ci_low": 0.3, "ci_high": 0.5, "n": 60, "ess": 50.0, "method": "x"}
    result = {"policies": [{"name": "live", "estimates": {"ips": estimate, "dr": estimate}}]}
    assert finish_evaluation(engine, ev.id, result)
    page = login(admin, keys["experimenter"]).get(f"/dashboard/loops/{LOOP}").text
    assert 'data-title="gate verdicts: candidate - live (latest look)" data-points="1"' in page
    assert f'data-title="evaluation {ev.id[:8]}" data-points="2"' in page
    assert "needs more events" in page


def test_experimenter_reads_but_is_refused_actions(
    app_and_run: tuple[TestClient, Run, dict[str, str]],
) -> None:
    admin, run, keys = app_and_run
    browser = login(admin, keys["experimenter"])
    page = browser.get(f"/dashboard/loops/{LOOP}")
    assert page.status_code == 200 and "need a gatekeeper key" in page.text
    r = browser.post(
        f"/dashboard/loops/{LOOP}/models/{run.candidate}/approve",
        data={"reason": "try", "to": "live", "override": "on", "csrf": csrf_of(page.text)},
    )
    assert r.status_code == 403 and "may not &#39;gatekeep&#39;" in r.text
    engine = admin.app.state.service.engine  # type: ignore[attr-defined]
    assert [m.version for m in list_models(engine, LOOP, statuses=("live",))] == [run.live]


def test_login_logout_and_revocation(
    app_and_run: tuple[TestClient, Run, dict[str, str]], tmp_path: Path
) -> None:
    admin, _, keys = app_and_run
    anonymous = TestClient(admin.app, headers=HTML)
    r = anonymous.get("/dashboard")
    assert r.status_code == 401 and 'name="key"' in r.text  # the login form
    assert anonymous.get("/dashboard", headers={"Accept": "*/*"}).json()["error"]["code"] == (
        "unauthorized"
    )
    assert anonymous.post("/dashboard/login", data={"key": "dsk_nope"}).status_code == 401
    evil = {"Origin": "https://evil.example"}  # another site posting the login form
    r = anonymous.post("/dashboard/login", data={"key": keys["gatekeeper"]}, headers=evil)
    assert r.status_code == 403 and "ds_session" not in r.headers.get("set-cookie", "")
    same = {"Origin": "http://testserver"}
    r = anonymous.post(
        "/dashboard/login", data={"key": keys["gatekeeper"]}, headers=same, follow_redirects=False
    )
    assert r.status_code == 303
    assert (
        anonymous.post("/dashboard/login", data={"key": keys["gatekeeper"][:-2] + "AA"}).status_code
        == 401
    )
    browser = login(admin, keys["gatekeeper"])
    engine = admin.app.state.service.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        stored = conn.execute(select(DashboardSessionRow.token_hash)).scalars().all()
    assert browser.cookies["ds_session"] not in stored  # only its hash is stored
    page = browser.get("/dashboard").text
    r = browser.post("/dashboard/logout", data={"csrf": csrf_of(page)}, follow_redirects=False)
    assert r.status_code == 303
    assert browser.get("/dashboard").status_code == 401
    # a revoked key's session ends
    browser = login(admin, keys["experimenter"])
    key_id = keys["experimenter"].split("_")[1]
    assert admin.delete(f"/v1/keys/{key_id}").status_code == 200
    assert browser.get("/dashboard").status_code == 401
