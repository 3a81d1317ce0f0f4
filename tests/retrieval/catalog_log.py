"""A simulated catalog log in a store: the catalog of a `CatalogSimulator`, its events logged as
joined one-slot decisions one second apart (reward 1 when clicked), and two-tower retrievers
trained on a prefix of the same events (for the retriever gate's tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from evaluation.simulator_catalog import CatalogEvents, CatalogSimulator
from log.catalog import ItemUpsert, upsert_items
from log.joiner import join_loop
from log.records import DecisionRecord, RewardRecord
from log.schema import Engine
from log.writer import GroupCommitWriter

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def decision(sim: CatalogSimulator, events: CatalogEvents, i: int, loop: str) -> DecisionRecord:
    j = int(events.item_index[i])
    item_id, features = sim.item_id(j), sim.item_features(j)
    at = T0 + timedelta(seconds=i)
    return DecisionRecord(
        loop=loop,
        event_id=f"e{i}",
        decided_at=at,
        model_version="untrained",
        policy_arm="live",
        request_digest="0" * 64,
        context=events.contexts[i],
        actions=[{"id": item_id, "features": features}],
        pmf=[1.0],
        excluded=[],
        chosen=item_id,
        slots=[{"slot": 0, "action_id": item_id, "probability": 1.0}],
        n_slots=1,
        is_slate=False,
        deferred=False,
        activated_at=None,
        reward_deadline=at + timedelta(seconds=60),
        response={},
    )


def write_catalog_log(
    engine: Engine,
    spool: Path,
    sim: CatalogSimulator,
    events: CatalogEvents,
    loop: str = "default",
) -> None:
    """Store the simulator's catalog and its events as joined decisions of `loop`."""
    upsert_items(
        engine, loop, [ItemUpsert(i, f, T0) for i, f in sim.items()], T0 - timedelta(days=1)
    )
    writer = GroupCommitWriter(engine, spool, delay_s=0.0)
    writer.start()
    try:
        records: list[DecisionRecord | RewardRecord] = []
        for i in range(len(events.clicked)):
            records.append(decision(sim, events, i, loop))
            if events.clicked[i]:
                at = T0 + timedelta(seconds=i)
                records.append(RewardRecord(f"r{i}", loop, f"e{i}", 0, 1.0, at, False))
        writer.write_sync(records)
    finally:
        writer.stop()
    join_loop(engine, loop, default_reward=0.0, aggregation="earliest", now=T0 + timedelta(days=1))
