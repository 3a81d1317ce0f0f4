"""A loop on the project's simulator: the service's decision path (`decide` on a
`LoopRuntime`), rewards joined in batches and the live model continued and swapped in every
`every` decisions (what the freshness track does), with the learner's example builder."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np

from decision_service.decide import decide
from decision_service.rank_input import RankInput
from decision_service.runtime import LoopRuntime, explorer_for
from evaluation.simulator import Simulator, SimulatorConfig
from explore import Action
from learn.examples import LineBuilder
from log.loops import LoopConfig
from log.training_reads import JoinedDecision
from policies import VWPolicy

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def simulated_share(
    config: LoopConfig, *, rounds: int, seed: int, every: int = 50, last: float = 0.2
) -> float:
    """The served expected reward over the last `last` share of `rounds` decisions divided by
    the oracle's (the simulator's exact click probabilities). The sampling key is derived from
    `seed` (a `LoopConfig` draws a random one), so a run is a function of its arguments."""
    config = replace(config, sampling_key=hashlib.sha256(f"loop-sim-{seed}".encode()).digest())
    sim = Simulator(
        SimulatorConfig(
            seed=seed, n_items=40, n_actions_per_request=6, n_users=300, affinity_scale=4.0
        )
    )
    rng = np.random.default_rng(seed)
    batch = sim.sample_batch(rounds, rng)
    q_all = sim.expected_reward(batch)
    args = config.model_args
    learner = VWPolicy(args)
    live = VWPolicy(args)
    runtime = LoopRuntime("sim", config, T0, explorer_for(config, live), live)
    builder = LineBuilder()
    pending: list[JoinedDecision] = []
    served = np.empty(rounds)
    best = np.empty(rounds)
    for i in range(rounds):
        if i and i % every == 0:
            for event in pending:
                for lines in builder.event_lines(event):
                    learner.learn_lines(lines)
            pending.clear()
            live.close()
            live = VWPolicy(args, model=learner.save(), version=f"v{i}")
            runtime = LoopRuntime("sim", config, T0, explorer_for(config, live), live)
        items = sim.batch_items(batch, i)
        actions = [Action(it.id, dict(it.features)) for it in items]
        context = dict(sim.batch_context(batch, i).features)
        rank = RankInput(f"e{i}", context, actions, [], None, False)
        record = decide(rank, {"i": i}, runtime, T0, f"e{i}")
        q = q_all[i, : len(items)]
        chosen = [a.id for a in actions].index(record.chosen)
        served[i] = q[chosen]
        best[i] = q.max()
        reward = float(rng.random() < q[chosen])
        pending.append(JoinedDecision(record, {0: reward}, i + 1, T0))
    live.close()
    learner.close()
    tail = max(1, math.ceil(rounds * last))
    return float(served[-tail:].sum() / best[-tail:].sum())
