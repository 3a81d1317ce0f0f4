"""The composition root's state: engine, writer, loops; and the request-path operations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from decision_service.decide import decide
from decision_service.errors import ApiError, describe_validation
from decision_service.rank_input import CONTROL, LOOP_NAME, parse_rank
from decision_service.runtime import LoopRegistry, LoopRuntime
from decision_service.schemas import RewardRequest
from decision_service.settings import Settings
from log.joiner import JoinStats, join_loop
from log.loops import ensure_default_loop, list_loops
from log.ops import Activate, InsertDecision, InsertReward
from log.schema import make_engine, migrate
from log.store import find_event, get_stored_decision
from log.writer import GroupCommitWriter

logger = logging.getLogger(__name__)


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.writer = GroupCommitWriter(
            self.engine,
            settings.spool_dir,
            delay_s=settings.group_commit_ms / 1000,
            max_group=settings.group_commit_max_rows,
        )
        self.loops = LoopRegistry(self.engine)
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------
    def start_sync(self) -> None:
        migrate(self.engine)
        seed = self.settings.default_seed
        ensure_default_loop(self.engine, secrets.randbits(31) if seed is None else seed)
        self.loops.refresh()
        self.writer.start()

    async def start(self) -> None:
        await run_in_threadpool(self.start_sync)
        self._tasks = [
            asyncio.create_task(self._every(self.settings.loop_refresh_s, self.loops.refresh)),
            asyncio.create_task(self._every(self.settings.join_interval_s, self.join_due)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await run_in_threadpool(self.writer.stop)
        self.engine.dispose()

    async def _every(self, seconds: float, fn: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await run_in_threadpool(fn)
            except Exception:  # keep serving; the next round retries
                logger.exception("background task %s failed", getattr(fn, "__name__", fn))

    def join_due(self, now: datetime | None = None) -> dict[str, JoinStats]:
        """Run the joiner over every loop (windows closed `join_grace_s` ago)."""
        now = now or datetime.now(UTC) - timedelta(seconds=self.settings.join_grace_s)
        out = {}
        for stored in list_loops(self.engine):
            out[stored.name] = join_loop(
                self.engine,
                stored.name,
                default_reward=stored.config.default_reward,
                aggregation=stored.config.reward_aggregation,
                now=now,
            )
        return out

    # -- loops -----------------------------------------------------------------------------
    async def runtime(self, loop: str) -> LoopRuntime:
        runtime = self.loops.loops.get(loop)
        if runtime is None:
            if not LOOP_NAME.fullmatch(loop):  # such a loop cannot exist: no database lookup
                raise ApiError(404, "loop_not_found", f"loop {loop!r} does not exist")
            runtime = await run_in_threadpool(self.loops.load, loop)
            if runtime is None:
                raise ApiError(404, "loop_not_found", f"loop {loop!r} does not exist")
        return runtime

    # -- rank ------------------------------------------------------------------------------
    async def rank(self, loop: str, body: Any) -> tuple[dict[str, Any], bool]:
        """Returns (response, replayed)."""
        req = parse_rank(body, self.settings)
        runtime = await self.runtime(loop)
        row = decide(req, body, runtime, datetime.now(UTC))
        op = InsertDecision(row)
        if (
            self.settings.durability == "fast"
            and self.writer.stats.pending < self.settings.fast_max_pending
        ):
            self.writer.enqueue([op])  # at most fast_max_pending rows are ever at risk
            return row["response"], False
        result = await self.writer.write([op])
        if result.inserted[0]:
            return row["response"], False
        stored = await run_in_threadpool(get_stored_decision, self.engine, loop, row["event_id"])
        if stored is None:  # pragma: no cover - conflict implies a stored row
            raise RuntimeError("decision conflict without a stored row")
        if stored["request_digest"] != row["request_digest"]:
            raise ApiError(
                409,
                "event_conflict",
                f"event_id {row['event_id']!r} was already used for a different request",
            )
        return stored["response"], True

    # -- rewards and activation ------------------------------------------------------------
    async def _event(self, loop: str, event_id: str) -> Any:
        if len(event_id) > self.settings.max_id_length:
            raise ApiError(
                422, "limit_exceeded", f"event_id longer than {self.settings.max_id_length}"
            )
        runtime = await self.runtime(loop)
        if CONTROL.search(event_id):  # cannot have been stored
            raise ApiError(404, "event_not_found", f"no decision {event_id!r} in loop {loop!r}")
        info = await run_in_threadpool(find_event, self.engine, self.writer.spool, loop, event_id)
        if info is None:
            raise ApiError(404, "event_not_found", f"no decision {event_id!r} in loop {loop!r}")
        return runtime, info

    async def reward(self, loop: str, event_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(422, "invalid_request", "body must be a JSON object")
        try:
            req = RewardRequest.model_validate(body)
        except ValidationError as err:
            raise ApiError(422, "invalid_request", describe_validation(err.errors())) from None
        runtime, info = await self._event(loop, event_id)
        cfg = runtime.config
        value = float(req.value)
        if not (cfg.min_reward <= value <= cfg.max_reward):
            raise ApiError(
                422,
                "reward_out_of_range",
                f"value {value} is outside the loop's range [{cfg.min_reward}, {cfg.max_reward}]",
            )
        slot = req.slot if req.slot is not None else 0
        if slot >= info.n_slots or (req.slot is not None and not info.is_slate and slot != 0):
            raise ApiError(
                422,
                "unknown_slot",
                f"slot {slot} does not exist: the decision has {info.n_slots} slot(s), 0-based",
            )
        now = datetime.now(UTC)
        late = info.reward_deadline is not None and now > info.reward_deadline
        row = {
            "reward_id": str(uuid.uuid4()),
            "loop": loop,
            "event_id": event_id,
            "slot": slot,
            "value": value,
            "received_at": now,
            "late": late,
        }
        await self.writer.write([InsertReward(row)])
        pending = info.deferred and info.activated_at is None
        return {
            "event_id": event_id,
            "slot": slot,
            # late: stored and counted, never joined; pending_activation: joined only if the
            # deferred decision is activated (and the reward falls inside its window)
            "status": "late" if late else ("pending_activation" if pending else "accepted"),
            "joined": not late and not pending,
        }

    async def activate(self, loop: str, event_id: str) -> tuple[dict[str, Any], int]:
        runtime, info = await self._event(loop, event_id)
        if not info.deferred:
            raise ApiError(
                409, "not_deferred", f"event {event_id!r} was not deferred; nothing to activate"
            )
        if info.activated_at is not None:
            return {
                "event_id": event_id,
                "status": "already_activated",
                "reward_deadline": info.reward_deadline.isoformat()
                if info.reward_deadline
                else None,
            }, 200
        now = datetime.now(UTC)
        deadline = now + timedelta(seconds=runtime.config.reward_wait_s)
        await self.writer.write([Activate(loop, event_id, now, deadline)])
        return {
            "event_id": event_id,
            "status": "activated",
            "reward_deadline": deadline.isoformat(),
        }, 202
