"""Retriever rollout (`deploy.retriever_rollout`, `decision_service.decide_retrieved`), on both
databases where a store is involved: the moves candidate -> shadow -> canary -> live, reject and
rollback with their audit rows and refusals; the item embeddings a shadow or canary gets (cold
start of upserted items, promotion reusing them); the shadow leaving the served decision
identical field by field; the canary split (share, stability, independence from a model
canary) and the exactness of the logged pmf and arm probability (chi-square)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from decision_service.decide_retrieved import decide_request
from decision_service.rank_input import RankInput, RetrieveSpec
from decision_service.retrieval import LoopIndexes, RetrievalRegistry
from decision_service.runtime import LoopRuntime, explorer_for
from deploy.retriever_rollout import move_retriever, rollback_retriever
from explore.arms import CANARY, LIVE, ArmSplit, split_unit
from explore.errors import Conflict, InvalidInput, NotFound
from log.audit import read_audit
from log.catalog import (
    ItemUpsert,
    RolloutMoved,
    get_item,
    list_items,
    read_snapshot,
    upsert_items,
)
from log.loops import LoopConfig, put_loop
from log.retrievers import get_retriever, register_retriever
from log.schema import Engine, make_engine, migrate
from log.verdicts import VerdictRecord, store_verdict
from policies import VWPolicy
from policies.two_tower import TwoTower, TwoTowerConfig, save_two_tower

NOW = datetime(2026, 12, 1, tzinfo=UTC)
ALPHA = 1e-3  # each chi-square test fails a correct implementation once in a thousand runs
N_ITEMS = 60


def _tower(seed: int) -> TwoTower:
    torch.manual_seed(seed)
    return TwoTower(TwoTowerConfig(buckets=256, hidden=8, dim=8))


def _item(j: int, **extra: Any) -> ItemUpsert:
    return ItemUpsert(f"item/{j:03d}", {"creator": f"c{j % 7}", "cat": f"k{j % 11}", **extra})


def _register(engine: Engine, seed: int) -> str:
    return register_retriever(
        engine, "default", save_two_tower(_tower(seed)), {"seed": seed}, datetime.now(UTC)
    ).version


def _pass(engine: Engine, version: str) -> None:
    store_verdict(
        engine,
        VerdictRecord("default", version, None, datetime.now(UTC), "pass", "test verdict"),
    )


def _status(engine: Engine, version: str) -> str:
    found = get_retriever(engine, version)
    assert found is not None
    return found.status


@pytest.fixture
def engine(db_url: str) -> Any:
    engine = make_engine(db_url)
    migrate(engine)
    config = LoopConfig(exploration="epsilon_greedy", epsilon=0.3, default_reward=0.0)
    put_loop(engine, "default", config)
    yield engine
    engine.dispose()


@pytest.fixture
def registry(engine: Engine) -> RetrievalRegistry:
    """A loop with 60 items and a live retriever (seed 0)."""
    registry = RetrievalRegistry(engine)
    registry.upsert("default", [_item(j) for j in range(N_ITEMS)])
    live = _register(engine, 0)
    registry.promote("default", live, "gk", reason="first retriever", override=True)
    return registry


def test_moves_audit_and_refusals(engine: Engine, registry: RetrievalRegistry) -> None:
    held = registry.loops["default"]
    assert held.live is not None
    live = held.live.retriever
    a, b = _register(engine, 1), _register(engine, 2)

    def codes(fn: Any) -> str:
        with pytest.raises((Conflict, InvalidInput, NotFound)) as err:
            fn()
        return err.value.code

    # shadow needs no verdict; it embeds the whole catalog with its item tower
    assert registry.move("default", a, "shadow", "gk", role="gatekeeper").status == "shadow"
    side = read_snapshot(engine, "default", a, side=True)
    assert len(side.ids) == N_ITEMS
    assert np.allclose(
        side.embeddings, _tower(1).embed_items([_item(j).features for j in range(N_ITEMS)])
    )
    assert codes(lambda: registry.move("default", b, "shadow", "gk")) == "rollout_slot_taken"
    assert codes(lambda: registry.move("default", a, "shadow", "gk")) == "transition_conflict"
    # canary and live need the retriever gate's pass, or an override with a reason
    assert codes(lambda: registry.move("default", a, "canary", "gk")) == "gate_not_passed"
    assert codes(lambda: registry.move("default", a, "canary", "gk", override=True)) == (
        "reason_required"
    )
    assert codes(lambda: registry.move("default", a, "canary", "gk", canary_percent=0.0)) == (
        "invalid_request"
    )
    assert codes(lambda: registry.move("default", a, "shadow", "gk", canary_percent=5.0)) == (
        "invalid_request"
    )
    assert codes(lambda: registry.move("default", "r-nope", "canary", "gk")) == "not_found"
    moved = registry.move(
        "default", a, "canary", "gk", override=True, reason="watch it", canary_percent=30.0
    )
    assert (moved.status, moved.canary_percent) == ("canary", 30.0)
    assert codes(lambda: registry.move("default", a, "shadow", "gk")) == "invalid_transition"
    _pass(engine, b)
    assert codes(lambda: registry.move("default", b, "canary", "gk")) == "rollout_slot_taken"
    # the serving indexes: live and canary, with the canary's percent
    held = registry.loops["default"]
    assert held.versions() == {"live": live, "shadow": None, "canary": a}
    assert held.canary_percent == 30.0
    # reject the canary: it stops, its embeddings go
    assert registry.move("default", a, "rejected", "gk", reason="worse").status == "rejected"
    assert read_snapshot(engine, "default", a, side=True).ids == []
    assert registry.loops["default"].canary is None
    assert codes(lambda: registry.move("default", a, "rejected", "gk")) == "transition_conflict"
    # b: candidate -> canary (passed) -> live, then rollback
    assert registry.move("default", b, "canary", "gk", canary_percent=10).status == "canary"
    promoted = registry.promote("default", b, "gk")
    assert (promoted.status, promoted.replaced) == ("live", live)
    assert _status(engine, live) == "retired"
    assert read_snapshot(engine, "default", b, side=True).ids == []  # dropped, now the catalog's
    catalog = read_snapshot(engine, "default", b)
    assert len(catalog.ids) == N_ITEMS and set(catalog.models) == {b}
    assert codes(lambda: registry.rollback("default", "gk", reason="x", expected_live=live)) == (
        "transition_conflict"
    )
    restored = registry.rollback("default", "gk", reason="b hurts", expected_live=b)
    assert restored.version == live and restored.status == "live"
    assert _status(engine, b) == "retired"
    snapshot = read_snapshot(engine, "default", live)
    assert len(snapshot.ids) == N_ITEMS
    assert np.allclose(
        snapshot.embeddings, _tower(0).embed_items([_item(j).features for j in range(N_ITEMS)])
    )
    assert registry.loops["default"].live.retriever == live  # type: ignore[union-attr]
    assert codes(lambda: registry.rollback("default", "gk", reason="again")) == (
        "no_rollback_target"
    )
    actions = [
        (e.action, e.target, e.role)
        for e in read_audit(engine, loop="default")
        if e.action.startswith("retriever.")
    ]
    assert actions == [
        ("retriever.live_override", live, None),
        ("retriever.shadow", a, "gatekeeper"),
        ("retriever.canary_override", a, None),
        ("retriever.rejected", a, None),
        ("retriever.canary", b, None),
        ("retriever.live", b, None),
        ("retriever.rollback", b, None),
    ]


def test_concurrent_moves_make_one_transition(engine: Engine, registry: RetrievalRegistry) -> None:
    versions = [_register(engine, 10 + i) for i in range(3)]
    for version in versions:
        outcomes: list[str] = []
        lock = threading.Lock()

        def move(
            version: str = version,
            outcomes: list[str] = outcomes,
            lock: threading.Lock = lock,
        ) -> None:
            try:
                move_retriever(engine, "default", version, "shadow", actor="gk")
                result = "ok"
            except Conflict as err:
                result = err.code
            with lock:
                outcomes.append(result)

        threads = [threading.Thread(target=move) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["ok"] + ["transition_conflict"] * 5
        assert _status(engine, version) == "shadow"
        move_retriever(engine, "default", version, "rejected", actor="gk", reason="next")
    shadows = [e for e in read_audit(engine, loop="default") if e.action == "retriever.shadow"]
    assert len(shadows) == 3


def test_cold_start_and_promotion_reuse(engine: Engine, registry: RetrievalRegistry) -> None:
    canary = _register(engine, 3)
    registry.move("default", canary, "canary", "gk", override=True, reason="t", canary_percent=50)
    tower, live_tower = _tower(3), _tower(0)
    # a new item and a changed one: embedded by the live tower (catalog) and the canary's (own)
    inserted, embedded = registry.upsert("default", [_item(999), _item(1, cat="changed")])
    assert (inserted, embedded) == (1, 2)
    side = read_snapshot(engine, "default", canary, side=True)
    assert len(side.ids) == N_ITEMS + 1
    by_id = dict(zip(side.ids, side.embeddings, strict=True))
    want = tower.embed_items([_item(999).features, _item(1, cat="changed").features])
    assert np.allclose(by_id["item/999"], want[0]) and np.allclose(by_id["item/001"], want[1])
    stored = get_item(engine, "default", "item/999")
    assert stored is not None and stored.embedding_model != canary
    assert np.allclose(stored.embedding, live_tower.embed_items([_item(999).features])[0])  # type: ignore[arg-type]
    # the canary's index serves the new item after the rebuild
    registry.rebuild("default")
    held = registry.loops["default"]
    assert held.canary is not None and "item/999" in held.canary.ids
    # promotion reuses the canary's embeddings: no item is embedded again
    calls: list[int] = []

    def counting(version: str) -> Any:
        model = registry._model(version)

        class Counting:
            config = model.config

            def embed_items(self, rows: list[dict[str, Any]]) -> np.ndarray:
                calls.append(len(rows))
                return np.asarray(model.embed_items(rows))

        return Counting()

    _pass(engine, canary)
    moved = move_retriever(engine, "default", canary, "live", actor="gk", model_of=counting)
    assert moved.status == "live" and calls == []
    snapshot = read_snapshot(engine, "default", canary)
    assert snapshot.ids == side.ids and np.array_equal(snapshot.embeddings, side.embeddings)
    # an upsert computed for a set of retrievers that moved meanwhile writes nothing
    with pytest.raises(RolloutMoved):
        upsert_items(engine, "default", [_item(1000)], NOW, rolled_out=frozenset({"r-gone"}))
    assert get_item(engine, "default", "item/1000") is None


# -- the decision path ---------------------------------------------------------------------------


def _runtime(engine: Engine) -> LoopRuntime:
    config = LoopConfig(
        exploration="epsilon_greedy", epsilon=0.3, vw_args="--cb_type ips", default_reward=0.0
    )
    return LoopRuntime("default", config, NOW, explorer_for(config), VWPolicy(config.vw_args))


def _req(slots: int | None = None, user: str | None = None, k: int = 5) -> RankInput:
    return RankInput(None, {"user": "u1", "x": 0.5}, [], [], slots, False, user, RetrieveSpec(k=k))


def test_shadow_leaves_the_served_decision_identical(
    engine: Engine, registry: RetrievalRegistry
) -> None:
    shadow = _register(engine, 4)
    registry.move("default", shadow, "shadow", "gk")
    held = registry.loops["default"]
    assert held.shadow is not None and held.live is not None
    without = replace(held, shadow=None)
    runtime = _runtime(engine)
    for slots in (None, 3):
        for i in range(40):
            req = _req(slots)
            body = {"i": i, "slots": slots}
            plain = decide_request(req, body, runtime, NOW, f"e{i}", without)
            shadowed = decide_request(req, body, runtime, NOW, f"e{i}", held)
            a, b = asdict(plain), asdict(shadowed)
            summary = b["retrieval"].pop("shadow")
            assert "shadow" not in a["retrieval"]
            for name in a:  # field by field, the response included
                assert a[name] == b[name], name
            assert summary["retriever"] == shadow and summary["index"] == held.shadow.version
            served = {x["id"] for x in plain.actions}
            got = held.shadow.retrieve(
                req.context, 5, runtime.config.retrieval, (), frozenset(), NOW
            )
            ids = {x.id for x in got.actions}
            assert summary["common"] == len(ids & served)
            assert summary["overlap"] == len(ids & served) / max(len(ids), len(served))
            assert summary["chosen_in"] == (plain.chosen in ids)
            assert summary["slots_in"] == [s["action_id"] in ids for s in plain.slots]
    assert runtime.counters.retriever_shadow_retrieved == 80
    # a failing shadow logs null, is counted, and changes nothing served
    broken = replace(held, shadow=replace(held.shadow, model=_Broken()))
    plain = decide_request(_req(), {"i": 0}, runtime, NOW, "e0", without)
    failed = decide_request(_req(), {"i": 0}, runtime, NOW, "e0", broken)
    assert failed.retrieval is not None and failed.retrieval["shadow"] is None
    assert replace(failed, retrieval=plain.retrieval) == plain
    assert runtime.counters.retriever_shadow_failed == 1


class _Broken:
    def embed_user(self, context: dict[str, Any]) -> np.ndarray:
        return np.full((1, 8), np.nan, dtype=np.float32)


def test_canary_split_share_stable_and_independent(
    engine: Engine, registry: RetrievalRegistry
) -> None:
    canary = _register(engine, 5)
    registry.move("default", canary, "canary", "gk", override=True, reason="t", canary_percent=20)
    held = registry.loops["default"]
    key = LoopConfig().sampling_key
    n = 20_000
    arms = [held.arm(key, f"user{u}", f"e{u}")[0] for u in range(n)]
    share = arms.count(CANARY) / n
    assert abs(share - 0.2) < 4 * (0.2 * 0.8 / n) ** 0.5
    # stable per user: the same user (whatever the event id) stays in its arm
    assert all(held.arm(key, f"user{u}", f"other{u}")[0] == arms[u] for u in range(0, n, 97))
    # a new canary version draws its own users
    other = replace(held, canary=replace(held.canary, retriever="r-another"))  # type: ignore[arg-type]
    again = [other.arm(key, f"user{u}", "e")[0] for u in range(n)]
    assert sum(x != y for x, y in zip(arms, again, strict=True)) > 0.2 * n
    # independent of a model canary of the same share on the same units
    model = ArmSplit(key, "v-model-canary", 0.2)
    model_arms = [model.arm(split_unit(f"user{u}", "e"))[0] for u in range(n)]
    table = Counter(zip(arms, model_arms, strict=True))
    observed = [[table[(r, m)] for m in (LIVE, CANARY)] for r in (LIVE, CANARY)]
    assert chi2_contingency(observed).pvalue > ALPHA
    # without a canary every request retrieves with live, probability 1
    assert LoopIndexes(held.live).arm(key, "user1", "e1") == (LIVE, held.live, 1.0)


@pytest.mark.parametrize("slots", [None, 2])
def test_canary_split_logs_the_true_probabilities(
    engine: Engine, registry: RetrievalRegistry, slots: int | None
) -> None:
    """Requests without a user id (the unit is the event id): the frequency of (retriever arm,
    served slate) matches arm_probability x the logged slate probability."""
    canary = _register(engine, 6)
    registry.move("default", canary, "canary", "gk", override=True, reason="t", canary_percent=35)
    held = registry.loops["default"]
    runtime = _runtime(engine)
    n = 6_000
    counts: Counter[tuple[str, tuple[str, ...]]] = Counter()
    logged: dict[tuple[str, tuple[str, ...]], float] = {}
    arm_p: dict[str, float] = {}
    for i in range(n):
        record = decide_request(_req(slots, k=4), {"i": i}, runtime, NOW, f"e{i}", held)
        assert record.retrieval is not None
        arm = record.retrieval["arm"]
        assert record.retrieval["retriever"] == (canary if arm == CANARY else held.live.retriever)  # type: ignore[union-attr]
        arm_p.setdefault(arm, record.retrieval["arm_probability"])
        assert arm_p[arm] == record.retrieval["arm_probability"]
        served = tuple(s["action_id"] for s in record.slots)
        p = float(np.prod([s["probability"] for s in record.slots]))
        key = (arm, served)
        counts[key] += 1
        if key in logged:
            assert logged[key] == pytest.approx(p)
        logged[key] = p
    assert arm_p == {CANARY: pytest.approx(0.35), LIVE: pytest.approx(0.65)}
    assert runtime.counters.retriever_canary_served == counts_arm(counts, CANARY)
    # every slate of each arm: its logged probability is known from one draw of that arm with
    # the same context; the slates never drawn must carry little mass
    keys = sorted(logged)
    expected = np.array([arm_p[a] * logged[(a, s)] for a, s in keys])
    assert expected.sum() > 0.97
    observed = np.array([counts[k] for k in keys], dtype=float)
    expected = expected / expected.sum() * n
    assert chisquare(observed, expected).pvalue > ALPHA


def counts_arm(counts: Counter[tuple[str, tuple[str, ...]]], arm: str) -> int:
    return sum(c for (a, _), c in counts.items() if a == arm)


def test_a_canary_without_an_index_leaves_live(engine: Engine, registry: RetrievalRegistry) -> None:
    """A canary index that cannot be built leaves the loop on live (probability 1)."""
    canary = _register(engine, 7)
    registry.move("default", canary, "canary", "gk", override=True, reason="t", canary_percent=50)
    broken = replace(registry.loops["default"], canary=None)
    record = decide_request(_req(), {"i": 0}, _runtime(engine), NOW, "e0", broken)
    assert record.retrieval is not None
    assert (record.retrieval["arm"], record.retrieval["arm_probability"]) == (LIVE, 1.0)


def test_rollback_needs_a_retired_target(engine: Engine, registry: RetrievalRegistry) -> None:
    candidate = _register(engine, 8)
    with pytest.raises(Conflict) as err:
        rollback_retriever(engine, "default", actor="gk", reason="x", to=candidate)
    assert err.value.code == "invalid_transition"
    with pytest.raises(NotFound):
        rollback_retriever(engine, "default", actor="gk", reason="x", to="r-nope")


def test_upserts_racing_a_move_leave_every_item_embedded(
    engine: Engine, registry: RetrievalRegistry
) -> None:
    """Items upserted while a retriever enters shadow (before, during and after its catalog is
    embedded) all end with a fresh embedding of it: the move embeds again under the lock what
    changed, and an upsert that embedded for an outdated set of retrievers is retried."""
    shadow = _register(engine, 9)
    errors: list[BaseException] = []

    def upserts() -> None:
        try:
            for batch in range(8):
                items = [_item(100 + 10 * batch + j, batch=batch) for j in range(10)]
                items.append(_item(batch, changed=batch))  # an existing item's new features
                registry.upsert("default", items)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    thread = threading.Thread(target=upserts)
    thread.start()
    move_retriever(engine, "default", shadow, "shadow", actor="gk")
    thread.join()
    assert errors == []
    catalog, _ = list_items(engine, "default", after=None, limit=1000)
    side = read_snapshot(engine, "default", shadow, side=True)
    assert side.ids == [item.item_id for item in catalog]
    want = _tower(9).embed_items([item.features for item in catalog])
    assert np.allclose(side.embeddings, want, atol=1e-6)


def test_an_upsert_is_retried_when_the_retrievers_moved(
    engine: Engine, registry: RetrievalRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import decision_service.retrieval as retrieval

    shadow = _register(engine, 10)
    move_retriever(engine, "default", shadow, "shadow", actor="gk")
    real = retrieval.rolled_out
    calls: list[int] = []

    def stale_once(engine: Engine, loop: str) -> dict[str, Any]:
        calls.append(1)
        found = real(engine, loop)
        return {"live": found["live"]} if len(calls) == 1 else found

    monkeypatch.setattr(retrieval, "rolled_out", stale_once)
    registry.upsert("default", [_item(500)])
    assert len(calls) == 2
    side = read_snapshot(engine, "default", shadow, side=True)
    assert "item/500" in side.ids
