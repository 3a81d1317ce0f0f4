"""The propensity invariant for every exploration strategy, through the service's decision path.

For each strategy (the explore-side ones and VW's own reductions, with and without the floor),
a loop's model is trained to prefer a0 > a1 > ... > a4, loaded as the service loads a version,
and serves thousands of decisions (`decide`, the function the rank route calls, with the loop's
keyed sampling): the served frequencies match the logged pmf (chi-square, p > 1e-4, see
`served_sample`), single actions and slates slot by slot; what is logged equals what is
served. The statistics do not depend on the store (sampling is a function of the loop's key,
the event id and the model), so the route-level test only checks, per strategy, that a loop
configured over HTTP serves and logs its strategy's distribution.

The strategies' models use `-q ca --cb_type mtr`, whose scores estimate each action's mean
reward (a clearly non-uniform distribution for every strategy; `cover` refuses `--cb_type dm`).
`defaults` is the loop a new loop gets (`LoopConfig()`, whatever the defaults are), a
distribution that favours a0.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy.stats import chisquare
from sqlalchemy import select

from decision_service.decide import decide
from decision_service.rank_input import RankInput
from decision_service.runtime import LoopRuntime, explorer_for
from explore import Action
from log.explore_settings import ExploreSettings
from log.loops import LoopConfig
from log.models import DecisionRow
from log.schema import make_engine
from policies import VWPolicy

KEY = bytes.fromhex("20261203" * 8)
CONTEXT = {"user": "u1", "hour": 9}
ACTIONS = [Action(f"a{i}", {"kind": f"k{i}"}) for i in range(5)]
MEANS = [0.9, 0.5, 0.2, 0.0, -0.4]
NOW = datetime(2026, 12, 3, tzinfo=UTC)
P_MIN = 1e-4
N = 4000
VW_ARGS = "-q ca --cb_type mtr"

STRATEGIES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "epsilon_greedy": {"exploration": "epsilon_greedy", "epsilon": 0.3},
    "epsilon_decay": {
        "exploration": "epsilon_greedy",
        "epsilon": 1.0,
        "exploration_options": ExploreSettings(epsilon_decay=0.3, epsilon_min=0.05),
    },
    "softmax": {"exploration": "softmax", "softmax_lambda": 2.0},
    "squarecb": {"exploration": "squarecb"},
    "squarecb+floor": {
        "exploration": "squarecb",
        "exploration_options": ExploreSettings(squarecb_gamma0=100.0, floor=0.03),
    },
    "regcbopt+floor": {
        "exploration": "regcbopt",
        "exploration_options": ExploreSettings(floor=0.05),
    },
    "cover": {"exploration": "cover", "epsilon": 0.1},
    "bag+floor": {
        "exploration": "bag",
        "epsilon": 0.05,
        "exploration_options": ExploreSettings(floor=0.02),
    },
}


def trained_runtime(name: str) -> LoopRuntime:
    """The loop of strategy `name` serving a model trained on 400 events (loaded from its
    artifact, as the service loads a version)."""
    settings = STRATEGIES[name] if name == "defaults" else {"vw_args": VW_ARGS, **STRATEGIES[name]}
    config = LoopConfig(**settings, sampling_key=KEY)
    learner = VWPolicy(config.model_args)
    rng = np.random.default_rng(3)
    for _ in range(400):
        i = int(rng.integers(len(ACTIONS)))
        reward = MEANS[i] + 0.1 * float(rng.standard_normal())
        learner.learn(CONTEXT, ACTIONS, chosen=i, reward=reward, probability=1 / len(ACTIONS))
    policy = VWPolicy(config.model_args, model=learner.save(), version="v1")
    learner.close()
    return LoopRuntime("prop", config, NOW, explorer_for(config, policy), policy)


def serve(runtime: LoopRuntime, n: int, slots: int | None = None, prefix: str = "e") -> list[Any]:
    out = []
    for i in range(n):
        rank = RankInput(f"{prefix}{i}", CONTEXT, ACTIONS, [], slots, False)
        out.append(decide(rank, {"i": i}, runtime, NOW, f"{prefix}{i}"))
    return out


def chi2_pvalue(counts: Counter[int], p: np.ndarray, n: int) -> float:
    """Chi-square of `counts` against n * p: zero-probability actions must never be served;
    cells expected below 5 are pooled."""
    assert all(p[i] > 0 for i in counts), (counts, p)
    expected = n * p
    big = [i for i in range(p.size) if expected[i] >= 5]
    small = [i for i in range(p.size) if 0 < expected[i] < 5]
    obs = [counts[i] for i in big]
    exp = [expected[i] for i in big]
    if small:
        obs.append(sum(counts[i] for i in small))
        exp.append(sum(expected[i] for i in small))
    assert len(obs) >= 2, f"too few cells for a chi-square: {expected}"
    return float(chisquare(obs, np.asarray(exp) * sum(obs) / sum(exp)).pvalue)


class Unlikely(AssertionError):
    """A chi-square p-value at or below P_MIN."""


def expect_likely(pvalue: float, detail: object) -> None:
    if not pvalue > P_MIN:
        raise Unlikely(f"p = {pvalue:.3g} <= {P_MIN}: {detail}")


def served_sample(runtime: LoopRuntime, slots: int | None, check: Any) -> list[Any]:
    """The decisions of N events; `check(records)` asserts on them. The draws are a fixed
    function of the key and the event ids, so a correct sampler still fails a chi-square at
    P_MIN on one fixed sample in 1/P_MIN: a sample whose only failure is an unlikely chi-square
    is followed by one independent sample (other event ids), and both must fail (P_MIN ** 2) for
    the test to fail. A real sampling defect gives p-values near 0 on both; every other check
    fails on the first."""
    records = serve(runtime, N, slots)
    try:
        check(records)
    except Unlikely:
        records = serve(runtime, N, slots, prefix="second-")
        check(records)
    return records


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_single_action_frequencies_match_the_logged_pmf(name: str) -> None:
    runtime = trained_runtime(name)
    records = served_sample(runtime, None, _frequencies_match)
    for r in records:  # what is served is what is logged
        served = {x["id"]: x["probability"] for x in r.response["ranking"]}
        assert [served[a.id] for a in ACTIONS] == r.pmf
        assert r.slots == [{"slot": 0, "action_id": r.chosen, "probability": served[r.chosen]}]


def _frequencies_match(records: list[Any]) -> None:
    pmfs = {tuple(r.pmf) for r in records}
    assert len(pmfs) == 1, f"{len(pmfs)} different pmfs for one context and candidate set"
    p = np.array(next(iter(pmfs)))
    assert abs(p.sum() - 1.0) < 1e-9
    assert p[0] == p.max() and p.max() > 3 * p.min(), p  # learnt: a0 is favoured
    ids = [a.id for a in ACTIONS]
    counts = Counter(ids.index(r.chosen) for r in records)
    expect_likely(chi2_pvalue(counts, p, N), (counts, p))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_slate_slots_match_their_logged_conditionals(name: str) -> None:
    served_sample(trained_runtime(name), 2, _conditionals_match)


def _conditionals_match(records: list[Any]) -> None:
    ids = [a.id for a in ACTIONS]
    logged: dict[tuple[int, ...], list[float]] = {}
    groups: dict[tuple[int, ...], Counter[int]] = defaultdict(Counter)
    for r in records:
        assert r.response["slots"] == [
            {k: s[k] for k in ("slot", "action_id", "probability")} for s in r.slots
        ]
        prefix: tuple[int, ...] = ()
        for s in r.slots:
            full = s["pmf"]
            assert logged.setdefault(prefix, full) == full  # one distribution per prefix
            action = ids.index(s["action_id"])
            assert full[action] == s["probability"] > 0
            groups[prefix][action] += 1
            prefix = (*prefix, action)
    tested = 0
    for prefix, counts in groups.items():
        m = sum(counts.values())
        p = np.array(logged[prefix])
        assert all(p[a] == 0 for a in prefix)
        if m * p[p > 0].min() < 5 and m < 500:
            continue
        expect_likely(chi2_pvalue(counts, p, m), (prefix, counts, p))
        tested += 1
    assert tested >= 2  # slot 0 and at least one slot-1 conditional


@pytest.mark.parametrize("name", ["defaults", "regcbopt+floor", "bag+floor"])
def test_a_model_that_explores_itself_orders_every_slot_of_a_slate(name: str) -> None:
    """A VW reduction's output is a distribution over the set it is given, most of its mass on
    one action: each later slot asks the model again over the remaining actions, so the slate
    follows the model's order (a0, then a1, then a2), not a near-uniform remainder."""
    runtime = trained_runtime(name)
    assert runtime.policy.outputs_pmf
    records = serve(runtime, 300, slots=3)
    ids = [a.id for a in ACTIONS]
    for r in records:
        before: list[int] = []
        for s in r.slots:
            full = np.array(s["pmf"])
            best = int(np.argmax(full))
            assert best == min(set(range(len(ACTIONS))) - set(before)), (before, full)
            assert full[best] > 0.5, full
            before.append(ids.index(s["action_id"]))
    top = Counter(tuple(s["action_id"] for s in r.slots) for r in records).most_common(1)[0]
    assert top[0] == ("a0", "a1", "a2") and top[1] > 0.5 * len(records), top


VW_STRATEGIES = ("squarecb", "regcbopt", "cover", "bag")


@pytest.mark.parametrize("name", VW_STRATEGIES)
def test_a_loop_configured_over_http_serves_and_logs_its_strategy(
    client: TestClient, db_url: str, name: str
) -> None:
    body: dict[str, Any] = {
        "exploration": name,
        "epsilon": 0.1,
        "exploration_options": {"floor": 0.02},
    }
    body["vw_args"] = VW_ARGS  # named: the loop defaults may change
    resp = client.put(f"/v1/loops/s-{name}", json=body)
    assert resp.status_code == 201, resp.text
    assert resp.json()["config"]["exploration_options"]["floor"] == 0.02
    actions = [{"id": a.id, "features": dict(a.features)} for a in ACTIONS]
    responses = []
    for i in range(40):
        r = client.post(
            f"/v1/loops/s-{name}/rank",
            json={"event_id": f"h{i}", "context": CONTEXT, "actions": actions},
        )
        assert r.status_code == 201, r.text
        responses.append(r.json())
    for r in responses:  # untrained: every action has the same probability (1/5)
        assert sorted(x["probability"] for x in r["ranking"]) == pytest.approx([0.2] * 5)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = dict(
                conn.execute(
                    select(DecisionRow.event_id, DecisionRow.pmf).where(
                        DecisionRow.loop == f"s-{name}"
                    )
                ).all()
            )
    finally:
        engine.dispose()
    for r in responses:
        served = {x["id"]: x["probability"] for x in r["ranking"]}
        assert rows[r["event_id"]] == [served[a.id] for a in ACTIONS]


def test_bad_exploration_options_are_refused(client: TestClient) -> None:
    for options, field in (
        ({"floor": 0.9}, "floor"),
        ({"cover_size": 2.5}, "cover_size"),
        ({"nope": 1}, "nope"),
    ):
        resp = client.put("/v1/loops/bad", json={"exploration_options": options})
        assert resp.status_code == 422, resp.text
        assert field in resp.json()["error"]["message"]
    resp = client.put("/v1/loops/bad", json={"exploration": "thompson"})
    assert resp.status_code == 422
