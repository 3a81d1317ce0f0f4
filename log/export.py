"""Exports of a loop's decision log: the shared streaming read (DESIGN §5).

The decisions are read by :func:`log.decision_reads.iter_decisions` as typed records
(:class:`LoggedDecision` = the stored :class:`log.records.DecisionRecord`, its join and its
outcomes by slot), streamed in `decided_at` order with bounded memory. The formats live beside
this module: `log.export_dsjson.export_dsjson` (Vowpal Wabbit's decision-service JSON) and
`log.export_parquet.export_parquet` (one row per decision).
"""

from __future__ import annotations

from dataclasses import dataclass

from log.decision_reads import (
    DEFAULT_YIELD_PER,
    LoggedDecision,
    SlotOutcome,
    check_window,
    iter_decisions,
)

__all__ = [
    "DEFAULT_YIELD_PER",
    "ExportStats",
    "LoggedDecision",
    "SlotOutcome",
    "check_window",
    "iter_decisions",
]


@dataclass
class ExportStats:
    """What an export wrote: `rows` lines/rows written, of which `joined` carry a reward;
    `skipped` decisions read but not written (DSJSON leaves out decisions without outcomes)."""

    rows: int = 0
    joined: int = 0
    slates: int = 0
    skipped: int = 0
