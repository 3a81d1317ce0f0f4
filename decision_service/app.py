"""`create_app()`: the FastAPI application; all I/O starts in the lifespan, none at import."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from decision_service import errors
from decision_service.routes import router
from decision_service.routes_evaluations import router as evaluations_router
from decision_service.service import Service
from decision_service.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = Service(settings)
        await service.start()
        app.state.service = service
        if settings.gc_tuning:
            # Everything loaded at start-up (SQLAlchemy, Alembic, FastAPI, VW) lives as long as
            # the process: move it out of the collector's sight, and collect less often, so that
            # requests parked on a group commit do not trigger repeated full collections.
            gc.collect()
            gc.freeze()
            gc.set_threshold(20_000, 50, 100)
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="decision-service",
        version="0.1.0",
        description="Contextual-bandit decisions with exact probabilities.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(router)
    app.include_router(evaluations_router)
    return app
