"""decision-service: the running service (FastAPI app, routes, settings, CLI)."""

from decision_service.app import create_app
from decision_service.settings import Settings, get_settings

__all__ = ["Settings", "create_app", "get_settings"]
