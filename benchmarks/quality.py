"""Decision quality on problems with a known oracle: the service's loop, VW per event, uniform.

Each problem draws requests (a context and candidate actions) whose expected reward per action
(`q`) is known, so the oracle's expected reward is known too. Four policies face the same
request stream (same seed):

- **service**: the loop as the service runs it, in-process. Each round is decided by the real
  decision path (`decision_service.decide.decide` on a `LoopRuntime`: the loop's explorer over
  the model's output, the loop's keyed sampling, slates slot by slot). Rewards are drawn,
  delayed or lost as the problem says, and reported with a time stamp; a decision's window
  closes ``reward_wait_s`` after it (rewards inside: aggregated "earliest"; none: the default
  reward 0), exactly the joiner's rule. Every ``freshness_s`` (simulated time at ``rate``
  requests per second) the joined events not learned yet are learned on top of the live model,
  in join order, with the learner's own example builder (`learn.examples.LineBuilder`, the
  training path of the freshness track), and the continued model is saved, loaded and swapped
  in (its explorer re-built with its learned-example count ``t``), as the freshness track does.
  Not exercised here: the store's I/O and the freshness safety checks (tested elsewhere); the
  first model is the untrained one continued from the start (as after ``learn --promote``).
- **vw_online**: VW's per-event online loop: the same features, arguments and exploration, the
  model learning each event in place as soon as it is decided, with the reward the problem
  produces (a lost reward counts as 0; no delay).
- **vw_native**: the same per-event loop with the exploration as VW's own loop computes it: the
  loop's strategy without the service's exploration floor (for a VW strategy, VW's reduction's
  distribution as is). This is the reference for what the floor adds; with a floor of 0 it is
  the vw_online run itself.
- **uniform**: the uniform policy (its expected reward, exact).

Metrics per run and arm: ``share`` = the served expected reward over the last 10% of rounds
divided by the oracle's over them; ``regret`` = mean (oracle - served) expected reward per
round, over all rounds. The served expected reward of a round is the expectation (over reward
noise) of what was served: ``q[chosen]`` (slates: the position-weighted sum over slots). Over
``--seeds`` seeds: mean and standard error; ``paired``: the service's share minus each VW
loop's, seed by seed (mean and standard error of the differences).
Prints one JSON line per problem and strategy::

    .venv/bin/python -m benchmarks.quality --rounds 20000 --seeds 10 --jobs 16
    .venv/bin/python -m benchmarks.quality --rounds 3000 --seeds 3 --problems segments \\
        --strategies squarecb,epsilon_greedy
    .venv/bin/python -m benchmarks.quality --vw-only --first-seed 100 --seeds 6  # tuning

Problems: ``segments`` (4 user segments x 6 actions, Bernoulli rewards), ``rotating`` (the same,
each segment's action rewards rotated by one halfway), ``catalog`` (20 of 200 items offered per
request, 3 numeric features per item and per user (50 users), click probability decreasing with
the squared user-item distance), ``delayed`` (segments; rewards arrive after an exponential delay
of mean 40% of the window, 25% of them never; late ones are lost), ``slates`` (4 segments x 8
items, 3 slots, position bias 1, 0.6, 0.35).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson

from decision_service.decide import decide
from decision_service.rank_input import RankInput
from decision_service.runtime import LoopRuntime, explorer_for
from explore import Action
from learn.examples import LineBuilder
from log.deploy_settings import LearnerSettings
from log.explore_settings import ExploreSettings
from log.loops import LoopConfig
from log.records import DecisionRecord
from log.training_reads import JoinedDecision
from policies import VWPolicy

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = bytes(range(32))  # the benchmark loop's sampling key (fixed: runs are reproducible)
LAST = 0.1  # share measured over the last 10% of rounds


def log(msg: str) -> None:
    print(f"[quality] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ problems
@dataclass
class Request:
    context: dict[str, Any]
    actions: list[Action]
    q: np.ndarray  # expected reward of each action (per slot before the position bias)


class Problem:
    """A stream of requests with known expected rewards (one instance per seed)."""

    name = ""
    slots: int | None = None
    bias: tuple[float, ...] = (1.0,)
    delay_share = 0.0  # mean delay of a reward, as a share of the reward window
    lost = 0.0  # share of rewards never reported

    def __init__(self, seed: int, rounds: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.rounds = rounds

    def request(self, i: int) -> Request:
        raise NotImplementedError

    def oracle(self, q: np.ndarray) -> float:
        k = len(self.bias)
        top = np.sort(q)[::-1][:k]
        return float(np.dot(top, self.bias[: top.size]))

    def uniform(self, q: np.ndarray) -> float:
        return float(q.mean() * sum(self.bias[: min(len(self.bias), q.size)]))

    def served(self, q: np.ndarray, chosen: list[int]) -> float:
        return float(sum(b * q[c] for b, c in zip(self.bias, chosen, strict=False)))


class Segments(Problem):
    name = "segments"
    n_segments, n_actions = 4, 6

    def __init__(self, seed: int, rounds: int) -> None:
        super().__init__(seed, rounds)
        self.q = self.rng.uniform(0.05, 0.35, (self.n_segments, self.n_actions))
        self.actions = [Action(f"a{j}", {}) for j in range(self.n_actions)]

    def table(self, i: int) -> np.ndarray:
        return self.q

    def request(self, i: int) -> Request:
        s = int(self.rng.integers(self.n_segments))
        return Request({"segment": f"s{s}"}, self.actions, self.table(i)[s].copy())


class Rotating(Segments):
    name = "rotating"

    @property
    def change_round(self) -> int:
        """The first round of the rotated rewards."""
        return self.rounds // 2

    def table(self, i: int) -> np.ndarray:
        return self.q if i < self.change_round else np.roll(self.q, 1, axis=1)


class Delayed(Segments):
    name = "delayed"
    delay_share = 0.4
    lost = 0.25


class Slates(Segments):
    name = "slates"
    n_actions = 8
    slots = 3
    bias = (1.0, 0.6, 0.35)


class Catalog(Problem):
    name = "catalog"
    n_items, offered, n_users, dim = 200, 20, 50, 3

    def __init__(self, seed: int, rounds: int) -> None:
        super().__init__(seed, rounds)
        self.items = self.rng.normal(0.0, 0.7, (self.n_items, self.dim))
        self.users = self.rng.normal(0.0, 0.7, (self.n_users, self.dim))
        self.actions = [
            Action(f"i{j}", {f"v{d}": round(float(x), 4) for d, x in enumerate(v)})
            for j, v in enumerate(self.items)
        ]

    def request(self, i: int) -> Request:
        u = int(self.rng.integers(self.n_users))
        offered = self.rng.choice(self.n_items, self.offered, replace=False)
        d2 = ((self.items[offered] - self.users[u]) ** 2).sum(axis=1)
        q = np.clip(0.6 - 0.15 * d2, 0.01, 0.99)
        context = {f"u{d}": round(float(x), 4) for d, x in enumerate(self.users[u])}
        return Request(context, [self.actions[j] for j in offered], q)


PROBLEMS: dict[str, type[Problem]] = {
    p.name: p for p in (Segments, Rotating, Catalog, Delayed, Slates)
}


# ---------------------------------------------------------------------------------- strategies
SUITE_VW_ARGS = "-q ca --cb_type mtr"  # the named strategies' VW arguments (README)


def strategy_config(name: str) -> LoopConfig:
    """The loop configuration of a named strategy setting: ``base`` (with the suite's settings
    below, no floor, RegCB's mellowness 0.1 and VW arguments `SUITE_VW_ARGS`, fixed here so
    that the README's figures stay reproducible whatever the loop defaults; ``default``: the
    loop defaults, `LoopConfig()`), ``base+floor`` (floor 0.01), or
    ``base/key=value/...`` where a key is a top-level loop setting (epsilon, softmax_lambda,
    vw_args with ~ for spaces), freshness_s (the learner's period, instead of
    ``--freshness``) or an `ExploreSettings` field."""
    parts = name.split("/")
    base, _, suffix = parts[0].partition("+")
    options: dict[str, Any] = {"floor": 0.0, "regcb_mellowness": 0.1}
    top: dict[str, Any] = {"exploration": base, "vw_args": SUITE_VW_ARGS}
    if base == "default":  # the loop defaults (LoopConfig())
        top, options = {}, {}
    elif base == "epsilon_greedy":
        top["epsilon"] = 0.05
    elif base == "epsilon_decay":
        top.update(exploration="epsilon_greedy", epsilon=0.3)
        options.update(epsilon_decay=0.5, epsilon_min=0.01)
    elif base == "softmax":
        top["softmax_lambda"] = 30.0
    elif base in ("cover", "bag"):
        top["epsilon"] = 0.05
    if suffix == "floor":
        options["floor"] = 0.01
    elif suffix:
        raise ValueError(f"unknown strategy suffix {suffix!r}")
    option_names = set(ExploreSettings.__dataclass_fields__)
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"expected key=value, got {part!r}")
        if key == "vw_args":
            top[key] = value.replace("~", " ")  # spaces written as ~
        elif key in ("epsilon", "softmax_lambda"):
            top[key] = float(value)
        elif key == "freshness_s":
            top["learner"] = LearnerSettings(freshness_s=float(value), freshness_min_events=1)
        elif key in option_names:
            options[key] = float(value)
        else:
            raise ValueError(f"unknown setting {key!r}")
    return LoopConfig(**top, exploration_options=ExploreSettings(**options), sampling_key=KEY)


STRATEGIES = (
    "default",
    "epsilon_greedy",
    "epsilon_decay",
    "softmax",
    "squarecb",
    "squarecb+floor",
    "regcbopt",
    "cover",
    "bag",
)


# ----------------------------------------------------------------------------------- one run
@dataclass
class Pending:
    record: DecisionRecord
    deadline: float  # simulated seconds
    rewards: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Cadence:
    rate: float  # requests per simulated second
    reward_wait_s: float
    freshness_s: float


def _draw_rewards(
    problem: Problem, rng: np.random.Generator, q: np.ndarray, chosen: list[int], wait: float
) -> tuple[dict[int, float], dict[int, float]]:
    """(rewards reported inside the window, what VW per event learns) per slot."""
    inside: dict[int, float] = {}
    learned: dict[int, float] = {}
    for k, c in enumerate(chosen):
        value = float(rng.random() < q[c] * problem.bias[k])
        lost = problem.lost > 0 and rng.random() < problem.lost
        delay = rng.exponential(problem.delay_share * wait) if problem.delay_share else 0.0
        learned[k] = 0.0 if lost else value
        if value and not lost and delay <= wait:
            inside[k] = value
    return inside, learned


def _runtime(config: LoopConfig, policy: VWPolicy) -> LoopRuntime:
    return LoopRuntime("bench", config, T0, explorer_for(config, policy), policy)


Step = tuple[Problem, int, RankInput, np.ndarray, datetime, float, LineBuilder]
"""One round as a per-event loop sees it: (problem, round, request, q, time, reward window,
the example builder)."""


def _per_event(step: Step, runtime: LoopRuntime, event_id: str, rng: np.random.Generator) -> float:
    """One round of a per-event VW loop: decide on `runtime`, draw the rewards, learn them in
    place on its model at once; the served expected reward."""
    problem, i, rank, q, now, wait, builder = step
    record = decide(rank, {"i": i}, runtime, now, event_id)
    ids = [a.id for a in rank.actions]
    chosen = [ids.index(s["action_id"]) for s in record.slots]
    _, learned = _draw_rewards(problem, rng, q, chosen, wait)
    for lines in builder.event_lines(JoinedDecision(record, learned, 0, T0)):
        runtime.policy.learn_lines(lines)
    return problem.served(q, chosen)


def run_one(
    problem_name: str,
    strategy: str,
    seed: int,
    rounds: int,
    cadence: Cadence,
    service_arm: bool = True,
) -> dict:
    """One seed of one problem and strategy: the four policies' per-round expected rewards
    (without `service_arm`, the service's loop is not run and its rewards are NaN)."""
    config = strategy_config(strategy)
    if "freshness_s=" in strategy:
        cadence = replace(cadence, freshness_s=config.learner.freshness_s)
    config = replace(
        config,
        reward_wait_s=cadence.reward_wait_s,
        learner=LearnerSettings(freshness_s=cadence.freshness_s, freshness_min_events=1),
    )
    args = config.model_args
    problem = PROBLEMS[problem_name](seed, rounds)
    reward_rng = np.random.default_rng([seed, 1])
    ref_rng = np.random.default_rng([seed, 2])
    learner = VWPolicy(args, version="learner")  # the learner's copy of the live model
    live = VWPolicy(args, version="v0")
    runtime = _runtime(config, live)
    reference = VWPolicy(args, version="ref")
    floored = config.exploration_options.floor > 0.0
    native_config = replace(
        config, exploration_options=replace(config.exploration_options, floor=0.0)
    )
    native = VWPolicy(args, version="native") if floored else reference  # not run unfloored
    native_rng = np.random.default_rng([seed, 3])
    builder = LineBuilder()
    pending: deque[Pending] = deque()
    joined: list[JoinedDecision] = []
    next_update = cadence.freshness_s
    versions = 0
    service = np.empty(rounds)
    vw_online = np.empty(rounds)
    vw_native = np.empty(rounds)
    oracle = np.empty(rounds)
    uniform = np.empty(rounds)
    wait = cadence.reward_wait_s
    for i in range(rounds):
        now_s = i / cadence.rate
        # the freshness track: join closed windows, continue, swap
        if service_arm and now_s >= next_update:
            while pending and pending[0].deadline <= now_s:
                p = pending.popleft()
                rewards = {
                    k: p.rewards.get(k, config.default_reward) for k in range(len(p.record.slots))
                }
                joined.append(JoinedDecision(p.record, rewards, versions + 1, T0))
            if joined:
                for event in joined:
                    for lines in builder.event_lines(event):
                        learner.learn_lines(lines)
                joined.clear()
                versions += 1
                artifact = learner.save()
                live.close()
                live = VWPolicy(args, model=artifact, version=f"v{versions}")
                runtime = _runtime(config, live)
            next_update += cadence.freshness_s
        req = problem.request(i)
        oracle[i] = problem.oracle(req.q)
        uniform[i] = problem.uniform(req.q)
        now = T0 + timedelta(seconds=now_s)
        rank = RankInput(f"e{i}", req.context, req.actions, [], problem.slots, False)
        ids = [a.id for a in req.actions]
        if service_arm:
            record = decide(rank, {"i": i}, runtime, now, f"e{i}")
            chosen = [ids.index(s["action_id"]) for s in record.slots]
            service[i] = problem.served(req.q, chosen)
            inside, _ = _draw_rewards(problem, reward_rng, req.q, chosen, wait)
            pending.append(Pending(record, now_s + wait, inside))
        else:
            service[i] = np.nan
        # VW per event: the same decision path on a model learning in place
        step = (problem, i, rank, req.q, now, wait, builder)
        vw_online[i] = _per_event(step, _runtime(config, reference), f"r{seed}-{i}", ref_rng)
        if floored:  # VW's own exploration: the same loop without the floor
            native_runtime = _runtime(native_config, native)
            vw_native[i] = _per_event(step, native_runtime, f"n{seed}-{i}", native_rng)
    live.close()
    learner.close()
    reference.close()
    if floored:
        native.close()
    return {
        "service": service,
        "vw_online": vw_online,
        "vw_native": vw_native if floored else vw_online,
        "uniform": uniform,
        "oracle": oracle,
        "versions": versions,
    }


def metrics(served: np.ndarray, oracle: np.ndarray) -> tuple[float, float]:
    n = served.size
    last = max(1, math.ceil(n * LAST))
    share = float(served[-last:].sum() / oracle[-last:].sum())
    regret = float((oracle - served).mean())
    return share, regret


ARMS = ("service", "vw_online", "vw_native", "uniform")


def _task(task: tuple[str, str, int, int, Cadence, bool]) -> tuple[str, str, int, dict, float]:
    problem, strategy, seed, rounds, cadence, service_arm = task
    started = time.perf_counter()
    out = run_one(problem, strategy, seed, rounds, cadence, service_arm)
    result = {arm: metrics(out[arm], out["oracle"]) for arm in ARMS}
    result["versions"] = out["versions"]
    return problem, strategy, seed, result, time.perf_counter() - started


def summarise(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else float("nan")
    return float(a.mean()), se


def _paired(differences: list[float]) -> dict[str, float]:
    mean, se = summarise(differences)
    return {"share": round(mean, 4), "share_se": round(se, 4)}


def run_suite(
    problems: list[str],
    strategies: list[str],
    seeds: list[int],
    rounds: int,
    cadence: Cadence,
    jobs: int,
    emit: Callable[[dict], None],
    service_arm: bool = True,
) -> list[dict]:
    tasks = [
        (p, s, seed, rounds, cadence, service_arm)
        for p in problems
        for s in strategies
        for seed in seeds
    ]
    results: dict[tuple[str, str], list[tuple[dict, float]]] = {}
    lines: list[dict] = []
    started = time.perf_counter()

    def collect(item: tuple[str, str, int, dict, float]) -> None:
        problem, strategy, _seed, result, seconds = item
        group = results.setdefault((problem, strategy), [])
        group.append((result, seconds))
        if len(group) == len(seeds):
            line: dict[str, Any] = {"bench": "quality", "problem": problem, "strategy": strategy}
            line.update(rounds=rounds, seeds=len(seeds))
            for arm in ARMS:
                share = summarise([r[arm][0] for r, _ in group])
                regret = summarise([r[arm][1] for r, _ in group])
                line[arm] = {
                    "share": round(share[0], 4),
                    "share_se": round(share[1], 4),
                    "regret": round(regret[0], 5),
                    "regret_se": round(regret[1], 5),
                }
            if service_arm:  # paired over seeds: the service's loop against each VW loop
                line["paired"] = {
                    f"service-{ref}": _paired([r["service"][0] - r[ref][0] for r, _ in group])
                    for ref in ("vw_online", "vw_native")
                }
            line["model_versions"] = int(np.mean([r["versions"] for r, _ in group]))
            line["seconds_per_seed"] = round(float(np.mean([s for _, s in group])), 1)
            lines.append(line)
            emit(line)

    if jobs <= 1:
        for task in tasks:
            collect(_task(task))
    else:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            for item in pool.imap_unordered(_task, tasks):
                collect(item)
    log(f"{len(tasks)} runs in {time.perf_counter() - started:.0f} s")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--rate", type=float, default=10.0, help="requests per simulated second")
    parser.add_argument("--reward-wait", type=float, default=5.0, help="reward window (s)")
    parser.add_argument("--freshness", type=float, default=5.0, help="freshness period (s)")
    parser.add_argument("--jobs", type=int, default=1, help="processes")
    parser.add_argument(
        "--vw-only",
        action="store_true",
        help="run VW per event (and uniform) only, not the service's loop (tuning; half the time)",
    )
    args = parser.parse_args(argv)
    problems = args.problems.split(",")
    strategies = args.strategies.split(",")
    for p in problems:
        if p not in PROBLEMS:
            parser.error(f"unknown problem {p!r}: one of {', '.join(PROBLEMS)}")
    for s in strategies:
        try:
            strategy_config(s)
        except ValueError as err:
            parser.error(f"strategy {s!r}: {err}")
    if args.rounds < 10 or args.seeds < 1:
        parser.error("--rounds must be >= 10 and --seeds >= 1")
    cadence = Cadence(args.rate, args.reward_wait, args.freshness)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))

    def emit(line: dict) -> None:
        line["cadence"] = {
            "rate": cadence.rate,
            "reward_wait_s": cadence.reward_wait_s,
            "freshness_s": cadence.freshness_s,
        }
        line["first_seed"] = args.first_seed
        print(orjson.dumps(line).decode(), flush=True)

    run_suite(problems, strategies, seeds, args.rounds, cadence, args.jobs, emit, not args.vw_only)


if __name__ == "__main__":
    main()
