"""Benchmark: off-policy evaluation of 1M logged events with 50 actions.

All seven bandit estimators (IPS, clipped IPS, SNIPS, DM, DR, SNDR, Switch-DR) with 95% intervals
and the weight diagnostics. The logs are streamed in chunks, as they would be read from the event
store: each chunk's (chunk, n_actions) matrices are reduced to four per-event vectors
(:class:`evaluation.EventStats`) and dropped, so memory is O(chunk * n_actions + n) rather than
O(n * n_actions), and the bootstrap works on at most 16,384 resampling units in blocks.

``seconds`` is the evaluation only (validation, reductions, estimators, intervals, diagnostics),
not the generation of the synthetic logs. Prints one JSON line:
``{"bench": "ope", "events", "actions", "seconds", "peak_rss_mb"}``; details go to stderr.

    .venv/bin/python -m benchmarks.ope [--events 1000000] [--actions 50] [--interval bootstrap]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from evaluation import ESTIMATORS, INTERVALS, Diagnostics, EventStats, evaluate_many
from evaluation.ope import BOUNDED_INTERVALS


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return x


def synthetic_chunks(
    n_events: int, n_actions: int, chunk: int, seed: int
) -> Iterator[dict[str, Any]]:
    """Logged events in chunks: softmax logging with 10% uniform exploration, a sharper target,
    Bernoulli rewards and a noisy reward model ``q_hat``."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_events, chunk):
        m = min(chunk, n_events - start)
        logits = rng.standard_normal((m, n_actions))
        q_true = 1.0 / (1.0 + np.exp(-logits))
        logging = 0.9 * _softmax(logits.copy()) + 0.1 / n_actions
        target = _softmax(2.0 * logits)
        cdf = np.cumsum(logging, axis=1)
        u = rng.random(m)[:, None] * cdf[:, -1:]
        action = np.minimum((cdf <= u).sum(axis=1), n_actions - 1)
        rows = np.arange(m)
        reward = (rng.random(m) < q_true[rows, action]).astype(np.float64)
        q_hat = np.clip(q_true + rng.normal(scale=0.1, size=q_true.shape), 0.0, 1.0)
        yield {
            "reward": reward,
            "action": action,
            "pscore": logging[rows, action],
            "action_dist": target,
            "q_hat": q_hat,
        }


def run(n_events: int, n_actions: int, interval: str, chunk: int, seed: int) -> dict[str, Any]:
    elapsed = 0.0
    parts = []
    for data in synthetic_chunks(n_events, n_actions, chunk, seed):
        t0 = time.perf_counter()
        parts.append(EventStats.from_arrays(**data))
        elapsed += time.perf_counter() - t0
        del data
    reduce_s = elapsed
    t0 = time.perf_counter()
    stats = EventStats.concatenate(parts)
    del parts
    # Bernstein and cs need a priori bounds (and leave out the self-normalised estimators,
    # which have none): rewards are Bernoulli, and 10% uniform logging caps every weight at
    # 1 / (0.1 / n_actions).
    bounded = interval in BOUNDED_INTERVALS
    estimates = evaluate_many(
        None if bounded else list(ESTIMATORS),
        stats=stats,
        interval=interval,
        alpha=0.05,
        seed=seed,
        reward_range=(0.0, 1.0) if bounded else None,
        weight_bound=10.0 * n_actions if bounded else None,
    )
    diag = Diagnostics.from_weights(stats.weight)
    elapsed += time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    for name, e in estimates.items():
        print(
            f"{name:>12} {e.value:.5f} [{e.ci_low:.5f}, {e.ci_high:.5f}] ess={e.ess:.0f}",
            file=sys.stderr,
        )
    print(f"diagnostics {json.dumps(diag.to_dict())}", file=sys.stderr)
    print(
        f"seconds: {reduce_s:.3f} validating and reducing the chunks, "
        f"{elapsed - reduce_s:.3f} estimators + {interval} intervals + diagnostics",
        file=sys.stderr,
    )
    return {
        "bench": "ope",
        "events": n_events,
        "actions": n_actions,
        "seconds": round(elapsed, 3),
        "peak_rss_mb": round(peak_mb, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--actions", type=int, default=50)
    parser.add_argument("--interval", choices=INTERVALS, default="bootstrap")
    parser.add_argument("--chunk", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(args.events, args.actions, args.interval, args.chunk, args.seed)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
