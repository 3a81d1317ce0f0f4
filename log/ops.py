"""The write operations that go through the group-commit path, and their (de)serialisation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

DATETIME_FIELDS = ("decided_at", "activated_at", "reward_deadline", "received_at", "joined_at")


@dataclass(frozen=True)
class InsertDecision:
    row: dict[str, Any]  # columns of `decisions`

    @property
    def key(self) -> tuple[str, str]:
        return (self.row["loop"], self.row["event_id"])


@dataclass(frozen=True)
class InsertReward:
    row: dict[str, Any]  # columns of `rewards`


@dataclass(frozen=True)
class Activate:
    loop: str
    event_id: str
    activated_at: datetime
    reward_deadline: datetime


Op = InsertDecision | InsertReward | Activate


def op_to_json(op: Op) -> dict[str, Any]:
    if isinstance(op, InsertDecision):
        return {"op": "decision", "row": op.row}
    if isinstance(op, InsertReward):
        return {"op": "reward", "row": op.row}
    return {
        "op": "activate",
        "row": {
            "loop": op.loop,
            "event_id": op.event_id,
            "activated_at": op.activated_at,
            "reward_deadline": op.reward_deadline,
        },
    }


def _parse_times(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for name in DATETIME_FIELDS:
        value = out.get(name)
        if isinstance(value, str):
            out[name] = datetime.fromisoformat(value)
    return out


def op_from_json(data: dict[str, Any]) -> Op:
    row = _parse_times(data["row"])
    kind = data["op"]
    if kind == "decision":
        return InsertDecision(row)
    if kind == "reward":
        return InsertReward(row)
    if kind == "activate":
        return Activate(row["loop"], row["event_id"], row["activated_at"], row["reward_deadline"])
    raise ValueError(f"unknown spooled op {kind!r}")
