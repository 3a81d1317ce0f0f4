"""Export a loop's decisions to Parquet: one row per decision, for experimenters' notebooks.

Every decision in the window is written, joined or not (`joined` tells; `reward` and
`default_applied` are null until the joiner ran). Columns (`SCHEMA`):

* `loop`, `event_id`, `decided_at` (timestamp, microseconds, UTC), `model_version`;
* `context`: the context features as a JSON string;
* `action_ids`, `action_features` (one JSON string per action), `probabilities`: every action of
  the request in stored order, aligned; excluded actions are listed with probability 0;
* `excluded`: the excluded action ids; `chosen` and `chosen_probability` (slot 0);
* `slots`: per slot {slot, action_id, probability (conditional on the earlier slots), reward
  (null until joined)}; a single decision has one slot;
* `reward`, `default_applied`: slot 0's joined outcome, null when not joined;
* `joined`: outcomes written for every slot; `deferred`; `activated`: the decision went live
  (not deferred, or deferred and activated), i.e. it can be joined;
* `policy_arm` ("live" or "canary": the arm that served it; `model_version` is that arm's
  version and `probabilities`/`slots` its probabilities, the propensities to use) and
  `arm_probability` (the share of units the arm gets: p for a canary, 1 - p for live during a
  canary split, 1 otherwise; for the A/B analysis of arms, not a propensity of the action);
* `shadow_version` and `shadow_probabilities` (aligned with `action_ids`; for a slate, the first
  slot's): the shadow version scored beside the decision, never served; null without one.
* `retriever_version` and `index_version`: for a decision whose candidates were retrieved from
  the catalog (`action_ids` are those candidates), the retriever and the index; null otherwise.

Rows are written in row groups of `batch_rows` through `pyarrow.parquet.ParquetWriter` while the
decisions stream from the database, so memory stays bounded by one batch.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine

from log.export import DEFAULT_YIELD_PER, ExportStats, LoggedDecision, iter_decisions

__all__ = ["SCHEMA", "export_parquet"]

SLOT_TYPE = pa.struct(
    [
        pa.field("slot", pa.int32(), nullable=False),
        pa.field("action_id", pa.string(), nullable=False),
        pa.field("probability", pa.float64(), nullable=False),
        pa.field("reward", pa.float64()),
    ]
)

SCHEMA = pa.schema(
    [
        pa.field("loop", pa.string(), nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("decided_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("context", pa.string(), nullable=False),
        pa.field("action_ids", pa.list_(pa.string()), nullable=False),
        pa.field("action_features", pa.list_(pa.string()), nullable=False),
        pa.field("probabilities", pa.list_(pa.float64()), nullable=False),
        pa.field("excluded", pa.list_(pa.string()), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("chosen_probability", pa.float64(), nullable=False),
        pa.field("slots", pa.list_(SLOT_TYPE), nullable=False),
        pa.field("reward", pa.float64()),
        pa.field("default_applied", pa.bool_()),
        pa.field("joined", pa.bool_(), nullable=False),
        pa.field("deferred", pa.bool_(), nullable=False),
        pa.field("activated", pa.bool_(), nullable=False),
        pa.field("policy_arm", pa.string(), nullable=False),
        pa.field("arm_probability", pa.float64(), nullable=False),
        pa.field("shadow_version", pa.string()),
        pa.field("shadow_probabilities", pa.list_(pa.float64())),
        pa.field("retriever_version", pa.string()),
        pa.field("index_version", pa.string()),
    ]
)

DEFAULT_BATCH_ROWS = 10_000


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _row(d: LoggedDecision) -> dict[str, Any]:
    slots = sorted(d.record.slots, key=lambda s: int(s["slot"]))
    first = d.outcomes.get(0)
    joined = d.joined
    shadow = d.record.shadow
    retrieval = d.record.retrieval
    return {
        "loop": d.record.loop,
        "event_id": d.record.event_id,
        "decided_at": d.record.decided_at,
        "model_version": d.record.model_version,
        "context": _json(d.record.context),
        "action_ids": [str(a["id"]) for a in d.record.actions],
        "action_features": [_json(a.get("features") or {}) for a in d.record.actions],
        "probabilities": [float(p) for p in d.record.pmf],
        "excluded": list(d.record.excluded),
        "chosen": d.record.chosen,
        "chosen_probability": float(slots[0]["probability"]),
        "slots": [
            {
                "slot": int(s["slot"]),
                "action_id": s["action_id"],
                "probability": float(s["probability"]),
                "reward": o.reward if (o := d.outcomes.get(int(s["slot"]))) else None,
            }
            for s in slots
        ],
        "reward": first.reward if first else None,
        "default_applied": first.default_applied if first else None,
        "joined": joined,
        "deferred": d.record.deferred,
        "activated": not d.record.deferred or d.record.activated_at is not None,
        "policy_arm": d.record.policy_arm,
        "arm_probability": float(d.record.arm_probability),
        "shadow_version": None if shadow is None else str(shadow["version"]),
        "shadow_probabilities": None if shadow is None else [float(p) for p in shadow["pmf"]],
        "retriever_version": None if retrieval is None else str(retrieval["retriever"]),
        "index_version": None if retrieval is None else str(retrieval["index"]),
    }


def export_parquet(
    engine: Engine,
    loop: str,
    path: str | os.PathLike[str] | IO[bytes],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    yield_per: int = DEFAULT_YIELD_PER,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> ExportStats:
    """Write every decision of `loop` with since <= decided_at < until to the Parquet file
    `path` (created or overwritten; a binary file object works too), oldest first, one row
    group per `batch_rows` decisions. An empty window gives a file with the schema, no rows."""
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"batch_rows must be an int >= 1, got {batch_rows!r}")
    decisions = iter_decisions(engine, loop, since=since, until=until, yield_per=yield_per)
    stats = ExportStats()
    batch: list[dict[str, Any]] = []
    with pq.ParquetWriter(path, SCHEMA) as writer:
        for d in decisions:
            row = _row(d)
            batch.append(row)
            stats.rows += 1
            stats.joined += row["joined"]
            stats.slates += d.record.is_slate
            if len(batch) >= batch_rows:
                writer.write_table(pa.Table.from_pylist(batch, schema=SCHEMA))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=SCHEMA))
    return stats
