"""What the retriever gate reads: the active catalog's features and, from the joined log, the
held-out events (decided after a candidate's training data) and the rewarded counts per item
before them (the popularity baseline)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from log.models import CatalogItemRow
from log.training_reads import EventWindow, iter_joined

__all__ = ["HeldOutEvent", "active_item_features", "held_out_events", "rewarded_counts"]


@dataclass(frozen=True)
class HeldOutEvent:
    """A joined decision as the retriever gate sees it: its context, the items shown and, per
    shown item, whether it was rewarded (joined reward > 0)."""

    event_id: str
    context: dict[str, Any]
    shown: tuple[str, ...]
    rewarded: tuple[bool, ...]
    features: tuple[dict[str, Any], ...]  # of the shown items, as logged


def active_item_features(engine: Engine, loop: str) -> list[tuple[str, dict[str, Any]]]:
    """(item id, features) of the loop's active items, in item-id order."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(CatalogItemRow.item_id, CatalogItemRow.features)
            .where(CatalogItemRow.loop == loop, CatalogItemRow.active.is_(True))
            .order_by(CatalogItemRow.item_id)
        ).all()
    return [(r.item_id, dict(r.features or {})) for r in rows]


def held_out_events(
    engine: Engine, loop: str, after: datetime, limit: int | None = None
) -> list[HeldOutEvent]:
    """The loop's joined decisions decided strictly after `after`, oldest first (at most
    `limit`)."""
    out: list[HeldOutEvent] = []
    for event, decided in _with_time(engine, loop, EventWindow(since=after)):
        if limit is not None and len(out) >= limit:
            break
        if decided > after:
            out.append(event)
    return out


def _with_time(
    engine: Engine, loop: str, window: EventWindow
) -> Iterator[tuple[HeldOutEvent, datetime]]:
    for event in iter_joined(engine, loop, window, order="decided"):
        record = event.record
        shown = tuple(str(s["action_id"]) for s in record.slots)
        rewarded = tuple(event.rewards.get(int(s["slot"]), 0.0) > 0 for s in record.slots)
        logged = {str(a["id"]): dict(a.get("features") or {}) for a in record.actions}
        features = tuple(logged.get(i, {}) for i in shown)
        held = HeldOutEvent(record.event_id, dict(record.context), shown, rewarded, features)
        yield held, record.decided_at


def rewarded_counts(engine: Engine, loop: str, through: datetime) -> Counter[str]:
    """How often each item was rewarded in joined decisions decided at or before `through`."""
    counts: Counter[str] = Counter()
    for event, decided in _with_time(engine, loop, EventWindow()):
        if decided > through:
            break
        for item, hit in zip(event.shown, event.rewarded, strict=True):
            if hit:
                counts[item] += 1
    return counts
