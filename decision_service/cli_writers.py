"""`decision-service writers`: the writer processes whose watermarks hold the joiner back."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import typer

from decision_service.settings import get_settings


def writers(
    forget: list[str] = typer.Option(
        [],
        "--forget",
        help="Remove this writer's row (a host that will never come back: whatever its spool "
        "still held is given up, and joining resumes). Repeatable.",
    ),
) -> None:
    """List registered writers (one JSON line each) with their watermark and heartbeat age.

    The joiner closes no reward window past the lowest watermark: a writer whose process died
    is forgotten automatically by a live writer of the same spool directory once its segments
    are shipped; a host that is gone for good must be forgotten here."""
    from log.schema import make_engine
    from log.writers import delete_writers, list_writers

    engine = make_engine(get_settings().database_url)
    try:
        if forget:
            gone = delete_writers(engine, forget)
            typer.echo(f"forgot {gone} writer(s)", err=True)
        now = datetime.now(UTC)
        for w in list_writers(engine):
            typer.echo(
                orjson.dumps(
                    {
                        "writer_id": w.writer_id,
                        "host": w.host,
                        "pid": w.pid,
                        "spool_dir": w.spool_dir,
                        "watermark": w.watermark.isoformat(),
                        "heartbeat_age_s": round((now - w.heartbeat_at).total_seconds(), 1),
                        "lag_s": round((now - w.watermark).total_seconds(), 1),
                    }
                ).decode()
            )
    finally:
        engine.dispose()
