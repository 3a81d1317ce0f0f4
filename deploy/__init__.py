"""Model registry, promotion gate and rollout.

`deploy.registry` (versions), `deploy.rollout` (states, transitions, rollback), `deploy.gate`
(the off-policy promotion gate; imports `learn`, so it is not imported here), `deploy.ab` (the
online analysis of a canary against live).
"""

from deploy.registry import (
    IntegrityError,
    LiveVersionConflict,
    ModelVersion,
    get_version,
    lineage_window,
    list_versions,
    live_version,
    live_versions,
    load_artifact,
    promote,
    register,
)
from deploy.rollout import rollback, transition

__all__ = [
    "IntegrityError",
    "LiveVersionConflict",
    "ModelVersion",
    "get_version",
    "lineage_window",
    "list_versions",
    "live_version",
    "live_versions",
    "load_artifact",
    "promote",
    "register",
    "rollback",
    "transition",
]
