"""PostgreSQL fast path: a group of decisions in one binary COPY (DESIGN §5)."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from psycopg.types.json import Json
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from log.records import DECISION_COLUMNS, DecisionRecord

# PostgreSQL type of each column of `decisions` that a DecisionRecord carries, in its order.
_PG_TYPES = {
    "loop": "varchar",
    "event_id": "varchar",
    "decided_at": "timestamptz",
    "model_version": "varchar",
    "policy_arm": "varchar",
    "request_digest": "varchar",
    "context": "json",
    "actions": "json",
    "pmf": "json",
    "excluded": "json",
    "chosen": "varchar",
    "slots": "json",
    "n_slots": "int4",
    "is_slate": "bool",
    "deferred": "bool",
    "activated_at": "timestamptz",
    "reward_deadline": "timestamptz",
    "response": "json",
    "arm_probability": "float8",
    "shadow": "json",
    "retrieval": "json",
}
assert tuple(_PG_TYPES) == DECISION_COLUMNS, "keep _PG_TYPES in the order of DecisionRecord"
_JSON = frozenset(name for name, kind in _PG_TYPES.items() if kind == "json")
_NAMES = ", ".join(DECISION_COLUMNS)
_TYPES = list(_PG_TYPES.values())


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _json_or_none(value: Any) -> Json | None:
    return None if value is None else Json(value, dumps=_dumps)


_ACTIONS_AT = DECISION_COLUMNS.index("actions")


def _write_rows(cur: Any, table: str, records: list[DecisionRecord], refs: list[Any]) -> None:
    with cur.copy(f"COPY {table} ({_NAMES}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_TYPES)
        for rec, actions in zip(records, refs, strict=True):
            row = [
                _json_or_none(getattr(rec, name)) if name in _JSON else getattr(rec, name)
                for name in DECISION_COLUMNS
            ]
            row[_ACTIONS_AT] = Json(actions, dumps=_dumps)
            copy.write_row(row)


def copy_decisions(
    conn: Connection, records: list[DecisionRecord], refs: list[Any], *, direct: bool = False
) -> set[tuple[str, str]]:
    """COPY decisions (unique by key among themselves), `refs` each one's stored actions (the
    references of log/action_store.py); returns the keys inserted.

    `direct` copies straight into `decisions` (a key already there raises IntegrityError);
    otherwise rows go through a per-session staging table and only absent keys are inserted.
    """
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        if direct:
            try:
                _write_rows(cur, "decisions", records, refs)
            except psycopg.errors.UniqueViolation as err:
                raise IntegrityError("COPY decisions", None, err) from err
            return {r.key for r in records}
        # Rare path (retries), so creating the table here each time costs nothing that matters.
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _stage_decisions "
            "(LIKE decisions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        _write_rows(cur, "_stage_decisions", records, refs)
        cur.execute(
            f"INSERT INTO decisions ({_NAMES}) SELECT {_NAMES} FROM _stage_decisions "
            "ON CONFLICT (loop, event_id) DO NOTHING RETURNING loop, event_id"
        )
        return {(r[0], r[1]) for r in cur.fetchall()}
