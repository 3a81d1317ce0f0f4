"""Fault-injection harness: the service as real processes, real PostgreSQL, real load.

- `ServiceProcess`: `python -m uvicorn --factory decision_service:create_app --workers N` with
  DS_* settings, its worker pids (children of the uvicorn supervisor, read from /proc) and the
  client connections each worker holds (to kill one that is serving).
- `ThrowawayPostgres`: a PostgreSQL server of the test's own (initdb into a temporary
  directory, run as the `postgres` OS user when the tests run as root) that the test can stop
  with `-m immediate` and start again on the same port.
- `LoadGenerator`: closed-loop async clients (httpx) sending rank (with and without a
  client-chosen `event_id`, some deferred, some slates), activate and reward requests. The
  `Ledger` records every acknowledged write exactly (rank 201 with the response served,
  reward 202 with its body, activate 202/200) and every unacknowledged attempt separately.
- `check_store`: what the store holds against the ledger (lost, duplicated, misstated).
- `report`: prints a figure line and keeps it for the terminal summary (conftest.py).

Every reward value is unique (k / 2**20, exact in binary floating point), so a stored reward
row is matched to the request that sent it without an idempotency key, and sums are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from tests.conftest import ADMIN_HEADERS, TEST_ADMIN_KEY

ROOT = Path(__file__).resolve().parents[2]
FIGURES: list[str] = []
REWARD_SCALE = 2**20
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def report(line: str) -> None:
    """Print a figure line (visible with -s or on failure) and keep it for the summary."""
    print(line, flush=True)
    FIGURES.append(line)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- processes and sockets ----------------------------------------------------------------


def children(pid: int) -> list[int]:
    out: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError):
            out += [int(p) for p in Path(path).read_text().split()]
    return sorted(set(out))


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _tcp_table() -> dict[int, tuple[int, int, str]]:
    """socket inode -> (local port, remote port, state) for every TCP socket (IPv4 and IPv6)."""
    table: dict[int, tuple[int, int, str]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            lport = int(parts[1].rsplit(":", 1)[1], 16)
            rport = int(parts[2].rsplit(":", 1)[1], 16)
            table[int(parts[9])] = (lport, rport, parts[3])
    return table


def _socket_inodes(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    out.append(int(target[8:-1]))
    return out


def open_files(pid: int, under: Path, suffix: str = "") -> list[str]:
    """Files below `under` that `pid` holds open (e.g. the spool segment it appends to)."""
    prefix = str(under.resolve())
    out = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(prefix) and target.endswith(suffix):
                    out.append(target)
    return out


ESTABLISHED = "01"


def connections(
    pids: Iterable[int], *, local_port: int | None = None, remote_port: int | None = None
) -> dict[int, int]:
    """Established TCP connections per pid, filtered by local and/or remote port."""
    table = _tcp_table()
    out = {}
    for pid in pids:
        n = 0
        for inode in _socket_inodes(pid):
            entry = table.get(inode)
            if entry is None or entry[2] != ESTABLISHED:
                continue
            if local_port is not None and entry[0] != local_port:
                continue
            if remote_port is not None and entry[1] != remote_port:
                continue
            n += 1
        out[pid] = n
    return out


def service_env(database_url: str, spool_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DS_")}
    env.update(ONE_THREAD)
    env.update(
        {
            "DS_DATABASE_URL": database_url,
            "DS_SPOOL_DIR": str(spool_dir),
            "DS_DURABILITY": "durable",
            "DS_JOIN_INTERVAL_S": "1",
            "DS_JOIN_GRACE_S": "0.5",
            "DS_LOOP_REFRESH_S": "0.5",
            "DS_ADMIN_KEY": TEST_ADMIN_KEY,  # the load generator and the tests send it
        }
    )
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT)  # the tree under test, whatever the venv was installed from
    return env


def cli(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`decision-service ARGS` from the tree under test."""
    cmd = [sys.executable, "-c", "from decision_service.cli import main; main()", *args]
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


class ServiceProcess:
    """The service under uvicorn's process supervisor, on 127.0.0.1:`port`."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 2) -> None:
        self.env = env
        self.log_path = log_path
        self.workers = workers
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "decision_service:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--no-access-log",
            "--log-level",
            "warning",
            "--timeout-graceful-shutdown",
            "20",
        ]
        with self.log_path.open("ab") as log:
            log.write(
                f"=== harness: starting the service (restarts: {self.restarts}) ===\n".encode()
            )
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(timeout)

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        return [
            p for p in children(self.proc.pid) if alive(p) and "resource_tracker" not in cmdline(p)
        ]

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 120) -> None:
        """Answers /healthz and every worker holds a database connection (its start-up,
        migration included, has run), then a moment for the last one to enter accept()."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"the service exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            pids = self.worker_pids()
            if len(pids) == self.workers and self._healthy():
                db_port = self.database_port()
                conns = connections(pids, remote_port=db_port) if db_port else {}
                if not db_port or all(conns.get(p, 0) > 0 for p in pids):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"service not ready in {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)
        time.sleep(1.0)

    def database_port(self) -> int | None:
        url = self.env.get("DS_DATABASE_URL", "")
        if not url.startswith("postgres"):
            return None
        hostport = url.split("@", 1)[-1].split("/", 1)[0]
        return int(hostport.rsplit(":", 1)[1]) if ":" in hostport else 5432

    def client_connections(self) -> dict[int, int]:
        return connections(self.worker_pids(), local_port=self.port)

    def stop(self, timeout: float = 40) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # workers the supervisor left behind (it was killed, or they ignored it)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def pg_bindir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which else None


class ThrowawayPostgres:
    """A PostgreSQL server of one test, on a free port; `stop("immediate")` is a crash.

    fsync is off: the faults injected kill processes, not the OS, and the WAL a committed
    transaction wrote is in the page cache when the server restarts and recovers."""

    def __init__(self) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries (pg_ctl) on this machine")
        self.bindir = bindir
        self.as_postgres = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="ds-faults-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self.port = free_port()
        if self.as_postgres:
            import pwd

            pw = pwd.getpwnam("postgres")  # KeyError: no such user
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n"
                f"{done.stderr}\n{self.log_tail()}"
            )

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
            " -c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-o",
            options,
            "-w",
            "-t",
            "120",
            "start",
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "120", "stop")
        self.running = False

    def cleanup(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    pg = ThrowawayPostgres()
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.cleanup()


# -- the ledger ---------------------------------------------------------------------------


@dataclass
class RankAck:
    event_id: str
    rq: str
    client_id: bool
    deferred: bool
    slots: int
    round: int
    phase: str
    response: dict[str, Any]
    acked_at: float


@dataclass
class RewardAck:
    event_id: str
    slot: int
    value: float
    round: int
    phase: str
    body: dict[str, Any]


@dataclass
class Attempt:
    """An unacknowledged attempt (transport error, 5xx, unexpected status)."""

    kind: str
    round: int
    phase: str
    outcome: str
    event_id: str | None = None
    rq: str | None = None
    slot: int | None = None
    value: float | None = None


@dataclass
class Ledger:
    ranks: dict[str, RankAck] = field(default_factory=dict)
    rewards: list[RewardAck] = field(default_factory=list)
    activations: dict[str, tuple[int, str, int]] = field(
        default_factory=dict
    )  # status, phase, round
    failed: list[Attempt] = field(default_factory=list)
    # (phase, kind) -> outcome -> count; kinds: rank_client_id, rank_server_id, reward, activate
    statuses: dict[tuple[str, str], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )

    def histogram(self, phase: str | None = None) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (ph, kind), counts in sorted(self.statuses.items()):
            if phase is None or ph == phase:
                key = kind if phase is not None else f"{ph}/{kind}"
                out[key] = dict(sorted(counts.items()))
        return out


def outcome_of(resp: httpx.Response) -> str:
    if resp.status_code >= 400:
        try:
            code = resp.json()["error"]["code"]
        except Exception:
            code = "non-json"
        return f"{resp.status_code}:{code}"
    return str(resp.status_code)


class LoadGenerator:
    """Closed-loop clients: each one runs rank -> (activate) -> reward(s) sessions."""

    def __init__(
        self,
        base_url: str,
        loop: str,
        *,
        concurrency: int = 16,
        seed: int = 0,
        p_client_id: float = 0.5,
        p_deferred: float = 0.15,
        p_slate: float = 0.1,
        p_two_rewards: float = 0.3,
        p_close: float = 0.2,
        retry_client_id_ranks: bool = True,
        p_reward_id: float = 0.5,
    ) -> None:
        self.base_url = base_url
        self.loop = loop
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self.p_client_id = p_client_id
        self.p_deferred = p_deferred
        self.p_slate = p_slate
        self.p_two_rewards = p_two_rewards
        self.p_close = p_close
        self.retry_client_id_ranks = retry_client_id_ranks
        self.run_tag = secrets.token_hex(3)
        self.ledger = Ledger()
        self.phase = "load"
        self.round = 0
        self._values = itertools.count(1)
        self._seq = itertools.count()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self.requests = 0
        self.reward_ids = False  # set by probe_reward_ids (on entering the context)
        self.p_reward_id = p_reward_id
        self.keyed_rewards = 0

    # -- control ---------------------------------------------------------------------------
    async def __aenter__(self) -> LoadGenerator:
        # idle connections are closed by the client before uvicorn's keep-alive timeout (5 s)
        # can close them under a request just sent on them (a spurious transport error)
        limits = httpx.Limits(
            max_connections=self.concurrency * 2,
            max_keepalive_connections=self.concurrency,
            keepalive_expiry=2.0,
        )
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            limits=limits,
            timeout=httpx.Timeout(60.0),
            headers=ADMIN_HEADERS,
        )
        await self.probe_reward_ids()
        return self

    async def probe_reward_ids(self) -> bool:
        """Does the service take a reward idempotency key (`reward_id`)? A body with one, for
        an event that does not exist: 404 event_not_found if the field is known, else 422."""
        assert self._client is not None
        resp = await self._client.post(
            f"/v1/loops/{self.loop}/events/probe-{self.run_tag}/reward",
            json={"value": 0, "reward_id": "probe"},
        )
        self.reward_ids = outcome_of(resp) == "404:event_not_found"
        return self.reward_ids

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        if self._client is not None:
            await self._client.aclose()

    def start(self, round_no: int = 0) -> None:
        assert not self._tasks, "already running"
        self.round = round_no
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.concurrency)]

    async def stop(self, timeout: float = 120) -> None:
        """Stop starting sessions; let every request in flight finish (it is then recorded)."""
        self._stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
            exc = None if task.cancelled() else task.exception()
            if exc is not None:
                raise exc
        self._tasks = []

    # -- requests --------------------------------------------------------------------------
    async def _post(
        self, kind: str, path: str, body: dict[str, Any] | None, close: bool = False
    ) -> tuple[httpx.Response | None, str, str]:
        """One attempt: (response or None, outcome, phase). The phase is the generator's phase
        when the request was sent, or 'transition' if it changed before the answer."""
        assert self._client is not None
        phase = self.phase
        headers = {"Connection": "close"} if close else None
        self.requests += 1
        try:
            resp = await self._client.post(path, json=body, headers=headers)
            outcome = outcome_of(resp)
        except httpx.TransportError as err:
            resp, outcome = None, f"transport:{type(err).__name__}"
        except asyncio.CancelledError:
            self.ledger.statuses[(phase, kind)]["cancelled"] += 1
            raise
        if self.phase != phase:
            phase = "transition"
        self.ledger.statuses[(phase, kind)][outcome] += 1
        return resp, outcome, phase

    def _rank_body(
        self, rq: str, event_id: str | None, deferred: bool, slots: int
    ) -> dict[str, Any]:
        rng = self.rng
        body: dict[str, Any] = {
            "context": {
                "u": rng.randrange(50),
                "device": rng.choice(("m", "d", "t")),
                "round": self.round,
                "rq": rq,
            },
            "actions": [{"id": f"a{i}", "features": {"k": i, "t": f"x{i % 3}"}} for i in range(5)],
        }
        if event_id is not None:
            body["event_id"] = event_id
        if deferred:
            body["defer_activation"] = True
        if slots > 1:
            body["slots"] = slots
        return body

    async def _rank(self, task: int) -> RankAck | None:
        rng = self.rng
        n = next(self._seq)
        rq = f"{self.run_tag}-r{self.round}-t{task}-{n}"
        client_id = rng.random() < self.p_client_id
        event_id = f"f{rq}" if client_id else None
        deferred = rng.random() < self.p_deferred
        slots = 2 if rng.random() < self.p_slate else 1
        body = self._rank_body(rq, event_id, deferred, slots)
        kind = "rank_client_id" if client_id else "rank_server_id"
        close = rng.random() < self.p_close
        attempts = 3 if client_id and self.retry_client_id_ranks else 1
        for attempt in range(attempts):
            resp, outcome, phase = await self._post(
                kind, f"/v1/loops/{self.loop}/rank", body, close
            )
            if resp is not None and resp.status_code == 201:
                data = resp.json()
                ack = RankAck(
                    data["event_id"],
                    rq,
                    client_id,
                    deferred,
                    slots,
                    self.round,
                    phase,
                    data,
                    time.monotonic(),
                )
                self.ledger.ranks[ack.event_id] = ack
                return ack
            self.ledger.failed.append(Attempt(kind, self.round, phase, outcome, event_id, rq))
            # a client-chosen id can be retried safely (a replay returns the stored decision);
            # store_unavailable is an answer, not a transient failure of this request
            if outcome.startswith("503:store_unavailable") or (
                resp is not None and resp.status_code < 500
            ):
                return None
            await asyncio.sleep(0.2 * (attempt + 1))
        return None

    async def _activate(self, ack: RankAck) -> bool:
        for attempt in range(4):  # activation is idempotent: a retry answers already_activated
            resp, outcome, phase = await self._post(
                "activate", f"/v1/loops/{self.loop}/events/{ack.event_id}/activate", None
            )
            if resp is not None and resp.status_code in (200, 202):
                self.ledger.activations.setdefault(
                    ack.event_id, (resp.status_code, phase, self.round)
                )
                return True
            self.ledger.failed.append(Attempt("activate", self.round, phase, outcome, ack.event_id))
            if resp is not None and resp.status_code < 500:
                return False
            await asyncio.sleep(0.2 * (attempt + 1))
        return False

    async def _reward(self, ack: RankAck, slot: int) -> None:
        k = next(self._values)
        value = k / REWARD_SCALE
        body: dict[str, Any] = {"value": value}
        if ack.slots > 1:
            body["slot"] = slot
        # without an idempotency key a retried reward may be stored twice: no retry; with
        # one (where the service takes `reward_id`) the client retries, and the retry that
        # gets 202 acknowledges it (stored once either way)
        attempts = 1
        if self.reward_ids and self.rng.random() < self.p_reward_id:
            body["reward_id"] = f"k{self.run_tag}-{k}"
            attempts = 3
            self.keyed_rewards += 1
        path = f"/v1/loops/{self.loop}/events/{ack.event_id}/reward"
        for attempt in range(attempts):
            resp, outcome, phase = await self._post("reward", path, body)
            if resp is not None and resp.status_code == 202:
                self.ledger.rewards.append(
                    RewardAck(ack.event_id, slot, value, self.round, phase, resp.json())
                )
                return
            self.ledger.failed.append(
                Attempt("reward", self.round, phase, outcome, ack.event_id, slot=slot, value=value)
            )
            if resp is not None and resp.status_code < 500:
                return
            if attempt + 1 < attempts:
                await asyncio.sleep(0.2 * (attempt + 1))

    async def _worker(self, task: int) -> None:
        while not self._stop.is_set():
            ack = await self._rank(task)
            if ack is None:
                await asyncio.sleep(0.01)
                continue
            if ack.deferred and (self._stop.is_set() or not await self._activate(ack)):
                continue
            if self._stop.is_set():
                continue
            await self._reward(ack, 0)
            if ack.slots > 1:
                await self._reward(ack, 1)
            elif self.rng.random() < self.p_two_rewards:
                await self._reward(ack, 0)


# -- the store against the ledger ---------------------------------------------------------


@dataclass
class StoreSnapshot:
    decisions: dict[str, dict[str, Any]]  # event_id -> row
    rewards: list[dict[str, Any]]
    activations: set[str]  # event ids with an activation stored (decision or activations table)
    outcomes: dict[tuple[str, int], dict[str, Any]]


def snapshot(database_url: str, loop: str) -> StoreSnapshot:
    with (
        psycopg.connect(database_url, connect_timeout=10) as conn,
        conn.cursor(row_factory=dict_row) as cur,
    ):
        cur.execute(
            "SELECT event_id, context, response, deferred, activated_at, joined_at, "
            "reward_deadline FROM decisions WHERE loop = %s",
            (loop,),
        )
        decisions = {r["event_id"]: r for r in cur.fetchall()}
        cur.execute(
            "SELECT event_id, slot, value, late, received_at FROM rewards WHERE loop = %s", (loop,)
        )
        rewards = cur.fetchall()
        activated = {e for e, r in decisions.items() if r["activated_at"] is not None}
        cur.execute("SELECT to_regclass('activations') IS NOT NULL AS present")
        row = cur.fetchone()
        if row and row["present"]:
            cur.execute("SELECT event_id FROM activations WHERE loop = %s", (loop,))
            activated |= {r["event_id"] for r in cur.fetchall()}
        cur.execute(
            "SELECT event_id, slot, reward, n_rewards, default_applied FROM outcomes "
            "WHERE loop = %s",
            (loop,),
        )
        outcomes = {(r["event_id"], r["slot"]): r for r in cur.fetchall()}
    for r in decisions.values():
        for key in ("context", "response"):
            if isinstance(r[key], str):
                r[key] = json.loads(r[key])
    return StoreSnapshot(decisions, rewards, activated, outcomes)


@dataclass
class Figures:
    """Acknowledged vs stored, per kind of write."""

    ranks_acked: int = 0
    ranks_stored: int = 0
    ranks_lost: int = 0
    ranks_duplicated: int = 0
    ranks_misstated: int = 0
    ranks_unacked: int = 0
    ranks_unacked_stored: int = 0
    rewards_acked: int = 0
    rewards_stored: int = 0
    rewards_lost: int = 0
    rewards_duplicated: int = 0
    rewards_unacked: int = 0
    rewards_unacked_stored: int = 0
    activations_acked: int = 0
    activations_stored: int = 0
    activations_lost: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.ranks_lost + self.rewards_lost + self.activations_lost

    @property
    def duplicated(self) -> int:
        return self.ranks_duplicated + self.rewards_duplicated

    @property
    def acknowledged(self) -> int:
        return self.ranks_acked + self.rewards_acked + self.activations_acked

    @property
    def stored(self) -> int:
        return self.ranks_stored + self.rewards_stored + self.activations_stored

    def line(self) -> str:
        return (
            f"acknowledged={self.acknowledged} stored={self.stored} lost={self.lost} "
            f"duplicated={self.duplicated} misstated={self.ranks_misstated} | "
            f"ranks {self.ranks_acked}/{self.ranks_stored} lost={self.ranks_lost} "
            f"dup={self.ranks_duplicated} | rewards {self.rewards_acked}/{self.rewards_stored} "
            f"lost={self.rewards_lost} dup={self.rewards_duplicated} | activations "
            f"{self.activations_acked}/{self.activations_stored} lost={self.activations_lost} | "
            f"unacknowledged ranks={self.ranks_unacked} (stored {self.ranks_unacked_stored}) "
            f"rewards={self.rewards_unacked} (stored {self.rewards_unacked_stored})"
        )

    def note(self, text: str) -> None:
        if len(self.examples) < 8:
            self.examples.append(text)


def served(response: dict[str, Any]) -> tuple[Any, Any, Any]:
    """What the client acts on: the event id, the chosen action and the ranking."""
    ranking = [(a.get("id"), a.get("probability")) for a in response.get("ranking", [])]
    return response.get("event_id"), response.get("reward_action_id"), ranking


def check_store(store: StoreSnapshot, ledger: Ledger, rounds: set[int] | None = None) -> Figures:
    """Every acknowledged write of `rounds` (all if None) against the store."""
    f = Figures()

    def wanted(r: int) -> bool:
        return rounds is None or r in rounds

    # decisions: each acknowledged rank stored once, under its event id, with the response
    # the client got; a request (context `rq`) stored under two event ids is a duplicate
    by_rq: dict[str, list[str]] = defaultdict(list)
    for event_id, row in store.decisions.items():
        ctx = row["context"] if isinstance(row["context"], dict) else {}
        if "rq" in ctx and wanted(int(ctx.get("round", -1))):
            by_rq[ctx["rq"]].append(event_id)
    acked_rqs = set()
    for ack in ledger.ranks.values():
        if not wanted(ack.round):
            continue
        acked_rqs.add(ack.rq)
        f.ranks_acked += 1
        row = store.decisions.get(ack.event_id)
        if row is None:
            f.ranks_lost += 1
            f.note(f"rank {ack.event_id} ({ack.phase}) acknowledged, not stored")
            continue
        f.ranks_stored += 1
        if row["context"].get("rq") != ack.rq or served(row["response"]) != served(ack.response):
            f.ranks_misstated += 1
            f.note(
                f"rank {ack.event_id}: served {served(ack.response)}, "
                f"stored {served(row['response'])}"
            )
        if len(by_rq.get(ack.rq, [])) > 1:
            f.ranks_duplicated += len(by_rq[ack.rq]) - 1
            f.note(f"rank {ack.rq} stored {len(by_rq[ack.rq])} times")
    unacked_rqs = {a.rq for a in ledger.failed if a.kind.startswith("rank") and wanted(a.round)}
    unacked_rqs -= acked_rqs
    f.ranks_unacked = len(unacked_rqs)
    f.ranks_unacked_stored = sum(1 for rq in unacked_rqs if rq in by_rq)
    f.ranks_duplicated += sum(
        len(by_rq[rq]) - 1 for rq in unacked_rqs if len(by_rq.get(rq, [])) > 1
    )

    # rewards: values are unique, so each acknowledged value is stored exactly once
    stored_values: Counter[tuple[str, int, float]] = Counter(
        (r["event_id"], r["slot"], float(r["value"])) for r in store.rewards
    )
    by_value: Counter[float] = Counter(float(r["value"]) for r in store.rewards)
    for rw in ledger.rewards:
        if not wanted(rw.round):
            continue
        f.rewards_acked += 1
        n = stored_values.get((rw.event_id, rw.slot, rw.value), 0)
        if n == 0:
            f.rewards_lost += 1
            f.note(
                f"reward {rw.value * REWARD_SCALE:.0f} for {rw.event_id}/{rw.slot} ({rw.phase}) "
                f"acknowledged {rw.body}, not stored"
            )
        else:
            f.rewards_stored += 1
        if by_value[rw.value] > 1:
            f.rewards_duplicated += by_value[rw.value] - 1
            f.note(f"reward {rw.value * REWARD_SCALE:.0f} stored {by_value[rw.value]} times")
    acked_values = {rw.value for rw in ledger.rewards}
    unacked_values = {
        a.value
        for a in ledger.failed
        if a.kind == "reward" and wanted(a.round) and a.value is not None
    } - acked_values
    for value in unacked_values:
        f.rewards_unacked += 1
        f.rewards_unacked_stored += by_value[value] > 0
        if by_value[value] > 1:
            f.rewards_duplicated += by_value[value] - 1
            f.note(
                f"unacknowledged reward {value * REWARD_SCALE:.0f} stored {by_value[value]} times"
            )

    # activations: each acknowledged one is on its decision (or waits in `activations`)
    for event_id, (_status, phase, r) in ledger.activations.items():
        if not wanted(r):
            continue
        f.activations_acked += 1
        if event_id in store.activations:
            f.activations_stored += 1
        else:
            f.activations_lost += 1
            f.note(f"activation of {event_id} ({phase}) acknowledged, not stored")
    return f


def join_figures(store: StoreSnapshot, ledger: Ledger) -> tuple[dict[str, int], list[str]]:
    """Every window that should be closed is closed with exactly the rewards received inside
    it (received_at <= the decision's reward_deadline), aggregated as the loop says (`sum`)."""
    stored: dict[tuple[str, int], list[tuple[float, Any, bool]]] = {}
    for r in store.rewards:
        key = (r["event_id"], r["slot"])
        stored.setdefault(key, []).append((float(r["value"]), r["received_at"], r["late"]))
    fig = {
        "windows": 0,
        "joined": 0,
        "unjoined": 0,
        "wrong_aggregate": 0,
        "rewards_joined": 0,
        "outage_rewards_in_window": 0,
        "outage_rewards_joined": 0,
        "answered_joined_but_late": 0,
        "late_flag_mismatch": 0,
    }
    examples: list[str] = []

    def example(text: str) -> None:
        if len(examples) < 8:
            examples.append(text)

    def in_window(event_id: str, received_at: Any) -> bool | None:
        row = store.decisions.get(event_id)
        deadline = None if row is None else row["reward_deadline"]
        return None if deadline is None else received_at <= deadline

    aggregate_ok: dict[tuple[str, int], bool] = {}
    for ack in ledger.ranks.values():
        if ack.deferred and ack.event_id not in ledger.activations:
            continue  # never activated (as far as the client knows): never joined
        for slot in range(ack.slots):
            fig["windows"] += 1
            out = store.outcomes.get((ack.event_id, slot))
            if out is None:
                fig["unjoined"] += 1
                example(f"window {ack.event_id}/{slot} ({ack.phase}) not joined")
                continue
            fig["joined"] += 1
            rows = stored.get((ack.event_id, slot), [])
            values = [v for v, at, _ in rows if in_window(ack.event_id, at)]
            expected = sum(values) if values else 0.0
            ok = out["n_rewards"] == len(values) and abs(out["reward"] - expected) <= 1e-12
            aggregate_ok[(ack.event_id, slot)] = ok
            if not ok:
                fig["wrong_aggregate"] += 1
                example(
                    f"outcome {ack.event_id}/{slot}: reward={out['reward']} "
                    f"n_rewards={out['n_rewards']}, in-window rewards stored: {values}"
                )
            fig["rewards_joined"] += len(values)
            for _, at, late in rows:
                inside = in_window(ack.event_id, at)
                if inside is not None and late == inside:
                    fig["late_flag_mismatch"] += 1
    for rw in ledger.rewards:
        row = next((x for x in stored.get((rw.event_id, rw.slot), []) if x[0] == rw.value), None)
        if row is None:
            continue  # lost: counted by check_store
        inside = in_window(rw.event_id, row[1])
        if rw.body.get("joined") and inside is False:
            fig["answered_joined_but_late"] += 1
            example(f"reward {rw.value} for {rw.event_id}/{rw.slot} answered {rw.body}, late")
        if rw.phase == "outage" and inside:
            fig["outage_rewards_in_window"] += 1
            if aggregate_ok.get((rw.event_id, rw.slot)):
                fig["outage_rewards_joined"] += 1
            else:
                example(
                    f"reward {rw.value} for {rw.event_id}/{rw.slot} answered {rw.body} during "
                    f"the outage, not joined: {store.outcomes.get((rw.event_id, rw.slot))}"
                )
    return fig, examples


def spool_segments(spool_dir: Path) -> list[Path]:
    if not spool_dir.exists():
        return []
    return [p for p in spool_dir.rglob("*.seg") if "quarantine" not in p.parts]


def quarantined(spool_dir: Path) -> list[Path]:
    q = spool_dir / "quarantine"
    return [p for p in q.rglob("*") if p.is_file()] if q.exists() else []
