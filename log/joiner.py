"""The reward joiner: closes reward windows and writes one outcome per slot (DESIGN §5).

A decision's window closes at `reward_deadline` (decided_at + reward_wait, or activation +
reward_wait for deferred decisions). Rewards with `received_at` at or before it are aggregated
as the loop says; none -> the loop's default reward. Later rewards are marked late, stored and
counted, never joined. Deferred decisions never activated have no deadline and never join.

Guardrail signals (rewards whose `metric` is not "": negative feedback such as "report") are
never part of the reward: per slot, the outcome's `guardrails` holds, for each metric, how many
of its signals were received inside the window (null when none); late ones are marked late and
not counted, exactly like late rewards.

Guarantees:
- A window is closed only once no reward that belongs to it can still be on its way: not
  before `now` (minus the caller's grace), and not past the lowest watermark of the registered
  writers (`writers`): every reward a writer acknowledged with received_at at or before its
  watermark is in the database, even if it went through a spool.
- Each batch is one transaction that takes the loop's next `join_seq` from `join_clock` and
  holds that row's lock until it commits, so join_seq order is commit order: a reader that
  has seen join_seq n has seen every batch before it (learning resumes after a join_seq, never
  after a wall-clock time).
- Running the joiner twice changes nothing: a decision is marked joined in the transaction
  that writes its outcomes, and outcomes are insert-if-absent.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, select, update

from log.apply import apply_activations, dialect_insert
from log.models import DecisionRow, JoinClock, OutcomeRow, RewardRow
from log.writers import lowest_watermark

_FLOAT_MAX = 1.7976931348623157e308


def aggregate(values: Sequence[float], how: str) -> float:
    """Aggregate the rewards of one slot, `values` in order of arrival. Always finite."""
    if not values:
        raise ValueError("values must be non-empty")
    if how == "earliest":
        out = float(values[0])
    elif how == "sum":
        try:
            out = math.fsum(values)
        except OverflowError:  # past the largest float: saturate (its sign is the scaled sum's)
            out = math.copysign(_FLOAT_MAX, math.fsum(v / 1024 for v in values))
    elif how == "mean":
        out = math.fsum(v / len(values) for v in values)
    elif how == "max":
        out = float(max(values))
    elif how == "min":
        out = float(min(values))
    else:
        raise ValueError(f"unknown aggregation {how!r}")
    return min(max(out, -_FLOAT_MAX), _FLOAT_MAX)


@dataclass
class JoinStats:
    decisions: int = 0
    outcomes: int = 0
    defaulted: int = 0
    rewards_joined: int = 0
    late_rewards: int = 0
    guardrail_signals: int = 0
    late_guardrail_signals: int = 0
    activations_applied: int = 0
    cutoff: datetime | None = None
    last_seq: int | None = None


def join_cutoff(conn: Connection, now: datetime) -> datetime:
    """The latest deadline that may be closed now: `now`, or the lowest writer watermark."""
    mark = lowest_watermark(conn)
    return now if mark is None else min(now, mark)


def next_join_seq(conn: Connection, loop: str) -> int:
    """Take the loop's next join sequence number; the row stays locked until commit."""
    conn.execute(
        dialect_insert(conn, JoinClock)
        .values(loop=loop, seq=0)
        .on_conflict_do_nothing(index_elements=["loop"])
    )
    seq = conn.execute(
        update(JoinClock)
        .where(JoinClock.loop == loop)
        .values(seq=JoinClock.seq + 1)
        .returning(JoinClock.seq)
    ).scalar_one()
    return int(seq)


def join_loop(
    engine: Engine,
    loop: str,
    *,
    default_reward: float,
    aggregation: str,
    now: datetime | None = None,
    batch_size: int = 2000,
    max_batches: int | None = None,
) -> JoinStats:
    """Close every window of `loop` whose deadline is at or before the cutoff (see above)."""
    now = now or datetime.now(UTC)
    stats = JoinStats()
    with engine.begin() as conn:
        stats.activations_applied = apply_activations(conn, loop)
    batches = 0
    while max_batches is None or batches < max_batches:
        batches += 1
        with engine.begin() as conn:
            cutoff = join_cutoff(conn, now)
            stats.cutoff = cutoff
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
                    DecisionRow.reward_deadline <= cutoff,
                )
                .order_by(DecisionRow.reward_deadline, DecisionRow.event_id)
                .limit(batch_size)
                # concurrent joiners (every serving worker, the learner) take disjoint batches
                .with_for_update(skip_locked=True)
            ).all()
            if not decisions:
                return stats
            ids = [d.event_id for d in decisions]
            deadline = {d.event_id: d.reward_deadline for d in decisions}
            rewards = conn.execute(
                select(
                    RewardRow.reward_id,
                    RewardRow.event_id,
                    RewardRow.slot,
                    RewardRow.value,
                    RewardRow.received_at,
                    RewardRow.late,
                    RewardRow.metric,
                )
                .where(RewardRow.loop == loop, RewardRow.event_id.in_(ids))
                .order_by(RewardRow.received_at, RewardRow.reward_id)
            ).all()
            by_slot: dict[tuple[str, int], list[float]] = defaultdict(list)
            signals: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
            late_ids: list[str] = []
            timely_ids: list[str] = []
            for r in rewards:
                late = r.received_at > deadline[r.event_id]
                if late != r.late:
                    (late_ids if late else timely_ids).append(r.reward_id)
                if r.metric:  # a guardrail signal: counted, never part of the reward
                    if late:
                        stats.late_guardrail_signals += 1
                    else:
                        counts = signals[(r.event_id, r.slot)]
                        counts[r.metric] = counts.get(r.metric, 0) + 1
                elif late:
                    stats.late_rewards += 1
                else:
                    by_slot[(r.event_id, r.slot)].append(r.value)
            seq = next_join_seq(conn, loop)
            rows = []
            for d in decisions:
                for slot in range(d.n_slots):
                    values = by_slot.get((d.event_id, slot), [])
                    counted = signals.get((d.event_id, slot))
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
                            "join_seq": seq,
                        }
                    )
                    if counted:
                        rows[-1]["guardrails"] = dict(sorted(counted.items()))
                    stats.defaulted += not values
                    stats.rewards_joined += len(values)
                    stats.guardrail_signals += sum(counted.values()) if counted else 0
            # outcomes without guardrail signals leave `guardrails` NULL (SQL NULL, not JSON
            # null): one statement per shape, the second only when a slot got signals
            parts = [rows]
            if signals:
                parts = [
                    [row for row in rows if "guardrails" not in row],
                    [row for row in rows if "guardrails" in row],
                ]
            for part in parts:
                if part:
                    conn.execute(dialect_insert(conn, OutcomeRow).on_conflict_do_nothing(), part)
            conn.execute(
                update(DecisionRow)
                .where(
                    DecisionRow.loop == loop,
                    DecisionRow.event_id.in_(ids),
                    DecisionRow.joined_at.is_(None),
                )
                .values(joined_at=now, join_seq=seq)
            )
            # what the client was told is corrected by what the window says
            for flag, reward_ids in ((True, late_ids), (False, timely_ids)):
                if reward_ids:
                    conn.execute(
                        update(RewardRow)
                        .where(RewardRow.reward_id.in_(reward_ids))
                        .values(late=flag)
                    )
            stats.decisions += len(decisions)
            stats.outcomes += len(rows)
            stats.last_seq = seq
    return stats
