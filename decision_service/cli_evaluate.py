"""`decision-service evaluate`: offline evaluation of policies on a loop's joined logs.

From the terminal it runs in-process with a progress bar (stderr), prints a summary table and
writes the JSON result and the HTML report where asked. With ``--job ID`` it runs the queued
`evaluations` row ID and records progress and result there: that is how the service runs the
jobs it accepts on ``POST /v1/loops/{loop}/evaluations``, in a process of its own
(``python -m decision_service.cli_evaluate --job ID``; training never runs in a serving worker).

The database is ``--database-url``, else ``DS_DATABASE_URL`` (the service's settings).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import typer
from tqdm import tqdm

import deploy.registry as registry
from decision_service.settings import get_settings
from learn.offline_eval import EvaluationError, ProgressFn, resolve_spec, run_evaluation
from learn.offline_eval_job import run_job
from learn.offline_eval_spec import (
    BASELINE_KINDS,
    DEFAULT_ESTIMATORS,
    EvaluationSpec,
    PolicySpec,
    SpecError,
    parse_time,
)
from learn.report import render_html, summary_table
from log.evaluations import create_evaluation
from log.schema import make_engine, migrate

__all__ = ["evaluate", "main"]


def _time(value: str | None, name: str) -> datetime | None:
    try:
        return parse_time(value, name)
    except SpecError as err:
        raise typer.BadParameter(err.message, param_hint=f"--{name.replace('_', '-')}") from None


def build_spec(
    *,
    policies: list[str],
    versions: list[str],
    vw_args: list[str],
    train_since: str | None,
    train_until: str | None,
    since: str | None,
    until: str | None,
    estimators: list[str],
    alpha: float,
    interval: str,
    slates: str,
    greedy: bool,
    seed: int,
    guardrails: list[str] | None = None,
) -> EvaluationSpec:
    """The spec the options describe; typer.BadParameter when they do not make one."""
    bad = [p for p in policies if p not in BASELINE_KINDS]
    if bad:
        raise typer.BadParameter(
            f"must be one of {list(BASELINE_KINDS)}, got {bad} (use --version / --vw-args for "
            "models)",
            param_hint="--policy",
        )
    t_since, t_until = _time(train_since, "train_since"), _time(train_until, "train_until")
    try:
        targets = [PolicySpec(kind) for kind in dict.fromkeys(policies)]
        targets += [PolicySpec("model", version=v, explore=not greedy) for v in versions]
        targets += [
            PolicySpec(
                "vw_args", args=a, explore=not greedy, train_since=t_since, train_until=t_until
            )
            for a in vw_args
        ]
        fields: dict[str, Any] = {}
        if targets:
            fields["policies"] = tuple(targets)
        return EvaluationSpec(
            since=_time(since, "since"),
            until=_time(until, "until"),
            estimators=tuple(estimators or DEFAULT_ESTIMATORS),
            alpha=alpha,
            interval=interval,
            slates=slates,
            seed=seed,
            guardrails=tuple(guardrails or ()),
            **fields,
        )
    except SpecError as err:
        raise typer.BadParameter(err.message) from None


def _bar(enabled: bool) -> tuple[tqdm[Any], ProgressFn]:
    bar: tqdm[Any] = tqdm(
        total=None,
        desc="evaluate",
        unit="event",
        file=sys.stderr,
        disable=not enabled,
        mininterval=0.25,
        dynamic_ncols=True,
    )

    def on_progress(done: int, total: int, phase: str) -> None:
        if bar.total != total:
            bar.total = total
        bar.set_description_str(phase[:40], refresh=False)
        bar.update(done - bar.n)

    return bar, on_progress


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def evaluate(
    loop: str = typer.Option(None, "--loop", help="The loop whose joined logs are evaluated."),
    policy: list[str] = typer.Option(
        None, "--policy", help="A baseline: live, uniform or first_action (repeatable)."
    ),
    version: list[str] = typer.Option(
        None, "--version", help="A registered model version (repeatable)."
    ),
    vw_args: list[str] = typer.Option(
        None,
        "--vw-args",
        help='VW arguments of a candidate trained on the earlier window, e.g. --vw-args="-q ca" '
        "(repeatable).",
    ),
    train_since: str = typer.Option(None, help="Start of the VW candidates' training window."),
    train_until: str = typer.Option(
        None,
        help="End of the VW candidates' training window and start of their evaluation "
        "(default: --since, else the window's median decision).",
    ),
    since: str = typer.Option(None, help="Evaluate decisions decided at or after (ISO 8601)."),
    until: str = typer.Option(None, help="Evaluate decisions decided before (ISO 8601)."),
    estimator: list[str] = typer.Option(
        None, "--estimator", help="ips, snips, dr, dm, sndr, clipped_ips, switch_dr (repeatable)."
    ),
    alpha: float = typer.Option(0.05, help="Intervals are 1 - alpha."),
    interval: str = typer.Option("bootstrap", help="bootstrap, normal, bernstein or cs."),
    slates: str = typer.Option("skip", help="skip slates, or slot0: evaluate their first slot."),
    greedy: bool = typer.Option(
        False, "--greedy", help="Models and VW candidates greedy, not with the loop's exploration."
    ),
    seed: int = typer.Option(0, help="Seed of the bootstrap and of the reward model's folds."),
    guardrail: list[str] = typer.Option(
        None,
        "--guardrail",
        help="A guardrail metric (e.g. report) whose rate each policy is estimated to have, "
        "against live's (repeatable, at most 8).",
    ),
    json_out: Path = typer.Option(None, "--json", help="Write the JSON result here."),
    html_out: Path = typer.Option(None, "--html", help="Write the HTML report here."),
    record: bool = typer.Option(False, "--record", help="Also store the run in `evaluations`."),
    job: str = typer.Option(None, "--job", help="Run the queued evaluation with this id."),
    database_url: str = typer.Option(None, help="Event store (default: DS_DATABASE_URL)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Evaluate policies off-policy on a loop's joined logs (IPS, SNIPS, DR with intervals)."""
    engine = make_engine(database_url or get_settings().database_url)
    try:
        if job is not None:
            _run_job(engine, job, progress and sys.stderr.isatty())
            return
        if not loop:
            raise typer.BadParameter("is required (or --job)", param_hint="--loop")
        spec = build_spec(
            policies=list(policy or []),
            versions=list(version or []),
            vw_args=list(vw_args or []),
            train_since=train_since,
            train_until=train_until,
            since=since,
            until=until,
            estimators=list(estimator or []),
            alpha=alpha,
            interval=interval,
            slates=slates,
            greedy=greedy,
            seed=seed,
            guardrails=list(guardrail or []),
        )
        result = _run(engine, loop, spec, record=record, progress=progress)
        typer.echo(summary_table(result))
        if json_out is not None:
            json_out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
            typer.echo(f"wrote {json_out}")
        if html_out is not None:
            html_out.write_text(render_html(result), encoding="utf-8")
            typer.echo(f"wrote {html_out}")
    finally:
        engine.dispose()


def _run(
    engine: Any, loop: str, spec: EvaluationSpec, *, record: bool, progress: bool
) -> dict[str, Any]:
    try:
        spec = resolve_spec(engine, loop, spec, registry=registry)
    except LookupError as err:
        raise _fail(str(err)) from None
    except SpecError as err:
        raise typer.BadParameter(err.message) from None
    bar, on_progress = _bar(progress)
    with bar:
        if record:
            migrate(engine)
            created = create_evaluation(engine, loop, spec.to_json())
            ended = run_job(engine, created.id, registry=registry, on_progress=on_progress)
            if ended.status != "succeeded" or ended.result is None:
                raise _fail(f"evaluation {ended.id} failed: {ended.error}")
            typer.echo(f"recorded evaluation {ended.id}", err=True)
            return ended.result
        try:
            return run_evaluation(engine, loop, spec, registry=registry, on_progress=on_progress)
        except (LookupError, SpecError, EvaluationError) as err:
            raise _fail(str(err)) from None


def _run_job(engine: Any, job: str, progress: bool) -> None:
    bar, on_progress = _bar(progress)
    with bar:
        try:
            ended = run_job(engine, job, registry=registry, on_progress=on_progress)
        except LookupError as err:
            raise _fail(str(err)) from None
    typer.echo(
        f"evaluation {ended.id}: {ended.status}" + (f": {ended.error}" if ended.error else "")
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m decision_service.cli_evaluate``."""
    command: Callable[..., None] = evaluate
    app = typer.Typer(add_completion=False)
    app.command()(command)
    app(args=argv)


if __name__ == "__main__":
    main()
