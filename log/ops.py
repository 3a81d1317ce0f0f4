"""What the group-commit path writes (the typed records) and their spool encoding.

A spooled line is one JSON object: `{"op": "decision" | "reward" | "activate", "row": {...}}`
with timestamps as ISO 8601 strings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from log.records import ActivationRecord, DecisionRecord, Record, RewardRecord

DATETIME_FIELDS = ("decided_at", "activated_at", "reward_deadline", "received_at")

Op = Record

_KIND = {DecisionRecord: "decision", RewardRecord: "reward", ActivationRecord: "activate"}
_PARSE: dict[str, Any] = {
    "decision": DecisionRecord.from_row,
    "reward": RewardRecord.from_row,
    "activate": ActivationRecord.from_row,
}


def op_to_json(op: Op) -> dict[str, Any]:
    return {"op": _KIND[type(op)], "row": op.row()}


def op_to_line(op: Op) -> bytes:
    return orjson.dumps(op_to_json(op)) + b"\n"


def _parse_times(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for name in DATETIME_FIELDS:
        value = out.get(name)
        if isinstance(value, str):
            out[name] = datetime.fromisoformat(value)
    return out


def op_from_json(data: dict[str, Any]) -> Op:
    parse = _PARSE.get(data.get("op", ""))
    if parse is None:
        raise ValueError(f"unknown spooled op {data.get('op')!r}")
    op: Op = parse(_parse_times(data["row"]))
    return op
