"""Alarm rules on synthetic series (each fires, then clears), stored alarm state, and webhook
delivery with retries to a real HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine

from deploy.alarm_rules import RULE_KINDS, Observation, evaluate_rules
from deploy.operate import OperateOptions, observe, run_operate
from deploy.webhook import WebhookSettings, deliver_pending
from log.alarm_settings import AlarmSettings
from log.alarms import list_alarms
from log.joiner import join_loop
from log.loops import get_loop
from log.metrics import rollup_loop
from log.metrics_math import MetricsPoint, Sums, derive, floor_time
from log.records import DecisionRecord, RewardRecord
from log.writer import GroupCommitWriter
from tests.deploy.learner_helpers import SIM, configure
from tests.learn.helpers import T0, sim_events, write

NOW = datetime(2026, 3, 2, 12, 7, tzinfo=UTC)
RULES = AlarmSettings()


def point(**sums: Any) -> MetricsPoint:
    return derive(NOW, Sums(**sums))


def decisions(
    n: int, *, entropy: float = 1.0, prob: float = 0.3, pmin: float = 0.1
) -> dict[str, Any]:
    return {"decisions": n, "entropy_sum": entropy * n, "prob_sum": prob * n, "prob_min": pmin}


def joined(n: int, rewarded: int, *, lag_s: float = 60.0, guard: int = 0) -> dict[str, Any]:
    return {
        "joined": n, "rewarded": rewarded, "reward_sum": float(rewarded),
        "reward_sq_sum": float(rewarded), "join_lag_sum_s": lag_s * n,
        "guardrails": {"report": guard} if guard else {},
    }  # fmt: skip


HEALTHY = Observation(
    now=NOW,
    recent=point(**decisions(300), **joined(300, 60), rewards=60, spool_backlog_max=2),
    hour=point(**decisions(1200), **joined(1200, 240, guard=12), rewards=240),
    week_same_hour=point(**decisions(8000), **joined(8000, 1600), rewards=1600),
    day=point(**decisions(30000), **joined(30000, 6000)),
    no_reward_window=point(**decisions(1200), rewards=240),
    freshness_s=60.0,
    last_freshness_at=NOW - timedelta(seconds=90),
)
# for each rule, an observation that trips it (everything else healthy)
TRIPPED: dict[str, Observation] = {
    "no_rewards": replace(HEALTHY, no_reward_window=point(**decisions(1200), rewards=0)),
    "reward_drop": replace(HEALTHY, hour=point(**decisions(1200), **joined(1200, 96))),
    "join_lag": replace(HEALTHY, recent=point(**decisions(300), **joined(300, 60, lag_s=4000))),
    "spool_backlog": replace(HEALTHY, recent=point(**decisions(300), spool_backlog_max=101)),
    "min_propensity": replace(HEALTHY, recent=point(**decisions(300, pmin=0.0005))),
    "entropy_collapse": replace(HEALTHY, recent=point(**decisions(300, entropy=0.2))),
    "guardrail": replace(HEALTHY, hour=point(**decisions(1200), **joined(1200, 240, guard=300))),
    "freshness_stale": replace(HEALTHY, last_freshness_at=NOW - timedelta(seconds=601)),
}


def test_healthy_series_fires_nothing() -> None:
    assert evaluate_rules(RULES, HEALTHY) == dict.fromkeys(RULE_KINDS)


@pytest.mark.parametrize("kind", RULE_KINDS)
def test_each_rule_fires_and_clears(kind: str) -> None:
    series = [HEALTHY, TRIPPED[kind], TRIPPED[kind], HEALTHY]
    fired = [evaluate_rules(RULES, o) for o in series]
    assert [f[kind] is not None for f in fired] == [False, True, True, False]
    # only this rule fires
    assert [k for k, f in fired[1].items() if f is not None] == [kind]
    off = AlarmSettings(**{**{f: getattr(RULES, f) for f in RULES.__dataclass_fields__},
                           **_off(kind)})  # fmt: skip
    assert evaluate_rules(off, TRIPPED[kind])[kind] is None  # 0 turns the rule off


def _off(kind: str) -> dict[str, float]:
    return {
        "no_rewards": {"no_rewards_min": 0.0}, "reward_drop": {"reward_drop_pct": 0.0},
        "join_lag": {"join_lag_s": 0.0}, "spool_backlog": {"spool_backlog": 0.0},
        "min_propensity": {"min_propensity": 0.0}, "entropy_collapse": {"entropy_ratio": 0.0},
        "guardrail": {"guardrail_rate": 0.0}, "freshness_stale": {"freshness_stale_factor": 0.0},
    }[kind]  # fmt: skip


def test_small_samples_do_not_fire_rate_rules() -> None:
    thin = replace(HEALTHY, hour=point(**decisions(20), **joined(20, 0, guard=20)))
    found = evaluate_rules(RULES, thin)
    assert found["reward_drop"] is None and found["guardrail"] is None


def test_settings_are_bounded() -> None:
    with pytest.raises(ValueError, match=r"alarms\.reward_drop_pct"):
        AlarmSettings(reward_drop_pct=150)
    with pytest.raises(ValueError, match=r"alarms\.min_events"):
        AlarmSettings(min_events=0)


class Receiver:
    """A real HTTP server that refuses the first `fail` requests with 503, then accepts."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.attempts += 1
                if outer.attempts <= outer.fail:
                    self.send_response(503)
                else:
                    outer.received.append(orjson.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail=2)
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_no_rewards_alarm_is_stored_delivered_with_retries_and_cleared(
    engine: Engine, writer: GroupCommitWriter, receiver: Receiver
) -> None:
    configure(engine, alarms={"no_rewards_min": 30})
    now = datetime.now(UTC)
    ops = sim_events(SIM, 60, seed=3, start=now - timedelta(minutes=20), prefix="n", spacing_s=5)
    write(writer, [op for op in ops if isinstance(op, DecisionRecord)])
    sleeps: list[float] = []
    hook = WebhookSettings(receiver.url, attempts=4, backoff_s=0.5, timeout_s=5)
    options = OperateOptions(webhook=hook)
    report = run_operate(engine, options, now=now)
    assert [a.kind for a in report.raised] == ["no_rewards"]
    firing = list_alarms(engine, "default", state="firing")
    assert [a.kind for a in firing] == ["no_rewards"]
    # delivered on the third attempt (two 503s), marked, not sent again
    assert report.delivered == 1 and receiver.attempts == 3
    assert receiver.received[0]["event"] == "alarm.firing"
    assert receiver.received[0]["alarm"]["kind"] == "no_rewards"
    assert run_operate(engine, options, now=now).delivered == 0
    # rewards arrive: the rule clears and the clearing is delivered
    fresh = [
        RewardRecord(f"late-{i}", "default", f"n{i}", 0, 1.0, now, False, "") for i in range(5)
    ]
    write(writer, fresh)  # received now, as the service stamps them
    report = run_operate(engine, options, now=now + timedelta(seconds=1))
    assert report.cleared and report.delivered == 1
    assert receiver.received[-1]["event"] == "alarm.cleared"
    assert list_alarms(engine, "default", state="firing") == []
    # backoff: a server that never accepts is tried `attempts` times, waiting 0.5, 1, 2 s
    receiver.fail = 10**6
    later = now + timedelta(hours=2)
    write(writer, sim_events(SIM, 1, seed=4, start=later - timedelta(minutes=3), prefix="m")[:1])
    assert run_operate(engine, OperateOptions(), now=later).raised  # no webhook: stays pending
    before = receiver.attempts
    assert deliver_pending(engine, hook, sleep=sleeps.append) == (0, 1)
    assert receiver.attempts - before == 4 and sleeps == [0.5, 1.0, 2.0]


def _hour_of_traffic(
    engine: Engine, writer: GroupCommitWriter, start: datetime, n: int, rewarded: int, tag: str
) -> None:
    """`n` decisions in the 30 minutes from `start`, `rewarded` of them with a reward, joined
    inside the same hour (outcomes count in the bucket they were joined in)."""
    events = sim_events(SIM, n, seed=len(tag), start=start, prefix=tag, spacing_s=1800 / n)
    ops = [op for op in events if isinstance(op, DecisionRecord)]
    rewards = [
        RewardRecord(f"{tag}-r{i}", "default", op.event_id, 0, 1.0,
                     op.decided_at + timedelta(seconds=1), False, "")
        for i, op in enumerate(ops[:rewarded])
    ]  # fmt: skip
    write(writer, ops + rewards)
    join_loop(engine, "default", default_reward=0.0, aggregation="earliest",
              now=start + timedelta(minutes=40))  # fmt: skip


def test_reward_drop_compares_the_same_hour_of_the_trailing_week_from_the_tables(
    engine: Engine, writer: GroupCommitWriter
) -> None:
    """The observation is read from the rollup's tables: the last complete hour against the
    same hour of the 7 days before (not the whole week: other hours, rewarded far less, would
    hide the drop); it fires, and clears once the last hour is a healthy one."""
    configure(engine)
    hour = floor_time(T0 + timedelta(days=7), 3600)
    for k in range(1, 8):
        day = hour - timedelta(days=k)
        _hour_of_traffic(engine, writer, day, 60, 30, f"same{k}-")  # rate 0.5 at this hour
        _hour_of_traffic(engine, writer, day - timedelta(hours=3), 60, 0, f"other{k}-")
    _hour_of_traffic(engine, writer, hour, 60, 6, "now-")  # rate 0.1: an 80% drop
    now = hour + timedelta(hours=1, minutes=10)
    rollup_loop(engine, "default", now=now, since=hour - timedelta(days=7, hours=3))
    stored = get_loop(engine, "default")
    assert stored is not None
    obs = observe(engine, stored, now)
    assert obs.hour is not None and obs.hour.joined == 60 and obs.hour.reward_rate == 0.1
    assert obs.week_same_hour is not None and obs.week_same_hour.joined == 7 * 60
    assert obs.week_same_hour.reward_rate == pytest.approx(0.5)
    found = evaluate_rules(stored.config.alarms, obs)["reward_drop"]
    assert found is not None and found.details["drop_pct"] == pytest.approx(80.0)
    # the next hour is rewarded like the week's: the rule clears
    _hour_of_traffic(engine, writer, hour + timedelta(hours=1), 60, 30, "next-")
    later = hour + timedelta(hours=2, minutes=10)
    rollup_loop(engine, "default", now=later)
    cleared = evaluate_rules(stored.config.alarms, observe(engine, stored, later))
    assert cleared["reward_drop"] is None
