"""The shadow report, on decisions served through the app with a shadow (and a canary).

A loop serves with a live version (prefers a0), a canary at 30% (prefers a4) and a shadow
(prefers a1); a third of the requests exclude a1. Rewards are Bernoulli with known means per
action (seeded), posted over HTTP and joined. Then the report must give exactly:

* the counts, and the agreement: the shadow's top choice is a1, the served arms' a0 or a4, so
  they agree exactly on the requests that exclude a1 and the live arm serves (a0 both);
* the served policy's on-policy value (mean reward) and the shadow's IPS value, each equal to
  the mean computed here from the responses and the logged pmfs (the propensity is the logged
  pmf of whichever arm served), and intervals that hold the shadow's true value (computed from
  the known means and its pmf; fixed seeds and fixed version names (the canary's version salts
  the arm split), so the check is deterministic);
* the window: the latest `max_events` decisions, oldest first; slates left out or valued by
  their first slot; a past shadow by its version; errors as 404/422 over HTTP.

Versions are put into their states directly in the store (tests/serving_helpers.py).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from decision_service import Settings
from deploy import registry
from deploy.registry import promote
from deploy.shadow import ShadowReport, shadow_report, top_choice
from explore.errors import InvalidInput, NotFound
from log.loops import LoopConfig, put_loop
from log.models import DecisionRow
from tests.serving_helpers import (
    join_later,
    model_pmf,
    post_many,
    rank_many,
    register_version,
    set_status,
    trained_artifact,
)

LOOP = "report"
KEY = bytes.fromhex("fade" * 16)
LAMBDA = 1.5
CONTEXT = {"user": "u1", "hour": 9}
ACTIONS: list[dict[str, Any]] = [{"id": f"a{i}", "features": {"kind": f"k{i}"}} for i in range(5)]
IDS = [a["id"] for a in ACTIONS]
TRUE_MEANS = np.array([0.3, 0.6, 0.2, 0.1, 0.4])  # Bernoulli reward means by action
SIZES = {"postgresql": 3_000, "sqlite": 1_500}


@pytest.fixture(autouse=True)
def fixed_version_names(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Version names normally carry the time and random bits; the canary's name salts which
    users it serves, so a random name would make the served data (and whether a 95% interval
    holds the truth) change from run to run."""
    counter = itertools.count(1)

    def deterministic(sha256: str, now: datetime) -> str:
        return f"v-test-{next(counter):04d}-{sha256[:8]}"

    monkeypatch.setattr(registry, "new_version_id", deterministic)
    yield


def size(settings: Settings) -> int:
    return SIZES["postgresql" if settings.database_url.startswith("postgresql") else "sqlite"]


class Setup:
    def __init__(self, client: TestClient, n: int, *, slates: int = 0) -> None:
        service = client.app.state.service  # type: ignore[attr-defined]
        self.engine: Engine = service.engine
        put_loop(
            self.engine,
            LOOP,
            LoopConfig(exploration="softmax", softmax_lambda=LAMBDA, sampling_key=KEY),
        )
        arts = {
            "live": trained_artifact(CONTEXT, ACTIONS, [0.9, 0.5, 0.2, 0.0, -0.4], seed=1),
            "canary": trained_artifact(CONTEXT, ACTIONS, [-0.4, 0.0, 0.2, 0.5, 0.9], seed=2),
            "shadow": trained_artifact(CONTEXT, ACTIONS, [0.5, 0.9, 0.2, 0.0, -0.4], seed=3),
        }
        self.versions = {k: register_version(self.engine, LOOP, a) for k, a in arts.items()}
        promote(self.engine, self.versions["live"])
        set_status(self.engine, self.versions["canary"], "canary", 30.0)
        set_status(self.engine, self.versions["shadow"], "shadow")
        service.loops.refresh()
        self.shadow_pmf = {
            ex: model_pmf(arts["shadow"], CONTEXT, ACTIONS, LAMBDA, ["a1"] if ex else [])
            for ex in (False, True)
        }
        assert top_choice(self.shadow_pmf[False]) == 1 and top_choice(self.shadow_pmf[True]) == 0
        self.bodies = [
            {
                "event_id": f"e{i}",
                "user_id": f"user-{i}",
                "context": CONTEXT,
                "actions": ACTIONS,
                **({"excluded_actions": ["a1"]} if i % 3 == 0 else {}),
                **({"slots": 2} if i < slates else {}),
            }
            for i in range(n)
        ]
        self.responses = rank_many(client, LOOP, self.bodies)
        rng = np.random.default_rng(11)
        self.rewards = [
            float(rng.random() < TRUE_MEANS[IDS.index(r["reward_action_id"])])
            for r in self.responses
        ]
        post_many(
            client,
            [
                (f"/v1/loops/{LOOP}/events/{r['event_id']}/reward", {"value": v})
                for r, v in zip(self.responses, self.rewards, strict=True)
            ],
            202,
        )
        join_later(client, 1.0)

    def served_pmf(self, i: int) -> np.ndarray:
        probs = {x["id"]: x["probability"] for x in self.responses[i]["ranking"]}
        return np.array([probs[a] for a in IDS])

    def expected(self, indices: list[int]) -> dict[str, float]:
        """Agreement, served mean, IPS and the shadow's true value over `indices`, computed
        from the responses and the models' pmfs."""
        agree, ips, truth = [], [], []
        for i in indices:
            excluded = "excluded_actions" in self.bodies[i]
            shadow = self.shadow_pmf[excluded]
            served = self.served_pmf(i)
            agree.append(top_choice(shadow) == top_choice(served))
            a = IDS.index(self.responses[i]["reward_action_id"])
            ips.append(shadow[a] / served[a] * self.rewards[i])
            truth.append(float(shadow @ TRUE_MEANS))
        return {
            "agreement": float(np.mean(agree)),
            "served": float(np.mean([self.rewards[i] for i in indices])),
            "ips": float(np.mean(ips)),
            "truth": float(np.mean(truth)),
        }


def test_report_counts_agreement_and_values(client: TestClient, settings: Settings) -> None:
    n = size(settings)
    s = Setup(client, n)
    report = shadow_report(s.engine, LOOP)
    assert isinstance(report, ShadowReport)
    assert (report.version, report.status) == (s.versions["shadow"], "shadow")
    assert (report.n_shadowed, report.n_joined, report.window, report.n_evaluated) == (n, n, n, n)
    exp = s.expected(list(range(n)))
    assert report.agreement == pytest.approx(exp["agreement"], abs=1e-12)
    # agreement only where a1 is excluded and live served (a0 is then both arms' top choice)
    arms = report.served_by_arm
    assert set(arms) == {"live", "canary"} and sum(arms.values()) == n
    assert 0.15 < report.agreement < 1 / 3
    assert report.served is not None
    assert report.served.value == pytest.approx(exp["served"], rel=1e-12)
    ips, dr = report.shadow["ips"], report.shadow["dr"]
    assert ips.value == pytest.approx(exp["ips"], rel=1e-9)
    assert report.difference["ips"].value == pytest.approx(exp["ips"] - exp["served"], rel=1e-9)
    for est in (ips, dr):
        assert est.ci_low <= exp["truth"] <= est.ci_high, (est, exp)
        assert est.n == n and 0 < est.ess <= n
    assert report.diagnostics is not None and report.diagnostics.n == n
    assert report.diagnostics.mean_weight == pytest.approx(1.0, abs=0.1)
    # the shadow (prefers a1, mean 0.6) is truly better than what was served
    assert exp["truth"] > exp["served"] and report.difference["ips"].value > 0
    assert report.first_at is not None and report.last_at is not None
    assert report.first_at <= report.last_at

    # the window: the latest decisions, by decided_at
    with s.engine.connect() as conn:
        order = [
            r.event_id
            for r in conn.execute(
                select(DecisionRow.event_id)
                .where(DecisionRow.loop == LOOP)
                .order_by(DecisionRow.decided_at, DecisionRow.event_id)
            )
        ]
    m = 200
    latest = [int(eid[1:]) for eid in order[-m:]]
    small = shadow_report(s.engine, LOOP, max_events=m)
    assert (small.n_shadowed, small.window, small.n_evaluated) == (n, m, m)
    exp_small = s.expected(latest)
    assert small.agreement == pytest.approx(exp_small["agreement"], abs=1e-12)
    assert small.served is not None
    assert small.served.value == pytest.approx(exp_small["served"], rel=1e-12)
    assert small.shadow["ips"].value == pytest.approx(exp_small["ips"], rel=1e-9)

    # JSON: what the route answers
    body = client.get(f"/v1/loops/{LOOP}/shadow").json()
    assert body == _json_roundtrip(report.to_json())

    # a new shadow: the report follows it; the old one stays readable by its version
    newer = register_version(s.engine, LOOP, trained_artifact(CONTEXT, ACTIONS, [0] * 5, seed=9))
    set_status(s.engine, newer, "shadow")
    fresh = shadow_report(s.engine, LOOP)
    assert (fresh.version, fresh.n_shadowed, fresh.window, fresh.agreement) == (newer, 0, 0, None)
    assert fresh.served is None and fresh.shadow == {} and fresh.problems
    old = shadow_report(s.engine, LOOP, s.versions["shadow"])
    assert (old.status, old.n_shadowed) == ("retired", n)


def _json_roundtrip(data: dict[str, Any]) -> dict[str, Any]:
    import orjson

    out: dict[str, Any] = orjson.loads(orjson.dumps(data))
    return out


def test_slates_are_skipped_or_valued_by_their_first_slot(
    client: TestClient, settings: Settings
) -> None:
    n = size(settings) // 2
    k = n // 4
    s = Setup(client, n, slates=k)
    skip = shadow_report(s.engine, LOOP)
    assert (skip.window, skip.n_slates_skipped, skip.n_evaluated) == (n, k, n - k)
    assert skip.shadow["ips"].value == pytest.approx(s.expected(list(range(k, n)))["ips"], rel=1e-9)
    slot0 = shadow_report(s.engine, LOOP, slates="slot0")
    assert (slot0.n_slates_skipped, slot0.n_evaluated) == (0, n)
    exp = s.expected(list(range(n)))
    assert slot0.shadow["ips"].value == pytest.approx(exp["ips"], rel=1e-9)
    assert slot0.agreement == skip.agreement == pytest.approx(exp["agreement"], abs=1e-12)


def test_errors(client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    engine: Engine = service.engine
    put_loop(engine, LOOP, LoopConfig())
    with pytest.raises(NotFound) as err:
        shadow_report(engine, LOOP)
    assert err.value.code == "shadow_not_found"
    with pytest.raises(NotFound) as err:
        shadow_report(engine, "nowhere")
    assert err.value.code == "loop_not_found"
    art = trained_artifact(CONTEXT, ACTIONS, [0] * 5, seed=0, n=10)
    elsewhere = register_version(engine, "default", art)
    with pytest.raises(NotFound) as err:
        shadow_report(engine, LOOP, elsewhere)
    assert err.value.code == "model_not_found"
    for kwargs in ({"max_events": 0}, {"slates": "all"}, {"interval": "cs"}, {"alpha": 0.7}):
        with pytest.raises(InvalidInput):
            shadow_report(engine, LOOP, **kwargs)  # type: ignore[arg-type]

    def code(path: str) -> tuple[int, str]:
        r = client.get(path)
        return r.status_code, r.json()["error"]["code"]

    base = f"/v1/loops/{LOOP}/shadow"
    assert code(base) == (404, "shadow_not_found")
    assert code("/v1/loops/nowhere/shadow") == (404, "loop_not_found")
    assert code("/v1/loops/bad%20name/shadow") == (404, "loop_not_found")
    assert code(f"{base}?version={elsewhere}") == (404, "model_not_found")
    assert code(f"{base}?version=v%00x") == (404, "model_not_found")
    assert code(f"{base}?version=unknown") == (404, "model_not_found")
    assert code(f"{base}?max_events=0")[0] == 422
    assert code(f"{base}?max_events=1000000000")[0] == 422
    assert code(f"{base}?slates=all")[0] == 422
    set_status(engine, register_version(engine, LOOP, art), "shadow")
    r = client.get(f"{base}?interval=bootstrap&max_events=10")
    assert r.status_code == 200 and r.json()["n_shadowed"] == 0
    assert math.isclose(r.json()["alpha"], 0.05)
