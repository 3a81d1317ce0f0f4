"""Joined events for training, as `log` reads them (only `log` talks to the database).

The reads live in :mod:`log.training_reads`; this module gives them their training names.
Online continuation reads the events joined after its parent's `checkpoint_seq` in
(join_seq, event_id) order (`order="seq"`): join_seq is commit-ordered, so no joined event is
ever skipped. Batch retraining reads a decided_at window in (decided_at, event_id) order.
"""

from __future__ import annotations

from log.training_reads import (
    EventWindow,
    GuardrailCounts,
    JoinedDecision,
    JoinedKey,
    Order,
    TrainingRow,
    count_joined,
    fetch_joined,
    fetch_training_rows,
    iter_joined,
    iter_joined_keys,
    iter_training_rows,
    last_join_seq,
)

__all__ = [
    "EventWindow",
    "GuardrailCounts",
    "JoinedDecision",
    "JoinedKey",
    "Order",
    "TrainingRow",
    "count_training_events",
    "fetch_joined",
    "fetch_training_rows",
    "iter_joined_keys",
    "iter_training_events",
    "iter_training_rows",
    "last_join_seq",
]

count_training_events = count_joined
iter_training_events = iter_joined
