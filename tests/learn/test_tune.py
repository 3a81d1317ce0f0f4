"""Optimization discovery: a grid of VW arguments x exploration settings evaluated off-policy on
the loop's own logs (earlier part trains, later part evaluates), ranked with intervals; the CLI
records the run and can submit the best as a candidate; the route queues the same job."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from typer.testing import CliRunner

import deploy.registry as registry
from decision_service import routes_evaluations
from decision_service.cli import app as cli_app
from decision_service.cli_tune import submit_candidate
from evaluation.simulator import Simulator, SimulatorConfig
from learn.offline_eval import run_evaluation
from learn.offline_eval_job import run_job
from learn.offline_eval_spec import PolicySpec, SpecError
from learn.tune import MAX_COMBINATIONS, best, ranking, tune_spec
from log.evaluations import get_evaluation
from log.joiner import join_loop
from log.loops import LoopConfig, get_loop, put_loop
from log.writer import GroupCommitWriter
from tests.learn.conftest import LOOP
from tests.learn.helpers import deadline, sim_events, write

SIM = Simulator(SimulatorConfig(seed=3))
N = 2000
UNIFORM = {"exploration": "epsilon_greedy", "epsilon": 1.0}
SHARP = {"exploration": "squarecb", "exploration_options": {"squarecb_gamma0": 200.0}}


def _logs(engine: Engine, writer: GroupCommitWriter, n: int = N) -> None:
    write(writer, sim_events(SIM, n, seed=21))
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=deadline(n))


def test_grid_is_evaluated_and_ranked(engine: Engine, writer: GroupCommitWriter) -> None:
    _logs(engine, writer)
    spec = tune_spec(["-q ca"], [UNIFORM, SHARP], estimators=("ips", "dr"))
    assert [p.name for p in spec.policies] == ["live", "tune0", "tune1"]
    assert len(tune_spec(["-q ca", "-l 0.1"], [None, UNIFORM]).policies) == 5
    result = run_evaluation(engine, LOOP, spec, registry=registry)
    by_name = {p["name"]: p for p in result["policies"]}
    for name in ("tune0", "tune1"):
        assert by_name[name]["training"]["n_events"] == N // 2
        assert by_name[name]["n"] == N // 2
    assert by_name["tune1"]["exploration"]["exploration_options"]["squarecb_gamma0"] == 200.0
    ranked = ranking(result, "dr")
    assert len(ranked) == 2
    assert [t.ci_low for t in ranked] == sorted((t.ci_low for t in ranked), reverse=True)
    # a uniform exploration is worth what uniform logging got; the learned sharp one more
    live = by_name["live"]["estimates"]["dr"]["value"]
    uniform = by_name["tune0"]["estimates"]["dr"]["value"]
    sharp = by_name["tune1"]["estimates"]["dr"]["value"]
    assert abs(uniform - live) < 0.02
    assert sharp > uniform + 0.02
    winner = best(result, "dr")
    assert winner is not None and winner.exploration is not None
    assert winner.exploration["exploration"] == "squarecb" and winner.diff_low is not None
    assert winner.diff_low > 0


def test_grid_bounds_and_bad_explorations() -> None:
    with pytest.raises(SpecError, match="combinations"):
        tune_spec([f"-l {i / 100}" for i in range(1, 9)], [None, UNIFORM, SHARP, None])
    assert MAX_COMBINATIONS == 31
    with pytest.raises(SpecError, match="floor"):
        PolicySpec("vw_args", args="-q ca", exploration={"exploration_options": {"floor": 2}})
    with pytest.raises(SpecError, match="unknown"):
        PolicySpec("vw_args", args="-q ca", exploration={"vw_args": "-q ca"})
    with pytest.raises(SpecError, match="model"):
        PolicySpec("uniform", exploration=UNIFORM)
    spec = tune_spec([], [])  # the built-in VW argument sets, the loop's exploration
    assert len(spec.policies) == 4 and all(p.exploration is None for p in spec.policies[1:])


def test_cli_records_the_run_and_submits_the_best(
    engine: Engine, writer: GroupCommitWriter, db_url: str, tmp_path: Path
) -> None:
    _logs(engine, writer, 600)
    html = tmp_path / "tune.html"
    args = ["tune", "--loop", LOOP, "--database-url", db_url, "--no-progress"]
    args += ["--vw-args", "-q ca --cb_type mtr", "--exploration", "loop", "--exploration"]
    args += ['{"exploration": "squarecb", "exploration_options": {"squarecb_gamma0": 200}}']
    out = CliRunner().invoke(cli_app, [*args, "--html", str(html), "--submit"])
    assert out.exit_code == 0, out.output
    assert "tune0" in out.output and "tune1" in out.output
    assert html.read_text().startswith("<!DOCTYPE html>")
    stored = get_loop(engine, LOOP)
    assert stored is not None
    if "added" in out.output:  # the best was significantly better than live
        assert stored.config.learner.candidates == ("-q ca --cb_type mtr",)
    else:
        assert "nothing submitted" in out.output
    # submitting twice does not duplicate; a full list is refused
    assert "already" in submit_candidate(engine, LOOP, "-q ca --cb_type mtr") or (
        stored.config.learner.candidates == ()
    )
    config = get_loop(engine, LOOP)
    assert config is not None

    full = tuple(f"-q ca -l {i / 10}" for i in range(1, 9))
    put_loop(
        engine,
        LOOP,
        replace(config.config, learner=replace(config.config.learner, candidates=full)),
    )
    with pytest.raises(ValueError, match="already has 8"):
        submit_candidate(engine, LOOP, "-q ca --cb_type dr")


def test_route_queues_the_grid(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes_evaluations, "spawn_job", lambda *_a, **_k: True)
    service = client.app.state.service  # type: ignore[attr-defined]
    put_loop(service.engine, "t", LoopConfig())
    assert client.post("/v1/loops/nope/tune", json={}).status_code == 404
    bad = client.post("/v1/loops/t/tune", json={"explorations": [{"epsilon": 3}]})
    assert bad.status_code == 422 and "epsilon" in bad.json()["error"]["message"]
    bad = client.post("/v1/loops/t/tune", json={"vw_args": ["--daemon"]})
    assert bad.status_code == 422
    # each combination is checked with its exploration: VW's cover refuses --cb_type dm
    cover = {"vw_args": ["-q ca --cb_type dm"], "explorations": [{"exploration": "cover"}]}
    bad = client.post("/v1/loops/t/tune", json=cover)
    assert bad.status_code == 422 and "--cb_type" in bad.json()["error"]["message"]
    resp = client.post(
        "/v1/loops/t/tune", json={"vw_args": ["-q ca"], "explorations": [None, UNIFORM]}
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["status"] == "queued" and resp.headers["Location"] == body["links"]["self"]
    names = [p["name"] for p in body["request"]["policies"]]
    assert names == ["live", "tune0", "tune1"]
    # the queued job is the evaluation runner's (run here in-process: no logs, so it fails)
    ended = run_job(service.engine, body["id"], registry=registry)
    assert ended.status == "failed" and "joined events" in (ended.error or "")
    assert get_evaluation(service.engine, body["id"]) is not None
