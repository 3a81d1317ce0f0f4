"""PostgreSQL fast path: a group of decisions in one binary COPY (DESIGN §5)."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from psycopg.types.json import Json
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

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
_TYPES = [kind for _, kind in DECISION_COLUMNS]


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _write_rows(cur: Any, table: str, rows: list[dict[str, Any]]) -> None:
    with cur.copy(f"COPY {table} ({_NAMES}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_TYPES)
        for row in rows:
            copy.write_row(
                [
                    Json(row[name], dumps=_dumps) if name in _JSON else row.get(name)
                    for name, _ in DECISION_COLUMNS
                ]
            )


def copy_decisions(
    conn: Connection, rows: list[dict[str, Any]], *, direct: bool = False
) -> set[tuple[str, str]]:
    """COPY a group of decisions; returns the keys inserted.

    `direct` copies straight into `decisions` (a key already there raises IntegrityError);
    otherwise rows go through a per-session staging table and only absent keys are inserted.
    """
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        if direct:
            try:
                _write_rows(cur, "decisions", rows)
            except psycopg.errors.UniqueViolation as err:
                raise IntegrityError("COPY decisions", None, err) from err
            return {(r["loop"], r["event_id"]) for r in rows}
        # Rare path (retries), so creating the table here each time costs nothing that matters.
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _stage_decisions "
            "(LIKE decisions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        _write_rows(cur, "_stage_decisions", rows)
        cur.execute(
            f"INSERT INTO decisions ({_NAMES}) SELECT DISTINCT ON (loop, event_id) {_NAMES} "
            "FROM _stage_decisions ON CONFLICT (loop, event_id) DO NOTHING "
            "RETURNING loop, event_id"
        )
        return {(r[0], r[1]) for r in cur.fetchall()}
