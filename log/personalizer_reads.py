"""Reads for the Personalizer compatibility routes: apprentice metrics, log date range, model
times. Every SQL statement of the compatibility layer is here (house rule: SQL only in `log/`).

Apprentice metrics, from the decisions served in Apprentice mode (`shadow.mode` = "Apprentice",
see `decision_service.decide.baseline_shadow`) decided at or after `since` and joined:

- `numberOfEvents`: joined apprentice decisions;
- `numberOfImitatedEvents`: those where the model's top choice (largest probability of its
  logged pmf; ties go to the first action) is the baseline that was served;
- `sumOfRewards`: the baseline's rewards (what was served: the true rewards, slot 0);
- `sumOfImitatedRewards`: the rewards of the imitated events (where the model's choice earned
  what the baseline earned);
- `lastProcessedEventTime`: the latest decided_at among them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select

from log.action_store import action_ids
from log.models import DecisionRow, ModelRow, OutcomeRow
from log.schema import Engine

__all__ = ["ApprenticeMetrics", "apprentice_metrics", "log_date_range", "model_times"]


@dataclass(frozen=True)
class ApprenticeMetrics:
    start: datetime
    events: int
    imitated: int
    sum_rewards: float
    sum_imitated_rewards: float
    last_event: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "startTime": self.start.isoformat(),
            "numberOfEvents": self.events,
            "sumOfRewards": self.sum_rewards,
            "sumOfImitatedRewards": self.sum_imitated_rewards,
            "numberOfImitatedEvents": self.imitated,
            "lastProcessedEventTime": (
                None if self.last_event is None else self.last_event.isoformat()
            ),
        }


def _top(pmf: list[float]) -> int:
    best = 0
    for i, p in enumerate(pmf):
        if p > pmf[best]:
            best = i
    return best


def apprentice_metrics(
    engine: Engine, loop: str, since: datetime, chunk: int = 5000
) -> ApprenticeMetrics:
    """The apprentice metrics of `loop` since `since` (module docstring); streamed."""
    query = (
        select(
            DecisionRow.decided_at,
            DecisionRow.actions,
            DecisionRow.chosen,
            DecisionRow.shadow,
            OutcomeRow.reward,
        )
        .join(
            OutcomeRow,
            and_(
                OutcomeRow.loop == DecisionRow.loop,
                OutcomeRow.event_id == DecisionRow.event_id,
                OutcomeRow.slot == 0,
            ),
        )
        .where(
            DecisionRow.loop == loop,
            DecisionRow.decided_at >= since,
            DecisionRow.shadow["mode"].as_string() == "Apprentice",
        )
        .execution_options(yield_per=chunk)
    )
    events = imitated = 0
    total = imitated_total = 0.0
    last: datetime | None = None
    with engine.connect() as conn:
        for row in conn.execute(query):
            events += 1
            total += row.reward
            pmf = row.shadow.get("pmf") or []
            ids = action_ids(row.actions)
            if pmf and ids[_top(pmf)] == row.chosen:
                imitated += 1
                imitated_total += row.reward
            if last is None or row.decided_at > last:
                last = row.decided_at
    return ApprenticeMetrics(since, events, imitated, total, imitated_total, last)


def log_date_range(engine: Engine, loop: str) -> tuple[datetime | None, datetime | None]:
    """(first, last) decided_at of the loop's decisions (None, None without any)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(func.min(DecisionRow.decided_at), func.max(DecisionRow.decided_at)).where(
                DecisionRow.loop == loop
            )
        ).one()
    return row[0], row[1]


def model_times(engine: Engine, loop: str) -> tuple[datetime | None, datetime | None]:
    """(creation, last modification) of the loop's live model (None, None when untrained)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(ModelRow.created_at, ModelRow.live_since, ModelRow.updated_at).where(
                ModelRow.loop == loop, ModelRow.status == "live"
            )
        ).first()
    if row is None:
        return None, None
    return row.created_at, row.live_since or row.updated_at
