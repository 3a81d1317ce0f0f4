"""The `writers` table: each writer process's watermark, read by the joiner."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, delete, func, select

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


@dataclass(frozen=True)
class WriterInfo:
    writer_id: str
    host: str
    pid: int
    spool_dir: str
    watermark: datetime
    heartbeat_at: datetime


def list_writers(engine: Engine) -> list[WriterInfo]:
    """Every registered writer, lowest watermark first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                WriterRow.writer_id,
                WriterRow.host,
                WriterRow.pid,
                WriterRow.spool_dir,
                WriterRow.watermark,
                WriterRow.heartbeat_at,
            ).order_by(WriterRow.watermark)
        ).all()
    return [WriterInfo(*r) for r in rows]


def delete_writers(engine: Engine, writer_ids: list[str]) -> int:
    """Forget writers (an operator's decision: a host that will never come back)."""
    with engine.begin() as conn:
        n = conn.execute(delete(WriterRow).where(WriterRow.writer_id.in_(writer_ids))).rowcount
    return int(n or 0)
