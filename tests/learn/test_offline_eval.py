"""Offline evaluation on joined logs: on-policy identity, accuracy against the simulator's
ground truth, the time split of candidates, slates, the job lifecycle and invalid inputs."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

import deploy.registry as registry
from evaluation.simulator import Simulator, SimulatorConfig
from learn import learn_once
from learn.examples import BadEvent, TrainingEvent
from learn.offline_eval import EvaluationError, resolve_spec, run_evaluation
from learn.offline_eval_job import run_job
from learn.offline_eval_spec import EvaluationSpec, PolicySpec, SpecError, check_eval_vw_args
from learn.offline_eval_targets import Target, eval_event
from learn.report import render_html, summary_table
from log.evaluations import create_evaluation, get_evaluation, list_evaluations
from log.joiner import join_loop
from log.loops import LoopConfig, put_loop
from log.models import OutcomeRow
from log.writer import GroupCommitWriter
from tests.learn.conftest import LOOP, VW_ARGS
from tests.learn.helpers import T0, deadline, joined_event, sim_events, write

SIM = Simulator(SimulatorConfig(seed=3))
N_TRAIN = 1500
N_EVAL = 1500
SPLIT = T0 + timedelta(seconds=N_TRAIN)  # events 0..N_TRAIN-1 are decided before it


def _join(engine: Engine, n: int) -> None:
    join_loop(engine, LOOP, default_reward=0.0, aggregation="earliest", now=deadline(n))


def _first_action(features: Any, items: Any) -> np.ndarray:
    out = np.zeros(len(items))
    out[0] = 1.0
    return out


def _by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in result["policies"]}


def _close_to(estimate: dict[str, Any], truth: float) -> bool:
    """Within 3 standard errors (from the 95% interval) plus a little slack."""
    se = (estimate["ci_high"] - estimate["ci_low"]) / 3.92
    return abs(estimate["value"] - truth) <= 3 * se + 0.005


def test_evaluation_of_baselines_models_and_vw_args(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    n = N_TRAIN + N_EVAL
    write(writer, sim_events(SIM, n, seed=11))
    _join(engine, n)
    learned = learn_once(engine, LOOP, registry=registry, mode="batch", until=SPLIT, progress=False)
    assert learned.version is not None
    version = learned.version.version
    trained_until = T0 + timedelta(seconds=N_TRAIN - 1)
    assert registry.get_version(engine, version).trained_until == trained_until  # type: ignore[union-attr]

    spec = EvaluationSpec(
        policies=(
            PolicySpec("uniform"),
            PolicySpec("first_action"),
            PolicySpec("model", version=version),
            PolicySpec("model", name="greedy", version=version, explore=False),
            PolicySpec("vw_args", args="-q ca", train_until=SPLIT),
        ),
        estimators=("ips", "snips", "dr"),
    )
    seen: list[tuple[int, int]] = []
    result = run_evaluation(
        engine, LOOP, spec, registry=registry, on_progress=lambda d, t, _: seen.append((d, t))
    )
    p = _by_name(result)
    assert list(p) == ["live", "uniform", "first_action", f"model:{version}", "greedy", "vw:-q ca"]
    assert result["n_events"] == n and result["skipped"] == {"slates": 0, "bad": 0}
    assert seen and seen[-1][0] == seen[-1][1] and all(d <= t for d, t in seen)

    # on-policy: every importance weight is 1, IPS and SNIPS are the mean logged reward
    with engine.connect() as conn:
        total = conn.execute(select(func.sum(OutcomeRow.reward))).scalar_one()
    live = p["live"]
    assert live["n"] == n and live["vs_live"] is None and live["time_split"] == "none"
    assert math.isclose(live["estimates"]["ips"]["value"], total / n, rel_tol=1e-12)
    assert math.isclose(live["estimates"]["snips"]["value"], total / n, rel_tol=1e-12)
    diag = live["diagnostics"]
    assert (diag["mean_weight"], diag["max_weight"], diag["ess"]) == (1.0, 1.0, n)
    # uniform logging: the uniform target is the live policy, its difference is exactly 0
    assert p["uniform"]["estimates"]["ips"] == live["estimates"]["ips"]
    assert p["uniform"]["vs_live"]["ips"]["difference"]["value"] == 0.0

    # baselines against the simulator's ground truth
    truth_uniform = SIM.uniform_value()
    truth_first = SIM.policy_value(_first_action)
    for name in ("ips", "snips", "dr"):
        assert _close_to(p["uniform"]["estimates"][name], truth_uniform), name
        assert _close_to(p["first_action"]["estimates"][name], truth_first), name
    first_diag = p["first_action"]["diagnostics"]
    assert abs(first_diag["mean_weight"] - 1.0) < 0.15 and first_diag["max_weight"] == 10.0
    assert first_diag["target_support"] < 0.2 and first_diag["unsupported_mass"] == 0.0

    # the registered version: only events decided after its trained_until
    for name in (f"model:{version}", "greedy"):
        assert p[name]["n"] == N_EVAL
        assert p[name]["eval_from"] == trained_until.isoformat()
        assert p[name]["time_split"] == "after_trained_until"
    # VW arguments trained on the earlier window, evaluated on the later one, beat uniform
    vw = p["vw:-q ca"]
    assert vw["n"] == N_EVAL and vw["training"]["n_events"] == N_TRAIN
    assert vw["training"]["until"] == SPLIT.isoformat() and vw["eval_from"] == SPLIT.isoformat()
    for name in ("ips", "dr"):
        assert vw["vs_live"][name]["difference"]["ci_low"] > 0.0, vw["vs_live"][name]
        assert vw["vs_live"][name]["live"]["n"] == N_EVAL
    assert p["greedy"]["estimates"]["dr"]["value"] > p["uniform"]["estimates"]["dr"]["value"]
    assert (
        p[f"model:{version}"]["diagnostics"]["max_weight"]
        < p["greedy"]["diagnostics"]["max_weight"]
    )

    page = render_html(result)
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 2
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "vw:-q ca" in summary_table(result)


def test_default_split_and_window(engine: Engine, writer: GroupCommitWriter) -> None:
    """Without train_until nor since, the VW candidate trains on the earlier half of the
    window's joined events; `since`/`until` bound everything."""
    write(writer, sim_events(SIM, 300, seed=12))
    _join(engine, 300)
    spec = EvaluationSpec(policies=(PolicySpec("vw_args", args="-q ca"),), estimators=("ips",))
    result = run_evaluation(engine, LOOP, spec, registry=registry)
    vw = _by_name(result)["vw:-q ca"]
    assert (vw["n"], vw["training"]["n_events"]) == (150, 150)
    assert result["reward_model"] is None

    since, until = T0 + timedelta(seconds=100), T0 + timedelta(seconds=250)
    spec = EvaluationSpec(policies=(PolicySpec("vw_args", args="-q ca"),), since=since, until=until)
    result = run_evaluation(engine, LOOP, spec, registry=registry)
    vw = _by_name(result)["vw:-q ca"]
    assert result["n_events"] == 150 and vw["n"] == 150 and vw["training"]["n_events"] == 100
    assert result["window"]["first_decided_at"] == since.isoformat()
    assert result["reward_model"]["n_folds"] == 2

    # a candidate trained past the window has nothing to be evaluated on: reported, not fatal
    late = T0 + timedelta(days=1)
    spec = EvaluationSpec(policies=(PolicySpec("vw_args", args="-q ca", train_until=late),))
    result = run_evaluation(engine, LOOP, spec, registry=registry)
    vw = _by_name(result)["vw:-q ca"]
    assert vw["n"] == 0 and "2 needed" in vw["error"] and vw["estimates"] == {}
    assert _by_name(result)["live"]["error"] is None
    assert "2 needed" in render_html(result) and "vw:-q ca" in summary_table(result)


def test_slates_are_skipped_or_evaluated_on_slot_0(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    write(writer, sim_events(SIM, 100, seed=13, n_excluded=3))
    write(writer, sim_events(SIM, 40, seed=14, n_slots=2, prefix="s"))
    _join(engine, 100)
    skipped = run_evaluation(engine, LOOP, EvaluationSpec(), registry=registry)
    assert skipped["n_events"] == 100 and skipped["skipped"]["slates"] == 40
    assert _by_name(skipped)["uniform"]["diagnostics"]["unsupported_mass"] == 0.0
    slot0 = run_evaluation(engine, LOOP, EvaluationSpec(slates="slot0"), registry=registry)
    assert slot0["n_events"] == 140 and slot0["skipped"]["slates"] == 0


def test_the_job_lifecycle(engine: Engine, writer: GroupCommitWriter) -> None:
    write(writer, sim_events(SIM, 60, seed=15))
    _join(engine, 60)
    queued = create_evaluation(engine, LOOP, EvaluationSpec().to_json())
    assert (queued.status, queued.progress, queued.started_at) == ("queued", 0.0, None)
    done = run_job(engine, queued.id, registry=registry)
    assert done.status == "succeeded" and done.progress == 1.0 and done.error is None
    assert done.result is not None and done.result["n_events"] == 60
    assert done.started_at is not None and done.finished_at is not None
    with pytest.raises(LookupError, match="not queued"):
        run_job(engine, queued.id, registry=registry)

    empty = EvaluationSpec(since=T0 - timedelta(days=2), until=T0 - timedelta(days=1))
    failed = run_job(engine, create_evaluation(engine, LOOP, empty.to_json()).id, registry=registry)
    assert failed.status == "failed" and failed.result is None
    assert failed.error is not None and "0 joined events" in failed.error
    assert [r.id for r in list_evaluations(engine, LOOP)] == [failed.id, done.id]
    assert get_evaluation(engine, done.id, loop="other") is None


def test_store_checks(engine: Engine, writer: GroupCommitWriter) -> None:
    write(writer, sim_events(SIM, 20, seed=16))
    _join(engine, 20)
    put_loop(engine, "other", LoopConfig())
    other = registry.register(engine, loop="other", kind="manual", vw_args="", artifact=b"x")
    cases: list[tuple[str, EvaluationSpec, type[Exception], str]] = [
        ("missing", EvaluationSpec(), LookupError, "does not exist"),
        (LOOP, EvaluationSpec((PolicySpec("model", version="nope"),)), SpecError, "nope"),
        (LOOP, EvaluationSpec((PolicySpec("model", version=other.version),)), SpecError, "in loop"),
        (LOOP, EvaluationSpec((PolicySpec("vw_args", args="--bogus"),)), SpecError, "may not set"),
    ]
    # VW arguments are checked with the target's exploration: VW's cover refuses --cb_type dm
    put_loop(engine, "cov", LoopConfig(exploration="cover", vw_args="-q ca --cb_type mtr"))
    dm = PolicySpec("vw_args", name="dm", args="-q ca --cb_type dm")
    as_cover = PolicySpec("vw_args", args=dm.args, exploration={"exploration": "cover"})
    cases += [
        ("cov", EvaluationSpec((dm,)), SpecError, r"policy 'dm': .*--cb_type dr, ips or mtr"),
        (LOOP, EvaluationSpec((as_cover,)), SpecError, "refuses --cb_type dm"),
    ]
    resolved = resolve_spec(engine, LOOP, EvaluationSpec((dm,)), registry=registry)
    assert dm in resolved.policies  # the loop's own exploration (squarecb) accepts dm
    for loop, spec, error, match in cases:
        with pytest.raises(error, match=match):
            resolve_spec(engine, loop, spec, registry=registry)
        with pytest.raises(error, match=match):
            run_evaluation(engine, loop, spec, registry=registry)
    with pytest.raises(EvaluationError, match="0 joined events"):
        run_evaluation(engine, "other", EvaluationSpec(), registry=registry)


# ---------------------------------------------------------------- without a database

WHEN = "2026-01-01T00:00:00+00:00"
LATER = "2026-01-02T00:00:00+00:00"


@pytest.mark.parametrize(
    ("body", "code", "match"),
    [
        ({"policies": []}, "invalid_request", "policies must hold"),
        ({"policies": [{"kind": "best"}]}, "invalid_request", "kind must be one of"),
        ({"policies": [{"name": "x"}]}, "invalid_request", "needs a kind"),
        ({"policies": [{"kind": "model"}]}, "invalid_request", "version must be"),
        ({"policies": [{"kind": "vw_args"}]}, "invalid_request", "args must be"),
        ({"policies": [{"kind": "uniform", "version": "v"}]}, "invalid_request", "version applies"),
        ({"policies": [{"kind": "live", "args": "-q ca"}]}, "invalid_request", "args applies"),
        ({"policies": [{"kind": "uniform", "explore": False}]}, "invalid_request", "explore"),
        ({"policies": [{"kind": "uniform", "train_until": WHEN}]}, "invalid_request", "apply to"),
        ({"policies": [{"kind": "uniform", "bogus": 1}]}, "invalid_request", "unknown policy"),
        ({"policies": ["uniform", "uniform"]}, "duplicate_policy", "unique"),
        ({"policies": ["live", {"kind": "live", "name": "x"}]}, "duplicate_policy", "once"),
        ({"estimators": ["ips", "magic"]}, "invalid_request", "estimators must be"),
        ({"estimators": []}, "invalid_request", "estimators must be"),
        ({"estimators": ["ips", "ips"]}, "invalid_request", "estimators must be"),
        ({"alpha": 0}, "invalid_request", "alpha"),
        ({"alpha": True}, "invalid_request", "alpha"),
        ({"interval": "magic"}, "invalid_request", "interval"),
        ({"slates": "all"}, "invalid_request", "slates"),
        ({"seed": -1}, "invalid_request", "seed"),
        ({"bogus": 1}, "invalid_request", "unknown fields"),
        ({"since": LATER, "until": WHEN}, "invalid_window", "since must be before until"),
        ({"since": WHEN, "until": WHEN}, "invalid_window", "since must be before until"),
        ({"since": "2026-01-01T00:00:00"}, "invalid_window", "timezone"),
        ({"until": "yesterday"}, "invalid_window", "ISO 8601"),
        (
            {
                "policies": [
                    {"kind": "vw_args", "args": "-q ca", "train_since": LATER, "train_until": WHEN}
                ]
            },
            "invalid_window",
            "train_since must be before train_until",
        ),
        (
            {
                "until": WHEN,
                "policies": [{"kind": "vw_args", "args": "-q ca", "train_until": LATER}],
            },
            "invalid_window",
            "must be before until",
        ),
    ],
)
def test_invalid_specs(body: dict[str, Any], code: str, match: str) -> None:
    with pytest.raises(SpecError, match=match) as err:
        EvaluationSpec.from_json(body)
    assert err.value.code == code


def test_spec_round_trip_and_defaults() -> None:
    spec = EvaluationSpec.from_json(
        {
            "policies": ["uniform", {"kind": "vw_args", "args": "-q ca", "train_until": WHEN}],
            "since": "2025-12-31T00:00:00Z",
        }
    )
    assert [p.name for p in spec.policies] == ["live", "uniform", "vw:-q ca"]
    assert spec.estimators == ("ips", "snips", "dr") and spec.needs_q
    assert spec.since == datetime(2025, 12, 31, tzinfo=UTC)
    assert EvaluationSpec.from_json(spec.to_json()) == spec
    assert [p.kind for p in EvaluationSpec().policies] == ["live", "uniform", "first_action"]


@pytest.mark.parametrize(
    ("args", "made"),
    [
        ("--readable_model {tmp}/readable.txt", "readable.txt"),
        ("--invert_hash {tmp}/inverted.txt", "inverted.txt"),
        ("-r {tmp}/raw.txt", "raw.txt"),
        ("-f{tmp}/model.vw", "model.vw"),
        ("-p{tmp}/preds.txt", "preds.txt"),
        ("-f {tmp}/model.vw", "model.vw"),
        ("--epsilon 0.1", None),
        ("--cb_type bogus", None),
        ('-q "ca', None),
    ],
)
def test_vw_args_that_touch_files_or_vw_refuses(
    args: str, made: str | None, tmp_path: Path
) -> None:
    with pytest.raises(SpecError) as err:
        check_eval_vw_args(args.format(tmp=tmp_path))
    assert err.value.code == "invalid_vw_args"
    assert list(tmp_path.iterdir()) == []
    assert check_eval_vw_args("-q ca  --cb_type mtr") == "-q ca --cb_type mtr"


def _event(**changes: Any) -> TrainingEvent:
    fields: dict[str, Any] = {
        "event_id": "e1",
        "decided_at": T0,
        "joined_at": T0,
        "context": {"u": 1.0},
        "actions": [{"id": k, "features": {"x": i}} for i, k in enumerate("abcd")],
        "pmf": [0.0, 0.5, 0.25, 0.25],
        "excluded": ["a"],
        "chosen": "c",
        "slots": [{"slot": 0, "action_id": "c", "probability": 0.25}],
        "is_slate": False,
        "rewards": {0: 1.0},
    }
    fields.update(changes)
    return joined_event(**fields)


def test_events_and_baseline_targets() -> None:
    ev = eval_event(_event())
    assert ev is not None
    assert [a["id"] for a in ev.candidates] == ["b", "c", "d"]
    assert (ev.action, ev.pscore, ev.reward) == (1, 0.25, 1.0)
    actions = ev.actions()
    assert Target("live").pmf(ev, actions).tolist() == [0.5, 0.25, 0.25]
    assert Target("uniform").pmf(ev, actions).tolist() == pytest.approx([1 / 3] * 3)
    assert Target("first_action").pmf(ev, actions).tolist() == [1.0, 0.0, 0.0]
    cut = Target("uniform", cutoff=T0)
    assert not cut.covers(T0) and cut.covers(T0 + timedelta(seconds=1))
    assert Target("uniform", cutoff=T0, inclusive=True).covers(T0)
    assert eval_event(_event(is_slate=True)) is None
    assert eval_event(_event(is_slate=True), "slot0") is not None
    bad: list[tuple[dict[str, Any], str]] = [
        ({"rewards": {}}, "no joined reward"),
        ({"chosen": "a"}, "not a candidate"),
        ({"pmf": [0.0, 0.5, 0.5]}, "differ in length"),
        ({"pmf": [0.0, 0.5, 0.0, 0.25]}, "not a distribution"),
        ({"pmf": [0.0, 0.75, 0.0, 0.25]}, "probability must be in"),
        ({"rewards": {0: float("nan")}}, "finite"),
    ]
    for changes, match in bad:
        with pytest.raises(BadEvent, match=match):
            eval_event(_event(**changes))
    with pytest.raises(ValueError, match="needs a policy"):
        Target("model")


def test_an_online_version_is_never_scored_on_its_ancestors_training_data(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    """Issue 7, defect 8: an online version's window covers its lineage, so the evaluation's
    time split leaves out every event any ancestor learned, and says how many it left out."""
    write(writer, sim_events(SIM, 300, seed=31))
    _join(engine, 299)
    v1 = learn_once(engine, LOOP, registry=registry, promote=True, progress=False).version
    assert v1 is not None
    # late events (decided a day earlier) joined after v1's checkpoint: v2 learns only them
    day = timedelta(days=1)
    write(writer, sim_events(SIM, 20, seed=32, prefix="late", start=T0 - day))
    _join(engine, 299)
    v2 = learn_once(engine, LOOP, registry=registry, progress=False).version
    assert v2 is not None and v2.n_events == 20 and v2.parent == v1.version
    assert (v2.trained_from, v2.trained_until) == (T0 - day, T0 + timedelta(seconds=299))
    # new events, learned by no version
    write(writer, sim_events(SIM, 300, seed=33, prefix="new", start=T0 + timedelta(seconds=300)))
    _join(engine, 600)
    manual = registry.register(
        engine,
        loop=LOOP,
        kind="manual",
        vw_args=VW_ARGS,
        artifact=registry.load_artifact(engine, v2.version),
    )

    spec = EvaluationSpec(
        policies=(
            PolicySpec("model", name="v2", version=v2.version),
            PolicySpec("model", name="manual", version=manual.version),
        ),
        estimators=("ips",),
    )
    result = run_evaluation(engine, LOOP, spec, registry=registry)
    p = _by_name(result)
    assert p["live"]["n"] == 620
    assert p["v2"]["n"] == 300 and p["v2"]["eval_from"] == v2.trained_until.isoformat()
    assert p["v2"]["trained_on_in_window"] == 320
    assert "overlaps the training data: 320 events" in p["v2"]["warnings"][0]
    assert p["v2"]["training"]["trained_from"] == (T0 - day).isoformat()
    # no recorded training window: scored on everything, with a warning
    assert p["manual"]["n"] == 620 and p["manual"]["time_split"] == "unknown"
    assert "no recorded training window" in p["manual"]["warnings"][0]
    page = render_html(result)
    assert "overlaps the training data: 320 events" in page

    # a window entirely inside the lineage's training data: refused for that policy
    inside = EvaluationSpec(
        policies=(PolicySpec("model", name="v2", version=v2.version),),
        estimators=("ips",),
        until=T0 + timedelta(seconds=200),
    )
    p = _by_name(run_evaluation(engine, LOOP, inside, registry=registry))
    assert p["v2"]["n"] == 0 and p["v2"]["estimates"] == {}
    assert "later than its training data" in p["v2"]["error"]
