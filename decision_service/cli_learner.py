"""`decision-service learner`: the learner process (APScheduler) for every loop, or some."""

from __future__ import annotations

import logging
import os

import typer

from decision_service.settings import get_settings


def learner(
    loop: list[str] = typer.Option(
        None, "--loop", help="Loop(s) to work on (default: every loop, re-read every tick)."
    ),
    tick_s: float = typer.Option(
        1.0, min=0.05, max=3600, help="Seconds between ticks (each runs what is due)."
    ),
    rollout_every_s: float = typer.Option(
        10.0,
        min=0,
        max=86_400,
        help="Seconds between rollout steps of a loop (gate checks, shadow -> canary -> live, "
        "automatic rollback).",
    ),
    settle_s: float = typer.Option(
        None,
        min=0,
        help="Join windows that closed this long ago (default: DS_JOIN_GRACE_S + 30).",
    ),
    rounds: int = typer.Option(
        None, min=1, help="Run this many ticks one after the other, then exit (cron, tests)."
    ),
) -> None:
    """Run the learner: per loop, join, the freshness track (the live model continued and
    swapped in behind safety checks), the candidate track (learner.candidates trained in batch
    and registered), and the rollout of candidates (gate, shadow, canary, live as the loop's
    rollout.auto allows; automatic rollback of a bad canary). Ctrl-C or SIGTERM stop it; a
    kill at any point leaves no partial version and no half-done transition."""
    from decision_service.cli_operate import operate_options
    from deploy.learner import FAULT_ENV, LearnerOptions, run_learner_process
    from log.schema import make_engine
    from log.schema import migrate as run_migrations

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    try:
        options = LearnerOptions(
            loops=tuple(loop) if loop else None,
            tick_s=tick_s,
            rollout_every_s=rollout_every_s,
            join_grace_s=settings.join_grace_s,
            settle_s=settle_s,
            fault=os.environ.get(FAULT_ENV) or None,
            operate=operate_options(settings),
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    engine = make_engine(settings.database_url)
    try:
        run_migrations(engine)
        run_learner_process(engine, options, rounds=rounds)
    finally:
        engine.dispose()
