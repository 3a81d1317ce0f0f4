"""The reward joiner: closes reward windows and writes one outcome per slot (DESIGN §5).

A decision's window closes at `reward_deadline` (decided_at + reward_wait, or activation +
reward_wait for deferred decisions). Rewards received inside it are aggregated as the loop
says; none -> the loop's default reward. Late rewards are stored and counted, never joined.
Deferred decisions that were never activated have no deadline and are never joined.
Running the joiner twice changes nothing: a decision is marked `joined_at` in the same
transaction that writes its outcomes, and outcomes are insert-if-absent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, select, update

from log.models import DecisionRow, OutcomeRow, RewardRow
from log.writer import _dialect_insert


def aggregate(values: Sequence[float], how: str) -> float:
    """Aggregate the rewards of one slot, `values` in order of arrival."""
    if not values:
        raise ValueError("values must be non-empty")
    if how == "earliest":
        return float(values[0])
    if how == "sum":
        return float(sum(values))
    if how == "mean":
        return float(sum(values) / len(values))
    if how == "max":
        return float(max(values))
    if how == "min":
        return float(min(values))
    raise ValueError(f"unknown aggregation {how!r}")


@dataclass
class JoinStats:
    decisions: int = 0
    outcomes: int = 0
    defaulted: int = 0
    rewards_joined: int = 0


def join_loop(
    engine: Engine,
    loop: str,
    *,
    default_reward: float,
    aggregation: str,
    now: datetime | None = None,
    batch_size: int = 2000,
) -> JoinStats:
    """Close every window of `loop` whose deadline is at or before `now`."""
    now = now or datetime.now(UTC)
    stats = JoinStats()
    while True:
        with engine.begin() as conn:
            decisions = conn.execute(
                select(
                    DecisionRow.event_id,
                    DecisionRow.n_slots,
                    DecisionRow.decided_at,
                    DecisionRow.reward_deadline,
                )
                .where(
                    DecisionRow.loop == loop,
                    DecisionRow.joined_at.is_(None),
                    DecisionRow.reward_deadline.is_not(None),
                    DecisionRow.reward_deadline <= now,
                )
                .order_by(DecisionRow.reward_deadline)
                .limit(batch_size)
                # concurrent joiners (every serving worker, the learner) take disjoint batches
                .with_for_update(skip_locked=True)
            ).all()
            if not decisions:
                return stats
            ids = [d.event_id for d in decisions]
            rewards = conn.execute(
                select(RewardRow.event_id, RewardRow.slot, RewardRow.value)
                .where(
                    RewardRow.loop == loop,
                    RewardRow.event_id.in_(ids),
                    RewardRow.late.is_(False),
                )
                .order_by(RewardRow.received_at, RewardRow.reward_id)
            ).all()
            by_slot: dict[tuple[str, int], list[float]] = defaultdict(list)
            for r in rewards:
                by_slot[(r.event_id, r.slot)].append(r.value)
            rows = []
            for d in decisions:
                for slot in range(d.n_slots):
                    values = by_slot.get((d.event_id, slot), [])
                    rows.append(
                        {
                            "loop": loop,
                            "event_id": d.event_id,
                            "slot": slot,
                            "reward": aggregate(values, aggregation) if values else default_reward,
                            "default_applied": not values,
                            "n_rewards": len(values),
                            "decided_at": d.decided_at,
                            "joined_at": now,
                        }
                    )
                    stats.defaulted += not values
                    stats.rewards_joined += len(values)
            conn.execute(_dialect_insert(conn, OutcomeRow).on_conflict_do_nothing(), rows)
            conn.execute(
                update(DecisionRow)
                .where(
                    DecisionRow.loop == loop,
                    DecisionRow.event_id.in_(ids),
                    DecisionRow.joined_at.is_(None),  # the first join's watermark is kept
                )
                .values(joined_at=now)
            )
            stats.decisions += len(decisions)
            stats.outcomes += len(rows)
