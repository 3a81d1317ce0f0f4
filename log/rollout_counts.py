"""How many decisions a version in rollout has seen: shadowed (scored beside the served
decision, `decisions.shadow.version`) and served as the canary (`policy_arm` "canary",
`model_version`). The learner moves a shadow on after `rollout.shadow_min_events` and a canary
after `rollout.canary_min_events` of them. `since` (when the version entered its state) bounds
the scan through the (loop, decided_at) index.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, func, select

from log.models import DecisionRow

__all__ = ["count_canary", "count_shadowed"]


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


def count_canary(engine: Engine, loop: str, version: str, *, since: datetime) -> int:
    """Decisions of `loop` decided at or after `since` that `version` served as the canary."""
    d = DecisionRow
    with engine.connect() as conn:
        n = conn.execute(
            select(func.count())
            .select_from(d)
            .where(
                d.loop == loop,
                d.decided_at >= since,
                d.model_version == version,
                d.policy_arm == "canary",
            )
        ).scalar_one()
    return int(n)
