"""How many decisions a shadow version scored (`decisions.shadow.version`): the learner moves a
shadow on to canary after `rollout.shadow_min_events` of them. `since` (when the version became
shadow) bounds the scan through the (loop, decided_at) index. (A canary's count is its joined
decisions in the A/B analysis, `deploy.ab`.)
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, func, select

from log.models import DecisionRow

__all__ = ["count_shadowed"]


def count_shadowed(engine: Engine, loop: str, version: str, *, since: datetime) -> int:
    """Decisions of `loop` decided at or after `since` that `version` shadowed."""
    d = DecisionRow
    with engine.connect() as conn:
        n = conn.execute(
            select(func.count())
            .select_from(d)
            .where(
                d.loop == loop,
                d.decided_at >= since,
                d.shadow["version"].as_string() == version,
            )
        ).scalar_one()
    return int(n)
