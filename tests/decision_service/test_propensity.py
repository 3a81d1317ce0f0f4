"""The propensity invariant (DESIGN §4), end to end through the real app.

Over many requests with a fixed context and candidate set, the frequency of each served action
(and of each slot of a slate, and of each whole slate) matches the probabilities the service
returned and logged: chi-square against the logged pmf, p > 1e-4. Everything is fixed (the
loop's sampling key, stored directly in the store since no route can set it; event ids e0, e1,
...; the policy is trained on a seeded synthetic sample), so the outcome is deterministic.

The policy is made non-uniform by training the worker's VW policy in-process, and the loop
explores with softmax, so the pmf is not uniform and a sampler that ignored it would fail. Its
VW arguments are `-q ca --cb_type mtr`, whose scores estimate each action's mean reward (named
here, not taken from the loop defaults, so that the test keeps its clearly non-uniform
distribution whatever the defaults become). The default strategy's distribution is tested in
`test_propensity_strategies.py` ("defaults").

Sizes: sampling depends only on (loop key, event id) and the policy, not on the database, so
the full statistical run (20,000 decisions per scenario, 10,000 with exclusions) is done on
PostgreSQL, the production store, and a smaller run (4,000 / 2,000 / 4,000) on SQLite. On both,
every decision's logged row (pmf, chosen, per-slot probabilities) is read back and must equal
the response exactly.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from numpy.typing import ArrayLike
from scipy.stats import chisquare
from sqlalchemy import select

from decision_service import Settings
from explore import Action
from log.explore_settings import ExploreSettings
from log.loops import LoopConfig, put_loop
from log.models import DecisionRow
from log.schema import make_engine
from tests.conftest import ADMIN_HEADERS

LOOP = "prop"
KEY = bytes.fromhex("20240601" * 8)  # the loop's sampling key (32 bytes)
LAMBDA = 2.0
VW_ARGS = "-q ca --cb_type mtr"
CONTEXT = {"user": "u1", "hour": 9}
ACTIONS: list[dict[str, Any]] = [{"id": f"a{i}", "features": {"kind": f"k{i}"}} for i in range(5)]
MEANS = [0.9, 0.5, 0.2, 0.0, -0.4]  # synthetic mean reward of each action
P_MIN = 1e-4
# decisions per scenario: (single, with exclusions, slate)
SIZES = {"postgresql": (20_000, 10_000, 20_000), "sqlite": (4_000, 2_000, 4_000)}


def size(settings: Settings, scenario: int) -> int:
    kind = "postgresql" if settings.database_url.startswith("postgresql") else "sqlite"
    return SIZES[kind][scenario]


def setup_loop(client: TestClient) -> None:
    """A softmax loop whose VW policy has learnt that a0 > a1 > a2 > a3 > a4. No floor: the
    softmax identities below (exclusions and later slots renormalise) hold for the softmax
    alone; the floor's own propensities are tested with every strategy (tests/explore)."""
    service = client.app.state.service  # type: ignore[attr-defined]
    config = LoopConfig(
        exploration="softmax",
        softmax_lambda=LAMBDA,
        vw_args=VW_ARGS,
        sampling_key=KEY,
        exploration_options=ExploreSettings(floor=0.0),
    )
    stored, created = put_loop(service.engine, LOOP, config)
    assert created
    policy = service.loops.install(stored).policy
    actions = [Action(a["id"], a["features"]) for a in ACTIONS]
    rng = np.random.default_rng(3)
    for _ in range(400):
        i = int(rng.integers(len(actions)))
        reward = MEANS[i] + 0.1 * float(rng.standard_normal())
        policy.learn(CONTEXT, actions, chosen=i, reward=reward, probability=1 / len(actions))


async def asgi_post(app: Any, path: str, body: bytes) -> tuple[int, bytes]:
    """One POST straight through the ASGI app (all middleware, routing and handlers)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", ADMIN_HEADERS["Authorization"].encode()),
        ],
        "client": ("testclient", 50000),
        "server": ("testserver", 80),
    }
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect while we wait for the answer
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def rank_many(client: TestClient, bodies: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST every body to the loop's rank route, 64 at a time, inside the app's event loop
    (the TestClient's portal, where its lifespan runs), so the writer groups the commits."""
    path = f"/v1/loops/{LOOP}/rank"

    async def run() -> list[dict[str, Any]]:
        gate = asyncio.Semaphore(64)

        async def one(body: dict[str, Any]) -> dict[str, Any]:
            async with gate:
                status, raw = await asgi_post(client.app, path, orjson.dumps(body))
            assert status == 201, raw
            data: dict[str, Any] = orjson.loads(raw)
            return data

        return list(await asyncio.gather(*(one(b) for b in bodies)))

    portal = client.portal
    assert portal is not None
    return portal.call(run)


def bodies(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"event_id": f"e{i}", "context": CONTEXT, "actions": ACTIONS, **extra} for i in range(n)
    ]


def the_pmf(responses: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The pmf every response returned; it must be the same for all (same context, same set)."""
    pmfs = {tuple(sorted((x["id"], x["probability"]) for x in r["ranking"])) for r in responses}
    assert len(pmfs) == 1, f"{len(pmfs)} different pmfs for one context and candidate set"
    return dict(next(iter(pmfs)))


def chi2(observed: ArrayLike, expected: ArrayLike) -> float:
    obs, exp = np.asarray(observed, float), np.asarray(expected, float)
    assert obs.sum() == pytest.approx(exp.sum(), rel=1e-9)
    assert exp.min() >= 5, f"expected counts too small for chi-square: {exp}"
    return float(chisquare(obs, exp).pvalue)


SLOT_KEYS = ("slot", "action_id", "probability")


def check_logged(
    settings: Settings, responses: Sequence[dict[str, Any]], excluded: Sequence[str] = ()
) -> None:
    """Each decision row holds exactly the probabilities, choice and slots that were returned.

    A logged slot may also carry `pmf`, its whole conditional distribution aligned with the
    request's actions: then it must give the slot's action the logged probability, be a
    distribution, and be 0 for excluded actions and for those placed in earlier slots."""
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            rows = {
                r.event_id: r
                for r in conn.execute(
                    select(
                        DecisionRow.event_id,
                        DecisionRow.pmf,
                        DecisionRow.chosen,
                        DecisionRow.slots,
                        DecisionRow.excluded,
                        DecisionRow.n_slots,
                    ).where(DecisionRow.loop == LOOP)
                )
            }
    finally:
        engine.dispose()
    assert {r["event_id"] for r in responses} <= set(rows)
    order = [a["id"] for a in ACTIONS]
    for resp in responses:
        row = rows[resp["event_id"]]
        probs = {x["id"]: x["probability"] for x in resp["ranking"]}
        assert row.pmf == [probs[a] for a in order]
        assert row.chosen == resp["reward_action_id"]
        assert row.excluded == list(excluded)
        served = resp.get("slots") or [
            {"slot": 0, "action_id": row.chosen, "probability": probs[row.chosen]}
        ]
        assert [{k: slot[k] for k in SLOT_KEYS} for slot in row.slots] == served
        assert row.n_slots == len(served)
        placed: set[str] = set()
        for slot in row.slots:
            if "pmf" in slot:
                full = dict(zip(order, slot["pmf"], strict=True))
                assert full[slot["action_id"]] == slot["probability"]
                assert math.fsum(full.values()) == pytest.approx(1.0, abs=1e-12)
                assert all(full[a] == 0.0 for a in placed | set(excluded))
            placed.add(slot["action_id"])


def test_single_action_frequencies_match_non_uniform_pmf(
    client: TestClient, settings: Settings
) -> None:
    setup_loop(client)
    n = size(settings, 0)
    responses = rank_many(client, bodies(n))
    pmf = the_pmf(responses)
    p = np.array([pmf[a["id"]] for a in ACTIONS])
    # the policy learnt the order of MEANS, and the pmf is far from uniform
    assert list(np.argsort(-p)) == [0, 1, 2, 3, 4]
    assert p.max() / p.min() > 5
    assert p.sum() == pytest.approx(1.0, abs=1e-12)

    served = Counter(r["reward_action_id"] for r in responses)
    assert set(served) == {a["id"] for a in ACTIONS}
    pvalue = chi2([served[a["id"]] for a in ACTIONS], n * p)
    assert pvalue > P_MIN, (served, p)
    check_logged(settings, responses)


def test_exclusions_are_never_served_and_the_rest_match(
    client: TestClient, settings: Settings
) -> None:
    setup_loop(client)
    excluded = ["a0", "a3"]  # a0 is the policy's favourite
    n = size(settings, 1)
    responses = rank_many(client, bodies(n, excluded_actions=excluded))
    pmf = the_pmf(responses)
    assert pmf["a0"] == 0.0 and pmf["a3"] == 0.0
    served = Counter(r["reward_action_id"] for r in responses)
    assert not set(served) & set(excluded)
    rest = ["a1", "a2", "a4"]
    p = np.array([pmf[a] for a in rest])
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert p.max() / p.min() > 3
    pvalue = chi2([served[a] for a in rest], n * p)
    assert pvalue > P_MIN, (served, p)

    # softmax over the allowed actions = the full softmax renormalised over them
    full = rank_many(client, [{"event_id": "full", "context": CONTEXT, "actions": ACTIONS}])
    full_pmf = the_pmf(full)
    renorm = np.array([full_pmf[a] for a in rest]) / sum(full_pmf[a] for a in rest)
    np.testing.assert_allclose(p, renorm, rtol=1e-9)
    check_logged(settings, responses, excluded)
    check_logged(settings, full)


def test_slate_slot_and_whole_slate_frequencies(client: TestClient, settings: Settings) -> None:
    setup_loop(client)
    k = 3
    n = size(settings, 2)
    responses = rank_many(client, bodies(n, slots=k))
    pmf = the_pmf(responses)  # the ranking's probabilities: the slot-0 distribution
    ids = [a["id"] for a in ACTIONS]
    slates = [tuple(s["action_id"] for s in r["slots"]) for r in responses]
    assert all(len(set(s)) == k for s in slates)
    assert all(s[0] == r["reward_action_id"] for s, r in zip(slates, responses, strict=True))

    # Every (prefix, next action) pair always logs the same conditional probability.
    logged: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
    for r in responses:
        prefix: tuple[str, ...] = ()
        for s in r["slots"]:
            first_seen = logged[prefix].setdefault(s["action_id"], s["probability"])
            assert first_seen == s["probability"], (prefix, s)
            prefix = (*prefix, s["action_id"])
    # Slot 0 logs the ranking's probability; later slots the pmf renormalised over what is left
    # (softmax of the remaining scores).
    for prefix, probs in logged.items():
        mass_left = math.fsum(pmf[a] for a in ids if a not in prefix)
        for action, prob in probs.items():
            assert prob == pytest.approx(pmf[action] / mass_left, rel=1e-9), (prefix, action)
    assert logged[()] == {a: pmf[a] for a in logged[()]}

    # Slot 0 against its pmf.
    first = Counter(s[0] for s in slates)
    assert chi2([first[a] for a in ids], [n * pmf[a] for a in ids]) > P_MIN

    # Slot 1 given slot 0, and slot 2 given slots 0-1: against the logged conditionals.
    tested = {1: 0, 2: 0}
    for depth in (1, 2):
        groups: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
        for s in slates:
            groups[s[:depth]][s[depth]] += 1
        for prefix, counter in groups.items():
            m = sum(counter.values())
            cond = logged[prefix]
            left = [a for a in ids if a not in prefix]
            if set(cond) != set(left) or min(m * cond[a] for a in left) < 5:
                continue  # too few decisions behind this prefix for a chi-square
            assert math.fsum(cond.values()) == pytest.approx(1.0, abs=1e-12)
            pvalue = chi2([counter[a] for a in left], [m * cond[a] for a in left])
            assert pvalue > P_MIN, (prefix, counter, cond)
            tested[depth] += 1
    assert tested[1] == len(ids)  # every slot-0 choice had enough data
    assert tested[2] >= 10

    # Whole slates against the product of their logged probabilities: the most frequent slates
    # one by one, the rest pooled.
    slate_p = {}
    for s in set(slates):
        slate_p[s] = math.prod(logged[s[:j]][s[j]] for j in range(k))
    total = math.fsum(slate_p.values())
    frequent = sorted((s for s in slate_p if n * slate_p[s] >= 40), key=lambda s: -slate_p[s])
    assert len(frequent) >= 10
    slate_counts = Counter(slates)
    observed = [slate_counts[s] for s in frequent]
    expected = [n * slate_p[s] for s in frequent]
    observed.append(n - sum(observed))
    expected.append(n - math.fsum(expected))
    assert total <= 1 + 1e-12
    assert chi2(observed, expected) > P_MIN
    check_logged(settings, responses)
