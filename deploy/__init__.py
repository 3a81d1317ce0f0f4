"""Model registry, promotion and rollout."""

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
]
