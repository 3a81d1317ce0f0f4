"""PostgreSQL fast path: a group of decisions in one binary COPY (DESIGN §5)."""

from __future__ import annotations

from typing import Any

import orjson
from psycopg.types.json import Json
from sqlalchemy import Connection

# (column, PostgreSQL type) of `decisions`, in COPY order.
DECISION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("loop", "varchar"),
    ("event_id", "varchar"),
    ("decided_at", "timestamptz"),
    ("model_version", "varchar"),
    ("policy_arm", "varchar"),
    ("request_digest", "varchar"),
    ("context", "json"),
    ("actions", "json"),
    ("pmf", "json"),
    ("excluded", "json"),
    ("chosen", "varchar"),
    ("slots", "json"),
    ("n_slots", "int4"),
    ("is_slate", "bool"),
    ("deferred", "bool"),
    ("activated_at", "timestamptz"),
    ("reward_deadline", "timestamptz"),
    ("response", "json"),
)
_JSON = {name for name, kind in DECISION_COLUMNS if kind == "json"}
_NAMES = ", ".join(name for name, _ in DECISION_COLUMNS)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def copy_decisions(conn: Connection, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """COPY rows into a per-session staging table, then insert the ones not already stored."""
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _stage_decisions "
            "(LIKE decisions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cur.copy(f"COPY _stage_decisions ({_NAMES}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([kind for _, kind in DECISION_COLUMNS])
            for row in rows:
                copy.write_row(
                    [
                        Json(row[name], dumps=_dumps) if name in _JSON else row.get(name)
                        for name, _ in DECISION_COLUMNS
                    ]
                )
        cur.execute(
            f"INSERT INTO decisions ({_NAMES}) SELECT DISTINCT ON (loop, event_id) {_NAMES} "
            "FROM _stage_decisions ON CONFLICT (loop, event_id) DO NOTHING "
            "RETURNING loop, event_id"
        )
        return {(r[0], r[1]) for r in cur.fetchall()}
