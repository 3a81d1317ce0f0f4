"""`decision-service items load` (Parquet and JSONL, batched, validated) and `decision-service
retriever train / check / promote` over a store with joined decisions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from decision_service.cli import app
from decision_service.settings import get_settings
from evaluation.simulator_catalog import CatalogSimulator
from log.catalog import get_item, list_items
from log.joiner import join_loop
from log.loops import ensure_default_loop
from log.records import RewardRecord
from log.retrievers import list_retrievers, live_retriever
from log.schema import make_engine, migrate
from log.writer import GroupCommitWriter
from tests.retrieval.catalog_log import T0, decision

runner = CliRunner()


@pytest.fixture
def store(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("DS_DATABASE_URL", db_url)
    get_settings.cache_clear()
    engine = make_engine(db_url)
    migrate(engine)
    ensure_default_loop(engine)
    engine.dispose()
    yield db_url
    get_settings.cache_clear()


def test_items_load_parquet_and_jsonl(store: str, tmp_path: Path) -> None:
    parquet = tmp_path / "items.parquet"
    pq.write_table(
        pa.table(
            {
                "id": [f"p{i:03d}" for i in range(250)],
                "features": [{"creator": f"c{i % 5}", "n": i} for i in range(250)],
                "created_at": [T0 + timedelta(hours=i) for i in range(250)],
            }
        ),
        parquet,
    )
    result = runner.invoke(
        app, ["items", "load", str(parquet), "--loop", "default", "--batch", "100"]
    )
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout.strip().splitlines()[-1])["upserted"] == 250
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_bytes(
        b"\n".join(orjson.dumps({"id": f"j{i}", "features": {"n": i}}) for i in range(30))
    )
    assert runner.invoke(app, ["items", "load", str(jsonl), "--loop", "default"]).exit_code == 0
    engine = make_engine(store)
    try:
        _, total = list_items(engine, "default", after=None, limit=1)
        assert total == 280
        item = get_item(engine, "default", "p007")
        assert item is not None and item.features == {"creator": "c2", "n": 7}
        assert item.created_at == T0 + timedelta(hours=7)
        # a bad line is refused with its position, and its batch writes nothing
        bad = tmp_path / "bad.jsonl"
        bad.write_bytes(b'{"id": "ok", "features": {}}\n{"id": "", "features": {}}\n')
        result = runner.invoke(app, ["items", "load", str(bad), "--loop", "default"])
        assert result.exit_code != 0
        assert get_item(engine, "default", "ok") is None
    finally:
        engine.dispose()


def test_retriever_train_and_promote(store: str, tmp_path: Path) -> None:
    """Joined decisions of the simulator -> a registered retriever with its metrics -> live."""
    sim = CatalogSimulator(n_items=200, seed=0)
    events = sim.events(1_200, seed=1)
    engine = make_engine(store)
    writer = GroupCommitWriter(engine, tmp_path / "spool", delay_s=0.0)
    writer.start()
    try:
        records = []
        for i in range(len(events.item_index)):
            records.append(decision(sim, events, i, "default"))
            at = T0 + timedelta(seconds=i)
            if events.clicked[i]:
                records.append(RewardRecord(f"r{i}", "default", f"e{i}", 0, 1.0, at, False))
        writer.write_sync(records)
    finally:
        writer.stop()
    join_loop(
        engine, "default", default_reward=0.0, aggregation="earliest", now=T0 + timedelta(days=1)
    )
    runner.invoke(app, ["items", "load", str(_jsonl(tmp_path, sim)), "--loop", "default"])
    result = runner.invoke(
        app, ["retriever", "train", "--loop", "default", "--epochs", "2", "--dim", "8"]
    )
    assert result.exit_code == 0, result.output
    out = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert out["train_examples"] + out["val_examples"] == 1_200
    assert 0.0 <= out["val_auc"] <= 1.0
    (candidate,) = list_retrievers(engine, "default")
    assert candidate.status == "candidate" and candidate.metrics["val_auc"] == out["val_auc"]
    promote = ["retriever", "promote", candidate.version, "--loop", "default"]
    result = runner.invoke(app, promote)  # no gate verdict yet
    assert result.exit_code == 1 and "gate_not_passed" in result.output
    result = runner.invoke(app, ["retriever", "check", candidate.version, "--loop", "default"])
    assert result.exit_code == 0, result.output
    verdict = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert verdict["numbers"]["baseline"] == "popularity"
    assert verdict["numbers"]["held_out"] == out["val_examples"]  # after trained_until
    result = runner.invoke(app, [*promote, "--override", "--reason", "two epochs only"])
    assert result.exit_code == 0, result.output
    live = live_retriever(engine, "default")
    assert live is not None and live.version == candidate.version
    item = get_item(engine, "default", sim.item_id(3))
    assert item is not None and item.embedding_model == candidate.version
    assert item.embedding is not None and len(item.embedding) == 8
    engine.dispose()


def _jsonl(tmp_path: Path, sim: CatalogSimulator) -> Path:
    path = tmp_path / "catalog.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps({"id": i, "features": f}) for i, f in sim.items()))
    return path


def test_retriever_rollout_commands(store: str, tmp_path: Path) -> None:
    """`retriever rollout` (shadow, canary: gated), `reject`, `promote` and `rollback`."""
    from datetime import UTC, datetime

    import torch

    from log.retrievers import get_retriever, register_retriever
    from policies.two_tower import TwoTower, TwoTowerConfig, save_two_tower

    engine = make_engine(store)
    sim = CatalogSimulator(n_items=40, n_segments=2, n_categories=3, n_creators=4, seed=0)
    runner.invoke(app, ["items", "load", str(_jsonl(tmp_path, sim)), "--loop", "default"])

    def register(seed: int) -> str:
        torch.manual_seed(seed)
        model = TwoTower(TwoTowerConfig(buckets=256, hidden=8, dim=8))
        artifact = save_two_tower(model)
        return register_retriever(engine, "default", artifact, {}, datetime.now(UTC)).version

    def run(*args: str) -> dict[str, object]:
        result = runner.invoke(app, ["retriever", *args, "--loop", "default"])
        assert result.exit_code == 0, result.output
        out: dict[str, object] = orjson.loads(result.stdout.strip().splitlines()[-1])
        return out

    first, second = register(0), register(1)
    run("promote", first, "--override", "--reason", "first")
    assert run("rollout", second, "--to", "shadow")["status"] == "shadow"
    canary = ["retriever", "rollout", second, "--loop", "default", "--to", "canary"]
    result = runner.invoke(app, canary)
    assert result.exit_code == 1 and "gate_not_passed" in result.output
    result = runner.invoke(app, [*canary, "--override", "--reason", "try", "--percent", "20"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout.strip().splitlines()[-1])["canary_percent"] == 20.0
    assert run("promote", second, "--override", "--reason", "go")["replaced"] == first
    assert run("rollback", "--reason", "undo")["version"] == first
    third = register(2)
    run("rollout", third, "--to", "shadow")
    assert run("reject", third, "--reason", "no")["status"] == "rejected"
    assert [get_retriever(engine, v).status for v in (first, second, third)] == [  # type: ignore[union-attr]
        "live",
        "retired",
        "rejected",
    ]
    engine.dispose()
