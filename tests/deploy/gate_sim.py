"""Simulated held-out logs for the gate's statistical tests.

A world: C contexts (uniform), K actions, Bernoulli rewards of mean ``mu[x, a]``. Live and the
candidate are epsilon-greedy (as served) on their own greedy action per context; live logged
every event (its pmf is the logging propensity). The candidate is scored off-policy with the
doubly robust estimator and a reward model fitted beforehand on an independent sample (so the
terms are i.i.d., the confidence sequence's setting), paired with live on the same events,
exactly as the evaluation runner does (`evaluation.estimators`, `evaluation.intervals`).

A guardrail (a negative signal such as "report") has its own rate ``g[x, a]``; its rate under a
policy is estimated by IPS of the indicator, paired with live the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from deploy.gate import GateNumbers, decide
from deploy.interval import Interval
from evaluation.estimators import EventStats, terms_from_stats
from evaluation.intervals import confidence_sequence
from evaluation.ope import term_bounds
from log.deploy_settings import GateSettings

K, C, EPS = 4, 8, 0.2
Array = NDArray[np.float64]


def eps_greedy(greedy: NDArray[np.int64]) -> Array:
    p = np.full((C, K), EPS / K)
    p[np.arange(C), greedy] += 1.0 - EPS
    return p


def value(mu: Array, pmf: Array) -> float:
    return float((pmf * mu).sum(axis=1).mean())


@dataclass(frozen=True)
class World:
    mu: Array
    live: Array  # pmf per context
    candidate: Array
    guardrail: Array  # rate of the negative signal per (context, action)

    @property
    def lift(self) -> float:
        return value(self.mu, self.candidate) / value(self.mu, self.live) - 1.0


def equal_world(rng: np.random.Generator) -> World:
    """Candidate and live greedy on different actions of equal mean: equal values."""
    mu = rng.uniform(0.1, 0.4, size=(C, K))
    gl = rng.integers(0, K, C)
    gc = (gl + 1 + rng.integers(0, K - 1, C)) % K
    top = rng.uniform(0.6, 0.8, C)
    mu[np.arange(C), gl] = top
    mu[np.arange(C), gc] = top
    return World(mu, eps_greedy(gl), eps_greedy(gc), np.full((C, K), 0.02))


def better_world(
    rng: np.random.Generator, lift: float = 0.10, guardrail_increase: float = 0.0
) -> World:
    """The candidate's value is (1 + lift) x live's; its greedy actions raise the guardrail's
    rate by about `guardrail_increase` (as served: x (1 - EPS) on the greedy action)."""
    mu = rng.uniform(0.1, 0.4, size=(C, K))
    gl = rng.integers(0, K, C)
    gc = (gl + 1 + rng.integers(0, K - 1, C)) % K
    mu[np.arange(C), gl] = 0.6
    pl, pc = eps_greedy(gl), eps_greedy(gc)

    def at(t: float, pmf: Array) -> float:
        m = mu.copy()
        m[np.arange(C), gc] = t
        return value(m, pmf)

    # both values are linear in the candidate's greedy mean t: solve V_c(t) = (1 + lift) V_l(t)
    a0, a1, b0, b1 = at(0.0, pc), at(1.0, pc), at(0.0, pl), at(1.0, pl)
    t = ((1 + lift) * b0 - a0) / ((a1 - a0) - (1 + lift) * (b1 - b0))
    assert 0.0 < t < 1.0
    mu[np.arange(C), gc] = t
    g = np.full((C, K), 0.02)
    g[np.arange(C), gc] += guardrail_increase / (1.0 - EPS)  # served x (1 - EPS) more
    world = World(mu, pl, pc, g)
    assert abs(world.lift - lift) < 1e-9
    return world


@dataclass(frozen=True)
class Stream:
    """Per-event terms of one simulated held-out stream, in logged order."""

    reward_diff: Array  # DR terms candidate - live
    reward_bounds: tuple[float, float]
    candidate_terms: Array
    live_terms: Array
    candidate_bounds: tuple[float, float]
    live_bounds: tuple[float, float]
    weight: Array
    guardrail_diff: Array  # IPS terms of the guardrail indicator, candidate - live
    guardrail_bounds: tuple[float, float]


def simulate(world: World, n: int, rng: np.random.Generator) -> Stream:
    # the reward model: per (context, action) means of 2000 earlier uniformly logged events
    n0 = 2000
    x0, a0 = rng.integers(0, C, n0), rng.integers(0, K, n0)
    r0 = (rng.random(n0) < world.mu[x0, a0]).astype(float)
    sums, counts = np.zeros((C, K)), np.zeros((C, K))
    np.add.at(sums, (x0, a0), r0)
    np.add.at(counts, (x0, a0), 1.0)
    q = (sums + 0.5) / (counts + 1.0)

    x = rng.integers(0, C, n)
    a = (rng.random(n)[:, None] > np.cumsum(world.live[x], axis=1)).sum(axis=1)
    r = (rng.random(n) < world.mu[x, a]).astype(float)
    g = (rng.random(n) < world.guardrail[x, a]).astype(float)
    pscore = world.live[x, a]

    def stats(pmf: Array, outcome: Array) -> EventStats:
        return EventStats(pmf[x, a] / pscore, outcome, q[x, a], (pmf[x] * q[x]).sum(axis=1))

    w_bound = float((world.candidate / world.live).max())
    bc = term_bounds("dr", reward_range=(0.0, 1.0), weight_bound=w_bound)
    bl = term_bounds("dr", reward_range=(0.0, 1.0), weight_bound=1.0)
    tc = terms_from_stats("dr", stats(world.candidate, r))
    tl = terms_from_stats("dr", stats(world.live, r))
    gc = terms_from_stats("ips", stats(world.candidate, g))
    gl = terms_from_stats("ips", stats(world.live, g))
    return Stream(
        reward_diff=tc - tl,
        reward_bounds=(bc[0] - bl[1], bc[1] - bl[0]),
        candidate_terms=tc,
        live_terms=tl,
        candidate_bounds=bc,
        live_bounds=bl,
        weight=world.candidate[x, a] / pscore,
        guardrail_diff=gc - gl,
        guardrail_bounds=(0.0 - 1.0, w_bound - 0.0),
    )


def _running(
    terms: Array, bounds: tuple[float, float], alpha: float, sequential: bool
) -> tuple[Array, Array, Array]:
    """(mean, low, high) after each event: the confidence sequence, or (for the contrast) the
    one-look normal interval recomputed at every event."""
    n = np.arange(1, terms.size + 1, dtype=float)
    mean = np.cumsum(terms) / n
    if sequential:
        low, high = confidence_sequence(terms, alpha=alpha, bounds=bounds)
        return mean, low, high
    var = np.maximum(np.cumsum(terms**2) / n - mean**2, 0.0) * n / np.maximum(n - 1.0, 1.0)
    half = 1.959963984540054 * np.sqrt(var / n)
    return mean, mean - half, mean + half


def gate_looks(
    stream: Stream,
    looks: list[int],
    settings: GateSettings,
    *,
    guardrail: str | None = None,
    sequential: bool = True,
) -> list[tuple[int, str, str]]:
    """The gate's decision at each look (events seen so far), until it stops pending."""
    alpha = 1.0 - settings.confidence
    mean, low, high = _running(stream.reward_diff, stream.reward_bounds, alpha, sequential)
    g_run = None
    if guardrail is not None:
        g_run = _running(stream.guardrail_diff, stream.guardrail_bounds, alpha, sequential)
    w = stream.weight
    sum_w, sum_w2, max_w = np.cumsum(w), np.cumsum(w**2), np.maximum.accumulate(w)
    out: list[tuple[int, str, str]] = []
    for n in looks:
        i = n - 1
        guardrails = {}
        if g_run is not None and guardrail is not None:
            guardrails[guardrail] = Interval(g_run[0][i], g_run[1][i], g_run[2][i])
        numbers = GateNumbers(
            n=n,
            difference=Interval(mean[i], low[i], high[i]),
            ess=float(sum_w[i] ** 2 / sum_w2[i]),
            max_weight=float(max_w[i]),
            support=1.0,
            guardrails=guardrails,
        )
        decision, reason = decide(numbers, settings)
        out.append((n, decision, reason))
        if decision != "pending":
            break
    return out
