"""Alarm delivery by webhook: each alarm state change (firing, cleared) is POSTed as JSON to
`url`, retried with exponential backoff; delivered states are marked in the store
(`alarms.notified`), so an undelivered one is tried again at the next run, in order."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from log.alarm_sync import mark_notified, pending_notifications
from log.alarms import Alarm
from log.schema import Engine

__all__ = ["WEBHOOK_BOUNDS", "WebhookSettings", "alarm_payload", "deliver", "deliver_pending"]

logger = logging.getLogger(__name__)

WEBHOOK_BOUNDS: dict[str, tuple[float, float]] = {
    "attempts": (1, 20),
    "backoff_s": (0.0, 60.0),
    "timeout_s": (0.1, 60.0),
}
MAX_BACKOFF_S = 300.0


@dataclass(frozen=True)
class WebhookSettings:
    """`attempts` per delivery; the i-th retry waits `backoff_s` x 2^(i-1) (at most 300 s)."""

    url: str
    attempts: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not (self.url.startswith("http://") or self.url.startswith("https://")):
            raise ValueError("the alarm webhook URL must be http:// or https://")
        if len(self.url) > 2048:
            raise ValueError("the alarm webhook URL is longer than 2048 characters")
        for name, (lo, hi) in WEBHOOK_BOUNDS.items():
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and lo <= value <= hi):
                raise ValueError(f"webhook {name} must be in [{lo:g}, {hi:g}], got {value!r}")


def alarm_payload(alarm: Alarm) -> dict[str, Any]:
    return {"event": f"alarm.{alarm.state}", "alarm": alarm.to_json()}


def deliver(
    settings: WebhookSettings,
    payload: dict[str, Any],
    *,
    client: httpx.Client,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """POST `payload`; a 2xx answer is delivered. Retries other answers and connection errors
    up to `attempts` times in all. Returns whether it was delivered."""
    for attempt in range(settings.attempts):
        if attempt:
            sleep(min(settings.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
        try:
            r = client.post(settings.url, json=payload, timeout=settings.timeout_s)
        except httpx.HTTPError as err:
            logger.warning("alarm webhook attempt %d failed: %s", attempt + 1, err)
            continue
        if 200 <= r.status_code < 300:
            return True
        logger.warning("alarm webhook attempt %d answered %d", attempt + 1, r.status_code)
    return False


def deliver_pending(
    engine: Engine, settings: WebhookSettings, *, sleep: Callable[[float], None] = time.sleep
) -> tuple[int, int]:
    """Deliver every alarm state not delivered yet, oldest first; stops at the first that
    cannot be delivered (the next run retries it). Returns (delivered, failed)."""
    delivered = 0
    with httpx.Client() as client:
        for alarm in pending_notifications(engine):
            if not deliver(settings, alarm_payload(alarm), client=client, sleep=sleep):
                return delivered, 1
            mark_notified(engine, alarm.id, alarm.state)
            delivered += 1
    return delivered, 0
