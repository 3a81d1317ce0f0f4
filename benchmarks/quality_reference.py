"""What a learner that knows the problem's structure reaches on the quality suite's segment
problems: tabular Thompson sampling, a reference for `benchmarks.quality`'s goals.

The learner is told the segment of each request and keeps a Beta(1 + successes, 1 + failures)
posterior per (segment, action), updated after every round with the round's reward (no delay,
nothing lost): the best a Bayesian learner with the true model class can do, up to its prior.
With ``--discounts`` the segment's counts are multiplied by the factor at each of its rounds
(an effective memory of about 1 / (1 - factor) rounds per segment), which lets it follow the
rotating problem's change at a cost on the stationary one. ``--restart`` adds an oracle told
the moment of the rotating problem's change: it empties every count at that round (no
discount), which no learner watching rewards can beat in speed of detection, so its share
bounds what any change-detecting variant of this learner reaches there. Same problems, seeds
and metric as the suite (share of the oracle's expected reward over the last 10% of rounds).
One JSON line per problem and discount (and one for the rotating problem with ``--restart``)::

    .venv/bin/python -m benchmarks.quality_reference --seeds 10 --discounts 1,0.9999,0.9998
    .venv/bin/python -m benchmarks.quality_reference --seeds 10 --problems rotating --restart
"""

from __future__ import annotations

import argparse

import numpy as np
import orjson

from benchmarks.quality import Rotating, Segments, metrics, summarise

PROBLEMS: dict[str, type[Segments]] = {"segments": Segments, "rotating": Rotating}


def thompson(
    problem: Segments, seed: int, discount: float, restart_at: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(served expected reward, oracle expected reward) per round of tabular Thompson sampling
    (every count emptied at round `restart_at` when given)."""
    rng = np.random.default_rng([seed, 3])
    shape = (problem.n_segments, problem.n_actions)
    wins, losses = np.zeros(shape), np.zeros(shape)
    served, oracle = np.empty(problem.rounds), np.empty(problem.rounds)
    for i in range(problem.rounds):
        if i == restart_at:
            wins[:] = 0.0
            losses[:] = 0.0
        req = problem.request(i)
        s = int(req.context["segment"][1:])
        a = int(np.argmax(rng.beta(1.0 + wins[s], 1.0 + losses[s])))
        reward = float(rng.random() < req.q[a])
        if discount < 1.0:
            wins[s] *= discount
            losses[s] *= discount
        wins[s, a] += reward
        losses[s, a] += 1.0 - reward
        served[i], oracle[i] = req.q[a], problem.oracle(req.q)
    return served, oracle


def _run(
    problem: Segments, seed: int, discount: float, restart: bool
) -> tuple[np.ndarray, np.ndarray]:
    change = problem.change_round if isinstance(problem, Rotating) else None
    return thompson(problem, seed, discount, change if restart else None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--problems", default="segments,rotating")
    parser.add_argument("--discounts", default="1,0.9999,0.9998,0.9995")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="also run the oracle restart (counts emptied at the rotating problem's change)",
    )
    args = parser.parse_args(argv)
    problems = args.problems.split(",")
    for p in problems:
        if p not in PROBLEMS:
            parser.error(f"unknown problem {p!r}: one of {', '.join(PROBLEMS)}")
    discounts = [float(d) for d in args.discounts.split(",")]
    if any(not 0.0 < d <= 1.0 for d in discounts) or args.seeds < 1 or args.rounds < 10:
        parser.error("discounts must be in (0, 1], --seeds >= 1, --rounds >= 10")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    runs_of: list[tuple[str, float, bool]] = [(p, d, False) for p in problems for d in discounts]
    runs_of += [(p, 1.0, True) for p in problems if args.restart and p == "rotating"]
    for name, discount, restart in runs_of:
        runs = [
            metrics(*_run(PROBLEMS[name](seed, args.rounds), seed, discount, restart))
            for seed in seeds
        ]
        share, share_se = summarise([r[0] for r in runs])
        regret, regret_se = summarise([r[1] for r in runs])
        line = {
            "bench": "quality_reference",
            "problem": name,
            "learner": "thompson_tabular",
            "discount": discount,
            "oracle_restart": restart,
            "rounds": args.rounds,
            "seeds": args.seeds,
            "first_seed": args.first_seed,
            "share": round(share, 4),
            "share_se": round(share_se, 4),
            "regret": round(regret, 5),
            "regret_se": round(regret_se, 5),
        }
        print(orjson.dumps(line).decode(), flush=True)


if __name__ == "__main__":
    main()
