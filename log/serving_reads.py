"""What each loop serves: its live, canary (with its share) and shadow versions, in one query.

Serving workers poll this every `DS_LOOP_REFRESH_S` (`decision_service.runtime`). The database
holds at most one version of each of these statuses per loop (unique partial indexes
`ux_models_one_live` / `_canary` / `_shadow`), so a loop has at most one of each; the rollout
state machine (deploy/) moves versions between them, this module only reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from log.models import ModelRow
from log.registry_store import ModelRecord

__all__ = ["SERVING_STATUSES", "ServingVersions", "loop_serving_versions", "serving_versions"]

SERVING_STATUSES = ("live", "canary", "shadow")
_COLUMNS = tuple(ModelRow.__table__.c[name] for name in ModelRecord.__dataclass_fields__)


@dataclass(frozen=True)
class ServingVersions:
    """A loop's versions that take part in serving (None where it has none)."""

    live: ModelRecord | None = None
    canary: ModelRecord | None = None
    shadow: ModelRecord | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "live": None if self.live is None else self.live.version,
            "canary": None if self.canary is None else self.canary.version,
            "canary_percent": None if self.canary is None else self.canary.canary_percent,
            "shadow": None if self.shadow is None else self.shadow.version,
        }


def _gather(rows: Any) -> dict[str, ServingVersions]:
    found: dict[str, dict[str, ModelRecord]] = {}
    for row in rows:
        record = ModelRecord(*row)
        found.setdefault(record.loop, {})[record.status] = record
    return {loop: ServingVersions(**by_status) for loop, by_status in found.items()}


def serving_versions(engine: Engine) -> dict[str, ServingVersions]:
    """The serving versions of every loop that has at least one (one query)."""
    with engine.connect() as conn:
        rows = conn.execute(select(*_COLUMNS).where(ModelRow.status.in_(SERVING_STATUSES))).all()
    return _gather(rows)


def loop_serving_versions(engine: Engine, loop: str) -> ServingVersions:
    """The serving versions of `loop` (one query; all None when it has none)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_COLUMNS).where(ModelRow.loop == loop, ModelRow.status.in_(SERVING_STATUSES))
        ).all()
    return _gather(rows).get(loop, ServingVersions())
