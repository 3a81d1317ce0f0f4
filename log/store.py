"""Reads of the event store used on the request path.

Every lookup consults the host's spool first (records durable there but not yet shipped), then
the database: a segment shipped in between is in the database by the time it is asked. A
database that cannot be reached raises `StoreUnreachable`, which callers turn into an
unverified-but-durable answer or a 503, never a 500.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, exc, func, select

from log.decision_reads import read_decision
from log.models import ActivationRow, DecisionRow, OutcomeRow, RewardRow
from log.records import DecisionRecord, RewardRecord
from log.spool import SpoolIndex


class StoreUnreachable(Exception):
    """The database did not answer (connection refused, dropped, timed out)."""


def is_unreachable(err: BaseException) -> bool:
    """True when `err` says the database could not be reached (as opposed to a bug or a
    refused statement): the request may be retried once it answers again."""
    return isinstance(err, StoreUnreachable | exc.OperationalError | exc.InterfaceError)


@dataclass(frozen=True)
class EventInfo:
    """What the reward and activation routes need to know about a decision."""

    loop: str
    event_id: str
    n_slots: int
    is_slate: bool
    deferred: bool
    activated_at: datetime | None
    reward_deadline: datetime | None
    decided_at: datetime
    in_database: bool


_INFO_COLUMNS = (
    DecisionRow.loop,
    DecisionRow.event_id,
    DecisionRow.n_slots,
    DecisionRow.is_slate,
    DecisionRow.deferred,
    DecisionRow.activated_at,
    DecisionRow.reward_deadline,
    DecisionRow.decided_at,
)


def _unreachable(err: Exception) -> StoreUnreachable:
    return StoreUnreachable(f"{type(err).__name__}: {err}"[:300])


def find_event(engine: Engine, index: SpoolIndex, loop: str, event_id: str) -> EventInfo | None:
    """The decision `event_id` of `loop` with its activation (stored or spooled), or None."""
    key = (loop, event_id)
    spooled = index.decision(key)
    spooled_activation = index.activation(key)
    activation = (
        None
        if spooled_activation is None
        else (spooled_activation.activated_at, spooled_activation.reward_deadline)
    )
    if spooled is not None:
        activated_at, deadline = spooled.activated_at, spooled.reward_deadline
        if spooled.deferred and activated_at is None:
            if activation is None:
                try:
                    activation = _stored_activation(engine, loop, event_id)
                except exc.DBAPIError:
                    activation = None  # the spool is all we can know: still a sound answer
            if activation is not None:
                activated_at, deadline = activation
        return EventInfo(
            loop,
            event_id,
            spooled.n_slots,
            spooled.is_slate,
            spooled.deferred,
            activated_at,
            deadline,
            spooled.decided_at,
            False,
        )
    try:
        with engine.connect() as conn:
            row = conn.execute(
                select(*_INFO_COLUMNS, ActivationRow.activated_at, ActivationRow.reward_deadline)
                .outerjoin(
                    ActivationRow,
                    (ActivationRow.loop == DecisionRow.loop)
                    & (ActivationRow.event_id == DecisionRow.event_id),
                )
                .where(DecisionRow.loop == loop, DecisionRow.event_id == event_id)
            ).first()
    except exc.DBAPIError as err:
        raise _unreachable(err) from err
    if row is None:
        return None
    activated_at, deadline = row[5], row[6]
    if row[4] and activated_at is None and row[8] is not None:  # activation not applied yet
        activated_at, deadline = row[8], row[9]
    if activated_at is None and activation is not None and row[4]:  # activation still spooled
        activated_at, deadline = activation
    return EventInfo(row[0], row[1], row[2], row[3], row[4], activated_at, deadline, row[7], True)


def _stored_activation(
    engine: Engine, loop: str, event_id: str
) -> tuple[datetime, datetime] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(ActivationRow.activated_at, ActivationRow.reward_deadline).where(
                ActivationRow.loop == loop, ActivationRow.event_id == event_id
            )
        ).first()
    return None if row is None else (row[0], row[1])


def get_stored_decision(
    engine: Engine, index: SpoolIndex, loop: str, event_id: str
) -> DecisionRecord | None:
    """The decision stored (or spooled) under this key: a replay answers with it."""
    spooled = index.decision((loop, event_id))
    if spooled is not None:
        return spooled
    try:
        return read_decision(engine, loop, event_id)
    except exc.DBAPIError as err:
        raise _unreachable(err) from err


def get_stored_reward(engine: Engine, index: SpoolIndex, reward_id: str) -> RewardRecord | None:
    """The reward stored (or spooled) under this id (for idempotent reward retries)."""
    spooled = index.reward(reward_id)
    if spooled is not None:
        return spooled
    try:
        with engine.connect() as conn:
            row = conn.execute(
                select(RewardRow.__table__).where(RewardRow.reward_id == reward_id)
            ).first()
    except exc.DBAPIError as err:
        raise _unreachable(err) from err
    return None if row is None else RewardRecord.from_row(row._mapping)


def loop_counts(engine: Engine, loop: str) -> dict[str, int]:
    """Counts for a loop's status: decisions, rewards (late ones apart; guardrail signals are
    not rewards and not counted), joined outcomes."""
    with engine.connect() as conn:
        decisions = conn.execute(
            select(func.count()).select_from(DecisionRow).where(DecisionRow.loop == loop)
        ).scalar_one()
        rewards = conn.execute(
            select(RewardRow.late, func.count())
            .where(RewardRow.loop == loop, RewardRow.metric == "")
            .group_by(RewardRow.late)
        ).all()
        outcomes = conn.execute(
            select(func.count()).select_from(OutcomeRow).where(OutcomeRow.loop == loop)
        ).scalar_one()
    by_late = {bool(late): n for late, n in rewards}
    return {
        "decisions": int(decisions),
        "rewards": int(by_late.get(False, 0)),
        "late_rewards": int(by_late.get(True, 0)),
        "outcomes": int(outcomes),
    }
