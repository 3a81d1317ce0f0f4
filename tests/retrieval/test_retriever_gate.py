"""The retriever gate (`deploy.retriever_gate`) and promotion through its verdict, on both
databases: a simulated catalog log (`CatalogSimulator`, uniform logging, 4,000 joined events);
a two-tower trained on the first 2,000 events is checked on the 2,000 after them against an
untrained (random) retriever: the trained one passes, the random one fails against it; a gate
whose min_events exceeds the held-out events stays pending (popularity baseline when no
retriever is live); promotion is refused without a passed verdict, an override is audited; the
verdict shows in `GET /v1/loops/{loop}/retrievers`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from decision_service.app import create_app
from decision_service.retrieval import RetrievalRegistry
from deploy.interval import Interval
from deploy.learner.faults import Faults
from deploy.learner.progress import run_rollout
from deploy.retriever_gate import RetrieverNumbers, check_retriever, decide, recall_hits
from evaluation.simulator_catalog import CatalogSimulator
from explore.errors import Conflict, InvalidInput
from learn.retriever_train import RetrieverTrainConfig, make_examples, train_two_tower
from log.audit import read_audit
from log.deploy_settings import GateSettings
from log.loops import LoopConfig, get_loop, put_loop
from log.retrievers import get_retriever, live_retriever, register_retriever
from log.schema import Engine, make_engine, migrate
from policies.two_tower import TwoTower, TwoTowerConfig, save_two_tower
from tests.conftest import admin_client, make_settings
from tests.retrieval.catalog_log import T0, write_catalog_log

N_TRAIN, N_EVENTS, K = 2_000, 4_000, 50
TOWER = TwoTowerConfig(buckets=1 << 12, hidden=16, dim=8)


def _sim() -> CatalogSimulator:
    return CatalogSimulator(
        n_items=300,
        n_segments=8,
        n_categories=8,
        n_creators=20,
        scale=4.0,
        quality_weight=1.0,
        seed=0,
    )


@pytest.fixture(scope="module")
def trained() -> tuple[bytes, dict[str, Any], bytes]:
    """(artifact, metrics) of a two-tower trained on the first N_TRAIN events, and an untrained
    (random) one's artifact."""
    sim = _sim()
    events = sim.events(N_EVENTS, seed=1)
    rows = [
        (
            events.contexts[i],
            sim.item_id(int(events.item_index[i])),
            sim.item_features(int(events.item_index[i])),
            bool(events.clicked[i]),
            (T0 + timedelta(seconds=i)).timestamp(),
        )
        for i in range(N_TRAIN)
    ]
    config = RetrieverTrainConfig(
        epochs=6, batch_size=256, progress=False, tower=TOWER, recall_k=(K,)
    )
    result = train_two_tower(make_examples(rows, TOWER.buckets), config)
    metrics = {k: v for k, v in result.metrics.items() if k != "history"}
    # it learned from the whole prefix (the validation rows too): held out = after it
    metrics["trained_until"] = (T0 + timedelta(seconds=N_TRAIN - 1)).timestamp()
    torch.manual_seed(1)
    return save_two_tower(result.model), metrics, save_two_tower(TwoTower(TOWER))


def _gate(**values: Any) -> GateSettings:
    return GateSettings(**{"min_events": 200, "sequential": True, **values})


@pytest.fixture
def engine(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(db_url)
    migrate(engine)
    put_loop(engine, "default", LoopConfig(default_reward=0.0, gate=_gate()))
    sim = _sim()
    write_catalog_log(engine, tmp_path / "spool", sim, sim.events(N_EVENTS, seed=1))
    yield engine
    engine.dispose()


def _set_gate(engine: Engine, **values: Any) -> None:
    stored = get_loop(engine, "default")
    assert stored is not None
    put_loop(engine, "default", replace(stored.config, gate=_gate(**values)))


def _register(engine: Engine, artifact: bytes, metrics: dict[str, Any]) -> str:
    return register_retriever(engine, "default", artifact, metrics, datetime.now(UTC)).version


# -- the pure decision ---------------------------------------------------------------------


def test_decide_rules() -> None:
    settings = GateSettings(min_events=100, margin=0.0, max_events=1000)
    up, down, wide = Interval(0.2, 0.1, 0.3), Interval(-0.2, -0.3, -0.1), Interval(0, -0.1, 0.1)
    assert decide(RetrieverNumbers(1, None), settings)[0] == "pending"
    assert decide(RetrieverNumbers(0, None, "no trained_until"), settings)[0] == "pending"
    assert decide(RetrieverNumbers(150, up), settings)[0] == "pass"
    decision, reason = decide(RetrieverNumbers(50, up), settings)
    assert decision == "pending" and "50 held-out events of the 100 needed" in reason
    assert decide(RetrieverNumbers(50, down), settings)[0] == "fail"
    assert decide(RetrieverNumbers(500, wide), settings)[0] == "pending"
    assert decide(RetrieverNumbers(1000, wide), settings)[0] == "fail"
    assert decide(RetrieverNumbers(300, wide, held_out=1000), settings)[0] == "fail"
    assert decide(RetrieverNumbers(300, wide, held_out=999), settings)[0] == "pending"
    # the margin: better by 0.2 is not better by 0.15 with a lower bound of 0.1
    assert decide(RetrieverNumbers(150, up), replace(settings, margin=0.15))[0] == "pending"


def test_recall_hits_counts_ties_against() -> None:
    scores = np.array([[3.0, 2.0, 1.0], [1.0, 1.0, 1.0], [0.0, 5.0, 4.0]])
    assert recall_hits(scores, np.array([1, 0, 0]), 2).tolist() == [1.0, 0.0, 0.0]
    assert recall_hits(scores, np.array([2, 2, 0]), 3).tolist() == [1.0, 1.0, 1.0]


# -- on a simulated catalog log ------------------------------------------------------------


def test_better_passes_worse_fails_pending_below_min_events(
    engine: Engine, trained: tuple[bytes, dict[str, Any], bytes]
) -> None:
    artifact, metrics, random_artifact = trained
    random_metrics = {"trained_until": metrics["trained_until"]}
    # no live retriever: the popularity baseline; too few events for min_events -> pending
    _set_gate(engine, min_events=5_000)
    good = _register(engine, artifact, metrics)
    verdict = check_retriever(engine, "default", good, k=K)
    n = verdict.numbers["n"]
    assert verdict.decision == "pending" and f"{n} held-out events of the 5000" in verdict.reason
    assert verdict.numbers["baseline"] == "popularity" and verdict.incumbent is None
    assert 300 < n < N_EVENTS - N_TRAIN  # the rewarded held-out events only
    assert verdict.numbers["held_out"] == N_EVENTS - N_TRAIN
    # a random retriever goes live (override), the trained candidate passes against it
    weak = _register(engine, random_artifact, random_metrics)
    RetrievalRegistry(engine).promote("default", weak, "gk", reason="bootstrap", override=True)
    _set_gate(engine, min_events=200)
    verdict = check_retriever(engine, "default", good, k=K)
    numbers = verdict.numbers
    print(f"trained vs random: {verdict.decision}: {verdict.reason}; {numbers}")
    assert verdict.decision == "pass", verdict.reason
    assert verdict.incumbent == weak and numbers["baseline"] == f"retriever:{weak}"
    assert numbers["recall"]["candidate"] > numbers["recall"]["live"] + 0.1
    assert numbers["auc"]["candidate"] > 0.8 and numbers["difference"]["ci_low"] > 0
    assert verdict.look == 2 and verdict.criteria["kind"] == "retriever"
    RetrievalRegistry(engine).promote("default", good, "gk")
    assert get_retriever(engine, good).status == "live"  # type: ignore[union-attr]
    # another random candidate against the trained live one fails
    worse = _register(engine, random_artifact, random_metrics)
    verdict = check_retriever(engine, "default", worse, k=K)
    assert verdict.decision == "fail", verdict.reason
    assert verdict.numbers["difference"]["ci_high"] < 0
    with pytest.raises(Conflict) as err:
        RetrievalRegistry(engine).promote("default", worse, "gk")
    assert err.value.code == "gate_not_passed"
    with pytest.raises(Conflict) as err:
        check_retriever(engine, "default", good, k=K)
    assert err.value.code == "not_a_candidate"
    # without trained_until there are no held-out events: pending
    blind = _register(engine, random_artifact, {})
    assert check_retriever(engine, "default", blind).decision == "pending"
    # the learner's rollout step: checks the pending one again, rejects the failed one
    stored = get_loop(engine, "default")
    assert stored is not None
    run = run_rollout(engine, stored, now=datetime.now(UTC), faults=Faults())
    assert {"version": blind, "kind": "retriever", "gate": "pending", "look": 2} in run.details[
        "steps"
    ]
    assert get_retriever(engine, worse).status == "rejected"  # type: ignore[union-attr]
    assert get_retriever(engine, blind).status == "candidate"  # type: ignore[union-attr]
    (entry,) = [e for e in read_audit(engine, loop="default") if e.target == worse]
    assert entry.action == "retriever.rejected" and entry.actor == "learner"


def test_promotion_through_the_verdict_over_http(
    db_url: str, tmp_path: Path, engine: Engine, trained: tuple[bytes, dict[str, Any], bytes]
) -> None:
    artifact, metrics, random_artifact = trained
    good = _register(engine, artifact, metrics)
    other = _register(engine, random_artifact, {"trained_until": metrics["trained_until"]})
    with admin_client(create_app(make_settings(db_url, tmp_path))) as client:
        base = "/v1/loops/default/retrievers"
        r = client.post(f"{base}/{good}/promote")
        assert r.status_code == 409 and r.json()["error"]["code"] == "gate_not_passed"
        r = client.post(f"{base}/{good}/promote", json={"override": True})
        assert r.status_code == 422 and r.json()["error"]["code"] == "reason_required"
        assert client.post(f"{base}/{good}/check", json={"k": 0}).status_code == 422
        r = client.post(f"{base}/{good}/check", json={"k": K})
        assert r.status_code == 200, r.text
        verdict = r.json()
        assert verdict["numbers"]["baseline"] == "popularity" and verdict["numbers"]["k"] == K
        assert verdict["decision"] in ("pass", "fail", "pending")
        listed = {v["version"]: v for v in client.get(base).json()["retrievers"]}
        assert listed[good]["verdict"]["id"] == verdict["id"]
        assert listed[other]["verdict"] is None
        # an override goes live and is audited with its reason
        r = client.post(
            f"{base}/{other}/promote", json={"override": True, "reason": "first retriever"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "live"
        (entry,) = [e for e in read_audit(engine, loop="default") if e.target == other]
        assert entry.action == "retriever.live_override" and entry.reason == "first retriever"
        assert entry.details["override"] is True
        # reject: audited, then neither promotable nor checkable
        r = client.post(f"{base}/{good}/reject", json={"reason": "not now"})
        assert r.status_code == 200 and r.json()["status"] == "rejected"
        assert client.post(f"{base}/{good}/reject", json={"reason": "x"}).status_code == 409
        r = client.post(f"{base}/{good}/check")
        assert r.status_code == 409 and r.json()["error"]["code"] == "not_a_candidate"
        assert client.post(f"{base}/{good}/reject", json={}).status_code == 422
        assert client.post(f"{base}/nope/check").status_code == 404
        rejected = [e for e in read_audit(engine, loop="default") if e.target == good]
        assert [e.action for e in rejected] == ["retriever.rejected"]
    live = live_retriever(engine, "default")
    assert live is not None and live.version == other


def test_override_needs_a_reason(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    with pytest.raises(InvalidInput):
        RetrievalRegistry(engine).promote("default", "r-none", "gk", override=True, reason=" ")
    engine.dispose()
