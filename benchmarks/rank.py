"""Rank throughput of the service against its ceiling, over loopback.

For each action count, starts (1) the ceiling app (`benchmarks.ceiling_app`: FastAPI + VW, no
validation, no logging) and (2) the service on a fresh PostgreSQL database, each under uvicorn
with 2 workers, and drives each with the same closed-loop load (`benchmarks.loadgen`, in its
own process). Prints one JSON line per configuration on stdout; progress goes to stderr.

    .venv/bin/python -m benchmarks.rank --actions 10,50 --mode durable
    .venv/bin/python -m benchmarks.rank --actions 10 --serving plain,canary,shadow --no-ceiling

With `--serving`, each round runs the service once per serving configuration, alternated
(`benchmarks.rank_serving`: plain = a registered live version alone; canary = a second version
serving 10% of the requests; shadow = a second version scoring every request beside live), and
the line reports each configuration's median run and its throughput relative to the first.

After each service run the `decisions` rows are counted: every 201 must be logged, exactly once
(`logged` must equal `answered_201`). `errors` counts non-2xx answers and failed connections in
the measured window. `cpu_us_per_req` splits the machine's CPU over the measured window between
the servers, PostgreSQL (the run's backends, WAL writer, checkpointer), the client and `other`
(whatever else runs on the machine: a large `other_cores` means the figures are disturbed, and
`est_rps_alone` is what the CPU cost per request would allow on a quiet machine).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
from psycopg import sql

from benchmarks.loadgen import BENCH_KEY
from benchmarks.rank_serving import SERVINGS, install_versions, serving_counts

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
SERVICE_APP = "decision_service:create_app"
CEILING_APP = "benchmarks.ceiling_app:create_app"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def log(msg: str) -> None:
    print(f"[rank] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one run, dropped afterwards; yields its URL."""
    name = f"bench_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def premigrate(url: str) -> None:
    """Migrate the fresh database once, before the workers start.

    Every worker migrates in its lifespan; on an empty database two workers race to create
    `alembic_version` and one dies with a UniqueViolation (seen with 2 workers), so the
    benchmark migrates first, as a deployment would.
    """
    from log.schema import make_engine, migrate

    engine = make_engine(url, pool_size=1)
    try:
        migrate(engine)
    finally:
        engine.dispose()


def count_rows(url: str, loop: str = "default") -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM decisions WHERE loop = %s", (loop,)).fetchone()
        return int(row[0]) if row else 0


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int


def worker_connections(server: Server) -> dict[int, int]:
    """Established connections on the server port, per worker pid (to spot imbalance)."""
    if shutil.which("ss") is None:
        return {}
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{server.port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    counts: dict[int, int] = {}
    for line in out.splitlines():
        at = line.find("pid=")
        if at >= 0:
            pid = int(line[at + 4 :].split(",", 1)[0])
            counts[pid] = counts.get(pid, 0) + 1
    return counts


def start_server(app: str, env: dict[str, str], workers: int, uvicorn_args: list[str]) -> Server:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
        *uvicorn_args,
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **ONE_THREAD, **env}, stdout=sys.stderr, stderr=sys.stderr
    )
    server = Server(proc, port)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{app} exited with {proc.returncode} before answering")
        try:
            with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    else:
        stop_server(server)
        raise RuntimeError(f"{app} did not answer /healthz within 120 s")
    time.sleep(1.0)  # one worker answering does not mean all of them have finished starting
    return server


def stop_server(server: Server, timeout: float = 60.0) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"server {server.proc.pid} ignored SIGTERM for {timeout} s; killing it")
            server.proc.kill()
            server.proc.wait()
    if server.proc.returncode not in (0, -signal.SIGTERM):
        log(f"server exited with {server.proc.returncode}")


TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process, 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _children(pid: int) -> list[int]:
    try:
        kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [k for kid in kids for k in _children(kid)]


PG_BACKGROUND = ("walwriter", "checkpointer", "background writer")


def postgres_pids(admin_url: str, database: str | None) -> list[int]:
    """The backends serving `database` and the server's WAL/checkpoint processes."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s OR backend_type = ANY(%s)",
            (database, list(PG_BACKGROUND)),
        ).fetchall()
    return [int(r[0]) for r in rows]


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])  # guest time is already counted in user
    return (total - idle) / TICK, total / TICK


@dataclass
class CpuSnapshot:
    server: float
    client: float
    postgres: float
    busy: float
    total: float
    at: float

    @classmethod
    def take(cls, server: Server, client_pid: int, pg_pids: list[int]) -> CpuSnapshot:
        tree = [server.proc.pid, *_children(server.proc.pid)]
        busy, total = _machine_cpu()
        return cls(
            server=sum(_proc_cpu(p) for p in tree),
            client=_proc_cpu(client_pid),
            postgres=sum(_proc_cpu(p) for p in pg_pids),
            busy=busy,
            total=total,
            at=time.monotonic(),
        )


def cpu_report(a: CpuSnapshot, b: CpuSnapshot, requests: int) -> dict[str, Any]:
    """Where the machine's CPU went during the measured window, per request and in cores.

    Postgres counts the backends of the run's database and the WAL writer, checkpointer and
    background writer; `other` is the rest of the machine (other users of it, the kernel's
    softirq work for loopback...): a large `other` means the figures are disturbed."""
    wall = max(b.at - a.at, 1e-9)
    parts = {
        "server": b.server - a.server,
        "postgres": b.postgres - a.postgres,
        "client": b.client - a.client,
    }
    parts["other"] = max(0.0, (b.busy - a.busy) - sum(parts.values()))
    n = max(requests, 1)
    return {
        "machine_busy": round((b.busy - a.busy) / max(b.total - a.total, 1e-9), 3),
        "cores": {k: round(v / wall, 2) for k, v in parts.items()},
        "cpu_us_per_req": {k: round(v / n * 1e6) for k, v in parts.items()},
    }


def drive(
    server: Server, args: argparse.Namespace, actions: int, database: str | None = None
) -> dict[str, Any]:
    """Run the load generator in its own process against `server`."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--port",
        str(server.port),
        "--actions",
        str(actions),
        "--connections",
        str(args.connections),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=sys.stderr)
    started = time.monotonic()
    # the client needs a moment to start; measure CPU over the middle of the window
    time.sleep(args.warmup + 0.5)
    pg_pids = postgres_pids(args.database_url, database)
    before = CpuSnapshot.take(server, proc.pid, pg_pids)
    per_worker = worker_connections(server)
    time.sleep(max(0.5, args.duration - 1.0 - (time.monotonic() - started - args.warmup)))
    after = CpuSnapshot.take(server, proc.pid, pg_pids)
    out, _ = proc.communicate()
    if server.proc.poll() is not None:
        raise RuntimeError(f"the server exited with {server.proc.returncode} during the load")
    if proc.returncode != 0:
        raise RuntimeError(f"load generator exited with {proc.returncode}")
    result: dict[str, Any] = orjson.loads(out)
    result["conns_per_worker"] = sorted(per_worker.values(), reverse=True)
    served = round(result["rps"] * (after.at - before.at))
    result["cpu"] = cpu_report(before, after, served)
    return result


def run_ceiling(args: argparse.Namespace, actions: int) -> dict[str, Any]:
    server = start_server(CEILING_APP, {}, args.workers, args.uvicorn_args)
    try:
        return drive(server, args, actions)
    finally:
        stop_server(server)


def run_service(
    args: argparse.Namespace, actions: int, serving: str | None = None
) -> dict[str, Any]:
    with scratch_database(args.database_url) as url, tempfile.TemporaryDirectory() as spool:
        env = {
            "DS_DATABASE_URL": url,
            "DS_DURABILITY": args.mode,
            "DS_SPOOL_DIR": spool,
            "DS_ADMIN_KEY": BENCH_KEY,  # the key the load generator sends
        }
        if args.premigrate or serving is not None:
            premigrate(url)
        if serving is not None:
            install_versions(url, serving, actions)
        server = start_server(args.service_app, env, args.workers, args.uvicorn_args)
        try:
            result = drive(server, args, actions, urlsplit(url).path.lstrip("/"))
        finally:
            stop_server(server)
        result["logged"] = count_rows(url)
        if serving is not None:
            result["serving"] = serving_counts(url)
        result["spooled_files"] = sum(1 for _ in Path(spool).rglob("*") if _.is_file())
        return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--actions", default="10,50", help="comma-separated action counts")
    parser.add_argument("--mode", choices=("durable", "fast"), default="durable")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--uvicorn-args",
        default="--loop uvloop --http httptools",
        help="extra uvicorn flags, the same for the service and the ceiling",
    )
    parser.add_argument(
        "--no-premigrate",
        dest="premigrate",
        action="store_false",
        help="let the workers migrate the empty database themselves (they race)",
    )
    parser.add_argument(
        "--service-app",
        default=SERVICE_APP,
        help="app factory of the service (benchmarks.instrumented_app:create_app adds timers)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="alternate ceiling and service runs this many times; report the median runs",
    )
    parser.add_argument("--no-ceiling", action="store_true", help="measure the service only")
    parser.add_argument(
        "--serving",
        default=None,
        help=f"comma-separated serving configurations among {','.join(SERVINGS)}, run "
        "alternately in each round (default: the plain service, no registered version)",
    )
    args = parser.parse_args(argv)
    args.serving = [x.strip() for x in args.serving.split(",")] if args.serving else [None]
    unknown = [x for x in args.serving if x is not None and x not in SERVINGS]
    if unknown:
        parser.error(f"--serving: unknown configurations {unknown}; choose among {SERVINGS}")
    args.actions = [int(a) for a in str(args.actions).split(",") if a.strip()]
    args.uvicorn_args = args.uvicorn_args.split()
    return args


def estimate_alone(run: dict[str, Any]) -> int:
    """Throughput the run's CPU cost per request allows on this machine with nobody else on
    it (all cores / (server + postgres + client) CPU per request): a check on figures taken
    while other work (`other_cores`) shared the machine."""
    cost = sum(run["cpu"]["cpu_us_per_req"][k] for k in ("server", "postgres", "client"))
    return round((os.cpu_count() or 1) * 1e6 / max(cost, 1))


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r["rps"])[(len(runs) - 1) // 2]


def serving_summary(runs: dict[str | None, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per serving configuration: its median run's figures, every run's rps, and its median
    rps relative to the first configuration's (the configurations alternate in each round)."""
    first = median_run(next(iter(runs.values())))["rps"]
    out: dict[str, Any] = {}
    for name, done in runs.items():
        med = median_run(done)
        out[str(name)] = {
            "rps": med["rps"],
            "rps_runs": [run["rps"] for run in done],
            "vs_first": round(med["rps"] / first, 3) if first else None,
            "p50_ms": med["p50_ms"],
            "p99_ms": med["p99_ms"],
            "server_cpu_us_per_req": med["cpu"]["cpu_us_per_req"]["server"],
            "server_cpu_us_per_req_median": statistics.median(
                run["cpu"]["cpu_us_per_req"]["server"] for run in done
            ),
            "est_rps_alone": estimate_alone(med),
            "logged": med["logged"],
            "answered_201": med["statuses"].get("201", 0),
            **med.get("serving", {}),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("ss") is None:
        log("`ss` not found: connections per worker will not be reported")
    status = 0
    for actions in args.actions:
        ceilings: list[dict[str, Any]] = []
        runs: dict[str | None, list[dict[str, Any]]] = {name: [] for name in args.serving}
        for r in range(args.rounds):
            if not args.no_ceiling:
                log(f"ceiling, {actions} actions, round {r + 1}/{args.rounds} ...")
                ceilings.append(run_ceiling(args, actions))
                log(f"ceiling: {orjson.dumps(ceilings[-1]).decode()}")
            k = len(args.serving)  # rotate the order each round: no configuration always goes first
            for name in args.serving[r % k :] + args.serving[: r % k]:
                what = f"service ({args.mode}{', ' + name if name else ''})"
                log(f"{what}, {actions} actions, round {r + 1}/{args.rounds} ...")
                runs[name].append(run_service(args, actions, name))
                last = runs[name][-1]
                log(f"{what}: {orjson.dumps(last).decode()}")
                answered = last["statuses"].get("201", 0)
                if last["logged"] != answered:
                    log(f"MISMATCH: {answered} answered 201, {last['logged']} rows logged")
                    status = 1
        services = runs[args.serving[0]]
        service = median_run(services)
        ceiling = median_run(ceilings) if ceilings else None
        line: dict[str, Any] = {
            "bench": "rank",
            "actions": actions,
            "mode": args.mode,
            "rps": service["rps"],
            "p50_ms": service["p50_ms"],
            "p99_ms": service["p99_ms"],
            "ceiling_rps": ceiling["rps"] if ceiling else None,
            "ratio": round(service["rps"] / ceiling["rps"], 3)
            if ceiling and ceiling["rps"]
            else None,
            "errors": service["errors"] + service["unfinished"],
            "logged": service["logged"],
            "answered_201": service["statuses"].get("201", 0),
            "unfinished": service["unfinished"],
            "ceiling_p50_ms": ceiling["p50_ms"] if ceiling else None,
            "ceiling_p99_ms": ceiling["p99_ms"] if ceiling else None,
            "cpu_us_per_req": service["cpu"]["cpu_us_per_req"],
            "ceiling_cpu_us_per_req": ceiling["cpu"]["cpu_us_per_req"] if ceiling else None,
            "other_cores": [run["cpu"]["cores"]["other"] for run in ceilings + services],
            "est_rps_alone": estimate_alone(service),
            "est_ceiling_rps_alone": estimate_alone(ceiling) if ceiling else None,
            "connections": args.connections,
            "duration_s": args.duration,
            "workers": args.workers,
            "rounds": args.rounds,
        }
        if args.serving != [None]:
            line["serving"] = serving_summary(runs)
        print(orjson.dumps(line).decode(), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
