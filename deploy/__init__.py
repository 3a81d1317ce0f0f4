"""Model registry, promotion and rollout."""

from deploy.registry import (
    IntegrityError,
    ModelVersion,
    get_version,
    list_versions,
    live_version,
    live_versions,
    load_artifact,
    promote,
    register,
)

__all__ = [
    "IntegrityError",
    "ModelVersion",
    "get_version",
    "list_versions",
    "live_version",
    "live_versions",
    "load_artifact",
    "promote",
    "register",
]
