"""The dashboard over HTTP (the browser test drives the same pages in Chromium): login with a
key -> server-side session in an HttpOnly SameSite cookie (never the key), CSRF on every
action, roles as in the API, actions through the deploy functions with their audit rows,
logout and revocation end the session."""

from __future__ import annotations

import logging
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
    for window in ("6h", "24h", "7d", "30d"):  # the selectable windows (hourly, daily points)
        other = browser.get(f"/dashboard/loops/{LOOP}?window={window}").text
        assert f"<strong>{window}</strong>" in other
        assert f'id="total-decisions">{run.decisions}<' in other
        assert re.search(r'data-title="entropy \(nats\)" data-points="[1-9]', other)
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


def test_login_regenerates_the_session_and_logout_ends_it_server_side(
    app_and_run: tuple[TestClient, Run, dict[str, str]],
) -> None:
    admin, _, keys = app_and_run
    # fixation: a browser that carries another session's token logs in with its own key
    planted = login(admin, keys["experimenter"]).cookies["ds_session"]
    victim = TestClient(admin.app, headers=HTML)
    victim.cookies.set("ds_session", planted, path="/dashboard")
    r = victim.post("/dashboard/login", data={"key": keys["gatekeeper"]}, follow_redirects=False)
    assert r.status_code == 303
    fresh = r.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
    assert fresh != planted  # a new token, never the planted one
    attacker = TestClient(admin.app, headers=HTML, cookies={"ds_session": planted})
    assert attacker.get("/dashboard").status_code == 401  # the planted session ended
    # logout ends the session in the store, not only the browser's cookie
    browser = login(admin, keys["gatekeeper"])
    token = browser.cookies["ds_session"]
    page = browser.get("/dashboard").text
    assert keys["gatekeeper"] not in page and keys["gatekeeper"].split("_", 2)[2] not in page
    replay = TestClient(admin.app, headers=HTML, cookies={"ds_session": token})
    assert replay.get("/dashboard").status_code == 200
    engine = admin.app.state.service.engine  # type: ignore[attr-defined]

    def stored() -> int:
        with engine.connect() as conn:
            return len(conn.execute(select(DashboardSessionRow.token_hash)).all())

    before = stored()
    r = browser.post("/dashboard/logout", data={"csrf": csrf_of(page)}, follow_redirects=False)
    assert r.status_code == 303 and 'ds_session=""' in r.headers["set-cookie"]
    assert replay.get("/dashboard").status_code == 401  # the old token is dead server-side
    assert stored() == before - 1
    # a logout without the session's CSRF token (another site's form) ends nothing
    browser = login(admin, keys["gatekeeper"])
    assert browser.post("/dashboard/logout", data={"csrf": "x"}).status_code == 403
    assert browser.get("/dashboard").status_code == 200


def test_login_errors_do_not_say_which_part_was_wrong(
    app_and_run: tuple[TestClient, Run, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin, _, keys = app_and_run
    # over https the cookie is also Secure
    tls = TestClient(admin.app, base_url="https://testserver", headers=HTML)
    r = tls.post("/dashboard/login", data={"key": keys["gatekeeper"]}, follow_redirects=False)
    assert r.status_code == 303 and "; Secure" in r.headers["set-cookie"]
    assert "HttpOnly" in r.headers["set-cookie"]
    anonymous = TestClient(admin.app, headers=HTML)
    _, key_id, secret = keys["gatekeeper"].split("_", 2)
    wrong_secret = f"dsk_{key_id}_{secret[::-1]}"
    unknown_id = f"dsk_{'0' * len(key_id)}_{secret}"
    revoked = keys["experimenter"]
    assert admin.delete(f"/v1/keys/{revoked.split('_')[1]}").status_code == 200
    answers = [anonymous.post("/dashboard/login", data={"key": k}) for k in
               (wrong_secret, unknown_id, revoked)]  # fmt: skip
    assert {r.status_code for r in answers} == {401}
    assert len({r.text for r in answers}) == 1  # one answer, whatever part was wrong
    for r, k in zip(answers, (wrong_secret, unknown_id, revoked), strict=True):
        assert k not in r.text and k.split("_", 2)[2] not in r.text
        assert "ds_session" not in r.headers.get("set-cookie", "")
    secrets_ = [k.split("_", 2)[2] for k in (*keys.values(), wrong_secret, unknown_id)]
    assert not [s for s in secrets_ if s in caplog.text]  # no key secret is logged


def test_values_from_the_store_are_escaped_on_every_page(
    app_and_run: tuple[TestClient, Run, dict[str, str]],
) -> None:
    """Audit reasons, key names, verdict reasons, evaluation policy names and the page's own
    query parameters are text, never markup (Jinja autoescape on for every template)."""
    from decision_service.routes_dashboard import _templates

    env = _templates()
    assert env.list_templates() and all(env.autoescape(n) for n in env.list_templates())
    admin, run, _ = app_and_run
    evil = '<script>alert("x")</script>'
    gk = admin.post("/v1/keys", json={"name": "gk-<b>1</b>", "role": "gatekeeper"})
    assert gk.status_code in (200, 201), gk.text
    browser = login(admin, gk.json()["key"])
    page = browser.get(f"/dashboard/loops/{LOOP}").text
    r = browser.post(
        f"/dashboard/loops/{LOOP}/models/{run.candidate}/reject",
        data={"reason": f"no {evil}", "csrf": csrf_of(page)},
        follow_redirects=False,
    )
    assert r.status_code == 303
    engine = admin.app.state.service.engine  # type: ignore[attr-defined]
    store_verdict(
        engine,
        VerdictRecord(
            loop=LOOP, version=run.candidate, incumbent=run.live, at=datetime.now(UTC),
            decision="pending", reason=f"verdict {evil}",
            numbers={"difference": {"value": 0.0, "ci_low": -0.1, "ci_high": 0.1}},
        ),
    )  # fmt: skip
    ev = create_evaluation(engine, LOOP, {"policies": []})
    assert claim_evaluation(engine, ev.id) is not None
    estimate = {"value": 0.4, "ci_low": 0.3, "ci_high": 0.5}
    name = '"><img src=x onerror=alert(1)>'
    assert finish_evaluation(engine, ev.id, {"policies": [{"name": name, "estimates": {
        "ips": estimate}}]})  # fmt: skip
    for url in (f"/dashboard/loops/{LOOP}?error={evil}&notice={evil}", "/dashboard"):
        text = browser.get(url).text
        assert "<script>" not in text and "<img" not in text and "<b>1</b>" not in text
    text = browser.get(f"/dashboard/loops/{LOOP}?error={evil}").text
    assert "no &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in text  # the audit reason
    assert "verdict &lt;script&gt;" in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "gk-&lt;b&gt;1&lt;/b&gt;" in text  # the key's name in the audit actor
