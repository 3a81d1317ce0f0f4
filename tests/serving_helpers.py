"""Helpers of the canary/shadow serving tests.

Versions are real VW models registered with `deploy.registry.register`. Putting a version into
the shadow or canary state is the rollout state machine's job (deploy/, another part of the
work); these tests only need what is stored, so `set_status` writes the status directly with an
SQL update (retiring the loop's previous version in that status first: the database allows one
live, one canary and one shadow version per loop).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import numpy as np
import orjson
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from deploy.registry import register
from explore import Action, floor_pmf, make_explorer
from log.explore_settings import DEFAULT_FLOOR
from log.models import ModelRow, WriterRow
from policies import VWPolicy
from tests.decision_service.test_propensity import asgi_post

VW_ARGS = "-q ca"


def trained_artifact(
    context: dict[str, Any],
    actions: Sequence[dict[str, Any]],
    means: Sequence[float],
    *,
    seed: int,
    n: int = 400,
    vw_args: str = VW_ARGS,
) -> bytes:
    """A VW model trained on a seeded synthetic sample where action i has mean reward means[i]."""
    policy = VWPolicy(vw_args)
    acts = [Action(a["id"], a.get("features") or {}) for a in actions]
    rng = np.random.default_rng(seed)
    for _ in range(n):
        i = int(rng.integers(len(acts)))
        reward = means[i] + 0.1 * float(rng.standard_normal())
        policy.learn(context, acts, chosen=i, reward=reward, probability=1 / len(acts))
    try:
        return policy.save()
    finally:
        policy.close()


def register_version(engine: Engine, loop: str, artifact: bytes, vw_args: str = VW_ARGS) -> str:
    return register(
        engine, loop=loop, kind="batch", vw_args=vw_args, artifact=artifact, n_events=400
    ).version


def set_status(
    engine: Engine, version: str, status: str, canary_percent: float | None = None
) -> None:
    """Make `version` its loop's `status` version (stored directly, see the module docstring)."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        loop = (
            conn.execute(ModelRow.__table__.select().where(ModelRow.version == version))
            .one()
            ._mapping["loop"]
        )
        if status in ("live", "canary", "shadow"):
            conn.execute(
                update(ModelRow)
                .where(ModelRow.loop == loop, ModelRow.status == status)
                .values(status="retired", updated_at=now)
            )
        conn.execute(
            update(ModelRow)
            .where(ModelRow.version == version)
            .values(status=status, canary_percent=canary_percent, updated_at=now)
        )


def model_pmf(
    artifact: bytes,
    context: dict[str, Any],
    actions: Sequence[dict[str, Any]],
    lam: float,
    excluded: Sequence[str] = (),
    floor: float = DEFAULT_FLOOR,
) -> np.ndarray:
    """The pmf a softmax loop with the default exploration options (the floor) serves for a
    model and the request (excluded actions 0), computed on its own."""
    policy = VWPolicy(VW_ARGS, model=artifact)
    try:
        allowed = [i for i, a in enumerate(actions) if a["id"] not in excluded]
        acts = [Action(actions[i]["id"], actions[i].get("features") or {}) for i in allowed]
        pmf_c = floor_pmf(
            make_explorer("softmax", lam=lam).pmf(policy.scores(context, acts)), floor
        )
    finally:
        policy.close()
    out = np.zeros(len(actions))
    out[allowed] = pmf_c
    return out


def post_many(
    client: TestClient, requests: Sequence[tuple[str, dict[str, Any]]], expected: int
) -> list[dict[str, Any]]:
    """POST every (path, body), 64 at a time, inside the app's event loop (the TestClient's
    portal, where its lifespan runs), so the writer groups the commits."""

    async def run() -> list[dict[str, Any]]:
        gate = asyncio.Semaphore(64)

        async def one(path: str, body: dict[str, Any]) -> dict[str, Any]:
            async with gate:
                status, raw = await asgi_post(client.app, path, orjson.dumps(body))
            assert status == expected, raw
            data: dict[str, Any] = orjson.loads(raw)
            return data

        return list(await asyncio.gather(*(one(p, b) for p, b in requests)))

    portal = client.portal
    assert portal is not None
    return portal.call(run)


def rank_many(
    client: TestClient, loop: str, bodies: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """POST every body to the loop's rank route (201 each)."""
    return post_many(client, [(f"/v1/loops/{loop}/rank", b) for b in bodies], 201)


def join_later(client: TestClient, hours: float) -> None:
    """Run the joiner as if `hours` had passed (the writers' watermarks moved there too)."""
    service = client.app.state.service  # type: ignore[attr-defined]
    later = datetime.now(UTC) + timedelta(hours=hours)
    with service.engine.begin() as conn:
        conn.execute(update(WriterRow).values(watermark=later))
    service.join_due(later)


class UvicornThread:
    """The service under uvicorn in a thread, on a free loopback port (a context manager)."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        self.app = app
        config = uvicorn.Config(app, port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Self:
        self.thread.start()
        for _ in range(600):
            if self.server.started:
                return self
            time.sleep(0.05)
        raise AssertionError("the service did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)
