"""The ceiling of the rank benchmark: FastAPI + Vowpal Wabbit and nothing else.

Same route and the same VW text encoding as the service, but no validation, no exploration,
no logging: read the body, predict, answer the argmax. Serve it like the service:
``uvicorn --factory benchmarks.ceiling_app:create_app``.
"""

from __future__ import annotations

from typing import Any

import orjson
import vowpalwabbit
from fastapi import FastAPI, Request
from starlette.responses import Response

from explore.types import Action
from policies.vw_text import example_lines

VW_ARGS = "--cb_adf --quiet -q ca --cb_type mtr"


def create_app() -> FastAPI:
    app = FastAPI(title="rank ceiling")
    workspace = vowpalwabbit.Workspace(VW_ARGS)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.post("/v1/loops/{loop}/rank", status_code=201)
    async def rank(loop: str, request: Request) -> Response:
        body: dict[str, Any] = orjson.loads(await request.body())
        actions = [Action(a["id"], a.get("features", {})) for a in body["actions"]]
        costs = workspace.predict(example_lines(body.get("context", {}), actions))
        best = min(range(len(actions)), key=costs.__getitem__)  # lowest cost = highest score
        return Response(
            orjson.dumps({"event_id": body.get("event_id"), "action_id": actions[best].id}),
            status_code=201,
            media_type="application/json",
        )

    return app
