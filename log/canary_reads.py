"""The served decisions of a canary split with their joined outcomes, for the online A/B analysis.

A decision is in the split when both arms could have served it: ``arm_probability < 1`` (the
probability of the arm that served it; 1 outside a split, e.g. a worker that had not yet picked
the canary up) and its arm is ``live``, or ``canary`` served by the canary version. Only joined
decisions count (their reward window closed). They come in (join_seq, event_id) order, the
commit order of the joins, so the stream read at one look is a prefix of the stream read at a
later look (what an anytime-valid sequence needs). Per event: whether the canary served it, its
arm probability, the joined reward of slot 0 and, per guardrail metric, whether at least one
such signal was counted inside its window on slot 0 (as the offline evaluation counts them).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, and_, func, or_, select

from log.models import DecisionRow, OutcomeRow

__all__ = ["MAX_SPLIT_EVENTS", "SplitEvents", "read_split_events"]

MAX_SPLIT_EVENTS = 10_000_000


@dataclass
class SplitEvents:
    """Column arrays of the split's joined events, in join order."""

    canary: array[int] = field(default_factory=lambda: array("b"))
    arm_probability: array[float] = field(default_factory=lambda: array("d"))
    reward: array[float] = field(default_factory=lambda: array("d"))
    guardrails: dict[str, array[int]] = field(default_factory=dict)
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.reward)


def read_split_events(
    engine: Engine,
    loop: str,
    canary_version: str,
    *,
    since: datetime,
    metrics: tuple[str, ...] = (),
    limit: int = MAX_SPLIT_EVENTS,
) -> SplitEvents:
    """The joined decisions of `loop` decided at or after `since` in the split of
    `canary_version` (see the module docstring), at most `limit` (then `truncated`)."""
    if not 1 <= limit <= MAX_SPLIT_EVENTS:
        raise ValueError(f"limit must be in [1, {MAX_SPLIT_EVENTS}], got {limit}")
    d, o = DecisionRow, OutcomeRow
    seq = func.coalesce(d.join_seq, 0)
    stmt = (
        select(d.event_id, d.policy_arm, d.arm_probability, o.slot, o.reward, o.guardrails)
        .join(o, and_(o.loop == d.loop, o.event_id == d.event_id))
        .where(
            d.loop == loop,
            d.decided_at >= since,
            d.joined_at.is_not(None),
            d.arm_probability < 1.0,
            or_(
                d.policy_arm == "live",
                and_(d.policy_arm == "canary", d.model_version == canary_version),
            ),
        )
        .order_by(seq, d.event_id, o.slot)
        .execution_options(yield_per=5000)
    )
    out = SplitEvents(guardrails={m: array("b") for m in metrics})
    current: str | None = None
    flags: dict[str, int] = {}

    def close() -> None:
        for m in metrics:
            out.guardrails[m].append(flags.get(m, 0))

    with engine.connect() as conn:
        for event_id, arm, probability, slot, reward, guardrails in conn.execute(stmt):
            if event_id != current:
                if current is not None:
                    close()
                if len(out) >= limit:
                    current = None
                    out.truncated = True
                    break
                current = event_id
                flags = {}
                out.canary.append(1 if arm == "canary" else 0)
                out.arm_probability.append(float(probability))
                out.reward.append(float(reward) if slot == 0 else 0.0)
            elif slot == 0:
                out.reward[-1] = float(reward)
            if slot == 0 and guardrails:
                for m in metrics:
                    if (guardrails.get(m) or 0) > 0:
                        flags[m] = 1
        if current is not None:
            close()
    return out
