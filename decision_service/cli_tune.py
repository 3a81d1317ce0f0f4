"""`decision-service tune`: optimization discovery on a loop's own logs.

Evaluates a grid of VW argument sets x exploration settings off-policy (`learn.tune`: each
combination trained on the earlier part of the window, evaluated on the later part, against the
live policy, with intervals), records the run in `evaluations` (its HTML report is then also at
``GET /v1/loops/{loop}/evaluations/{id}/report``), prints the ranking, and with ``--submit``
adds the VW arguments of the best combination that is significantly better than live to the
loop's `learner.candidates`, so that the candidate track trains it and the gate decides.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import typer

import deploy.registry as registry
from decision_service.cli_evaluate import _bar, _fail, _time
from decision_service.settings import get_settings
from learn.offline_eval import resolve_spec
from learn.offline_eval_job import run_job
from learn.offline_eval_spec import DEFAULT_ESTIMATORS, SpecError
from learn.report import render_html
from learn.tune import TunedPolicy, best, ranking, tune_spec
from log.deploy_settings import MAX_CANDIDATES
from log.evaluations import create_evaluation
from log.loops import get_loop, put_loop
from log.schema import make_engine, migrate
from policies import check_vw_args

__all__ = ["submit_candidate", "tune"]


def _exploration(text: str) -> dict[str, Any] | None:
    if text.strip().lower() in ("", "loop", "null"):
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as err:
        raise typer.BadParameter(f"not JSON: {err}", param_hint="--exploration") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--exploration")
    return value


def submit_candidate(engine: Any, loop: str, args: str) -> str:
    """Add `args` to the loop's `learner.candidates` (validated like a loop's); returns what was
    done. ValueError when it cannot be added."""
    stored = get_loop(engine, loop)
    if stored is None:
        raise LookupError(f"loop {loop!r} does not exist")
    args = check_vw_args(args)
    learner = stored.config.learner
    if args in learner.candidates:
        return f"{args!r} is already one of loop {loop!r}'s candidates"
    if len(learner.candidates) >= MAX_CANDIDATES:
        raise ValueError(f"loop {loop!r} already has {MAX_CANDIDATES} candidates: remove one first")
    config = replace(
        stored.config, learner=replace(learner, candidates=(*learner.candidates, args))
    )
    put_loop(engine, loop, config)
    return f"added {args!r} to loop {loop!r}'s learner.candidates (the gate decides)"


def _table(rows: list[TunedPolicy]) -> str:
    lines = [f"{'policy':<8} {'value':>9} {'interval':>21} {'vs live':>21}  args | exploration"]
    for t in rows:
        vs = "-" if t.diff_low is None else f"[{t.diff_low:+.4f}, {t.diff_high:+.4f}]"
        explore = "loop" if t.exploration is None else orjson.dumps(t.exploration).decode()
        lines.append(
            f"{t.name:<8} {t.value:>9.4f} [{t.ci_low:.4f}, {t.ci_high:.4f}] {vs:>21}  "
            f"{t.args} | {explore}"
        )
    return "\n".join(lines)


def tune(
    loop: str = typer.Option(..., "--loop", help="The loop whose joined logs are used."),
    vw_args: list[str] = typer.Option(
        None, "--vw-args", help="A VW argument set of the grid (repeatable; default: a few)."
    ),
    exploration: list[str] = typer.Option(
        None,
        "--exploration",
        help='Exploration overrides as JSON, e.g. \'{"exploration": "squarecb"}\', or "loop" '
        "for the loop's (repeatable).",
    ),
    since: str = typer.Option(None, help="Window start (ISO 8601)."),
    until: str = typer.Option(None, help="Window end (ISO 8601)."),
    train_until: str = typer.Option(
        None, help="End of training and start of evaluation (default: the window's median)."
    ),
    estimator: str = typer.Option("dr", help="The estimator the ranking uses."),
    alpha: float = typer.Option(0.05, help="Intervals are 1 - alpha."),
    seed: int = typer.Option(0, help="Seed of the bootstrap and of the reward model's folds."),
    json_out: Path = typer.Option(None, "--json", help="Write the JSON result here."),
    html_out: Path = typer.Option(None, "--html", help="Write the HTML report here."),
    submit: bool = typer.Option(
        False, "--submit", help="Add the best combination's VW arguments as a candidate."
    ),
    database_url: str = typer.Option(None, help="Event store (default: DS_DATABASE_URL)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Evaluate a grid of VW arguments x exploration settings off-policy on a loop's logs."""
    estimators = tuple(dict.fromkeys((*DEFAULT_ESTIMATORS, estimator)))
    engine = make_engine(database_url or get_settings().database_url)
    try:
        try:
            spec = tune_spec(
                list(vw_args or []),
                [_exploration(e) for e in exploration or []],
                since=_time(since, "since"),
                until=_time(until, "until"),
                train_until=_time(train_until, "train_until"),
                estimators=estimators,
                alpha=alpha,
                seed=seed,
            )
            spec = resolve_spec(engine, loop, spec, registry=registry)
        except SpecError as err:
            raise typer.BadParameter(err.message) from None
        except LookupError as err:
            raise _fail(str(err)) from None
        migrate(engine)
        bar, on_progress = _bar(progress)
        with bar:
            created = create_evaluation(engine, loop, spec.to_json())
            ended = run_job(engine, created.id, registry=registry, on_progress=on_progress)
        if ended.status != "succeeded" or ended.result is None:
            raise _fail(f"evaluation {ended.id} failed: {ended.error}")
        result = ended.result
        typer.echo(f"recorded evaluation {ended.id}", err=True)
        typer.echo(_table(ranking(result, estimator)))
        if json_out is not None:
            json_out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
            typer.echo(f"wrote {json_out}")
        if html_out is not None:
            html_out.write_text(render_html(result), encoding="utf-8")
            typer.echo(f"wrote {html_out}")
        if submit:
            winner = best(result, estimator)
            if winner is None:
                typer.echo("no combination is significantly better than live: nothing submitted")
            else:
                try:
                    typer.echo(submit_candidate(engine, loop, winner.args))
                except ValueError as err:
                    raise _fail(str(err)) from None
    finally:
        engine.dispose()
