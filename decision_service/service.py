"""The composition root's state: engine, writer, loops; and the request-path operations.

Raises only domain errors (explore.errors); decision_service.errors maps them to HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from decision_service.auth import KeyCache
from decision_service.decide import request_digest
from decision_service.decide_retrieved import decide_request
from decision_service.errors import describe_validation
from decision_service.key_bootstrap import ensure_admin_key
from decision_service.rank_input import CONTROL, LOOP_NAME, parse_rank
from decision_service.retrieval import LoopIndexes, RetrievalRegistry
from decision_service.runtime import LoopRegistry, LoopRuntime
from decision_service.schemas import RewardRequest
from decision_service.settings import Settings
from decision_service.telemetry import Telemetry
from explore.errors import Conflict, InvalidInput, NotFound, Unavailable
from log.joiner import JoinStats, join_loop
from log.loops import ensure_default_loop, list_loops
from log.metrics import flush_request_stats
from log.ops import Op
from log.records import (
    GUARDRAIL_MAX_VALUE,
    ActivationRecord,
    RewardRecord,
    is_generated_id,
    new_event_id,
    reward_id_for,
)
from log.schema import make_engine, migrate
from log.store import (
    EventInfo,
    StoreUnreachable,
    find_event,
    get_stored_decision,
    get_stored_reward,
    is_unreachable,
)
from log.writer import GroupCommitWriter
from policies.ann_index import one_math_thread

logger = logging.getLogger(__name__)


def _unavailable(err: StoreUnreachable) -> Unavailable:
    return Unavailable(f"the event store is unreachable; retry shortly ({err})")


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
        self.retrieval = RetrievalRegistry(self.engine)
        self.keys = KeyCache(self.engine, settings.key_cache_s)
        self.telemetry = Telemetry()
        self.telemetry.attach(self.writer, self.engine)
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------
    def start_sync(self, *, admin_key: bool = True) -> None:
        """`admin_key`: make sure an admin key exists (decision_service.key_bootstrap)."""
        migrate(self.engine)
        ensure_default_loop(self.engine)
        one_math_thread()  # faiss: one OpenMP thread per serving process (set here, not at import)
        if admin_key:
            secret = self.settings.admin_key
            ensure_admin_key(
                self.engine,
                secret.get_secret_value() if secret else None,
                self.settings.admin_key_file,
            )
        self.loops.refresh()
        self.writer.start()
        self.keys.ready = True

    async def start(self) -> None:
        """Migrate, load the loops, register the writer. A worker that starts while the
        database is unreachable (a restart during an outage) does not exit: it answers 503
        until the database answers, retrying every `DS_START_RETRY_S`."""
        try:
            await run_in_threadpool(self.start_sync)
        except Exception as err:
            if not is_unreachable(err):
                raise
            logger.warning("the event store is unreachable at start-up; retrying: %s", err)
            self._tasks = [asyncio.create_task(self._start_when_reachable())]
            return
        self._start_background()

    def _refresh_indexes(self) -> None:
        self.retrieval.refresh(list(self.loops.loops))

    def _start_background(self) -> None:
        self._tasks = [
            asyncio.create_task(self._every(self.settings.loop_refresh_s, self.loops.refresh)),
            asyncio.create_task(self._every(self.settings.loop_refresh_s, self._refresh_indexes)),
            asyncio.create_task(self._every(self.settings.join_interval_s, self.join_due)),
            asyncio.create_task(self._every(self.settings.metrics_flush_s, self.flush_metrics)),
        ]

    async def _start_when_reachable(self) -> None:
        while True:
            await asyncio.sleep(self.settings.start_retry_s)
            try:
                await run_in_threadpool(self.start_sync)
            except Exception as err:
                if not is_unreachable(err):
                    logger.exception("start-up failed")
                continue
            logger.info("the event store answers: serving")
            self._start_background()
            return

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):  # the store may be gone: those figures are lost
            await run_in_threadpool(self.flush_metrics)
        await run_in_threadpool(self.writer.stop)
        self.engine.dispose()

    def flush_metrics(self) -> int:
        """Write the request statistics aggregated since the last flush (additive rows that
        the rollup merges); on failure they are kept for the next flush."""
        rows = self.telemetry.drain(len(self.writer.spool.segments()))
        try:
            return flush_request_stats(self.engine, self.writer.writer_id, rows, datetime.now(UTC))
        except Exception:
            self.telemetry.restore(rows)
            raise

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
                raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
            try:
                runtime = await run_in_threadpool(self.loops.load, loop)
            except Exception as err:  # the store did not answer: the loop cannot be known
                logger.warning("loading loop %s failed: %s", loop, err)
                raise Unavailable(f"loop {loop!r} cannot be loaded right now; retry") from None
            if runtime is None:
                raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
        return runtime

    # -- rank ------------------------------------------------------------------------------
    async def rank(self, loop: str, body: Any) -> tuple[dict[str, Any], bool]:
        """Returns (response, replayed). The answer for an event id is always the decision
        stored under it: a replay returns it, a different request is a 409."""
        req = parse_rank(body, self.settings)
        runtime = await self.runtime(loop)
        if req.event_id is not None and is_generated_id(req.event_id):
            # ids of this form are the service's own: a client may only replay them
            return await self._replay(loop, req.event_id, request_digest(body), missing=True)
        event_id = req.event_id or new_event_id()
        now = datetime.now(UTC)
        indexes: LoopIndexes | None = None
        if req.retrieve is not None:
            indexes = self.retrieval.loops.get(loop)  # one reference: this request's indexes
            if indexes is None or indexes.live is None:
                indexes = await run_in_threadpool(self.retrieval.serving, loop)
        record = decide_request(req, body, runtime, now, event_id, indexes)
        if (
            req.event_id is None  # a generated id is unique: no stored decision to answer with
            and self.settings.durability == "fast"
            and self.writer.stats.pending < self.settings.fast_max_pending
        ):
            self.writer.enqueue([record])  # at most fast_max_pending rows are ever at risk
            return record.response, False
        result = await self.writer.write([record])
        if result.inserted[0]:
            return record.response, False
        return await self._replay(loop, event_id, record.request_digest, missing=False)

    async def _replay(
        self, loop: str, event_id: str, digest: str, *, missing: bool
    ) -> tuple[dict[str, Any], bool]:
        try:
            stored = await run_in_threadpool(
                get_stored_decision, self.engine, self.writer.index, loop, event_id
            )
        except StoreUnreachable as err:
            raise _unavailable(err) from None
        if stored is None:
            if missing:
                raise InvalidInput(
                    f"event_id {event_id!r} has the form of the ids the service generates "
                    "(ds- and 32 hex digits) and no such decision exists: choose another id",
                    "reserved_event_id",
                )
            # the first request with this id (same group) was refused: the store is down
            raise Unavailable(f"event_id {event_id!r} could not be stored; retry")
        if stored.request_digest != digest:
            raise Conflict(
                f"event_id {event_id!r} was already used for a different request",
                "event_conflict",
            )
        return stored.response, True

    # -- rewards and activation ------------------------------------------------------------
    async def _event(self, loop: str, event_id: str) -> tuple[LoopRuntime, EventInfo | None]:
        """The loop and the decision; None when the database cannot be reached and the
        host's spool does not have it (the caller accepts the write unverified)."""
        if len(event_id) > self.settings.max_id_length:
            raise InvalidInput(
                f"event_id longer than {self.settings.max_id_length}", "limit_exceeded"
            )
        runtime = await self.runtime(loop)
        if CONTROL.search(event_id):  # cannot have been stored
            raise NotFound(f"no decision {event_id!r} in loop {loop!r}", "event_not_found")
        try:
            info = await run_in_threadpool(
                find_event, self.engine, self.writer.index, loop, event_id
            )
        except StoreUnreachable:
            return runtime, None
        if info is None:
            raise NotFound(f"no decision {event_id!r} in loop {loop!r}", "event_not_found")
        return runtime, info

    async def reward(self, loop: str, event_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidInput("body must be a JSON object")
        try:
            req = RewardRequest.model_validate(body)
        except ValidationError as err:
            raise InvalidInput(describe_validation(err.errors())) from None
        runtime, info = await self._event(loop, event_id)
        cfg = runtime.config
        value = float(req.value)
        metric = req.metric or ""
        if metric:  # a guardrail signal: counted by the joiner, never part of the reward
            if metric not in cfg.gate.guardrails:
                declared = sorted(cfg.gate.guardrails)
                raise InvalidInput(
                    f"metric {metric!r} is not a guardrail of loop {loop!r} (declared in its "
                    f"gate.guardrails: {declared})",
                    "unknown_metric",
                )
            if not (0.0 <= value <= GUARDRAIL_MAX_VALUE):
                raise InvalidInput(
                    f"value {value} of guardrail signal {metric!r} is outside [0, 1e9] (the "
                    "value is stored; the signal is what counts)",
                    "reward_out_of_range",
                )
        elif not (cfg.min_reward <= value <= cfg.max_reward):
            raise InvalidInput(
                f"value {value} is outside the loop's range [{cfg.min_reward}, {cfg.max_reward}]",
                "reward_out_of_range",
            )
        slot = req.slot if req.slot is not None else 0
        if info is not None and (
            slot >= info.n_slots or (req.slot is not None and not info.is_slate and slot != 0)
        ):
            raise InvalidInput(
                f"slot {slot} does not exist: the decision has {info.n_slots} slot(s), 0-based",
                "unknown_slot",
            )
        reward_id = reward_id_for(loop, event_id, req.reward_id)
        deadline = None if info is None else info.reward_deadline

        def build(now: datetime) -> list[Op]:
            late = deadline is not None and now > deadline
            return [RewardRecord(reward_id, loop, event_id, slot, value, now, late, metric)]

        result = await self.writer.write(build)
        record = result.ops[0] if result.ops else None
        assert isinstance(record, RewardRecord)
        replayed = not result.inserted[0]
        if replayed:  # the same idempotency key was stored before: that reward stands
            try:
                stored = await run_in_threadpool(
                    get_stored_reward, self.engine, self.writer.index, reward_id
                )
            except StoreUnreachable:
                stored = None
            if stored is not None:
                # the key names one signal: another value, slot or metric is another reward
                if (stored.value, stored.slot, stored.metric) != (value, slot, metric):
                    raise Conflict(
                        f"reward_id {req.reward_id!r} was already used for a different reward",
                        "reward_conflict",
                    )
                record = stored
        if info is None:
            status, joined = "accepted_unverified", False
        else:
            pending = info.deferred and info.activated_at is None
            late = deadline is not None and record.received_at > deadline
            # late: stored and counted, never joined; pending_activation: joined only if the
            # deferred decision is activated (and the reward falls inside its window)
            status = "late" if late else ("pending_activation" if pending else "accepted")
            joined = not late and not pending
        return {
            "event_id": event_id,
            "slot": slot,
            "status": status,
            "joined": joined,
            "replayed": replayed,
        }

    async def activate(self, loop: str, event_id: str) -> tuple[dict[str, Any], int]:
        runtime, info = await self._event(loop, event_id)
        if info is not None and not info.deferred:
            raise Conflict(
                f"event {event_id!r} was not deferred; nothing to activate", "not_deferred"
            )
        if info is not None and info.activated_at is not None:
            return self._activated(event_id, "already_activated", info.reward_deadline), 200
        record = ActivationRecord.at(
            loop, event_id, datetime.now(UTC), runtime.config.reward_wait_s
        )
        result = await self.writer.write([record])
        if not result.inserted[0]:  # a concurrent activation was first: it stands
            stored = self.writer.index.activation(record.key)
            return self._activated(
                event_id, "already_activated", stored.reward_deadline if stored else None
            ), 200
        status = "activated" if info is not None else "activated_unverified"
        return self._activated(event_id, status, record.reward_deadline), 202

    @staticmethod
    def _activated(event_id: str, status: str, deadline: datetime | None) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "status": status,
            "reward_deadline": deadline.isoformat() if deadline else None,
        }
