"""kill -9 of a serving worker under concurrent rank + activate + reward load, 5 times.

The service runs as uvicorn with 2 workers on PostgreSQL (a fresh schema of the shared server,
migrated by the workers themselves at start-up), durable mode. Each round drives closed-loop
load, SIGKILLs the worker holding the most client connections (requests in flight die with
it), waits for uvicorn's supervisor to replace it and for the replacement to serve, stops the
load and compares the store with what the clients were told: every acknowledged decision
stored once, under its event id, with the response served; every acknowledged reward stored
once; every acknowledged activation stored.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_HEADERS
from tests.faults.harness import (
    LoadGenerator,
    ServiceProcess,
    check_store,
    report,
    service_env,
    snapshot,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROUNDS = 5
LOOP = "faults"


def _victim(svc: ServiceProcess) -> tuple[int, int] | None:
    """The worker holding the most client connections, once both workers hold some."""
    conns = svc.client_connections()
    if len(conns) < svc.workers or min(conns.values()) == 0:
        return None
    pid = max(conns, key=lambda p: conns[p])
    return pid, conns[pid]


async def _scenario(svc: ServiceProcess, db_url: str) -> list[str]:
    lines = []
    r = httpx.put(
        f"{svc.url}/v1/loops/{LOOP}",
        json={"reward_wait_s": 600, "reward_aggregation": "sum"},
        headers=ADMIN_HEADERS,
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text
    await asyncio.sleep(1.5)  # both workers refresh their loops (DS_LOOP_REFRESH_S=0.5)
    async with LoadGenerator(svc.url, LOOP, concurrency=16, seed=1) as gen:
        for rnd in range(1, ROUNDS + 1):
            gen.start(rnd)
            await asyncio.sleep(1.0)
            found = await asyncio.to_thread(
                wait_for, lambda: _victim(svc), 60, "both workers serving", 0.05
            )
            victim, held = found
            before = set(svc.worker_pids())
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()

            def replaced(before: set[int] = before, victim: int = victim) -> list[int]:
                pids = svc.worker_pids()
                new = [p for p in pids if p not in before and p != victim]
                return new if len(pids) == svc.workers else []

            how = "supervisor"
            try:
                new = await asyncio.to_thread(wait_for, replaced, 30, "a replacement worker")
            except TimeoutError:  # this uvicorn does not replace dead workers: restart it all
                if svc.proc is not None and svc.proc.poll() is not None:
                    raise AssertionError(f"the supervisor exited:\n{svc.log_tail()}") from None
                await gen.stop()
                await asyncio.to_thread(svc.restart)
                gen.start(rnd)
                new, how = svc.worker_pids(), "service restart"

            def serving(new: list[int] = new) -> bool:
                return any(svc.client_connections().get(p, 0) for p in new)

            await asyncio.to_thread(wait_for, serving, 90, "the replacement worker to serve", 0.05)
            back = time.monotonic() - killed_at
            await asyncio.sleep(0.5)
            await gen.stop()
            store = await asyncio.to_thread(snapshot, db_url, LOOP)
            f = check_store(store, gen.ledger, {rnd})
            interrupted = sum(
                1 for a in gen.ledger.failed if a.round == rnd and a.outcome.startswith("transport")
            )
            line = (
                f"FAULT kill9: round {rnd} {f.line()} | killed worker {victim} holding {held} "
                f"client connections ({interrupted} requests cut), replaced by {how} in "
                f"{back:.1f} s"
            )
            report(line)
            lines.append(line)
            lines += [f"    {e}" for e in f.examples]
        store = await asyncio.to_thread(snapshot, db_url, LOOP)
        total = check_store(store, gen.ledger)
        line = f"FAULT kill9: all {ROUNDS} rounds: {total.line()}"
        report(line)
        report(f"FAULT kill9: statuses {gen.ledger.histogram()}")
        keyed = f"{gen.keyed_rewards} sent with a reward_id" if gen.reward_ids else "unsupported"
        report(f"FAULT kill9: reward idempotency keys: {keyed}")
        lines.append(line)
        lines += [f"    {e}" for e in total.examples]
        problems = []
        if total.ranks_acked == 0 or total.rewards_acked == 0:
            problems.append("no load was acknowledged")
        if total.lost:
            problems.append(f"{total.lost} acknowledged writes lost after kill -9")
        if total.duplicated:
            problems.append(f"{total.duplicated} writes stored more than once after kill -9")
        if total.ranks_misstated:
            problems.append(
                f"{total.ranks_misstated} stored decisions differ from the response served"
            )
        figures = "\n".join(lines)
        assert not problems, "\n".join(problems) + "\n" + figures
    return lines


def test_kill9_serving_worker_loses_nothing(pg_url: str, tmp_path: Path) -> None:
    env = service_env(pg_url, tmp_path / "spool")
    svc = ServiceProcess(env, tmp_path / "service.log", workers=2)
    started = time.monotonic()
    svc.start()
    try:
        asyncio.run(_scenario(svc, pg_url))
    except BaseException:
        print(f"--- service log (tail) ---\n{svc.log_tail()}")
        raise
    finally:
        svc.stop()
        report(f"FAULT kill9: took {time.monotonic() - started:.0f} s")
