"""Builders of store rows for log/ tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from log.records import DecisionRecord, RewardRecord

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def decision_row(
    event_id: str,
    *,
    loop: str = "default",
    decided_at: datetime = T0,
    wait_s: float = 60.0,
    n_slots: int = 1,
    deferred: bool = False,
) -> dict[str, Any]:
    actions = [{"id": f"a{i}", "features": {"x": i}} for i in range(max(3, n_slots))]
    slots = [
        {"slot": k, "action_id": actions[k]["id"], "probability": 1 / (len(actions) - k)}
        for k in range(n_slots)
    ]
    return {
        "loop": loop,
        "event_id": event_id,
        "decided_at": decided_at,
        "model_version": "untrained",
        "policy_arm": "live",
        "request_digest": "0" * 64,
        "context": {"user": "u1", "hour": 3},
        "actions": actions,
        "pmf": [1 / len(actions)] * len(actions),
        "excluded": [],
        "chosen": actions[0]["id"],
        "slots": slots,
        "n_slots": n_slots,
        "is_slate": n_slots > 1,
        "deferred": deferred,
        "activated_at": None,
        "reward_deadline": None if deferred else decided_at + timedelta(seconds=wait_s),
        "response": {"event_id": event_id},
    }


def reward_row(
    event_id: str,
    value: float,
    *,
    received_at: datetime,
    slot: int = 0,
    late: bool = False,
    loop: str = "default",
    reward_id: str | None = None,
) -> dict[str, Any]:
    return {
        "reward_id": reward_id or f"{event_id}-{slot}-{received_at.timestamp()}-{value}",
        "loop": loop,
        "event_id": event_id,
        "slot": slot,
        "value": value,
        "received_at": received_at,
        "late": late,
    }


def decision_rec(event_id: str, model_version: str = "untrained", **kwargs: Any) -> DecisionRecord:
    return DecisionRecord.from_row(
        dict(decision_row(event_id, **kwargs), model_version=model_version)
    )


def reward_rec(event_id: str, value: float, **kwargs: Any) -> RewardRecord:
    return RewardRecord.from_row(reward_row(event_id, value, **kwargs))
