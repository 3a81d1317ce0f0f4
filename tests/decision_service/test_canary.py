"""The propensity invariant with a canary split, end to end through the real app.

A loop with a live and a canary version (real VW models trained on seeded samples to prefer
opposite actions; the canary is put into its state directly in the store, see
tests/serving_helpers.py) serves many requests with a fixed context. For each arm, the served
actions' frequencies match that arm's logged pmf (chi-square, p > 1e-4), and that pmf is the one
the arm's model gives (computed on its own from the artifact); the share of canary units matches
canary_percent (binomial test); a unit (user id, else event id) always lands in the same arm, the
one the keyed hash gives; a client that does not know the key cannot pick its arm. Everything is
seeded (the loop's sampling key, ids, models), so the outcome is deterministic.

Sizes: PostgreSQL runs the larger sample, SQLite a smaller one; on both every logged row
(arm, arm probability, version, pmf, slots) is read back and must equal what was served.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy.stats import binomtest
from sqlalchemy import Engine, select

from decision_service import Settings
from deploy.registry import promote
from explore.arms import ArmSplit, split_unit
from learn.examples import slot_examples
from learn.offline_eval_targets import eval_event
from learn.train import train
from log.loops import LoopConfig, put_loop
from log.models import DecisionRow
from log.training_reads import iter_joined
from policies import VWPolicy
from tests.decision_service.test_propensity import P_MIN, chi2
from tests.serving_helpers import (
    VW_ARGS,
    join_later,
    model_pmf,
    post_many,
    rank_many,
    register_version,
    set_status,
    trained_artifact,
)

LOOP = "canary"
KEY = bytes.fromhex("5eed" * 16)
LAMBDA = 2.0
PERCENT = 30.0
CONTEXT = {"user": "u1", "hour": 9}
ACTIONS: list[dict[str, Any]] = [{"id": f"a{i}", "features": {"kind": f"k{i}"}} for i in range(5)]
MEANS = [0.9, 0.5, 0.2, 0.0, -0.4]
IDS = [a["id"] for a in ACTIONS]
# decisions per test: PostgreSQL, SQLite
SIZES = {"postgresql": 8_000, "sqlite": 3_000}


def size(settings: Settings) -> int:
    return SIZES["postgresql" if settings.database_url.startswith("postgresql") else "sqlite"]


class Arms:
    def __init__(self, client: TestClient, percent: float = PERCENT) -> None:
        service = client.app.state.service  # type: ignore[attr-defined]
        self.service = service
        self.engine: Engine = service.engine
        config = LoopConfig(exploration="softmax", softmax_lambda=LAMBDA, sampling_key=KEY)
        put_loop(self.engine, LOOP, config)
        self.live_art = trained_artifact(CONTEXT, ACTIONS, MEANS, seed=3)
        self.canary_art = trained_artifact(CONTEXT, ACTIONS, MEANS[::-1], seed=4)
        self.live = register_version(self.engine, LOOP, self.live_art)
        promote(self.engine, self.live)
        self.canary = register_version(self.engine, LOOP, self.canary_art)
        set_status(self.engine, self.canary, "canary", percent)
        service.loops.refresh()
        runtime = service.loops.loops[LOOP]
        assert runtime.canary is not None and runtime.canary.version == self.canary
        self.share = percent / 100
        self.split = ArmSplit(KEY, self.canary, self.share)
        self.pmf = {
            self.live: model_pmf(self.live_art, CONTEXT, ACTIONS, LAMBDA),
            self.canary: model_pmf(self.canary_art, CONTEXT, ACTIONS, LAMBDA),
        }
        # the two arms prefer opposite ends: a sampler that mixed them up would fail
        assert int(np.argmax(self.pmf[self.live])) == 0
        assert int(np.argmax(self.pmf[self.canary])) == 4

    def expected_arm(self, body: dict[str, Any]) -> str:
        return self.split.arm(split_unit(body.get("user_id"), body["event_id"]))[0]

    def rows(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return {
                r.event_id: r
                for r in conn.execute(
                    select(
                        DecisionRow.event_id,
                        DecisionRow.model_version,
                        DecisionRow.policy_arm,
                        DecisionRow.arm_probability,
                        DecisionRow.pmf,
                        DecisionRow.chosen,
                        DecisionRow.slots,
                        DecisionRow.shadow,
                    ).where(DecisionRow.loop == LOOP)
                )
            }


def ranking_pmf(response: dict[str, Any]) -> list[float]:
    probs = {x["id"]: x["probability"] for x in response["ranking"]}
    return [probs[a] for a in IDS]


def check_arms_logged(
    arms: Arms, bodies: Sequence[dict[str, Any]], responses: Sequence[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Every decision: served by the arm the keyed hash gives, logged with that arm, its
    probability, its version and its pmf (= the response's, = the arm's model's)."""
    rows = arms.rows()
    by_arm: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for body, resp in zip(bodies, responses, strict=True):
        row = rows[resp["event_id"]]
        arm = arms.expected_arm(body)
        version = arms.canary if arm == "canary" else arms.live
        assert resp["model_version"] == row.model_version == version
        assert row.policy_arm == arm
        assert row.arm_probability == (arms.share if arm == "canary" else 1.0 - arms.share)
        assert row.pmf == ranking_pmf(resp)
        np.testing.assert_allclose(row.pmf, arms.pmf[version], rtol=1e-9, atol=1e-15)
        assert row.chosen == resp["reward_action_id"]
        assert row.shadow is None
        by_arm[arm].append(resp)
    return by_arm


def check_frequencies(arms: Arms, by_arm: dict[str, list[dict[str, Any]]]) -> None:
    for arm, responses in by_arm.items():
        version = arms.canary if arm == "canary" else arms.live
        p = arms.pmf[version]
        served = Counter(r["reward_action_id"] for r in responses)
        pvalue = chi2([served[a] for a in IDS], len(responses) * p)
        assert pvalue > P_MIN, (arm, served, p)


def test_each_arm_serves_its_logged_pmf_and_users_stay_in_their_arm(
    client: TestClient, settings: Settings
) -> None:
    arms = Arms(client)
    n = size(settings)
    per_user = 4
    bodies = [
        {"event_id": f"e{i}", "user_id": f"user-{i // per_user}", "context": CONTEXT,
         "actions": ACTIONS}
        for i in range(n)
    ]  # fmt: skip
    responses = rank_many(client, LOOP, bodies)
    by_arm = check_arms_logged(arms, bodies, responses)
    assert set(by_arm) == {"live", "canary"}
    check_frequencies(arms, by_arm)

    # a user always lands in the same arm
    user_arms: dict[str, set[str]] = defaultdict(set)
    for body, resp in zip(bodies, responses, strict=True):
        user_arms[body["user_id"]].add(resp["model_version"])
    assert all(len(a) == 1 for a in user_arms.values())
    # the share of users in the canary is canary_percent (the users are the randomised units)
    n_users = len(user_arms)
    in_canary = sum(arms.canary in a for a in user_arms.values())
    assert binomtest(in_canary, n_users, arms.share).pvalue > P_MIN, (in_canary, n_users)
    assert runtime_counters(client)["canary_served"] == len(by_arm["canary"])


def runtime_counters(client: TestClient) -> dict[str, Any]:
    status = client.get("/v1/status").json()
    serving: dict[str, Any] = status["serving"][LOOP]
    return serving


def test_without_user_id_the_event_id_is_the_unit(client: TestClient, settings: Settings) -> None:
    arms = Arms(client)
    n = size(settings) // 2
    bodies = [{"event_id": f"e{i}", "context": CONTEXT, "actions": ACTIONS} for i in range(n)]
    responses = rank_many(client, LOOP, bodies)
    by_arm = check_arms_logged(arms, bodies, responses)
    check_frequencies(arms, by_arm)
    k = len(by_arm["canary"])
    assert binomtest(k, n, arms.share).pvalue > P_MIN, (k, n)
    status = client.get("/v1/status").json()["serving"][LOOP]
    assert status["canary"] == arms.canary and status["canary_percent"] == PERCENT

    # the same request again is a replay: same arm, same answer, nothing new
    again = rank_many(client, LOOP, bodies[:50])
    assert again == responses[:50]
    # the same event id with a user id is another request: 409
    clash = client.post(f"/v1/loops/{LOOP}/rank", json={**bodies[0], "user_id": "someone"})
    assert clash.status_code == 409


def test_a_client_cannot_pick_its_arm_without_the_key(
    client: TestClient, settings: Settings
) -> None:
    """The attacker sees the canary's version in the responses and guesses the key (all zeros;
    even the real key with one bit flipped): the event ids and user ids its guesses put in the
    canary land there at the canary's share, no more."""
    arms = Arms(client)
    n = size(settings) // 10
    # all zeros; the real key with its last bit flipped
    guesses = [bytes(32), bytes.fromhex("5eed" * 15 + "5eec")]
    for g, guess in enumerate(guesses):
        split = ArmSplit(guess, arms.canary, arms.share)
        chosen_events = [
            f"x{g}-{j}"
            for j in range(20 * n)
            if split.arm(split_unit(None, f"x{g}-{j}"))[0] == "canary"
        ][:n]
        chosen_users = [
            f"u{g}-{j}"
            for j in range(20 * n)
            if split.arm(split_unit(f"u{g}-{j}", ""))[0] == "canary"
        ][:n]
        bodies = [
            {"event_id": e, "context": CONTEXT, "actions": ACTIONS} for e in chosen_events
        ] + [
            {"event_id": f"y{g}-{j}", "user_id": u, "context": CONTEXT, "actions": ACTIONS}
            for j, u in enumerate(chosen_users)
        ]
        responses = rank_many(client, LOOP, bodies)
        for part in (responses[:n], responses[n:]):
            k = sum(r["model_version"] == arms.canary for r in part)
            assert binomtest(k, n, arms.share).pvalue > P_MIN, (g, k, n)
        check_arms_logged(arms, bodies, responses)


def test_slates_with_a_canary(client: TestClient, settings: Settings) -> None:
    arms = Arms(client)
    n = max(size(settings) // 2, 3000)
    k = 2
    bodies = [
        {"event_id": f"s{i}", "user_id": f"user-{i}", "context": CONTEXT, "actions": ACTIONS,
         "slots": k}
        for i in range(n)
    ]  # fmt: skip
    responses = rank_many(client, LOOP, bodies)
    rows = arms.rows()
    by_arm = check_arms_logged(arms, bodies, responses)
    for arm, group in by_arm.items():
        version = arms.canary if arm == "canary" else arms.live
        p = dict(zip(IDS, arms.pmf[version], strict=True))
        art = arms.canary_art if arm == "canary" else arms.live_art
        # slot 1: the arm's explorer (softmax, then the floor) over what slot 0 left
        cond_of = {
            a0: dict(zip(IDS, model_pmf(art, CONTEXT, ACTIONS, LAMBDA, [a0]), strict=True))
            for a0 in IDS
        }
        first = Counter(r["slots"][0]["action_id"] for r in group)
        assert chi2([first[a] for a in IDS], [len(group) * p[a] for a in IDS]) > P_MIN, arm
        second: dict[str, Counter[str]] = defaultdict(Counter)
        tested = 0
        for r in group:
            s0, s1 = r["slots"]
            assert s1["probability"] == pytest.approx(cond_of[s0["action_id"]][s1["action_id"]])
            second[s0["action_id"]][s1["action_id"]] += 1
            logged = rows[r["event_id"]].slots
            assert [{x: s[x] for x in ("slot", "action_id", "probability")} for s in logged] == [
                s0,
                s1,
            ]
            assert math.fsum(logged[1]["pmf"]) == pytest.approx(1.0, abs=1e-12)
        for a0, counter in second.items():
            m = sum(counter.values())
            left = [a for a in IDS if a != a0]
            cond = [m * cond_of[a0][a] for a in left]
            if min(cond) < 5:
                continue
            assert chi2([counter[a] for a in left], cond) > P_MIN, (arm, a0)
            tested += 1
        assert tested >= 2


def test_canary_decisions_train_and_evaluate_with_their_arms_probabilities(
    client: TestClient,
) -> None:
    """A decision served by the canary is learned (label probability) and evaluated (logged
    pmf, propensity) with the canary's probabilities, one served by live with live's: the
    training and evaluation reads take them from the decision as logged."""
    arms = Arms(client)
    n = 300
    bodies = [
        {"event_id": f"t{i}", "user_id": f"user-{i}", "context": CONTEXT, "actions": ACTIONS}
        for i in range(n)
    ]
    responses = rank_many(client, LOOP, bodies)
    post_many(
        client,
        [(f"/v1/loops/{LOOP}/events/{r['event_id']}/reward", {"value": 1.0}) for r in responses],
        202,
    )
    join_later(client, 1.0)
    events = list(iter_joined(arms.engine, LOOP))
    assert len(events) == n
    seen: Counter[str] = Counter()
    for event in events:
        version = event.record.model_version
        pmf = arms.pmf[version]
        chosen = IDS.index(event.record.chosen)
        (example,) = slot_examples(event)
        assert example.probability == pytest.approx(pmf[chosen], rel=1e-12)
        ev = eval_event(event)
        assert ev is not None
        np.testing.assert_allclose(ev.logged_pmf, pmf, rtol=1e-9)
        assert ev.pscore == pytest.approx(pmf[chosen], rel=1e-12)
        seen[event.record.policy_arm] += 1
    assert seen["canary"] > 50 and seen["live"] > 150
    # and a training pass learns every one of them
    policy = VWPolicy(VW_ARGS)
    try:
        stats = train(policy, events)
    finally:
        policy.close()
    assert (stats.n_events, stats.n_skipped) == (n, 0)
