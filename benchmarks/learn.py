"""Training throughput from the store against raw Vowpal Wabbit, and the learner's peak memory.

Fills a store (a SQLite file in a temporary directory, or a scratch schema of the PostgreSQL
database at ``--database-url``) with simulated joined decisions (10 to 20 actions each, uniform
logging, clicks as rewards), then times, in the same run:

- ``learn_once(mode="batch", reader=R, workers=W)`` from the store, in a fresh subprocess
  (streaming, parsing, text building, learning, saving and registering), whose peak RSS is
  reported (VmHWM; with workers, plus an upper bound of theirs): the fill does not count.
  ``reader="process"`` reads and builds the examples in a reader process while VW learns
  (:mod:`learn.reader`), ``"inline"`` in the learner itself;
- raw VW with the arguments training uses (the loop's ``model_args``: its ``vw_args`` plus the
  exploration's VW reduction, ``--cb_explore_adf --regcbopt ...`` for the default RegCB
  loop) learning the same examples from text lines prebuilt in memory (the first
  ``--raw-events`` events) through ``VWPolicy.learn_lines`` (VW's text parse included, as
  training's), before and after the training; the mean is reported.

``--exploration`` sets the loop's strategy (a comma list runs each on the same store): the
reduction makes VW's own learning slower (RegCB's about 1.8x), so a strategy computed outside VW
(epsilon_greedy, softmax, squarecb) is the harder case for the ratio.

Prints one JSON line per (``--reader``, ``--workers``) pair on stdout; progress goes to
stderr::

    .venv/bin/python -m benchmarks.learn --events 100000 --reader inline,process
    .venv/bin/python -m benchmarks.learn --events 100000 --exploration regcbopt,epsilon_greedy
    .venv/bin/python -m benchmarks.learn --events 1000000 --database-url postgresql://...

``ratio`` compares wall-clock throughput of the first pass, in the fresh subprocess: it pays
once-per-process costs, such as starting the reader process's fork server (about 0.6 s of
imports). The subprocess then runs the same training again: ``warm_ratio`` is that second
pass, what a long-running learner (the scheduler) gets on each later pass. ``cpu_ratio``
compares CPU time of the learner process alone (first pass); ``cpu_ratio_all`` counts the CPU
of its reader or workers too (what the training costs the host besides the database server;
the PostgreSQL server's CPU is counted by neither). With a reader process the wall ratio can
exceed the CPU ratios: reading and learning overlap on two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg
from sqlalchemy import insert

from evaluation.simulator import Simulator, SimulatorConfig
from explore.types import Action
from log.action_store import POLICY, KnownBodies, ReferencePolicy, stored_form, write_bodies
from log.loops import LoopConfig, put_loop
from log.models import DecisionRow, OutcomeRow
from log.schema import make_engine, migrate
from policies.vw import VWPolicy
from policies.vw_text import example_lines

ROOT = Path(__file__).resolve().parent.parent
LOOP = "bench"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
MIN_ACTIONS, MAX_ACTIONS = 10, 20
FILL_CHUNK = 5000


def log(msg: str) -> None:
    print(f"[learn] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def scratch_store(database_url: str | None) -> Iterator[str]:
    """A SQLite file in a temporary directory, or a scratch PostgreSQL schema (dropped after)."""
    if database_url is None:
        with tempfile.TemporaryDirectory(prefix="bench-learn-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'store.db'}"
        return
    admin = database_url.replace("postgresql+psycopg://", "postgresql://")
    schema = f"bench_{secrets.token_hex(6)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in admin else "?"
    try:
        yield f"{admin}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def loop_config(exploration: str) -> LoopConfig:
    """The benchmark loop's configuration: the defaults with `exploration`."""
    return LoopConfig(exploration=exploration)


def set_exploration(url: str, exploration: str) -> None:
    engine = make_engine(url)
    put_loop(engine, LOOP, loop_config(exploration))
    engine.dispose()


STORAGE = {
    "policy": POLICY,  # what the writer does (log/action_store.py)
    "references": ReferencePolicy(seen=False, gain=0.0),
    "inline": ReferencePolicy(gain=float("inf")),
}


def fill(
    url: str, n: int, n_raw: int, seed: int, policy: ReferencePolicy = POLICY
) -> list[list[str]]:
    """Write `n` joined decisions (their actions stored as `policy` says); return the VW text
    of the first `n_raw` (prebuilt)."""
    engine = make_engine(url)
    migrate(engine)
    put_loop(engine, LOOP, LoopConfig())
    sim = Simulator(SimulatorConfig(n_actions_per_request=MAX_ACTIONS, seed=seed))
    rng = np.random.default_rng(seed)
    raw: list[list[str]] = []
    known = KnownBodies()
    started = time.perf_counter()
    for lo in range(0, n, FILL_CHUNK):
        size = min(FILL_CHUNK, n - lo)
        batch = sim.sample_batch(size, rng)
        q = sim.expected_reward(batch)
        sizes = rng.integers(MIN_ACTIONS, MAX_ACTIONS + 1, size)
        decisions, outcomes = [], []
        bodies: dict[tuple[str, str], bytes] = {}
        for i in range(size):
            k = int(sizes[i])
            items = sim.batch_items(batch, i)[:k]
            context = dict(sim.batch_context(batch, i).features)
            actions = [{"id": it.id, "features": dict(it.features)} for it in items]
            # stored as the writer stores them (log/action_store.py)
            stored = stored_form(LOOP, actions, policy, bodies)
            chosen = int(rng.integers(k))
            reward = float(rng.random() < q[i, chosen])
            decided_at = T0 + timedelta(milliseconds=10 * (lo + i))
            joined_at = decided_at + timedelta(seconds=600)
            event_id = f"ev{lo + i:08d}"
            decisions.append(
                {
                    "loop": LOOP,
                    "event_id": event_id,
                    "decided_at": decided_at,
                    "model_version": "untrained",
                    "policy_arm": "live",
                    "request_digest": "0" * 64,
                    "context": context,
                    "actions": stored,
                    "pmf": [1.0 / k] * k,
                    "excluded": [],
                    "chosen": items[chosen].id,
                    "slots": [{"slot": 0, "action_id": items[chosen].id, "probability": 1.0 / k}],
                    "n_slots": 1,
                    "is_slate": False,
                    "deferred": False,
                    "activated_at": None,
                    "reward_deadline": joined_at,
                    "response": {"event_id": event_id},
                    "joined_at": joined_at,
                    "join_seq": lo // FILL_CHUNK + 1,
                }
            )
            outcomes.append(
                {
                    "loop": LOOP,
                    "event_id": event_id,
                    "slot": 0,
                    "reward": reward,
                    "default_applied": False,
                    "n_rewards": 1,
                    "decided_at": decided_at,
                    "joined_at": joined_at,
                    "join_seq": lo // FILL_CHUNK + 1,
                }
            )
            if lo + i < n_raw:
                acts = [Action(it.id, it.features) for it in items]
                raw.append(example_lines(context, acts, label=(chosen, -reward, 1.0 / k)))
        with engine.begin() as conn:
            write_bodies(conn, bodies, known)
            conn.execute(insert(DecisionRow), decisions)
            conn.execute(insert(OutcomeRow), outcomes)
        known.commit()
        done = lo + size
        if done % (10 * FILL_CHUNK) == 0 or done == n:
            log(f"filled {done}/{n} events ({time.perf_counter() - started:.0f} s)")
    engine.dispose()
    return raw


def raw_vw(examples: list[list[str]], args: str) -> tuple[float, float]:
    """(events/s by wall time, by CPU time) of a fresh workspace with VW arguments `args`
    learning prebuilt examples through ``VWPolicy.learn_lines``, the call training makes."""
    policy = VWPolicy(args)
    learn = policy.learn_lines
    wall, cpu = time.perf_counter(), time.process_time()
    for lines in examples:
        learn(lines)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    policy.close()
    return len(examples) / wall, len(examples) / cpu


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux: VmHWM of /proc/self/status (ru_maxrss would carry
    the parent's peak over fork+exec); elsewhere ru_maxrss."""
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train_only(url: str, workers: int, reader: str) -> dict[str, Any]:
    """Run in the subprocess: two batch trainings from the store, one after the other (the
    first in a fresh process, the second as a long-running learner's next pass)."""
    import deploy.registry as registry
    from learn import learn_once
    from learn.reader import last_reader_usage

    engine = make_engine(url)
    passes = []
    for _ in range(2):
        cpu, children_cpu = time.process_time(), _children_cpu()
        result = learn_once(
            engine,
            LOOP,
            registry=registry,
            mode="batch",
            progress=False,
            workers=workers,
            reader=reader,  # type: ignore[arg-type]
        )
        cpu, children_cpu = time.process_time() - cpu, _children_cpu() - children_cpu
        usage = last_reader_usage()
        if reader == "process" and usage is not None:
            # the reader is the fork server's child, not ours: it reports its own usage
            children_cpu += usage.cpu_s
        passes.append(
            {
                "events": result.n_events,
                "seconds": result.seconds,
                "cpu_seconds": cpu,
                "children_cpu_seconds": children_cpu,
            }
        )
    engine.dispose()
    # workers: each one's peak is at most the largest child's (an upper bound: a spawned
    # child's ru_maxrss starts from its parent's RSS)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rss = peak_rss_mb() + workers * children
    usage = last_reader_usage()
    if reader == "process" and usage is not None:
        rss += usage.peak_rss_mb
    return {**passes[0], "warm": passes[1], "peak_rss_mb": rss}


def train_in_subprocess(url: str, workers: int, reader: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.learn",
            "--train-only",
            url,
            "--workers",
            str(workers),
            "--reader",
            reader,
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
    )
    result: dict[str, Any] = orjson.loads(out.stdout.splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="joined events in the store")
    parser.add_argument(
        "--raw-events",
        type=int,
        default=100_000,
        help="events raw VW learns from prebuilt lines (at most --events)",
    )
    parser.add_argument("--database-url", default=None, help="PostgreSQL (default: SQLite)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--storage",
        choices=sorted(STORAGE),
        default="policy",
        help="how the decisions' actions are stored: as the writer would (the simulated "
        "items' 4 features stay inline), every decision by reference, or inline",
    )
    parser.add_argument(
        "--workers",
        default="0",
        help="processes building examples (learn_once workers); a comma list runs each",
    )
    parser.add_argument(
        "--reader",
        default="process",
        help="where examples are read and built: inline, process (a reader process) or both "
        "(a comma list runs each; process runs with 0 workers only)",
    )
    parser.add_argument(
        "--exploration",
        default=LoopConfig().exploration,
        help="the loop's exploration strategy (default: the loop default); a comma list runs "
        "each on the same store",
    )
    parser.add_argument("--train-only", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_only:
        trained = train_only(args.train_only, int(args.workers), args.reader)
        print(orjson.dumps(trained).decode(), flush=True)
        return
    if args.events < 1 or args.raw_events < 1:
        parser.error("--events and --raw-events must be >= 1")
    try:
        workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers must be integers separated by commas, got {args.workers!r}")
    if any(w < 0 for w in workers):
        parser.error("--workers must be >= 0")
    readers = args.reader.split(",")
    if any(r not in ("inline", "process") for r in readers):
        parser.error(f"--reader must be inline and/or process, got {args.reader!r}")
    explorations = args.exploration.split(",")
    for e in explorations:
        try:
            loop_config(e)
        except ValueError as err:
            parser.error(f"--exploration: {err}")
    runs = [(r, w) for r in readers for w in workers if r == "inline" or w == 0]
    if not runs:
        parser.error("--reader process runs with --workers 0 only")
    n_raw = min(args.raw_events, args.events)
    with scratch_store(args.database_url) as url:
        log(f"filling {args.events} events into {'PostgreSQL' if args.database_url else 'SQLite'}")
        examples = fill(url, args.events, n_raw, args.seed, STORAGE[args.storage])
        for exploration in explorations:
            set_exploration(url, exploration)
            model_args = loop_config(exploration).model_args
            for r, w in runs:
                log(f"raw VW ({model_args}) on {n_raw} prebuilt examples")
                before = raw_vw(examples, model_args)
                log(f"training from the store ({args.events} events, reader {r}, {w} workers)")
                trained = train_in_subprocess(url, w, r)
                after = raw_vw(examples, model_args)
                report(args, exploration, model_args, (r, w), trained, (before, after))


def report(
    args: argparse.Namespace,
    exploration: str,
    model_args: str,
    run: tuple[str, int],
    trained: dict[str, Any],
    raw_runs: tuple[tuple[float, float], tuple[float, float]],
) -> None:
    (reader, workers), (before, after) = run, raw_runs
    raw, raw_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    events_per_s = trained["events"] / trained["seconds"]
    warm = trained["warm"]
    warm_events_per_s = warm["events"] / warm["seconds"]
    cpu_events_per_s = trained["events"] / trained["cpu_seconds"]
    all_cpu = trained["cpu_seconds"] + trained["children_cpu_seconds"]
    print(
        orjson.dumps(
            {
                "bench": "learn",
                "events_per_s": round(events_per_s, 1),
                "raw_vw_events_per_s": round(raw, 1),
                "ratio": round(events_per_s / raw, 3),
                "peak_rss_mb": round(trained["peak_rss_mb"], 1),
                "events": trained["events"],
                "database": "postgresql" if args.database_url else "sqlite",
                "exploration": exploration,
                "storage": args.storage,
                "vw_args": model_args,
                "reader": reader,
                "workers": workers,
                "raw_vw_runs": [round(before[0], 1), round(after[0], 1)],
                "cpu_ratio": round(cpu_events_per_s / raw_cpu, 3),
                "cpu_ratio_all": round(trained["events"] / all_cpu / raw_cpu, 3),
                "warm_events_per_s": round(warm_events_per_s, 1),
                "warm_ratio": round(warm_events_per_s / raw, 3),
            }
        ).decode(),
        flush=True,
    )


if __name__ == "__main__":
    main()
