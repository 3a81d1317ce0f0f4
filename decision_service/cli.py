"""The `decision-service` command line (Typer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

import orjson
import typer

from decision_service.settings import get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Contextual-bandit decisions.")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, min=1, help="Worker processes."),
) -> None:
    """Run the HTTP service (uvicorn) on the configured database (SQLite file by default)."""
    import uvicorn

    uvicorn.run(
        "decision_service:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
    )


@app.command()
def migrate() -> None:
    """Bring the database schema to the latest Alembic revision."""
    from log.schema import make_engine
    from log.schema import migrate as run_migrations

    engine = make_engine(get_settings().database_url)
    try:
        run_migrations(engine)
    finally:
        engine.dispose()
    typer.echo("schema is up to date")


@app.command()
def join(
    grace_s: float = typer.Option(
        None, help="Close windows that ended this long ago (default: DS_JOIN_GRACE_S)."
    ),
) -> None:
    """Close due reward windows of every loop once and print what was joined."""
    from decision_service.service import Service

    settings = get_settings()
    service = Service(settings)
    service.start_sync(admin_key=False)  # a maintenance command makes no credentials
    try:
        grace = settings.join_grace_s if grace_s is None else grace_s
        stats = service.join_due(datetime.now(UTC) - timedelta(seconds=grace))
    finally:
        service.writer.stop()
        service.engine.dispose()
    typer.echo(orjson.dumps({k: vars(v) for k, v in stats.items()}).decode())


def _when(value: str | None, name: str) -> datetime | None:
    """An ISO timestamp option; a naive one is read as UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{name} must be an ISO timestamp, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command()
def learn(
    loop: list[str] = typer.Option(None, "--loop", help="Loop(s) to train (default: all)."),
    once: bool = typer.Option(False, "--once", help="One round, then exit."),
    mode: str = typer.Option("online", help="online (continue the live model) or batch."),
    promote: bool = typer.Option(False, help="Make the new version live directly."),
    since: str = typer.Option(None, help="Batch window start (ISO, decided_at)."),
    until: str = typer.Option(None, help="Batch window end (ISO, exclusive)."),
    interval_s: float = typer.Option(300.0, help="Seconds between rounds without --once."),
) -> None:
    """Join, then train Vowpal Wabbit candidates from the logs and register them.

    Without --once this is the learner process: a round every --interval-s (APScheduler).
    """
    from deploy import registry
    from learn import Mode, learn_once, learn_round, run_learner
    from log.schema import make_engine
    from log.schema import migrate as run_migrations

    if mode not in ("online", "batch"):
        raise typer.BadParameter("mode must be online or batch")
    learn_mode = cast(Mode, mode)
    settings = get_settings()
    engine = make_engine(settings.database_url)
    run_migrations(engine)
    try:
        if not once:
            run_learner(
                engine, loop or None, registry=registry, interval_s=interval_s,
                mode=learn_mode, promote=promote, join_grace_s=settings.join_grace_s, progress=True,
            )  # fmt: skip
            return
        if since or until:
            if not loop or len(loop) != 1 or mode != "batch":
                raise typer.BadParameter("--since/--until need --mode batch and one --loop")
            result = learn_once(
                engine, loop[0], registry=registry, mode="batch", promote=promote,
                since=_when(since, "--since"), until=_when(until, "--until"), progress=True,
            )  # fmt: skip
            results = {loop[0]: result}
        else:
            results = learn_round(
                engine, loop or None, registry=registry, mode=learn_mode, promote=promote,
                join_grace_s=settings.join_grace_s, progress=True, raise_errors=True,
            )  # fmt: skip
    except LookupError as err:
        raise typer.BadParameter(str(err)) from None
    finally:
        engine.dispose()
    for result in results.values():
        typer.echo(orjson.dumps(result.to_json()).decode())


@app.command()
def export(
    loop: str = typer.Option(..., "--loop", help="Loop to export."),
    format: str = typer.Option(..., "--format", help="dsjson or parquet."),
    output: str = typer.Option(None, "--output", "-o", help="File (default: stdout for dsjson)."),
    since: str = typer.Option(None, help="Only decisions at or after this time (ISO)."),
    until: str = typer.Option(None, help="Only decisions before this time (ISO)."),
) -> None:
    """Export a loop's logged decisions: DSJSON for Vowpal Wabbit, Parquet for notebooks."""
    import sys

    from log.export_dsjson import export_dsjson
    from log.export_parquet import export_parquet
    from log.schema import make_engine

    if format not in ("dsjson", "parquet"):
        raise typer.BadParameter("--format must be dsjson or parquet")
    if format == "parquet" and not output:
        raise typer.BadParameter("parquet needs --output FILE")
    engine = make_engine(get_settings().database_url)
    start, end = _when(since, "--since"), _when(until, "--until")
    try:
        if format == "dsjson":
            stats = export_dsjson(engine, loop, output or sys.stdout.buffer, since=start, until=end)
        else:
            stats = export_parquet(engine, loop, output, since=start, until=end)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    finally:
        engine.dispose()
    typer.echo(orjson.dumps(vars(stats)).decode(), err=True)


@app.command()
def demo(
    events: int = typer.Option(20_000, min=100, help="Simulated decisions to drive."),
    chunk: int = typer.Option(2_000, min=50, help="Join and learn every this many events."),
    concurrency: int = typer.Option(16, min=1, help="Concurrent simulated users."),
    seed: int = typer.Option(0, help="Seed of the simulator (its world) and of the loop."),
    plot: str = typer.Option("demo_learning_curve.png", help="Where to write the PNG."),
    database_url: str = typer.Option(
        None, help="Event store (default: DS_DATABASE_URL, i.e. the SQLite file)."
    ),
) -> None:
    """Run the whole loop against a simulator over HTTP and show that it learns."""
    from decision_service.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        events=events,
        chunk=chunk,
        concurrency=concurrency,
        seed=seed,
        plot=plot,
        database_url=database_url or get_settings().database_url,
    )
    run_demo(cfg, echo=typer.echo)


def _register_subcommands() -> None:
    from decision_service.cli_evaluate import evaluate
    from decision_service.cli_keys import keys
    from decision_service.cli_learner import learner
    from decision_service.cli_tune import tune
    from decision_service.cli_writers import writers

    app.command("evaluate")(evaluate)
    app.command("learner")(learner)
    app.command("writers")(writers)
    app.command("tune")(tune)
    app.add_typer(keys, name="keys")
    from decision_service.cli_catalog import items, retriever

    app.add_typer(items, name="items")
    app.add_typer(retriever, name="retriever")
    from decision_service.cli_operate import operate, status

    app.command("status")(status)
    app.command("operate")(operate)
    from decision_service.cli_import import import_app

    app.add_typer(import_app, name="import")


_register_subcommands()


def main() -> None:
    app()
