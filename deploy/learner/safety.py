"""The freshness track's cheap safety checks: a continuation of the live model against the live
model, on a sample of the newest joined events, before it is swapped in.

1. **Finite scores**: every score of the new version on the sample is finite.
2. **No collapse of the served distribution**: the entropy of the pmf the loop would serve with
   the new version (its scores through the loop's exploration), averaged over the sample, is
   at least `collapse_ratio` x the live version's.
3. **No significant loss of value**: the IPS value of the new version on the sample (the last
   window: the events it was just trained on) is not significantly below the live version's:
   the one-sided upper confidence bound (at the gate's confidence) of the paired difference
   new - live must be >= 0. The bound is the anytime-valid confidence sequence of
   :mod:`evaluation.intervals` (``cs``) with a priori bounds on the terms (the loop's reward
   range times the largest importance weight the sample's logged propensities allow): valid in
   finite samples, so the chance that a run stops the track although the new version is not
   worse is at most 1 - confidence. (A normal interval is not: two versions that agree on most
   events give a paired difference of mostly zeros, whose sample variance understates the
   heavy tail, and it flagged continuations that were not worse.) The sample is the events the
   new version learned, so the check is optimistic for it: it catches a broken update (a step
   that destroyed what the model knew), not a subtle regression. Candidates with another
   configuration go through the gate instead.

The sample holds only events served by the live arm (`policy_arm` "live"), whose logged pmf is
the live arm's conditional distribution: IPS on them is unbiased for that population. Fewer
than 2 usable events leave check 3 out (stated in the numbers). Pure functions: the scores are
computed by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from evaluation.intervals import cs_interval
from explore import Explorer

__all__ = ["SafetyNumbers", "SafetyVerdict", "SampleEvent", "check_safety", "entropy"]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class SampleEvent:
    """One logged event of the sample: both versions' scores over its candidates, the logged
    action's index among them, its logged probability and its reward."""

    new_scores: FloatArray
    live_scores: FloatArray
    action: int
    pscore: float
    reward: float


@dataclass(frozen=True)
class SafetyNumbers:
    """Every number behind a verdict (stored in the audit row, the alarm and the run)."""

    n_sample: int
    n_nonfinite: int
    entropy_new: float | None
    entropy_live: float | None
    collapse_ratio: float
    ips_new: float | None
    ips_live: float | None
    ips_difference: float | None
    ips_difference_upper: float | None
    confidence: float

    def to_json(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


@dataclass(frozen=True)
class SafetyVerdict:
    passed: bool
    reason: str
    numbers: SafetyNumbers


def entropy(pmf: FloatArray) -> float:
    """Shannon entropy (nats) of a pmf; zero-probability actions contribute nothing."""
    p = pmf[pmf > 0]
    return float(-(p * np.log(p)).sum())


def _upper(diff: FloatArray, confidence: float, bound: float) -> float:
    """One-sided upper confidence bound, at `confidence`, of the mean of `diff` whose terms lie
    in [-bound, bound] a priori (the two-sided sequence at 2 (1 - confidence))."""
    alpha = min(2.0 * (1.0 - confidence), 0.999)
    _low, high = cs_interval(diff, alpha=alpha, bounds=(-bound, bound))
    return float(high)


def check_safety(
    sample: Sequence[SampleEvent],
    explorer: Explorer,
    *,
    collapse_ratio: float,
    confidence: float,
    reward_range: tuple[float, float],
) -> SafetyVerdict:
    """The verdict of the three checks (module docstring) on `sample`; `reward_range`: the
    loop's (min_reward, max_reward)."""
    n = len(sample)
    nonfinite = sum(int((~np.isfinite(e.new_scores)).sum()) for e in sample)

    def numbers(**values: Any) -> SafetyNumbers:
        base: dict[str, Any] = {
            "n_sample": n,
            "n_nonfinite": nonfinite,
            "entropy_new": None,
            "entropy_live": None,
            "collapse_ratio": collapse_ratio,
            "ips_new": None,
            "ips_live": None,
            "ips_difference": None,
            "ips_difference_upper": None,
            "confidence": confidence,
        }
        base.update(values)
        return SafetyNumbers(**base)

    if nonfinite:
        return SafetyVerdict(
            False,
            f"non-finite scores: {nonfinite} scores of the new version on {n} events are not "
            "finite",
            numbers(),
        )
    if n == 0:
        return SafetyVerdict(True, "no event to check the new version on", numbers())
    new_pmfs = [np.asarray(explorer.pmf(e.new_scores), dtype=np.float64) for e in sample]
    live_pmfs = [np.asarray(explorer.pmf(e.live_scores), dtype=np.float64) for e in sample]
    h_new = float(np.mean([entropy(p) for p in new_pmfs]))
    h_live = float(np.mean([entropy(p) for p in live_pmfs]))
    reward = np.asarray([e.reward for e in sample])
    pscore = np.asarray([e.pscore for e in sample])
    w_new = np.asarray([p[e.action] for p, e in zip(new_pmfs, sample, strict=True)]) / pscore
    w_live = np.asarray([p[e.action] for p, e in zip(live_pmfs, sample, strict=True)]) / pscore
    t_new, t_live = reward * w_new, reward * w_live
    diff = t_new - t_live
    # a priori: each version's weight is in [0, 1 / pscore], so each IPS term lies in
    # [w_max * min(0, r_min), w_max * max(0, r_max)] and their difference within +- the span
    w_max = float((1.0 / pscore).max())
    r_lo, r_hi = reward_range
    span = w_max * (max(0.0, r_hi) - min(0.0, r_lo))
    upper = _upper(diff, confidence, span) if n >= 2 and span > 0 else None
    found = numbers(
        entropy_new=h_new,
        entropy_live=h_live,
        ips_new=float(t_new.mean()),
        ips_live=float(t_live.mean()),
        ips_difference=float(diff.mean()),
        ips_difference_upper=upper,
    )
    if h_new < collapse_ratio * h_live:
        return SafetyVerdict(
            False,
            f"collapse of the served distribution: mean entropy {h_new:.4g} < {collapse_ratio:g} "
            f"x the live version's {h_live:.4g}",
            found,
        )
    if upper is not None and upper < 0.0:
        return SafetyVerdict(
            False,
            f"IPS value significantly below the live version's: difference {diff.mean():.4g}, "
            f"upper {confidence:g} bound {upper:.4g} < 0 on {n} events",
            found,
        )
    return SafetyVerdict(True, "finite scores, no collapse, no significant loss of value", found)
