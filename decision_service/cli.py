"""The `decision-service` command line (Typer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
    run_migrations(engine)
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
    service.start_sync()
    try:
        grace = settings.join_grace_s if grace_s is None else grace_s
        stats = service.join_due(datetime.now(UTC) - timedelta(seconds=grace))
    finally:
        service.writer.stop()
    typer.echo(orjson.dumps({k: vars(v) for k, v in stats.items()}).decode())


@app.command()
def demo(
    events: int = typer.Option(20_000, min=100, help="Simulated decisions to drive."),
    chunk: int = typer.Option(2_000, min=50, help="Join and learn every this many events."),
    concurrency: int = typer.Option(16, min=1, help="Concurrent simulated users."),
    seed: int = typer.Option(7, help="Seed of the simulator and the loop."),
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

    app.command("evaluate")(evaluate)


_register_subcommands()


def main() -> None:
    app()
