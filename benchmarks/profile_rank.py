"""Where the service's time goes under the rank load: py-spy on every worker.

Starts the service (or the ceiling) like `benchmarks.rank`, drives it with the same load, and
samples each uvicorn worker with py-spy (``pip install py-spy``; needs ptrace). Writes the
collapsed stacks to ``--out`` and prints, per worker thread, the share of samples under each
stage of the hot path, plus the top functions by self time.

    .venv/bin/python -m benchmarks.profile_rank --actions 50 --out /tmp/prof
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

from benchmarks.loadgen import BENCH_KEY
from benchmarks.rank import (
    CEILING_APP,
    ROOT,
    SERVICE_APP,
    TICK,
    Server,
    log,
    premigrate,
    scratch_database,
    start_server,
    stop_server,
)

# (stage, substring of a frame): the first stage whose substring appears in a stack wins,
# scanning the stack from the leaf up, so nested stages are attributed to the innermost one.
STAGES: tuple[tuple[str, str], ...] = (
    ("vw predict (C++ parse + predict)", "predict (vowpalwabbit/pyvw.py"),
    ("vw text lines (example_lines)", "example_lines (policies/vw_text.py"),
    ("policy.scores other", "scores (policies/vw.py"),
    ("request_digest (sha256 of sorted JSON)", "request_digest (decision_service/decide.py"),
    ("pydantic RankRequest.model_validate", "model_validate (pydantic"),
    ("check_rank_limits", "check_rank_limits (decision_service/schemas.py"),
    ("explore (pmf, sampling, rng, rank_order)", "/explore/"),
    ("decide other (numpy, dict building)", "decide (decision_service/decide.py"),
    ("orjson.loads / read_json", "read_json (decision_service/routes.py"),
    ("response JSON (_json)", "_json (decision_service/routes.py"),
    ("writer: binary COPY rows (Json dumps, write_row)", "copy_decisions (log/pgcopy.py"),
    ("writer: commit/other DB", "_commit_db (log/writer.py"),
    ("writer: gather wait", "_gather (log/writer.py"),
    ("writer: other", "_run (log/writer.py"),
    ("service.rank other (await write, futures)", "rank (decision_service/service.py"),
    ("ceiling route body", "rank (benchmarks/ceiling_app.py"),
    ("background: loop refresh", "refresh (decision_service/runtime.py"),
    ("background: joiner", "join_due (decision_service/service.py"),
    ("fastapi/starlette routing + middleware", "/starlette/"),
    ("fastapi", "/fastapi/"),
    ("uvicorn http protocol (httptools)", "/uvicorn/protocols/http"),
    ("uvicorn other", "/uvicorn/"),
    ("asyncio/uvloop", "asyncio"),
)


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, needle in STAGES:
            if needle in frame:
                return stage
    return "other: " + (frames[-1] if frames else "?")[:90]


def summarise(raw: Path, top: int = 25) -> str:
    """Per-thread stage shares and the hottest functions by self time, from py-spy raw output."""
    by_thread: dict[str, Counter[str]] = {}
    self_time: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        body = [f for f in frames if not f.startswith(("thread", "process"))]
        by_thread.setdefault(thread, Counter())[stage_of(body)] += count
        self_time[body[-1] if body else "?"] += count
        total += count
    out = [f"{raw.name}: {total} samples"]
    for thread, stages in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(stages.values())
        out.append(f"  {thread}: {n} samples ({100 * n / max(total, 1):.1f}%)")
        for stage, c in stages.most_common(18):
            out.append(f"    {100 * c / max(total, 1):5.1f}%  {stage}")
    out.append("  top self time:")
    for frame, c in self_time.most_common(top):
        out.append(f"    {100 * c / max(total, 1):5.1f}%  {frame[:130]}")
    return "\n".join(out)


def worker_pids(server: Server) -> list[int]:
    path = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
    pids = [int(p) for p in path.read_text().split()]
    return [p for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid`."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def profile(server: Server, args: argparse.Namespace, out: Path, label: str) -> None:
    load = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            "--port",
            str(server.port),
            "--actions",
            str(args.actions),
            "--connections",
            str(args.connections),
            "--duration",
            str(args.seconds + 2),
            "--warmup",
            "2",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
    )
    time.sleep(2.5)
    pids = worker_pids(server)
    cpu0 = {pid: thread_cpu(pid) for pid in pids}
    t0 = time.monotonic()
    spies = []
    for pid in [] if args.no_spy else pids:
        dest = out / f"{label}-{pid}.txt"
        spies.append(
            (
                dest,
                subprocess.Popen(
                    [
                        args.py_spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(args.seconds),
                        "--rate",
                        str(args.rate),
                        "--format",
                        "raw",
                        "--threads",
                        "--nonblocking",
                        *(["--gil"] if args.gil else []),
                        "--output",
                        str(dest),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=sys.stderr,
                ),
            )
        )
    for _, spy in spies:
        spy.wait()
    if args.no_spy:
        time.sleep(args.seconds)
    wall = time.monotonic() - t0
    cpu1 = {pid: thread_cpu(pid) for pid in pids}
    result, _ = load.communicate()
    log(f"{label} load: {result.decode().strip()}")
    rps = orjson.loads(result)["rps"]
    for pid in pids:
        busy = sorted(((cpu1[pid].get(t, 0.0) - c, t) for t, c in cpu0[pid].items()), reverse=True)
        shown = ", ".join(
            f"{'main' if t == pid else t}: {c / wall:.2f} cores"
            f" = {c / wall / max(rps / len(pids), 1e-9) * 1e6:.0f} us/req"
            for c, t in busy[:3]
        )
        print(f"worker {pid} thread CPU ({rps} req/s over all workers): {shown}", flush=True)
    for dest, _ in spies:
        if dest.exists():
            print(summarise(dest), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--actions", type=int, default=50)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=8, help="sampled seconds")
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--mode", choices=("durable", "fast"), default="durable")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--target", choices=("service", "ceiling", "both"), default="both")
    parser.add_argument("--service-app", default=SERVICE_APP)
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL")
    parser.add_argument("--no-spy", action="store_true", help="thread CPU only, no py-spy")
    parser.add_argument("--out", default=None, help="folder for the collapsed stacks")
    parser.add_argument(
        "--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    )
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="prof-"))
    out.mkdir(parents=True, exist_ok=True)
    uvicorn_args = ["--loop", "uvloop", "--http", "httptools"]
    if args.target in ("ceiling", "both"):
        server = start_server(CEILING_APP, {}, args.workers, uvicorn_args)
        try:
            profile(server, args, out, "ceiling")
        finally:
            stop_server(server)
    if args.target in ("service", "both"):
        with scratch_database(args.database_url) as url, tempfile.TemporaryDirectory() as spool:
            premigrate(url)
            env = {
                "DS_DATABASE_URL": url,
                "DS_DURABILITY": args.mode,
                "DS_SPOOL_DIR": spool,
                "DS_ADMIN_KEY": BENCH_KEY,  # the key the load generator sends
            }
            server = start_server(args.service_app, env, args.workers, uvicorn_args)
            try:
                profile(server, args, out, "service")
            finally:
                stop_server(server)
    log(f"collapsed stacks in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
