"""The typed records of the event store: one decision, one reward, one activation.

The decision path builds a `DecisionRecord`; the writer, the spool, the store's reads, the
exports and training use that same value, unchanged. Its fields are the columns of
`decisions` (`DECISION_COLUMNS` is derived from them, in order), so no module restates them.
Records are the only thing the group-commit path writes: every one is keyed, and writing one
twice stores it once (decision: loop + event_id, first wins; reward: reward_id; activation:
loop + event_id, first wins).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "DECISION_COLUMNS",
    "GENERATED_ID",
    "GUARDRAIL_MAX_VALUE",
    "ActivationRecord",
    "DecisionRecord",
    "Record",
    "RewardRecord",
    "is_generated_id",
    "new_event_id",
    "reward_id_for",
]

# Event ids the service generates: unique by construction (122 random bits), so a decision
# with such an id may be made durable in the local spool without asking the database whether
# the id is free. Clients may not choose ids of this form (they may only replay them).
GENERATED_ID = re.compile(r"ds-[0-9a-f]{32}")
_REWARD_NAMESPACE = uuid.UUID("6f1c2f3e-8d7a-5b7e-9a43-2c1d0e5f6a70")


def new_event_id() -> str:
    return f"ds-{uuid.uuid4().hex}"


def is_generated_id(event_id: str) -> bool:
    return GENERATED_ID.fullmatch(event_id) is not None


def reward_id_for(loop: str, event_id: str, key: str | None) -> str:
    """The stored id of a reward: random, or derived from the client's idempotency key so that
    a retried POST with the same key is stored once."""
    if key is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_REWARD_NAMESPACE, f"{loop}\x00{event_id}\x00{key}"))


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A served decision with everything as it was at decision time (the `decisions` row).

    `pmf` is the distribution (request order; excluded actions 0) the first choice was drawn
    from; `slots` one entry per slot with its conditional probability (slates also keep each
    slot's whole conditional pmf under "pmf"); `response` the exact body served, returned
    again on a replay.
    """

    loop: str
    event_id: str
    decided_at: datetime
    model_version: str
    policy_arm: str
    request_digest: str
    context: dict[str, Any]
    actions: list[dict[str, Any]]  # [{"id": ..., "features": {...}}] in request order
    pmf: list[float]
    excluded: list[str]
    chosen: str
    slots: list[dict[str, Any]]
    n_slots: int
    is_slate: bool
    deferred: bool
    activated_at: datetime | None
    reward_deadline: datetime | None  # None while a deferred decision waits for activation
    response: dict[str, Any]
    # The probability that this decision was served by its arm (`policy_arm`: "live" or
    # "canary"): the canary's share, or 1 - share, during a canary split; 1 otherwise. `pmf` is
    # the arm's distribution, i.e. the probability of each action given the arm.
    arm_probability: float = 1.0
    # The shadow candidate scored beside the served decision (never served):
    # {"version": ..., "pmf": [...] aligned with `actions`}; None without a shadow.
    shadow: dict[str, Any] | None = None
    # Ranked from the catalog (`retrieve` in place of `actions`): {"retriever": its version,
    # "index": the index version, "k", "filters"}; `actions` are the retrieved candidates with
    # their features as of decision time. None when the request sent its actions.
    retrieval: dict[str, Any] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.loop, self.event_id)

    def row(self) -> dict[str, Any]:
        """The column values (for SQLAlchemy)."""
        return {name: getattr(self, name) for name in DECISION_COLUMNS}

    @classmethod
    def from_row(cls, row: Any) -> DecisionRecord:
        """From any mapping with the column names (a row's `_mapping`, a spooled dict; lines
        spooled before a field existed take its default)."""
        return cls(**{name: row[name] for name in DECISION_COLUMNS if name in row})


DECISION_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(DecisionRecord))


GUARDRAIL_MAX_VALUE = 1e9
"""A guardrail signal's value lies in [0, GUARDRAIL_MAX_VALUE]: it is stored as sent, but the
joiner counts signals (one per record), whatever their values."""


@dataclass(frozen=True, slots=True)
class RewardRecord:
    """One reward as received (append-only; `rewards` row). `late` is what the client was
    told; the joiner decides from `received_at` against the window and corrects it."""

    reward_id: str
    loop: str
    event_id: str
    slot: int
    value: float
    received_at: datetime
    late: bool
    # "" for the reward itself; the name of a guardrail metric (negative feedback such as
    # "report" or "hide", declared in the loop's gate settings) otherwise.
    metric: str = ""

    def row(self) -> dict[str, Any]:
        return {
            "reward_id": self.reward_id,
            "loop": self.loop,
            "event_id": self.event_id,
            "slot": self.slot,
            "value": self.value,
            "received_at": self.received_at,
            "late": self.late,
            "metric": self.metric,
        }

    @classmethod
    def from_row(cls, row: Any) -> RewardRecord:
        return cls(
            row["reward_id"],
            row["loop"],
            row["event_id"],
            int(row["slot"]),
            float(row["value"]),
            row["received_at"],
            bool(row["late"]),
            str(row.get("metric") or ""),
        )


@dataclass(frozen=True, slots=True)
class ActivationRecord:
    """A deferred decision's activation (`activations` row): its window closes at
    `reward_deadline`. Stored on its own, so it is kept whichever reaches the database first,
    the decision or the activation; the joiner applies it to the decision."""

    loop: str
    event_id: str
    activated_at: datetime
    reward_deadline: datetime

    @property
    def key(self) -> tuple[str, str]:
        return (self.loop, self.event_id)

    @classmethod
    def at(cls, loop: str, event_id: str, now: datetime, wait_s: float) -> ActivationRecord:
        return cls(loop, event_id, now, now + timedelta(seconds=wait_s))

    def row(self) -> dict[str, Any]:
        return {
            "loop": self.loop,
            "event_id": self.event_id,
            "activated_at": self.activated_at,
            "reward_deadline": self.reward_deadline,
        }

    @classmethod
    def from_row(cls, row: Any) -> ActivationRecord:
        return cls(row["loop"], row["event_id"], row["activated_at"], row["reward_deadline"])


Record = DecisionRecord | RewardRecord | ActivationRecord
