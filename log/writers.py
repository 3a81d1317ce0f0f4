"""The `writers` table: each writer process's watermark, read by the joiner."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, delete, func, select

from log.apply import dialect_insert
from log.models import WriterRow


def publish_watermark(
    conn: Connection,
    *,
    writer_id: str,
    host: str,
    pid: int,
    spool_dir: str,
    watermark: datetime,
    started_at: datetime,
) -> None:
    """Insert or advance this writer's row (never moves its watermark back)."""
    now = datetime.now(UTC)
    row = {
        "writer_id": writer_id,
        "host": host[:256],
        "pid": pid,
        "spool_dir": spool_dir,
        "watermark": watermark,
        "heartbeat_at": now,
        "started_at": started_at,
    }
    ins = dialect_insert(conn, WriterRow)
    conn.execute(
        ins.on_conflict_do_update(
            index_elements=["writer_id"],
            set_={"watermark": ins.excluded.watermark, "heartbeat_at": ins.excluded.heartbeat_at},
            where=WriterRow.watermark <= ins.excluded.watermark,
        ),
        row,
    )


def delete_writer(conn: Connection, writer_id: str) -> None:
    conn.execute(delete(WriterRow).where(WriterRow.writer_id == writer_id))


def lowest_watermark(conn: Connection) -> datetime | None:
    """The lowest watermark of all registered writers (None if there is none)."""
    value = conn.execute(select(func.min(WriterRow.watermark))).scalar()
    if value is None:
        return None
    if not isinstance(value, datetime):  # SQLite may hand back the stored text
        value = datetime.fromisoformat(str(value))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def list_writers(conn: Connection) -> list[WriterRow]:
    return list(conn.execute(select(WriterRow).order_by(WriterRow.watermark)).scalars())
