"""A PostgreSQL outage under load: a throwaway server of the test's own, stopped with
`pg_ctl stop -m immediate` mid-load for ~20 s (FAULTS_OUTAGE_S), then started again.

Contract checked (issue 7):
- during the outage ranks without a client event_id are 201 (spooled); ranks with a client
  event_id are 503 `store_unavailable` (reuse of a client-chosen id cannot be checked);
  rewards and activations are 202 (200 for a repeated activation); never a 500, never a
  dropped connection;
- after recovery every acknowledged decision, reward and activation is stored exactly once,
  decisions with the response served;
- every window is joined with exactly the rewards received inside it (received_at <= its
  reward_deadline), including those spooled during the outage: n_rewards and the loop's `sum`
  aggregate match, whatever order the spools shipped in and however the service's own joiner
  raced the shipping; no reward answered `"joined": true` was late.

A second test kills -9 a worker that holds an open spool segment in the middle of a shorter
outage (FAULTS_KILL_OUTAGE_S, 8 s): its acknowledged, spooled writes must be shipped by another
process once the database is back (data checks as above; statuses are only checked for 500s,
the kill cuts requests). Its replacement starts while the database is down; if the
supervisor gives up, the test starts the service again, as an operator would, and says so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_HEADERS
from tests.faults.harness import (
    Figures,
    LoadGenerator,
    ServiceProcess,
    ThrowawayPostgres,
    check_store,
    cli,
    join_figures,
    open_files,
    pg_bindir,
    quarantined,
    report,
    service_env,
    snapshot,
    spool_segments,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LOOP = "faults"
OUTAGE_S = float(os.environ.get("FAULTS_OUTAGE_S", "20"))
REWARD_WAIT_S = 3.0
LOAD_BEFORE_S = 4.0
LOAD_AFTER_S = 4.0
KILL_OUTAGE_S = float(os.environ.get("FAULTS_KILL_OUTAGE_S", "8"))

EXPECTED_DURING_OUTAGE = {
    "rank_server_id": {"201"},
    "rank_client_id": {"503:store_unavailable"},
    "reward": {"202"},
    "activate": {"202", "200"},
}


def _throwaway() -> ThrowawayPostgres:
    reason = None
    if pg_bindir() is None:
        reason = "no PostgreSQL binaries (initdb, pg_ctl) on this machine"
    else:
        try:
            return ThrowawayPostgres()
        except (KeyError, OSError, RuntimeError) as err:  # no `postgres` user to run it as...
            reason = f"cannot prepare a throwaway PostgreSQL: {err!r}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def status_violations(hist: dict[tuple[str, str], Any]) -> list[str]:
    out = []
    for (phase, kind), counts in sorted(hist.items()):
        for outcome, n in counts.items():
            if outcome.startswith(("500", "transport", "cancelled")):
                out.append(f"{phase}/{kind}: {n} x {outcome}")
            elif phase == "outage" and outcome not in EXPECTED_DURING_OUTAGE[kind]:
                out.append(
                    f"outage/{kind}: {n} x {outcome} (expected {EXPECTED_DURING_OUTAGE[kind]})"
                )
    return out


async def _settle(db_url: str, gen: LoadGenerator, spool: Path, timeout: float) -> Figures:
    """Wait until the spools are shipped and every acknowledged write is in the database."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            store = await asyncio.to_thread(snapshot, db_url, LOOP)
            f = check_store(store, gen.ledger)
        except Exception:  # the database may still be recovering
            f = None
        if f is not None and f.lost == 0 and not spool_segments(spool):
            return f
        if time.monotonic() > deadline:
            if f is None:
                raise TimeoutError("the database did not answer after the restart")
            return f
        await asyncio.sleep(0.5)


class Run:
    """Figure lines of one test (printed, and repeated in its assertion message)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        line = f"FAULT {self.name}: {line}"
        report(line)
        self.lines.append(line)

    def detail(self, examples: list[str]) -> None:
        self.lines.extend(f"    {e}" for e in examples)

    def text(self) -> str:
        return "\n".join(self.lines)


async def _configure(svc: ServiceProcess) -> None:
    config = {"reward_wait_s": REWARD_WAIT_S, "reward_aggregation": "sum", "default_reward": 0}
    r = httpx.put(f"{svc.url}/v1/loops/{LOOP}", json=config, headers=ADMIN_HEADERS, timeout=30)
    assert r.status_code in (200, 201), r.text
    await asyncio.sleep(1.5)  # both workers know the loop before the database goes away


def _summarise_load(run: Run, gen: LoadGenerator, outage: float) -> None:
    run.say(
        f"database down {outage:.1f} s (pg_ctl stop -m immediate) under load; "
        f"{gen.requests} requests; reward idempotency keys: "
        f"{f'{gen.keyed_rewards} sent with a reward_id' if gen.reward_ids else 'unsupported'}"
    )
    for phase in ("before", "stopping", "outage", "starting", "transition", "after"):
        hist = gen.ledger.histogram(phase)
        if hist:
            run.say(f"statuses {phase}: {hist}")
    ledger = gen.ledger
    run.say(
        f"acknowledged during the outage: ranks="
        f"{sum(1 for a in ledger.ranks.values() if a.phase == 'outage')} rewards="
        f"{sum(1 for w in ledger.rewards if w.phase == 'outage')} activations="
        f"{sum(1 for v in ledger.activations.values() if v[1] == 'outage')}"
    )


async def _recover_and_check(
    run: Run, svc: ServiceProcess, pg: ThrowawayPostgres, spool: Path, gen: LoadGenerator
) -> list[str]:
    """After the load: spools shipped, nothing lost or duplicated, every window joined with
    exactly its in-window rewards. Returns the problems found."""
    last_ack = max([a.acked_at for a in gen.ledger.ranks.values()], default=time.monotonic())
    shipped = await _settle(pg.url, gen, spool, timeout=90)
    segments, quarantine = spool_segments(spool), quarantined(spool)
    run.say(
        f"after recovery: {shipped.line()} | spool segments left={len(segments)} "
        f"quarantined={len(quarantine)}"
    )
    run.detail(shipped.examples)

    # join: every window has closed; the service's own joiner runs every second, and the
    # `join` command once, as an operator would
    await asyncio.sleep(max(0.0, last_ack + REWARD_WAIT_S + 1.5 - time.monotonic()))
    done = await asyncio.to_thread(cli, ["join", "--grace-s", "0"], svc.env)
    assert done.returncode == 0, f"decision-service join failed:\n{done.stdout}\n{done.stderr}"
    deadline = time.monotonic() + 60
    while True:
        store = await asyncio.to_thread(snapshot, pg.url, LOOP)
        fig, examples = join_figures(store, gen.ledger)
        if fig["unjoined"] == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    final = check_store(store, gen.ledger)
    run.say(f"final: {final.line()}")
    run.detail(final.examples)
    run.say(f"joined: {fig}")
    run.detail(examples)

    problems = []
    if shipped.lost or final.lost:
        problems.append(f"{max(shipped.lost, final.lost)} acknowledged writes lost")
    if final.duplicated:
        problems.append(f"{final.duplicated} writes stored more than once")
    if final.ranks_misstated:
        problems.append(f"{final.ranks_misstated} stored decisions differ from the response served")
    if segments or quarantine:
        problems.append(f"spool not shipped: {segments} left, {quarantine} quarantined")
    if fig["unjoined"]:
        problems.append(f"{fig['unjoined']} windows never joined")
    if fig["wrong_aggregate"]:
        problems.append(f"{fig['wrong_aggregate']} windows joined without their rewards")
    if fig["answered_joined_but_late"]:
        problems.append(f"{fig['answered_joined_but_late']} rewards answered joined, were late")
    if fig["outage_rewards_in_window"] == 0:
        problems.append("no reward was acknowledged inside its window during the outage")
    elif fig["outage_rewards_joined"] != fig["outage_rewards_in_window"]:
        problems.append(
            f"rewards acknowledged inside their window during the outage: "
            f"{fig['outage_rewards_in_window']}, joined: {fig['outage_rewards_joined']}"
        )
    return problems


async def _outage(svc: ServiceProcess, pg: ThrowawayPostgres, spool: Path) -> None:
    run = Run("outage")
    await _configure(svc)
    async with LoadGenerator(svc.url, LOOP, concurrency=16, seed=2) as gen:
        gen.phase = "before"
        gen.start()
        await asyncio.sleep(LOAD_BEFORE_S)
        gen.phase = "stopping"
        await asyncio.to_thread(pg.stop, "immediate")
        gen.phase = "outage"
        down = time.monotonic()
        await asyncio.sleep(OUTAGE_S)
        gen.phase = "starting"
        await asyncio.to_thread(pg.start)
        gen.phase = "after"
        outage = time.monotonic() - down
        await asyncio.sleep(LOAD_AFTER_S)
        await gen.stop()
        _summarise_load(run, gen, outage)
        problems = []
        if not any(a.phase == "outage" for a in gen.ledger.ranks.values()):
            problems.append("no rank was acknowledged during the outage")
        violations = status_violations(gen.ledger.statuses)
        if violations:
            problems.append("answers outside the contract: " + "; ".join(violations))
        problems += await _recover_and_check(run, svc, pg, spool, gen)
    assert not problems, "\n".join(problems) + "\n" + run.text()


def _spooling_worker(svc: ServiceProcess, spool: Path) -> tuple[int, int, list[str]]:
    """A worker that holds a spool segment open (it has spooled acknowledged writes) and
    client connections (requests in flight); the best found within a few seconds."""
    start = time.monotonic()
    while True:
        waited = time.monotonic() - start
        conns = svc.client_connections()
        segments = {p: open_files(p, spool, ".seg") for p in conns}
        spooling = [p for p in conns if segments[p]]
        serving = [p for p in spooling if conns[p]]
        pick = serving or (spooling if waited > 3 else []) or (list(conns) if waited > 6 else [])
        if pick:
            pid = max(pick, key=lambda p: conns[p])
            return pid, conns[pid], segments[pid]
        time.sleep(0.05)


async def _kill_during_outage(svc: ServiceProcess, pg: ThrowawayPostgres, spool: Path) -> None:
    """kill -9 of a worker that has spooled acknowledged writes, while the database is down:
    its segments must be shipped by another process once the database is back."""
    run = Run("kill9+outage")
    await _configure(svc)
    async with LoadGenerator(svc.url, LOOP, concurrency=16, seed=3) as gen:
        gen.phase = "before"
        gen.start()
        await asyncio.sleep(2.0)
        gen.phase = "stopping"
        await asyncio.to_thread(pg.stop, "immediate")
        gen.phase = "outage"
        down = time.monotonic()
        await asyncio.sleep(KILL_OUTAGE_S / 2)
        victim, conns, segments = await asyncio.to_thread(_spooling_worker, svc, spool)
        os.kill(victim, signal.SIGKILL)
        run.say(
            f"killed worker {victim} mid-outage, holding {conns} client connections and "
            f"spool segments {[Path(p).name for p in segments]}"
        )
        await asyncio.sleep(KILL_OUTAGE_S / 2)
        gen.phase = "starting"
        await asyncio.to_thread(pg.start)
        outage = time.monotonic() - down
        # the replacement worker started while the database was down: it must wait for the
        # database (answering 503), never fail its start-up and take the supervisor with it
        try:
            await asyncio.to_thread(svc.wait_ready, 120)
            supervisor = "kept serving"
        except RuntimeError:  # the supervisor exited
            code = svc.proc.returncode if svc.proc is not None else None
            raise AssertionError(
                f"the supervisor exited ({code}): a worker started during the outage failed "
                f"its start-up\n{svc.log_tail()}"
            ) from None
        run.say(f"uvicorn supervisor {supervisor}")
        gen.phase = "after"
        await asyncio.sleep(3.0)
        await gen.stop()
        _summarise_load(run, gen, outage)
        problems = []
        if not any(a.phase == "outage" for a in gen.ledger.ranks.values()):
            problems.append("no rank was acknowledged during the outage")
        server_errors = [
            f"{phase}/{kind}: {n} x {outcome}"
            for (phase, kind), counts in sorted(gen.ledger.statuses.items())
            for outcome, n in counts.items()
            if outcome.startswith("500")
        ]
        if server_errors:
            problems.append("500s: " + "; ".join(server_errors))
        problems += await _recover_and_check(run, svc, pg, spool, gen)
    assert not problems, "\n".join(problems) + "\n" + run.text()


def _with_service(tmp_path: Path, name: str, scenario: Any) -> None:
    pg = _throwaway()
    started = time.monotonic()
    svc: ServiceProcess | None = None
    try:
        pg.init()
        pg.start()
        spool = tmp_path / "spool"
        svc = ServiceProcess(service_env(pg.url, spool), tmp_path / "service.log", workers=2)
        svc.start()
        asyncio.run(scenario(svc, pg, spool))
    except BaseException:
        if svc is not None:
            print(f"--- service log (tail) ---\n{svc.log_tail()}")
        print(f"--- postgres log (tail) ---\n{pg.log_tail()}")
        raise
    finally:
        if svc is not None:
            svc.stop()
        pg.cleanup()
        report(f"FAULT {name}: took {time.monotonic() - started:.0f} s")


def test_database_outage_under_load(tmp_path: Path) -> None:
    _with_service(tmp_path, "outage", _outage)


def test_kill9_of_a_spooling_worker_during_outage(tmp_path: Path) -> None:
    _with_service(tmp_path, "kill9+outage", _kill_during_outage)
