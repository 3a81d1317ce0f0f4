"""`create_app()`: the FastAPI application; all I/O starts in the lifespan, none at import."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from decision_service import errors
from decision_service.personalizer.routes import routers as personalizer_routers
from decision_service.routes import router
from decision_service.routes_catalog import router as catalog_router
from decision_service.routes_dashboard import router as dashboard_router
from decision_service.routes_deploy import router as deploy_router
from decision_service.routes_evaluations import REQUEST_MODELS as EVALUATION_REQUEST_MODELS
from decision_service.routes_evaluations import router as evaluations_router
from decision_service.routes_keys import router as keys_router
from decision_service.routes_learner import REQUEST_MODELS as LEARNER_REQUEST_MODELS
from decision_service.routes_learner import router as learner_router
from decision_service.routes_operate import router as operate_router
from decision_service.routes_serving import router as serving_router
from decision_service.routes_tune import REQUEST_MODELS as TUNE_REQUEST_MODELS
from decision_service.routes_tune import router as tune_router
from decision_service.schemas import REQUEST_MODELS
from decision_service.schemas_catalog import REQUEST_MODELS as CATALOG_REQUEST_MODELS
from decision_service.schemas_deploy import REQUEST_MODELS as DEPLOY_REQUEST_MODELS
from decision_service.schemas_keys import REQUEST_MODELS as KEY_REQUEST_MODELS
from decision_service.service import Service
from decision_service.settings import Settings, get_settings
from decision_service.telemetry import TelemetryMiddleware
from policies.rank_cost import configure_rank_budget
from policies.vw_text import configure_text_caches

TITLE = "decision-service"
VERSION = "0.1.0"
DESCRIPTION = (
    "Contextual-bandit decisions with exact probabilities. Every error answers "
    '`{"error": {"code", "message"}}`; 429 and 503 carry Retry-After. Every route needs an API '
    "key (`Authorization: Bearer <key>`, or `Ocp-Apim-Subscription-Key: <key>`): none or an "
    "invalid one is a 401, a key whose role or loops do not allow the route a 403."
)
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key, `dsk_...` (`decision-service keys create`).",
    },
    "subscriptionKey": {
        "type": "apiKey",
        "in": "header",
        "name": "Ocp-Apim-Subscription-Key",
        "description": "The same API key, in the header Azure Personalizer clients send.",
    },
}
AUTH_RESPONSES: dict[str, dict[str, Any]] = {
    "401": {
        "description": "No API key, or one that is malformed, unknown or revoked.",
        "headers": {
            "WWW-Authenticate": {
                "description": "`Bearer`: how to authenticate.",
                "schema": {"type": "string"},
            }
        },
    },
    "403": {"description": "The key's role or loops do not allow this route."},
}


def openapi_document(app: FastAPI, request_models: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    """The OpenAPI document, with the request bodies the routes read themselves (no FastAPI
    body parameter, for speed and for the service's own error codes) registered as components,
    so that every `$ref` resolves."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    _, top = models_json_schema(
        [(model, "validation") for model in request_models],
        ref_template="#/components/schemas/{model}",
    )
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in top.get("$defs", {}).items():
        if name in components and components[name] != schema:
            raise RuntimeError(f"two different OpenAPI schemas are named {name!r}")
        components[name] = schema
    # FastAPI adds a 422 with its own validation body to every operation with parameters; the
    # service answers its error body instead, and documents 422 where it can happen.
    # Every error answers the JSON error body, whatever the route's own media type.
    fastapi_422 = {"$ref": "#/components/schemas/HTTPValidationError"}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    # Every operation in the document needs a key (/healthz and the docs are not in it).
    doc["components"]["securitySchemes"] = SECURITY_SCHEMES
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
            responses = operation.setdefault("responses", {})
            for status, response in AUTH_RESPONSES.items():
                responses[status] = {**response}
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            responses = operation.get("responses", {})
            content = responses.get("422", {}).get("content", {}).get("application/json", {})
            if content.get("schema") == fastapi_422:
                del responses["422"]
            for status, response in responses.items():
                if status >= "400":
                    response["content"] = error
    if fastapi_422["$ref"] not in str(doc["paths"]):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
    app.openapi_schema = doc
    return doc


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_text_caches(settings.text_cache_bytes)
        configure_rank_budget(settings.max_rank_features)
        service = Service(settings)
        await service.start()
        app.state.service = service
        app.state.telemetry = service.telemetry
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

    app = FastAPI(title=TITLE, version=VERSION, description=DESCRIPTION, lifespan=lifespan)
    errors.install(app)
    app.include_router(router)
    app.include_router(evaluations_router)
    app.include_router(learner_router)
    app.include_router(serving_router)
    app.include_router(deploy_router)
    app.include_router(keys_router)
    app.include_router(catalog_router)
    app.include_router(operate_router)
    app.include_router(dashboard_router)
    app.add_middleware(TelemetryMiddleware)
    for compat in personalizer_routers():  # Azure Personalizer's API (not in the document)
        app.include_router(compat)
    app.include_router(tune_router)
    models = (
        REQUEST_MODELS
        + EVALUATION_REQUEST_MODELS
        + DEPLOY_REQUEST_MODELS
        + KEY_REQUEST_MODELS
        + LEARNER_REQUEST_MODELS
        + CATALOG_REQUEST_MODELS
        + TUNE_REQUEST_MODELS
    )
    app.openapi = lambda: openapi_document(app, models)  # type: ignore[method-assign]
    return app
