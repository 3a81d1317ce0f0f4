"""`decision-service status --loop L` (a loop's headline figures in the terminal) and
`decision-service operate` (one round of the metrics rollup, alarm rules and webhook delivery:
what the learner process runs every DS_OPERATE_INTERVAL_S)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import typer

from decision_service.settings import Settings, get_settings
from deploy.operate import OperateOptions
from deploy.webhook import WebhookSettings
from log.metrics import MetricsPolicy


def operate_options(settings: Settings) -> OperateOptions:
    """The operate job's options from the service settings."""
    url = settings.alarm_webhook_url
    return OperateOptions(
        every_s=settings.operate_interval_s,
        metrics=MetricsPolicy(
            settle_s=settings.metrics_settle_s,
            retention_5m_days=settings.metrics_retention_5m_days,
            retention_1h_days=settings.metrics_retention_1h_days,
            retention_1d_days=settings.metrics_retention_1d_days,
        ),
        webhook=None
        if url is None
        else WebhookSettings(
            url.get_secret_value(),
            attempts=settings.alarm_webhook_attempts,
            backoff_s=settings.alarm_webhook_backoff_s,
        ),
    )


def _fmt(value: Any, pattern: str = "{:.4f}") -> str:
    return "-" if value is None else pattern.format(value)


def headline(data: dict[str, Any], live: str | None, alarms: list[dict[str, Any]]) -> list[str]:
    """The lines `status` prints (the dashboard shows the same figures)."""
    t = data["total"] or {}
    lines = [
        f"loop {data['loop']}  window {data['window']}  computed through "
        f"{data['computed_through'] or '-'}",
        f"live model          {live or '-'}",
        f"decisions           {t.get('decisions', 0)}   requests {t.get('requests', 0)}",
        f"rewards             {t.get('rewards', 0)}   late {t.get('late_rewards', 0)}   "
        f"joined {t.get('joined', 0)}",
        f"reward rate         {_fmt(t.get('reward_rate'))} [{_fmt(t.get('reward_rate_low'))}, "
        f"{_fmt(t.get('reward_rate_high'))}]   mean reward "
        f"{_fmt(t.get('mean_reward'))} [{_fmt(t.get('mean_reward_low'))}, "
        f"{_fmt(t.get('mean_reward_high'))}]",
        f"default-reward rate {_fmt(t.get('default_reward_rate'))}",
        f"exploration share   {_fmt(t.get('exploration_share'))}   entropy "
        f"{_fmt(t.get('entropy'))}   top-action share {_fmt(t.get('top_action_share'))}",
        f"logged probability  mean {_fmt(t.get('mean_probability'))}   min "
        f"{_fmt(t.get('min_probability'))}",
        f"join lag            mean {_fmt(t.get('join_lag_mean_s'), '{:.1f} s')}   max "
        f"{_fmt(t.get('join_lag_max_s'), '{:.1f} s')}",
        f"rank latency        p50 {_fmt(t.get('latency_p50_ms'), '{:.2f} ms')}   p99 "
        f"{_fmt(t.get('latency_p99_ms'), '{:.2f} ms')}",
        f"errors              {t.get('errors') or '-'}",
        f"guardrail rates     {t.get('guardrail_rates') or '-'}",
    ]
    for arm in data["arms"]:
        f = arm["figures"]
        lines.append(
            f"  arm {arm['arm']:<7} {arm['model_version'][:24]:<24} decisions {f['decisions']:>7}"
            f"  reward rate {_fmt(f['reward_rate'])}  mean {_fmt(f['mean_reward'])}"
        )
    lines.append(f"firing alarms       {len(alarms)}")
    lines += [f"  {a['kind']}: {a['message']}" for a in alarms]
    return lines


def status(
    loop: str = typer.Option(..., "--loop", help="The loop."),
    window: str = typer.Option("1h", help="1h, 6h, 24h, 7d or 30d."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of text."),
) -> None:
    """A loop's headline figures (from the metrics rollup), live model and firing alarms."""
    from decision_service.routes_operate import WINDOWS, loop_metrics
    from log.alarms import list_alarms
    from log.loops import get_loop
    from log.registry_store import list_models
    from log.schema import make_engine

    if window not in WINDOWS:
        raise typer.BadParameter(f"window must be one of {sorted(WINDOWS)}")
    engine = make_engine(get_settings().database_url)
    try:
        if get_loop(engine, loop) is None:
            typer.echo(f"loop {loop!r} does not exist", err=True)
            raise typer.Exit(1)
        data = loop_metrics(engine, loop, window, datetime.now(UTC))
        live = [m.version for m in list_models(engine, loop, statuses=("live",))]
        alarms = [a.to_json() for a in list_alarms(engine, loop, state="firing")]
    finally:
        engine.dispose()
    if as_json:
        typer.echo(orjson.dumps({**data, "live": live[0] if live else None, "alarms": alarms}))
        return
    for line in headline(data, live[0] if live else None, alarms):
        typer.echo(line)


def operate(
    loop: list[str] = typer.Option(None, "--loop", help="Only these loops (default: all)."),
    since: datetime = typer.Option(
        None,
        formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"],
        help="Recompute the metrics from this UTC time instead of the watermark (late decisions "
        "are found once joined; this also counts rewards shipped older than "
        "DS_METRICS_SETTLE_S after their decision was joined).",
    ),
) -> None:
    """One round of the operate job: the metrics rollup (catching up from its watermark), the
    alarm rules, webhook delivery. The learner process runs it every DS_OPERATE_INTERVAL_S."""
    from deploy.operate import run_operate
    from log.schema import make_engine, migrate

    engine = make_engine(get_settings().database_url)
    try:
        migrate(engine)
        report = run_operate(
            engine,
            operate_options(get_settings()),
            now=datetime.now(UTC),
            loops=tuple(loop) if loop else None,
            since=None if since is None else since.replace(tzinfo=UTC),
        )
    finally:
        engine.dispose()
    typer.echo(
        orjson.dumps(
            {
                "buckets": report.buckets,
                "raised": [a.kind for a in report.raised],
                "cleared": len(report.cleared),
                "delivered": report.delivered,
                "failed": report.failed,
            }
        )
    )
