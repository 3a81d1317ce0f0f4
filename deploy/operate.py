"""The operate job (run by the learner process every `every_s`, and by
`decision-service operate --once`): per loop, the metrics rollup, then the alarm rules on its
figures, then webhook delivery of every alarm state change not delivered yet.

It runs in the learner process, not in the service's workers: one process per deployment
computes the rollup (idempotent, so a second one would only repeat the work) and evaluates
the rules, and no request worker pays for it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from deploy.alarm_rules import Observation, evaluate_rules
from deploy.webhook import WebhookSettings, deliver_pending
from log.alarm_sync import sync_rule_alarms
from log.alarms import Alarm
from log.learner_state import get_learner_state
from log.loops import StoredLoop, list_loops
from log.metrics import MetricsPolicy, merged_point, rollup_loop
from log.metrics_math import floor_time
from log.registry_store import list_models
from log.schema import Engine

__all__ = ["OperateOptions", "OperateReport", "check_alarms", "observe", "run_operate"]

logger = logging.getLogger(__name__)
RECENT = timedelta(minutes=15)


@dataclass(frozen=True)
class OperateOptions:
    every_s: float = 60.0
    metrics: MetricsPolicy = field(default_factory=MetricsPolicy)
    webhook: WebhookSettings | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.every_s) and 5 <= self.every_s <= 3600):
            raise ValueError(f"operate every_s must be in [5, 3600], got {self.every_s!r}")


@dataclass(frozen=True)
class OperateReport:
    buckets: dict[str, int]
    raised: list[Alarm]
    cleared: list[str]
    delivered: int
    failed: int


def observe(engine: Engine, stored: StoredLoop, now: datetime) -> Observation:
    """What the rules of `stored` look at, read from the metrics tables and the learner state."""
    loop = stored.name
    step = timedelta(minutes=5)
    hour = floor_time(now, 3600)
    last_hour = (hour - timedelta(hours=1), hour)
    minutes = stored.config.alarms.no_rewards_min
    state = get_learner_state(engine, loop)
    live = list_models(engine, loop, statuses=("live",))
    return Observation(
        now=now,
        recent=merged_point(engine, loop, [(floor_time(now - RECENT), now + step)]),
        hour=merged_point(engine, loop, [last_hour], grain="1h"),
        week_same_hour=merged_point(
            engine,
            loop,
            [
                (a - timedelta(days=k), b - timedelta(days=k))
                for k in range(1, 8)
                for a, b in (last_hour,)
            ],
            grain="1h",
        ),
        day=merged_point(
            engine, loop, [(hour - timedelta(hours=24), hour + timedelta(hours=1))], grain="1h"
        ),
        no_reward_window=(
            merged_point(engine, loop, [(floor_time(now - timedelta(minutes=minutes)), now + step)])
            if minutes
            else None
        ),
        freshness_s=stored.config.learner.freshness_s if live else 0.0,
        freshness_stopped=state.freshness_stopped,
        last_freshness_at=state.last_freshness_at,
        freshness_since=live[0].live_since if live else None,
    )


def check_alarms(
    engine: Engine, stored: StoredLoop, now: datetime
) -> tuple[list[Alarm], list[str]]:
    """Evaluate the loop's rules and make its stored alarms match."""
    findings = evaluate_rules(stored.config.alarms, observe(engine, stored, now))
    return sync_rule_alarms(
        engine,
        stored.name,
        {k: None if f is None else (f.message, f.details) for k, f in findings.items()},
        now=now,
    )


def run_operate(
    engine: Engine,
    options: OperateOptions,
    *,
    now: datetime,
    loops: tuple[str, ...] | None = None,
    since: datetime | None = None,
) -> OperateReport:
    """One round for every loop (or `loops`): rollup (from `since` when given, else from its
    watermark), alarms, webhook delivery. A loop that fails is logged and skipped."""
    buckets: dict[str, int] = {}
    raised: list[Alarm] = []
    cleared: list[str] = []
    for stored in list_loops(engine):
        if loops is not None and stored.name not in loops:
            continue
        try:
            buckets[stored.name] = rollup_loop(
                engine, stored.name, now=now, policy=options.metrics, since=since
            )
            up, down = check_alarms(engine, stored, now)
        except Exception:
            logger.exception("operate: loop %r failed", stored.name)
            continue
        raised += up
        cleared += down
    delivered = failed = 0
    if options.webhook is not None:
        try:
            delivered, failed = deliver_pending(engine, options.webhook)
        except Exception:
            logger.exception("operate: alarm webhook delivery failed")
            failed = 1
    return OperateReport(buckets, raised, cleared, delivered, failed)
