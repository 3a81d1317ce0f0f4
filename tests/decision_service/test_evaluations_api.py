"""Offline evaluations over HTTP (a background job in its own process) and from the terminal.

On SQLite and PostgreSQL: POST answers 202 and the job, started as a subprocess, runs to
`succeeded` (polled, with a timeout); the result has its documented shape; the report is a
self-contained HTML page; every refused request answers the house JSON error and writes
nothing; `decision-service evaluate` writes the JSON and the HTML.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, insert, select
from typer.testing import CliRunner

import deploy.registry as registry
from decision_service import Settings, create_app, routes_evaluations
from decision_service.cli_evaluate import evaluate
from decision_service.routes_evaluations import router as evaluations_router
from evaluation.simulator import Simulator, SimulatorConfig
from log.evaluations import create_evaluation, fail_evaluation
from log.joiner import join_loop
from log.loops import LoopConfig, put_loop
from log.models import EvaluationRow
from log.schema import make_engine, migrate
from log.writer import GroupCommitWriter
from tests.conftest import admin_client
from tests.decision_service.test_propensity import asgi_post
from tests.learn.helpers import T0, deadline, sim_events, write

LOOP = "default"
BASE = f"/v1/loops/{LOOP}/evaluations"
SIM = Simulator(SimulatorConfig(seed=3))
N = 400
SPLIT = T0 + timedelta(seconds=N // 2)
JOB_TIMEOUT_S = 90.0


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings)
    if not any(getattr(r, "path", "") == BASE.replace(LOOP, "{loop}") for r in app.routes):
        app.include_router(evaluations_router)  # until app.py includes it
    with admin_client(app) as c:
        yield c


def _engine(client: TestClient) -> Engine:
    engine: Engine = client.app.state.service.engine  # type: ignore[attr-defined]
    return engine


def _populate(client: TestClient, n: int = N, seed: int = 21) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    write(service.writer, sim_events(SIM, n, seed=seed))
    join_loop(service.engine, LOOP, default_reward=0.0, aggregation="earliest", now=deadline(n))


def _rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(EvaluationRow)).scalar_one())


def _wait(client: TestClient, url: str) -> dict[str, Any]:
    give_up = time.monotonic() + JOB_TIMEOUT_S
    progress = [0.0]
    while True:
        r = client.get(url)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        assert progress[-1] <= body["progress"] <= 1.0
        progress.append(body["progress"])
        if body["status"] in ("succeeded", "failed"):
            return body
        assert body["status"] in ("queued", "running")
        assert time.monotonic() < give_up, f"the job did not end in {JOB_TIMEOUT_S} s: {body}"
        time.sleep(0.2)


def test_post_then_poll_then_report(client: TestClient) -> None:
    _populate(client)
    body = {
        "policies": [
            {"kind": "uniform"},
            {"kind": "first_action", "name": "baseline"},
            {"kind": "vw_args", "args": "-q ca", "train_until": SPLIT.isoformat()},
        ],
        "estimators": ["ips", "snips", "dr"],
        "alpha": 0.1,
    }
    r = client.post(BASE, json=body)
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["status"] == "queued" and created["progress"] == 0.0
    assert "result" not in created and created["loop"] == LOOP
    url = f"{BASE}/{created['id']}"
    assert r.headers["location"] == url == created["links"]["self"]
    assert [p["name"] for p in created["request"]["policies"]] == [
        "live",
        "uniform",
        "baseline",
        "vw:-q ca",
    ]

    done = _wait(client, url)
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"] == 1.0 and done["error"] is None
    assert done["started_at"] and done["finished_at"]
    result = done["result"]
    assert result["loop"] == LOOP and result["n_events"] == N and result["alpha"] == 0.1
    assert result["estimators"] == ["ips", "snips", "dr"]
    assert set(result["window"]) == {"since", "until", "first_decided_at", "last_decided_at"}
    policies = {p["name"]: p for p in result["policies"]}
    assert list(policies) == ["live", "uniform", "baseline", "vw:-q ca"]
    for p in policies.values():
        assert set(p["estimates"]) == {"ips", "snips", "dr"}
        for est in p["estimates"].values():
            assert set(est) == {"value", "ci_low", "ci_high", "n", "ess", "method"}
            assert est["ci_low"] <= est["ci_high"]
        assert {"ess", "mean_weight", "max_weight", "target_support"} <= set(p["diagnostics"])
    assert policies["live"]["vs_live"] is None
    assert (
        policies["vw:-q ca"]["n"] == N // 2 and policies["vw:-q ca"]["vs_live"]["dr"]["difference"]
    )
    assert policies["live"]["estimates"]["ips"]["value"] == pytest.approx(
        policies["live"]["estimates"]["snips"]["value"]
    )

    report = client.get(f"{url}/report")
    assert report.status_code == 200
    assert report.headers["content-type"].startswith("text/html")
    assert "<svg" in report.text and "vw:-q ca" in report.text
    assert "<script" not in report.text and 'src="http' not in report.text

    listed = client.get(BASE).json()["evaluations"]
    assert [e["id"] for e in listed] == [created["id"]] and "result" not in listed[0]
    assert client.get(f"{BASE}?limit=1").status_code == 200


def test_a_job_that_fails_is_recorded(client: TestClient) -> None:
    r = client.post(BASE, json={"estimators": ["ips"]})  # no events at all
    assert r.status_code == 202, r.text
    done = _wait(client, r.headers["location"])
    assert done["status"] == "failed" and "0 joined events" in done["error"]
    report = client.get(f"{r.headers['location']}/report")
    assert report.status_code == 409 and report.json()["error"]["code"] == "evaluation_not_ready"


def _cases(tmp: Path, other_version: str) -> list[tuple[str, str, str, Any, int, str]]:
    vw = {"kind": "vw_args", "args": "-q ca"}
    return [
        ("unknown-loop", "POST", "/v1/loops/nope/evaluations", {}, 404, "loop_not_found"),
        ("bad-loop-name", "POST", "/v1/loops/a%20b/evaluations", {}, 404, "loop_not_found"),
        ("list-unknown-loop", "GET", "/v1/loops/nope/evaluations", None, 404, "loop_not_found"),
        (
            "get-unknown-loop",
            "GET",
            f"/v1/loops/nope/evaluations/{'0' * 32}",
            None,
            404,
            "loop_not_found",
        ),
        ("unknown-evaluation", "GET", f"{BASE}/{'0' * 32}", None, 404, "evaluation_not_found"),
        ("odd-evaluation-id", "GET", f"{BASE}/x%00y", None, 404, "evaluation_not_found"),
        ("unknown-report", "GET", f"{BASE}/{'0' * 32}/report", None, 404, "evaluation_not_found"),
        ("bad-limit", "GET", f"{BASE}?limit=0", None, 422, "invalid_request"),
        ("not-json", "POST", BASE, b"{", 400, "invalid_json"),
        ("empty-body", "POST", BASE, b"", 400, "invalid_json"),
        ("nan", "POST", BASE, b'{"alpha": NaN}', 400, "invalid_json"),
        ("not-an-object", "POST", BASE, [1], 422, "invalid_request"),
        ("unknown-field", "POST", BASE, {"bogus": 1}, 422, "invalid_request"),
        ("unknown-kind", "POST", BASE, {"policies": [{"kind": "best"}]}, 422, "invalid_request"),
        ("policy-as-string", "POST", BASE, {"policies": ["uniform"]}, 422, "invalid_request"),
        ("no-policies", "POST", BASE, {"policies": []}, 422, "invalid_request"),
        (
            "model-without-version",
            "POST",
            BASE,
            {"policies": [{"kind": "model"}]},
            422,
            "invalid_request",
        ),
        (
            "vw-without-args",
            "POST",
            BASE,
            {"policies": [{"kind": "vw_args"}]},
            422,
            "invalid_request",
        ),
        ("bad-estimator", "POST", BASE, {"estimators": ["magic"]}, 422, "invalid_request"),
        ("alpha-zero", "POST", BASE, {"alpha": 0}, 422, "invalid_request"),
        ("alpha-bool", "POST", BASE, {"alpha": True}, 422, "invalid_request"),
        ("bad-interval", "POST", BASE, {"interval": "magic"}, 422, "invalid_request"),
        ("bad-slates", "POST", BASE, {"slates": "all"}, 422, "invalid_request"),
        (
            "duplicate-names",
            "POST",
            BASE,
            {"policies": [{"kind": "uniform"}, {"kind": "first_action", "name": "uniform"}]},
            422,
            "duplicate_policy",
        ),
        (
            "nul-in-version",
            "POST",
            BASE,
            {"policies": [{"kind": "model", "version": "v\u0000"}]},
            422,
            "invalid_request",
        ),
        (
            "nul-in-name",
            "POST",
            BASE,
            {"policies": [{"kind": "uniform", "name": "u\u0000"}]},
            422,
            "invalid_request",
        ),
        (
            "unknown-version",
            "POST",
            BASE,
            {"policies": [{"kind": "model", "version": "v0"}]},
            422,
            "unknown_version",
        ),
        (
            "version-of-another-loop",
            "POST",
            BASE,
            {"policies": [{"kind": "model", "version": other_version}]},
            422,
            "unknown_version",
        ),
        (
            "vw-unknown-option",
            "POST",
            BASE,
            {"policies": [{**vw, "args": "--bogus"}]},
            422,
            "invalid_vw_args",
        ),
        (
            "vw-forbidden",
            "POST",
            BASE,
            {"policies": [{**vw, "args": "--epsilon 0.1"}]},
            422,
            "invalid_vw_args",
        ),
        (
            "vw-writes-a-file",
            "POST",
            BASE,
            {"policies": [{**vw, "args": f"--readable_model {tmp}/model.txt"}]},
            422,
            "invalid_vw_args",
        ),
        (
            "vw-attached-file",
            "POST",
            BASE,
            {"policies": [{**vw, "args": f"-f{tmp}/m.vw"}]},
            422,
            "invalid_vw_args",
        ),
        (
            "since-after-until",
            "POST",
            BASE,
            {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
            422,
            "invalid_window",
        ),
        ("naive-since", "POST", BASE, {"since": "2026-01-01T00:00:00"}, 422, "invalid_window"),
        ("unparsable-until", "POST", BASE, {"until": "tomorrow"}, 422, "invalid_window"),
        (
            "train-until-after-until",
            "POST",
            BASE,
            {
                "until": "2026-01-01T00:00:00Z",
                "policies": [{**vw, "train_until": "2026-01-02T00:00:00Z"}],
            },
            422,
            "invalid_window",
        ),
    ]


def test_refused_requests_write_nothing(client: TestClient, tmp_path: Path) -> None:
    engine = _engine(client)
    put_loop(engine, "other", LoopConfig())
    other = registry.register(engine, loop="other", kind="manual", vw_args="", artifact=b"x")
    files = tmp_path / "vw"
    files.mkdir()
    failures = []
    for case_id, method, path, body, status, code in _cases(files, other.version):
        if isinstance(body, bytes):
            r = client.request(method, path, content=body)
        else:
            r = client.request(method, path, json=body)
        got = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        error = got.get("error", {})
        ok = (
            r.status_code == status
            and set(got) == {"error"}
            and set(error) == {"code", "message"}
            and error["code"] == code
            and isinstance(error["message"], str)
            and error["message"]
        )
        if not ok:
            failures.append((case_id, r.status_code, r.text[:300]))
    assert not failures, failures
    assert _rows(engine) == 0
    assert list(files.iterdir()) == []  # no VW option wrote a file

    queued = create_evaluation(engine, LOOP, {"policies": []})
    r = client.get(f"{BASE}/{queued.id}/report")
    assert r.status_code == 409 and r.json()["error"]["code"] == "evaluation_not_ready"
    assert client.get(f"/v1/loops/other/evaluations/{queued.id}").status_code == 404


# ---------------------------------------------------------------- the command line


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(db_url)
    migrate(engine)
    put_loop(engine, LOOP, LoopConfig())
    writer = GroupCommitWriter(engine, tmp_path / "spool", delay_s=0.0, max_group=100_000)
    writer.start()
    try:
        write(writer, sim_events(SIM, N, seed=22))
    finally:
        writer.stop()
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=deadline(N))
    yield engine
    engine.dispose()


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("evaluate")(evaluate)
    app.command("noop", hidden=True)(lambda: None)  # keeps `evaluate` a subcommand
    return app


def test_cli_writes_json_and_html(store: Engine, db_url: str, tmp_path: Path) -> None:
    out_json, out_html = tmp_path / "out.json", tmp_path / "out.html"
    args = [
        "evaluate",
        "--database-url",
        db_url,
        "--loop",
        LOOP,
        "--policy",
        "uniform",
        "--policy",
        "first_action",
        "--vw-args=-q ca",
        "--train-until",
        SPLIT.isoformat(),
        "--estimator",
        "ips",
        "--estimator",
        "dr",
        "--json",
        str(out_json),
        "--html",
        str(out_html),
        "--record",
    ]
    r = CliRunner().invoke(_cli(), args)
    assert r.exit_code == 0, (r.output, r.stderr)
    assert "vw:-q ca" in r.stdout and "first_action" in r.stdout
    result = orjson.loads(out_json.read_bytes())
    assert [p["name"] for p in result["policies"]] == [
        "live",
        "uniform",
        "first_action",
        "vw:-q ca",
    ]
    assert result["estimators"] == ["ips", "dr"] and result["n_events"] == N
    page = out_html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    assert _rows(store) == 1  # --record

    missing = CliRunner().invoke(_cli(), ["evaluate", "--database-url", db_url, "--loop", "x"])
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    bad = CliRunner().invoke(
        _cli(), ["evaluate", "--database-url", db_url, "--loop", LOOP, "--policy", "best"]
    )
    assert bad.exit_code == 2 and "--policy" in bad.stderr
    window = CliRunner().invoke(
        _cli(),
        ["evaluate", "--database-url", db_url, "--loop", LOOP, "--since", "2026-01-01T00:00:00"],
    )
    assert window.exit_code == 2 and "timezone" in window.stderr
    assert _rows(store) == 1


# ---------------------------------------------------------------- at most N per loop
@pytest.fixture
def no_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accepted runs stay queued: no job process starts."""
    monkeypatch.setattr(routes_evaluations, "spawn_job", lambda *_a, **_k: True)


def test_at_most_n_evaluations_per_loop(client: TestClient, no_jobs: None) -> None:
    engine = _engine(client)
    limit = client.app.state.service.settings.max_evaluations_per_loop  # type: ignore[attr-defined]
    assert limit == 2
    first = [client.post(BASE, json={}) for _ in range(limit)]
    assert [r.status_code for r in first] == [202] * limit
    refused = client.post(BASE, json={})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "too_many_evaluations"
    assert int(refused.headers["retry-after"]) > 0
    assert _rows(engine) == limit  # the refused run wrote nothing
    # another loop has its own allowance
    put_loop(engine, "other", LoopConfig())
    assert client.post("/v1/loops/other/evaluations", json={}).status_code == 202
    # once one of the loop's runs ends, a new one is accepted
    assert fail_evaluation(engine, first[0].json()["id"], "stopped", include_queued=True)
    assert client.post(BASE, json={}).status_code == 202
    assert client.post(BASE, json={}).status_code == 429


def test_stale_runs_do_not_block_a_loop(client: TestClient, no_jobs: None) -> None:
    """A run left `running` by a worker that died with its job stops counting once it is older
    than DS_EVALUATION_TIMEOUT_S."""
    engine = _engine(client)
    old = datetime.now(UTC) - timedelta(hours=7)
    with engine.begin() as conn:
        for i in range(2):
            conn.execute(
                insert(EvaluationRow).values(
                    id=f"{i:032x}", loop=LOOP, status="running", request={}, progress=0.5,
                    created_at=old, started_at=old,
                )
            )  # fmt: skip
    assert client.post(BASE, json={}).status_code == 202


def test_concurrent_posts_never_exceed_the_limit(client: TestClient, no_jobs: None) -> None:
    """16 POSTs at once (their inserts race in the thread pool): exactly the limit is accepted,
    on SQLite and PostgreSQL."""
    app = client.app

    async def post_all() -> list[int]:
        async def one() -> int:
            status, _ = await asgi_post(app, BASE, b"{}")
            return status

        return list(await asyncio.gather(*(one() for _ in range(16))))

    assert client.portal is not None
    statuses = client.portal.call(post_all)
    assert sorted(statuses) == [202, 202] + [429] * 14, statuses
    assert _rows(_engine(client)) == 2


def test_a_job_past_its_timeout_is_stopped_and_failed(client: TestClient) -> None:
    engine = _engine(client)
    record = create_evaluation(engine, LOOP, {"policies": []})
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    t0 = time.monotonic()
    routes_evaluations._watch(engine, proc, record.id, 0.5)
    assert time.monotonic() - t0 < 10
    assert proc.returncode is not None and proc.returncode < 0  # killed
    failed = client.get(f"{BASE}/{record.id}").json()
    assert failed["status"] == "failed"
    assert "DS_EVALUATION_TIMEOUT_S" in failed["error"]
