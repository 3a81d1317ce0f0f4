"""The dashboard (`/dashboard`): server-rendered HTML (Jinja2 templates, inline SVG charts; no
JavaScript, no build step). Not in the OpenAPI document.

| route | what | permission |
| --- | --- | --- |
| ``GET /dashboard/login``, ``POST /dashboard/login`` | log in with an API key | open |
| ``POST /dashboard/logout`` | end the session | open (CSRF-checked with a session) |
| ``GET /dashboard`` | the loops the key sees, headline figures | read |
| ``GET /dashboard/loops/{loop}`` | charts, models, evaluations, rollout, alarms, audit | read |
| ``POST /dashboard/loops/{loop}/models/{version}/approve`` | to shadow, canary or live | gatekeep |
| ``POST /dashboard/loops/{loop}/models/{version}/reject`` | reject | gatekeep |
| ``POST /dashboard/loops/{loop}/rollback`` | roll live back | gatekeep |

Sessions: logging in with a key (the same keys and roles as the API) ends the session the
browser presented, if any (no fixation), and stores a new server-side session
(`dashboard_sessions`: the sha256 of a random token, the key id, a CSRF token, the expiry,
`DS_DASHBOARD_SESSION_S`); the cookie `ds_session` carries only the random token
(HttpOnly, SameSite=Strict, Path=/dashboard, Secure over https). Every request re-checks the
key through the worker's key cache, so a revoked key ends its sessions within
`DS_KEY_CACHE_S`. Every action form carries the session's CSRF token, compared in constant
time. A request without a cookie may present the key in a header like any API call (then no
CSRF token is needed: a browser cannot send that header cross-site); with neither, a browser
(Accept: text/html) gets the login form with 401, any other client the API's JSON 401. The
actions call the same deploy functions as the API routes (`deploy.rollout.transition`,
`deploy.rollout.rollback`), audited with the key as actor.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from decision_service.auth import authorize
from decision_service.routes import LOOP_NAME, _service
from decision_service.routes_operate import WINDOWS, loop_metrics
from decision_service.svg_charts import Estimate, Series, interval_plot, time_chart
from deploy.keys import Principal, secret_digest, split_token
from deploy.registry import get_version
from deploy.rollout import rollback, transition
from explore.errors import DomainError, NotFound
from log.alarms import list_alarms
from log.dashboard_sessions import create_session, end_session, find_session
from log.evaluations import list_evaluations
from log.loops import get_loop, list_loops
from log.metrics import ALL, breakdown
from log.operate_reads import latest_audit
from log.registry_store import list_models as stored_models
from log.registry_store import override_versions
from log.schema import Engine
from log.verdicts import latest_verdicts

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
COOKIE = "ds_session"
MAX_FORM_BYTES = 16 * 1024
MAX_REASON = 2000
_KEY_HEADERS = (b"authorization", b"ocp-apim-subscription-key")


@lru_cache(maxsize=1)
def _templates() -> Environment:
    return Environment(
        loader=PackageLoader("decision_service", "templates"),
        autoescape=select_autoescape(["html"]),
    )


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the key's principal and the session's CSRF token (None when the key
    came in a header)."""

    principal: Principal
    csrf: str | None


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _templates().get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def _login_page(status: int, message: str | None = None) -> HTMLResponse:
    page = _page("login.html", status, message=message, viewer=None)
    if status == 401:
        page.headers["WWW-Authenticate"] = 'Bearer realm="decision-service"'
    return page


async def _viewer(request: Request, permission: str, loop: str | None) -> Viewer | Response:
    """The session's (or the header key's) principal allowed `permission` on `loop`; else the
    answer to give: the login form (401) or a refusal (403)."""
    service = _service(request)
    token = request.cookies.get(COOKIE)
    if token:
        now = datetime.now(UTC)
        session = await run_in_threadpool(lambda: find_session(service.engine, token, now=now))
        if session is not None:
            entry = await service.keys.get(session.key_id)
            if entry.principal is not None and not entry.revoked:
                principal = entry.principal
                if not principal.may(permission, loop):
                    return _page(
                        "forbidden.html",
                        403,
                        viewer=Viewer(principal, session.csrf),
                        message=f"a key with role {principal.role!r} may not {permission!r}"
                        + ("" if loop is None or principal.sees(loop) else f" on {loop!r}"),
                    )
                return Viewer(principal, session.csrf)
    if any(name in _KEY_HEADERS for name, _ in request.scope["headers"]):
        return Viewer(await authorize(request, permission, loop), None)
    if "text/html" in request.headers.get("accept", ""):  # a browser: the login form
        return _login_page(401)
    return Viewer(await authorize(request, permission, loop), None)  # a 401 like the API's


def _cross_site(request: Request) -> bool:
    """A form posted from another origin (a browser names it in Origin): refused whatever the
    cookie, so no other site can log a browser in with its own key or act for it."""
    origin = request.headers.get("origin")
    if origin is None:  # not a browser's form post (the CSRF token still guards actions)
        return False
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] != host


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            break
    if len(body) > MAX_FORM_BYTES:
        return {}
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=20)
    return {k: v[0] for k, v in parsed.items()}


def _csrf_ok(viewer: Viewer, form: dict[str, str]) -> bool:
    if viewer.csrf is None:  # the key came in a header: no cookie, nothing to forge
        return True
    return hmac.compare_digest(form.get("csrf", "").encode(), viewer.csrf.encode())


def _back(loop: str, **params: str) -> RedirectResponse:
    query = f"?{urlencode(params)}" if params else ""
    return RedirectResponse(f"/dashboard/loops/{loop}{query}", status_code=303)


# ----------------------------------------------------------------------------- login, logout
@router.get("/dashboard/login")
async def login_form() -> Response:
    return _login_page(200)


@router.post("/dashboard/login")
async def login(request: Request) -> Response:
    """Log in with an API key: a session of that key (its role decides what the pages allow)."""
    if _cross_site(request):
        return _page("forbidden.html", 403, viewer=None, message="cross-site login refused")
    form = await _form(request)
    if "key" not in form:
        return _login_page(422, "enter an API key")
    service = _service(request)
    parts = split_token(form["key"].strip())
    if parts is None:
        return _login_page(401, "that is not an API key of this service (dsk_...)")
    key_id, secret = parts
    entry = await service.keys.get(key_id)
    if (
        entry.principal is None
        or entry.digest is None
        or entry.revoked
        or not hmac.compare_digest(secret_digest(key_id, secret), entry.digest)
    ):
        return _login_page(401, "the key is not valid")
    now = datetime.now(UTC)
    ttl = service.settings.dashboard_session_s
    previous = request.cookies.get(COOKIE)
    if previous:  # never carry a session over a login (fixation): the old one ends
        await run_in_threadpool(end_session, service.engine, previous)
    token, _ = await run_in_threadpool(
        lambda: create_session(service.engine, key_id, now=now, ttl_s=ttl)
    )
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(ttl),
        path="/dashboard",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/dashboard/logout")
async def logout(request: Request) -> Response:
    service = _service(request)
    token = request.cookies.get(COOKIE)
    if token:
        now = datetime.now(UTC)
        session = await run_in_threadpool(lambda: find_session(service.engine, token, now=now))
        if session is not None:
            form = await _form(request)
            if not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
                return _page("forbidden.html", 403, viewer=None, message="bad CSRF token")
            await run_in_threadpool(end_session, service.engine, token)
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


# ------------------------------------------------------------------------------------- pages
def _overview(engine: Engine, principal: Principal, now: datetime) -> list[dict[str, Any]]:
    since = now - WINDOWS["1h"][0]
    out = []
    for stored in list_loops(engine):
        if not principal.sees(stored.name):
            continue
        total = breakdown(engine, stored.name, since=since, until=now + WINDOWS["1h"][0]).get(
            (ALL, ALL)
        )
        live = stored_models(engine, stored.name, statuses=("live",))
        out.append(
            {
                "name": stored.name,
                "total": None if total is None else total.to_json(),
                "live": live[0].version if live else None,
                "firing": len(list_alarms(engine, stored.name, state="firing")),
            }
        )
    return out


@router.get("/dashboard")
async def overview(request: Request) -> Response:
    viewer = await _viewer(request, "read", None)
    if isinstance(viewer, Response):
        return viewer
    engine = _service(request).engine
    loops = await run_in_threadpool(_overview, engine, viewer.principal, datetime.now(UTC))
    return _page("overview.html", viewer=viewer, loops=loops)


def _series(points: list[dict[str, Any]], title: str, key: str, **kw: Any) -> Series:
    low, high = kw.pop("band", (None, None))
    return Series(
        title,
        [
            (
                datetime.fromisoformat(p["bucket"]),
                p[key],
                p[low] if low else None,
                p[high] if high else None,
            )
            for p in points
        ],
        **kw,
    )


def _estimate(label: str, data: Any) -> Estimate | None:
    if not isinstance(data, dict):
        return None
    try:
        return Estimate(label, float(data["value"]), float(data["ci_low"]), float(data["ci_high"]))
    except (KeyError, TypeError, ValueError):
        return None


def _loop_page(engine: Engine, loop: str, window: str, now: datetime) -> dict[str, Any] | None:
    stored = get_loop(engine, loop)
    if stored is None:
        return None
    metrics = loop_metrics(engine, loop, window, now)
    since, until = now - WINDOWS[window][0], now
    points = metrics["points"]
    charts = [
        time_chart(
            _series(
                points,
                "mean reward (95% interval)",
                "mean_reward",
                band=("mean_reward_low", "mean_reward_high"),
            ),
            since,
            until,
        ),
        time_chart(
            _series(
                points,
                "reward rate (95% interval)",
                "reward_rate",
                band=("reward_rate_low", "reward_rate_high"),
            ),
            since,
            until,
        ),
        time_chart(_series(points, "decisions", "decisions", kind="bars"), since, until),
        time_chart(_series(points, "exploration share", "exploration_share"), since, until),
        time_chart(_series(points, "entropy (nats)", "entropy"), since, until),
        time_chart(_series(points, "join lag (mean)", "join_lag_mean_s", unit="s"), since, until),
    ]
    models = stored_models(engine, loop, limit=50, newest_first=True)
    verdicts = latest_verdicts(engine, loop, [m.version for m in models])
    overrides = override_versions(engine, loop)
    verdict_estimates = [
        e
        for m in models
        if m.version in verdicts
        for e in (
            _estimate(
                f"{m.version[:24]} (look {verdicts[m.version].look})",
                verdicts[m.version].numbers.get("difference"),
            ),
        )
        if e is not None
    ]
    evaluations = []
    for ev in list_evaluations(engine, loop, limit=5):
        estimates: list[Estimate] = []
        for p in (ev.result or {}).get("policies", []) if ev.status == "succeeded" else []:
            for estimator, value in (p.get("estimates") or {}).items():
                e = _estimate(f"{p.get('name', '?')} {estimator}", value)
                if e is not None:
                    estimates.append(e)
        evaluations.append(
            {
                "id": ev.id,
                "status": ev.status,
                "created_at": ev.created_at,
                "plot": interval_plot(f"evaluation {ev.id[:8]}", estimates[:12], None)
                if estimates
                else None,
            }
        )
    current = {m.status: m for m in models if m.status in ("live", "canary", "shadow")}
    return {
        "loop_name": loop,  # (`loop` is Jinja's loop variable inside a for)
        "window": window,
        "windows": list(WINDOWS),
        "metrics": metrics,
        "charts": charts,
        "models": [
            {
                "m": m,
                "verdict": verdicts.get(m.version),
                "override": m.version in overrides,
                "movable": m.status in ("candidate", "shadow", "canary"),
            }
            for m in models
        ],
        "verdict_plot": interval_plot(
            "gate verdicts: candidate - live (latest look)", verdict_estimates
        ),
        "evaluations": evaluations,
        "current": current,
        "alarms": list_alarms(engine, loop, limit=50),
        "audit": latest_audit(engine, loop, limit=50),
    }


@router.get("/dashboard/loops/{loop}")
async def loop_page(request: Request, loop: str) -> Response:
    viewer = await _viewer(request, "read", loop)
    if isinstance(viewer, Response):
        return viewer
    window = request.query_params.get("window", "6h")
    if window not in WINDOWS:
        window = "6h"
    engine = _service(request).engine
    data = None
    if LOOP_NAME.fullmatch(loop):
        data = await run_in_threadpool(_loop_page, engine, loop, window, datetime.now(UTC))
    if data is None:
        return _page("forbidden.html", 404, viewer=viewer, message=f"no loop {loop!r}")
    return _page(
        "loop.html",
        viewer=viewer,
        may_gatekeep=viewer.principal.may("gatekeep", loop),
        notice=request.query_params.get("notice"),
        error=request.query_params.get("error"),
        **data,
    )


# ----------------------------------------------------------------------------------- actions
async def _action_form(
    request: Request, loop: str
) -> tuple[Viewer, dict[str, str], str] | Response:
    """The gatekeeper, the form (CSRF checked) and its reason; or the answer to give."""
    viewer = await _viewer(request, "gatekeep", loop)
    if isinstance(viewer, Response):
        return viewer
    form = await _form(request)
    if _cross_site(request) or not _csrf_ok(viewer, form):
        return _page("forbidden.html", 403, viewer=viewer, message="bad CSRF token")
    reason = form.get("reason", "").strip()
    if not reason or len(reason) > MAX_REASON or "\x00" in reason:
        return _page(
            "forbidden.html", 422, viewer=viewer, message="a reason (1-2000 characters) is needed"
        )
    return viewer, form, reason


async def _run(loop: str, fn: Any, done: str) -> Response:
    try:
        await run_in_threadpool(fn)
    except DomainError as err:
        return _back(loop, error=f"{err.code}: {err.message}")
    return _back(loop, notice=done)


@router.post("/dashboard/loops/{loop}/models/{version}/approve")
async def approve(request: Request, loop: str, version: str) -> Response:
    got = await _action_form(request, loop)
    if isinstance(got, Response):
        return got
    viewer, form, reason = got
    to = form.get("to", "live")
    if to not in ("shadow", "canary", "live"):
        return _page("forbidden.html", 422, viewer=viewer, message="to: shadow, canary or live")
    engine = _service(request).engine
    kwargs: dict[str, Any] = {}
    if to == "live":
        kwargs["override"] = form.get("override") == "on"
    elif to == "canary" and form.get("canary_percent"):
        try:
            kwargs["canary_percent"] = float(form["canary_percent"])
        except ValueError:
            return _page("forbidden.html", 422, viewer=viewer, message="canary_percent: a number")
    p = viewer.principal

    def run() -> None:
        found = get_version(engine, version)
        if found is None or found.loop != loop:
            raise NotFound(f"no model version {version!r} in loop {loop!r}", "model_not_found")
        transition(engine, version, to, actor=p.actor, role=p.role, reason=reason, **kwargs)

    return await _run(loop, run, f"{version} -> {to}")


@router.post("/dashboard/loops/{loop}/models/{version}/reject")
async def reject(request: Request, loop: str, version: str) -> Response:
    got = await _action_form(request, loop)
    if isinstance(got, Response):
        return got
    viewer, _, reason = got
    engine = _service(request).engine
    p = viewer.principal

    def run() -> None:
        found = get_version(engine, version)
        if found is None or found.loop != loop:
            raise NotFound(f"no model version {version!r} in loop {loop!r}", "model_not_found")
        transition(engine, version, "rejected", actor=p.actor, role=p.role, reason=reason)

    return await _run(loop, run, f"{version} rejected")


@router.post("/dashboard/loops/{loop}/rollback")
async def roll_back(request: Request, loop: str) -> Response:
    got = await _action_form(request, loop)
    if isinstance(got, Response):
        return got
    viewer, form, reason = got
    engine = _service(request).engine
    p = viewer.principal
    expected = form.get("expected_live") or None

    def run() -> None:
        rollback(engine, loop, actor=p.actor, role=p.role, reason=reason, expected_live=expected)

    return await _run(loop, run, "rolled back")
