"""`decision-service import dsjson FILE --loop L`: load a DSJSON log (Azure Personalizer's export,
Vowpal Wabbit's decision-service format, or this service's own export) into a loop as decisions
with their probabilities and joined outcomes (`log/import_dsjson.py`).

A malformed line fails the whole import (nothing is written) and is reported with its number;
with `--skip-invalid` malformed lines are skipped and reported, the rest imported. Everything is
written in one transaction; event ids the loop already has are kept and counted, so re-running
an import is safe. The loop is created with the default configuration when it does not exist.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import typer

from decision_service.settings import get_settings

__all__ = ["import_app"]

import_app = typer.Typer(no_args_is_help=True, help="Import decision logs into a loop.")


@import_app.command("dsjson")
def dsjson(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="The DSJSON file."),
    loop: str = typer.Option(..., "--loop", help="The loop to import into."),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="Skip malformed lines (reported) instead of failing."
    ),
) -> None:
    """Import a DSJSON log (CB and CCB lines); prints a JSON summary."""
    from log.import_dsjson import import_dsjson
    from log.loops import LoopConfig, get_loop, put_loop
    from log.schema import make_engine, migrate

    if not loop or len(loop) > 128 or not all(ch.isalnum() or ch in "_.-" for ch in loop):
        raise typer.BadParameter("loop names are 1-128 characters of A-Z a-z 0-9 _ . -")
    engine = make_engine(get_settings().database_url)
    try:
        migrate(engine)
        if get_loop(engine, loop) is None:
            put_loop(engine, loop, LoopConfig())
            typer.echo(f"created loop {loop!r} with the default configuration", err=True)
        stats = import_dsjson(engine, loop, file, skip_invalid=skip_invalid)
    finally:
        engine.dispose()
    typer.echo(orjson.dumps(stats.to_json(), option=orjson.OPT_INDENT_2).decode())
    if stats.invalid and not skip_invalid:
        for number, why in stats.errors:
            typer.echo(f"line {number}: {why}", err=True)
        typer.echo(
            f"{stats.invalid} malformed line(s): nothing was imported (use --skip-invalid to "
            "import the others)",
            err=True,
        )
        raise typer.Exit(1)
