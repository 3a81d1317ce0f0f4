"""Simulated decision logs for the training tests: uniform logging, clicks as rewards."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from evaluation.simulator import Simulator
from explore.types import Action
from log.ops import Op
from log.records import DecisionRecord, RewardRecord
from log.training_reads import JoinedDecision
from log.writer import GroupCommitWriter
from policies.vw import VWPolicy

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
WAIT_S = 60.0


def sim_events(
    sim: Simulator,
    n: int,
    *,
    seed: int,
    loop: str = "default",
    start: datetime = T0,
    spacing_s: float = 1.0,
    n_slots: int | None = None,
    n_excluded: int = 0,
    prefix: str = "e",
) -> list[Op]:
    """`n` decisions logged by the uniform policy (slot by slot for slates), with their clicks.

    Event `i` is decided at `start + i * spacing_s`; its window closes WAIT_S later.
    """
    rng = np.random.default_rng(seed)
    ops: list[Op] = []
    for i in range(n):
        ctx = sim.sample_context(rng)
        items = sim.candidates(ctx, rng)
        actions = [{"id": it.id, "features": dict(it.features)} for it in items]
        excluded = [items[int(j)].id for j in rng.choice(len(items), n_excluded, replace=False)]
        allowed = [j for j, it in enumerate(items) if it.id not in excluded]
        pmf = [0.0 if it.id in excluded else 1.0 / len(allowed) for it in items]
        k = 1 if n_slots is None else n_slots
        picks = [allowed[int(j)] for j in rng.permutation(len(allowed))[:k]]
        slots = [
            {"slot": s, "action_id": items[j].id, "probability": 1.0 / (len(allowed) - s)}
            for s, j in enumerate(picks)
        ]
        decided_at = start + timedelta(seconds=i * spacing_s)
        event_id = f"{prefix}{i:06d}"
        ops.append(
            DecisionRecord.from_row(
                {
                    "loop": loop,
                    "event_id": event_id,
                    "decided_at": decided_at,
                    "model_version": "untrained",
                    "policy_arm": "live",
                    "request_digest": "0" * 64,
                    "context": dict(ctx.features),
                    "actions": actions,
                    "pmf": pmf,
                    "excluded": excluded,
                    "chosen": items[picks[0]].id,
                    "slots": slots,
                    "n_slots": k,
                    "is_slate": n_slots is not None,
                    "deferred": False,
                    "activated_at": None,
                    "reward_deadline": decided_at + timedelta(seconds=WAIT_S),
                    "response": {"event_id": event_id},
                }
            )
        )
        if n_slots is None:
            outcomes = [sim.reward(ctx, picks[0], items, rng)]
        else:
            outcomes = sim.slate_rewards(ctx, items, picks, rng)
        for s, outcome in enumerate(outcomes):
            if outcome.value > 0:
                ops.append(
                    RewardRecord.from_row(
                        {
                            "reward_id": f"{event_id}-{s}",
                            "loop": loop,
                            "event_id": event_id,
                            "slot": s,
                            "value": outcome.value,
                            "received_at": decided_at + timedelta(seconds=1),
                            "late": False,
                        }
                    )
                )
    return ops


def write(writer: GroupCommitWriter, ops: list[Op], chunk: int = 2000) -> None:
    for i in range(0, len(ops), chunk):
        writer.write_sync(ops[i : i + chunk])


def deadline(i: int, *, start: datetime = T0, spacing_s: float = 1.0) -> datetime:
    """The join time that closes the windows of events 0..i."""
    return start + timedelta(seconds=i * spacing_s + WAIT_S)


def greedy(policy: VWPolicy) -> Callable[[Any, Any], np.ndarray]:
    """The simulator policy that always picks the model's best-scored candidate."""

    def fn(features: Any, items: Any) -> np.ndarray:
        scores = policy.scores(features, [Action(it.id, it.features) for it in items])
        out = np.zeros(len(items))
        out[int(np.argmax(scores))] = 1.0
        return out

    return fn


def joined_event(**fields: Any) -> JoinedDecision:
    """A joined decision from the record's fields that matter to training (the others get
    neutral values) plus `rewards`, `join_seq` (default 1) and `joined_at` (default decided_at)."""
    rewards = fields.pop("rewards")
    join_seq = fields.pop("join_seq", 1)
    decided_at = fields.get("decided_at", T0)
    joined_at = fields.pop("joined_at", decided_at)
    values: dict[str, Any] = {
        "loop": "default",
        "event_id": "e1",
        "decided_at": decided_at,
        "model_version": "untrained",
        "policy_arm": "live",
        "request_digest": "0" * 64,
        "excluded": [],
        "n_slots": len(fields.get("slots", [None])),
        "is_slate": False,
        "deferred": False,
        "activated_at": None,
        "reward_deadline": decided_at + timedelta(seconds=WAIT_S),
        "response": {},
    }
    values.update(fields)
    return JoinedDecision(DecisionRecord(**values), rewards, join_seq, joined_at)
