"""Guardrail rates in the offline evaluation: per target, the IPS rate of events with at least
one signal of a metric, live's on the same events, and their paired difference.

The simulated log: 3 candidates, logged by a known non-uniform policy; the first candidate draws
"report" signals far more often than the others, so the first_action target has a known higher
report rate than the logging policy. Late signals (after the window) would raise every rate to
over half if they were counted.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

import deploy.registry as registry
from learn.offline_eval import run_evaluation
from learn.offline_eval_estimate import Accumulator, policy_result
from learn.offline_eval_spec import EvaluationSpec, PolicySpec, SpecError
from learn.offline_eval_targets import EvalEvent
from learn.report import render_html
from log.joiner import join_loop
from log.ops import Op
from log.records import DecisionRecord, RewardRecord
from log.writer import GroupCommitWriter
from tests.learn.conftest import LOOP
from tests.learn.helpers import T0, WAIT_S, write

REPORT_RATE = np.array([0.30, 0.05, 0.10])  # P(>= 1 report | the action served)
LOGGING = (np.array([0.1, 0.6, 0.3]), np.array([0.2, 0.2, 0.6]))  # alternating by event
N = 4000
INTERVALS = ("bootstrap", "normal", "bernstein", "cs")


def true_rates() -> dict[str, float]:
    live = float(np.mean([p @ REPORT_RATE for p in LOGGING]))
    return {
        "live": live,
        "first_action": float(REPORT_RATE[0]),
        "uniform": float(REPORT_RATE.mean()),
    }


def rec(
    event_id: str, decided_at: datetime, suffix: str, at_s: float, metric: str, value: float = 1.0
) -> RewardRecord:
    """A reward (metric "") or guardrail signal received `at_s` seconds after the decision."""
    return RewardRecord(
        f"{event_id}-{suffix}",
        LOOP,
        event_id,
        0,
        value,
        decided_at + timedelta(seconds=at_s),
        at_s > WAIT_S,
        metric,
    )


def guarded_log(n: int, seed: int) -> tuple[list[Op], int]:
    """The log's records and how many events got >= 1 report inside their window."""
    rng = np.random.default_rng(seed)
    ops: list[Op] = []
    reported = 0
    for i in range(n):
        pmf = LOGGING[i % 2]
        chosen = int(rng.choice(3, p=pmf))
        p_chosen = float(pmf[chosen])
        decided_at = T0 + timedelta(seconds=i)
        event_id = f"g{i:06d}"
        actions = [{"id": f"a{j}", "features": {"j": j}} for j in range(3)]
        ops.append(
            DecisionRecord.from_row(
                {
                    "loop": LOOP,
                    "event_id": event_id,
                    "decided_at": decided_at,
                    "model_version": "untrained",
                    "policy_arm": "live",
                    "request_digest": "0" * 64,
                    "context": {"i": i % 7},
                    "actions": actions,
                    "pmf": pmf.tolist(),
                    "excluded": [],
                    "chosen": f"a{chosen}",
                    "slots": [{"slot": 0, "action_id": f"a{chosen}", "probability": p_chosen}],
                    "n_slots": 1,
                    "is_slate": False,
                    "deferred": False,
                    "activated_at": None,
                    "reward_deadline": decided_at + timedelta(seconds=WAIT_S),
                    "response": {"event_id": event_id},
                }
            )
        )

        if rng.random() < 0.5:
            ops.append(rec(event_id, decided_at, "click", 1, ""))
        if rng.random() < REPORT_RATE[chosen]:
            reported += 1
            ops.append(rec(event_id, decided_at, "r1", 2, "report", float(rng.integers(0, 5))))
            if rng.random() < 0.5:  # a second report: the event still counts once
                ops.append(rec(event_id, decided_at, "r2", 3, "report"))
        if rng.random() < 0.6:  # late: never counted
            ops.append(rec(event_id, decided_at, "late", WAIT_S + 1, "report"))
    return ops, reported


def _by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in result["policies"]}


def test_guardrail_rates_cover_the_truth_and_the_live_rate_is_the_observed_one(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    ops, reported = guarded_log(N, seed=8)
    write(writer, ops)
    join_loop(
        engine,
        LOOP,
        default_reward=0.0,
        aggregation="earliest",
        now=T0 + timedelta(seconds=N + WAIT_S + 10),
    )
    truth = true_rates()
    observed = reported / N
    for interval in INTERVALS:
        spec = EvaluationSpec(
            policies=(PolicySpec("first_action"), PolicySpec("uniform")),
            estimators=("ips",),
            interval=interval,
            guardrails=("report", "hide"),
        )
        result = run_evaluation(engine, LOOP, spec, registry=registry)
        assert result["request"]["guardrails"] == ["report", "hide"]
        p = _by_name(result)
        live = p["live"]["guardrails"]
        assert set(live) == {"report", "hide"}
        # the live target: its on-policy rate (every weight 1) is the observed rate
        assert live["report"]["difference"] is None
        assert live["report"]["candidate"] == live["report"]["live"]
        assert math.isclose(live["report"]["candidate"]["value"], observed, rel_tol=1e-12)
        assert live["report"]["candidate"]["n"] == N
        assert live["report"]["candidate"]["method"] == f"ips/{interval}"
        est = live["report"]["candidate"]
        assert est["ci_low"] <= truth["live"] <= est["ci_high"], (interval, est)
        # no signal of "hide" at all: a rate of 0 for everyone
        for name in ("live", "first_action", "uniform"):
            hide = p[name]["guardrails"]["hide"]
            assert hide["candidate"]["value"] == 0.0 and hide["live"]["value"] == 0.0
        # the candidate whose chosen action draws more reports
        first = p["first_action"]["guardrails"]["report"]
        assert set(first) == {"candidate", "live", "difference"}
        assert set(first["difference"]) == {"value", "ci_low", "ci_high", "n", "ess", "method"}
        assert first["difference"]["method"] == f"ips:difference/{interval}"
        assert first["live"]["value"] == pytest.approx(observed, rel=1e-12)
        true_diff = truth["first_action"] - truth["live"]
        diff = first["difference"]
        assert diff["value"] == pytest.approx(
            first["candidate"]["value"] - first["live"]["value"], abs=1e-12
        )
        assert diff["ci_low"] <= true_diff <= diff["ci_high"], (interval, diff)
        assert diff["ci_low"] > 0.0, (interval, diff)  # enough events: significantly worse
        cand = first["candidate"]
        assert cand["ci_low"] <= truth["first_action"] <= cand["ci_high"], (interval, cand)
        assert cand["ess"] < N  # importance weighted
        uniform = p["uniform"]["guardrails"]["report"]["difference"]
        true_u = truth["uniform"] - truth["live"]
        assert uniform["ci_low"] <= true_u <= uniform["ci_high"], (interval, uniform)
        page = render_html(result)
        assert "Guardrail rates" in page and 'class="bad">vs live' in page
        print(
            f"guardrail report [{interval}]: live {observed:.4f} (true {truth['live']:.4f}); "
            f"first_action - live {diff['value']:.4f} [{diff['ci_low']:.4f}, "
            f"{diff['ci_high']:.4f}] (true {true_diff:.4f})"
        )


def _accumulate(n: int, rng: np.random.Generator) -> Accumulator:
    acc = Accumulator(["live", "first_action"], (0.0, 1.0), ("report",))
    first = np.array([1.0, 0.0, 0.0])
    for i in range(n):
        pmf = LOGGING[i % 2]
        a = int(rng.choice(3, p=pmf))
        counts = {"report": 1} if rng.random() < REPORT_RATE[a] else {}
        event = EvalEvent(
            event_id=str(i),
            decided_at=T0,
            context={},
            candidates=(),
            logged_pmf=pmf,
            action=a,
            pscore=float(pmf[a]),
            reward=0.0,
            guardrails=counts,
        )
        acc.add(event, [("live", pmf), ("first_action", first)], None)
    return acc


def test_the_difference_interval_covers_the_true_difference() -> None:
    """Over 100 simulated logs of 1,000 events, the 95% normal interval of (first_action - live)
    holds the true difference in at least 88% of them (100 trials: the binomial sd is ~2.4%).
    The bounded intervals are wider (see the test above)."""
    interval = "normal"
    rng = np.random.default_rng(17)
    truth = true_rates()
    true_diff = truth["first_action"] - truth["live"]
    spec = EvaluationSpec(
        policies=(PolicySpec("live"), PolicySpec("first_action")),
        estimators=("ips",),
        interval=interval,
        guardrails=("report",),
    )
    trials, covered = 100, 0
    for _ in range(trials):
        acc = _accumulate(1000, rng)
        out = policy_result(spec.policies[1], acc, "live", spec, {})
        diff = out["guardrails"]["report"]["difference"]
        covered += diff["ci_low"] <= true_diff <= diff["ci_high"]
    print(f"guardrail difference [{interval}]: covered {covered}/{trials}")
    assert covered >= 0.88 * trials


def test_a_target_without_events_has_no_guardrail_rates() -> None:
    """A target without events later than its split has no guardrails (an error instead)."""
    acc = Accumulator(["live", "first_action"], (0.0, 1.0), ("report",))
    spec = EvaluationSpec(guardrails=("report",))
    out = policy_result(PolicySpec("first_action"), acc, "live", spec, {})
    assert out["error"] is not None and out["guardrails"] == {}


@pytest.mark.parametrize(
    ("guardrails", "match"),
    [
        ("report", "must be a list"),
        (["Report"], "metric names are"),
        (["re port"], "metric names are"),
        ([""], "metric names are"),
        (["x" * 65], "metric names are"),
        ([1], "metric names are"),
        (["report", "report"], "distinct"),
        ([f"m{i}" for i in range(9)], "at most 8"),
    ],
)
def test_invalid_guardrails(guardrails: Any, match: str) -> None:
    with pytest.raises(SpecError, match=match) as err:
        EvaluationSpec.from_json({"guardrails": guardrails})
    assert err.value.code == "invalid_request"


def test_guardrails_round_trip_and_default() -> None:
    spec = EvaluationSpec.from_json({"guardrails": ["report", "hide"]})
    assert spec.guardrails == ("report", "hide")
    assert spec.to_json()["guardrails"] == ["report", "hide"]
    assert EvaluationSpec.from_json(spec.to_json()) == spec
    # a spec stored before guardrails existed reads with none
    old = {k: v for k, v in EvaluationSpec().to_json().items() if k != "guardrails"}
    assert EvaluationSpec.from_json(old).guardrails == ()
    assert EvaluationSpec(guardrails=[f"m{i}" for i in range(8)]).guardrails[-1] == "m7"  # type: ignore[arg-type]
