"""Confidence intervals and sequences for the mean of per-event estimator terms.

Every function takes ``terms`` of shape (n,) or (n, k) (k estimators evaluated on the same events)
and returns ``(low, high)`` arrays of shape ``terms.shape[1:]``. What each one guarantees:

``normal``
    Mean +- z * sd / sqrt(n). Asymptotic (CLT): coverage tends to 1 - alpha as n grows, for i.i.d.
    terms with finite variance. One look at a fixed n.
``bootstrap``
    Percentile bootstrap of the mean, Poisson resampling weights (Hanley & MacGibbon 2006;
    Chamandy et al. 2012), seeded and vectorised over replicates and columns (all columns share
    the resampling weights, so differences between columns stay paired). Asymptotic like
    ``normal``, and it follows the skewness of the terms. For n > ``max_units`` the events are
    first pooled into ``max_units`` equal random buckets (one seeded permutation) and the bucket
    means are resampled, which keeps the variance and the skewness of the event-level bootstrap
    while costing O(n + max_units * n_boot). One look.
``bernstein``
    Empirical Bernstein bound (Maurer & Pontil 2009, Thm 4), two-sided with alpha/2 per side.
    Finite-sample: coverage >= 1 - alpha for every n >= 2, for i.i.d. terms inside ``bounds``.
    Conservative. One look.
``cs``
    Anytime-valid confidence sequence: the predictable plug-in empirical-Bernstein sequence of
    Waudby-Smith & Ramdas (2023, "Estimating means of bounded random variables by betting",
    Thm 2), with its running intersection. Time-uniform: P(for all t, mean in C_t) >= 1 - alpha
    for terms inside ``bounds`` whose conditional mean given the past is constant (i.i.d. events,
    or adaptively logged events with correct propensities), so the data may be looked at after
    every event and the evaluation stopped at any time. :func:`confidence_sequence` returns the
    whole sequence (events in logged order); as an interval, the value at the last event.

``bernstein`` and ``cs`` require ``bounds``: a priori bounds on every term, known before seeing
the data, never the observed range of the sample (with the observed range a heavy-tailed sample
that happens to miss its rare large terms gets a range, hence an interval, far too small: about
80% coverage at nominal 95%; and all-equal terms got a zero-width interval). For IPS with rewards
in ``[r_min, r_max]`` the terms lie in ``[min(0, W r_min), max(0, W r_max)]`` where ``W`` bounds
the importance weights (the target's largest probability over the logging policy's smallest
propensity); :func:`evaluation.ope.term_bounds` gives them for every estimator. The width then
comes from the a priori range as well as the data: never 0 unless the bounds are a single point
(then the mean is known). Linearised self-normalised terms have no a priori bounds (they depend
on the sample's mean weight), and terms from a reward model fitted on the same events are not
exactly i.i.d.; for those the finite-sample and time-uniform guarantees are not exact.

Drift: the running intersection of ``cs`` is empty only when some interval of the sequence missed
the mean, which has probability <= alpha when the terms' conditional mean is constant. On data
that violate that (e.g. a mean that drifts) it can happen; then the sequence keeps, from that
event on, the last non-empty intersection (already inside the bounds) instead of failing. On the
event that every interval of the sequence contains the mean (probability >= 1 - alpha under the
model) the intersection never empties, so this changes nothing there and the guarantee stands; on
drifting data no mean is constant and no interval can promise coverage of one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtri

from evaluation.validation import check_finite

__all__ = [
    "DEFAULT_MAX_UNITS",
    "DEFAULT_N_BOOT",
    "INTERVALS",
    "as_generator",
    "bernstein_interval",
    "bootstrap_interval",
    "bootstrap_replicates",
    "confidence_interval",
    "confidence_sequence",
    "cs_interval",
    "dispatch_interval",
    "normal_interval",
]

FloatArray = NDArray[np.float64]
Seed = int | np.random.Generator | None

INTERVALS = ("bootstrap", "normal", "bernstein", "cs")
"""Names accepted by ``interval=``."""

DEFAULT_N_BOOT = 1000
DEFAULT_MAX_UNITS = 16384
_CHUNK = 4096  # resampling units per block: memory is n_boot * _CHUNK * 4 bytes
_CS_BLOCK = 16384  # events per block of the confidence sequence
_CS_LAMBDA_CAP = 0.5  # the constant c of the plug-in betting fraction (Waudby-Smith & Ramdas)


def _rows(terms: Any) -> tuple[FloatArray, bool]:
    """Terms as a C-contiguous (k, n) float64 array (one row per column), and whether 1-D."""
    if isinstance(terms, str | bytes) or np.ndim(terms) not in (1, 2):
        raise ValueError(
            f"terms must be a 1-D or 2-D array of finite numbers, got ndim {np.ndim(terms)}"
        )
    ndim = np.ndim(terms)
    t = check_finite(terms, "terms", ndim=ndim)
    if t.shape[0] < 2:
        raise ValueError(f"terms must hold at least 2 events to form an interval, got {t.shape[0]}")
    return (t[None, :], True) if ndim == 1 else (np.ascontiguousarray(t.T), False)


def _out(low: FloatArray, high: FloatArray, squeeze: bool) -> tuple[FloatArray, FloatArray]:
    return (low[0], high[0]) if squeeze else (low, high)


def _check_alpha(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return float(alpha)


def as_generator(seed: Seed) -> np.random.Generator:
    """A numpy Generator from a seed, a Generator (returned as is) or None (fresh entropy)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _normal(t: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray]:
    z = float(ndtri(1.0 - _check_alpha(alpha) / 2.0))
    mean = t.mean(axis=1)
    half = z * t.std(axis=1, ddof=1) / math.sqrt(t.shape[1])
    return mean - half, mean + half


def normal_interval(terms: Any, *, alpha: float = 0.05) -> tuple[FloatArray, FloatArray]:
    """CLT interval mean +- z_{1-alpha/2} * sd / sqrt(n) (sd with ddof=1)."""
    t, squeeze = _rows(terms)
    return _out(*_normal(t, alpha), squeeze)


@functools.cache
def _poisson_table() -> NDArray[np.float32]:
    """Poisson(1) quantile at the midpoints of 65536 equal cells: uint16 -> resampling count."""
    k = np.arange(20)
    pmf = np.exp(-1.0) / np.cumprod(np.maximum(k, 1))
    cdf = np.cumsum(pmf)
    u = (np.arange(65536) + 0.5) / 65536.0
    return np.searchsorted(cdf, u).astype(np.float32)


def _check_int(x: Any, name: str, minimum: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int | np.integer) or int(x) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {x!r}")
    return int(x)


def _replicates(t: FloatArray, n_boot: int, rng: Seed, max_units: int) -> FloatArray:
    """(n_boot, k) Poisson-bootstrap replicates of the row means of the (k, n) array ``t``."""
    n_boot = _check_int(n_boot, "n_boot", 10)
    max_units = _check_int(max_units, "max_units", 100)
    gen = as_generator(rng)
    k, n = t.shape
    mean = t.mean(axis=1)
    if n <= max_units:
        sums, sizes = t, np.ones(n)
    else:  # random equal buckets of events; their sums are i.i.d. resampling units
        bucket = gen.permutation(n) % max_units
        sizes = np.bincount(bucket, minlength=max_units).astype(np.float64)
        sums = np.stack([np.bincount(bucket, weights=row, minlength=max_units) for row in t])
    # Centre before float32 so that a large offset does not eat the precision of the deviations.
    dev = np.vstack([sums - mean[:, None] * sizes, sizes]).T.astype(np.float32)
    table = _poisson_table()
    acc = np.zeros((n_boot, k + 1))
    for start in range(0, dev.shape[0], _CHUNK):
        block = dev[start : start + _CHUNK]
        u = gen.integers(0, 65536, size=(n_boot, block.shape[0]), dtype=np.uint16)
        acc += table[u] @ block
    weight = acc[:, -1:]
    weight[weight == 0.0] = 1.0  # an empty resample (tiny n only): deviation 0
    return mean + acc[:, :-1] / weight


def bootstrap_replicates(
    terms: Any,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    rng: Seed = None,
    max_units: int = DEFAULT_MAX_UNITS,
) -> FloatArray:
    """Poisson-bootstrap replicates of the mean: shape (n_boot,) or (n_boot, k)."""
    t, squeeze = _rows(terms)
    reps = _replicates(t, n_boot, rng, max_units)
    return reps[:, 0] if squeeze else reps


def _bootstrap(
    t: FloatArray, alpha: float, n_boot: int, rng: Seed, max_units: int
) -> tuple[FloatArray, FloatArray]:
    a = _check_alpha(alpha)
    reps = _replicates(t, n_boot, rng, max_units)
    low, high = np.quantile(reps, [a / 2.0, 1.0 - a / 2.0], axis=0)
    return low, high


def bootstrap_interval(
    terms: Any,
    *,
    alpha: float = 0.05,
    n_boot: int = DEFAULT_N_BOOT,
    rng: Seed = None,
    max_units: int = DEFAULT_MAX_UNITS,
) -> tuple[FloatArray, FloatArray]:
    """Percentile bootstrap interval of the mean (see the module docstring)."""
    t, squeeze = _rows(terms)
    return _out(*_bootstrap(t, alpha, n_boot, rng, max_units), squeeze)


_BOUNDS_RTOL = 1e-9  # terms this far (relative to the span) outside the bounds are rounding


def _range(
    t: FloatArray, bounds: tuple[float, float] | None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(terms, low, span): the terms clipped into the a priori ``bounds`` (a copy only when some
    are outside by rounding error), and the bounds' low end and span per row.

    Terms outside the bounds by more than rounding error raise: the bounds were not a priori
    bounds of these terms.
    """
    if bounds is None:
        raise ValueError(
            "bounds must be given for the bernstein and cs intervals: a priori (low, high) bounds "
            "on every term, known before seeing the data (see evaluation.ope.term_bounds), got None"
        )
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(
            f"bounds must be finite (low, high) with low <= high, got {bounds!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"bounds must be finite (low, high) with low <= high, got {bounds}")
    slack = _BOUNDS_RTOL * max(hi - lo, abs(lo), abs(hi), 1.0)
    t_min, t_max = float(t.min()), float(t.max())
    if t_min < lo - slack or t_max > hi + slack:
        raise ValueError(
            f"bounds must contain every term, got bounds {bounds} for terms in [{t_min}, {t_max}]"
        )
    if t_min < lo or t_max > hi:
        t = np.clip(t, lo, hi)
    return t, np.full(t.shape[0], lo), np.full(t.shape[0], hi - lo)


def _bernstein(
    t: FloatArray, alpha: float, bounds: tuple[float, float] | None
) -> tuple[FloatArray, FloatArray]:
    a = _check_alpha(alpha)
    t, low, span = _range(t, bounds)
    # span is 0 only for point bounds: every term equals low, the mean is known exactly.
    safe = np.where(span > 0.0, span, 1.0)
    n = t.shape[1]
    log_term = math.log(4.0 / a)
    var01 = t.var(axis=1, ddof=1) / safe**2  # variance of the terms rescaled to [0, 1]
    half = np.sqrt(2.0 * var01 * log_term / n) + 7.0 * log_term / (3.0 * (n - 1))
    mean01 = (t.mean(axis=1) - low) / safe
    return (
        low + span * np.clip(mean01 - half, 0.0, 1.0),
        low + span * np.clip(mean01 + half, 0.0, 1.0),
    )


def bernstein_interval(
    terms: Any, *, alpha: float = 0.05, bounds: tuple[float, float]
) -> tuple[FloatArray, FloatArray]:
    """Empirical Bernstein interval (Maurer & Pontil 2009), alpha/2 per side.

    ``bounds``: a priori (low, high) bounds on every term (required; see the module docstring).
    """
    t, squeeze = _rows(terms)
    return _out(*_bernstein(t, alpha, bounds), squeeze)


def _sequence(
    t: FloatArray, alpha: float, bounds: tuple[float, float] | None
) -> Iterator[tuple[FloatArray, FloatArray]]:
    """Blocks of the (k, n) lower and upper confidence sequences of the rows of ``t``.

    Predictable plug-in empirical Bernstein (Waudby-Smith & Ramdas 2023, Thm 2) on the terms
    rescaled to [0, 1] by the a priori ``bounds``, computed over blocks of events with the running
    sums carried over, so memory does not grow with n. Running intersection, starting from the
    bounds themselves; once it would be empty (the data are not in the model: see the module
    docstring) a row keeps its last non-empty intersection for the rest of the events.
    """
    a = _check_alpha(alpha)
    t, low, span = _range(t, bounds)
    safe = np.where(span > 0.0, span, 1.0)[:, None]
    k, n = t.shape
    log_term = math.log(2.0 / a)
    sum_x, sum_sq, sum_lam, sum_lam_x, sum_v_psi = (np.zeros((k, 1)) for _ in range(5))
    mu_last, sigma2_last = np.full((k, 1), 0.5), np.full((k, 1), 0.25)
    lo_last, hi_last = np.zeros((k, 1)), np.ones((k, 1))
    frozen = np.zeros((k, 1), dtype=bool)  # rows whose intersection would have been empty
    for start in range(0, n, _CS_BLOCK):
        x = (t[:, start : start + _CS_BLOCK] - low[:, None]) / safe
        time = np.arange(start + 1, start + x.shape[1] + 1, dtype=np.float64)
        cum_x = sum_x + np.cumsum(x, axis=1)
        mu = (0.5 + cum_x) / (time + 1.0)
        cum_sq = sum_sq + np.cumsum((x - mu) ** 2, axis=1)
        sigma2 = (0.25 + cum_sq) / (time + 1.0)
        mu_prev = np.hstack([mu_last, mu[:, :-1]])
        sigma2_prev = np.hstack([sigma2_last, sigma2[:, :-1]])
        lam = np.sqrt((2.0 * log_term) / (sigma2_prev * (time * np.log1p(time))))
        np.minimum(lam, _CS_LAMBDA_CAP, out=lam)
        # v_i * psi_E(lambda_i) with v_i = 4 (x_i - mu_{i-1})^2, psi_E = (-log(1-l) - l) / 4
        cum_v_psi = sum_v_psi + np.cumsum((x - mu_prev) ** 2 * (-np.log1p(-lam) - lam), axis=1)
        cum_lam = sum_lam + np.cumsum(lam, axis=1)
        cum_lam_x = sum_lam_x + np.cumsum(lam * x, axis=1)
        centre = cum_lam_x / cum_lam
        radius = (log_term + cum_v_psi) / cum_lam
        # Frozen rows intersect with nothing new: their raw intervals are replaced by the whole
        # range, which leaves the carried intersection as it is.
        raw_lo = np.where(frozen, 0.0, centre - radius)
        raw_hi = np.where(frozen, 1.0, centre + radius)
        run_lo = np.maximum.accumulate(np.hstack([lo_last, raw_lo]), axis=1)
        run_hi = np.minimum.accumulate(np.hstack([hi_last, raw_hi]), axis=1)
        # run_lo only rises and run_hi only falls, so once empty a row stays empty: take, at
        # every event, the intersection at the last index where it was not (index 0, the carried
        # state, never is).
        nonempty = run_lo <= run_hi
        last = np.maximum.accumulate(np.where(nonempty, np.arange(x.shape[1] + 1), 0), axis=1)
        lo = np.take_along_axis(run_lo, last, axis=1)[:, 1:]
        hi = np.take_along_axis(run_hi, last, axis=1)[:, 1:]
        frozen |= ~nonempty[:, -1:]
        sum_x, sum_sq, sum_v_psi = cum_x[:, -1:], cum_sq[:, -1:], cum_v_psi[:, -1:]
        sum_lam, sum_lam_x = cum_lam[:, -1:], cum_lam_x[:, -1:]
        mu_last, sigma2_last = mu[:, -1:], sigma2[:, -1:]
        lo_last, hi_last = lo[:, -1:], hi[:, -1:]
        yield low[:, None] + span[:, None] * lo, low[:, None] + span[:, None] * hi


def confidence_sequence(
    terms: Any, *, alpha: float = 0.05, bounds: tuple[float, float]
) -> tuple[FloatArray, FloatArray]:
    """Anytime-valid confidence sequence for the mean, one (low, high) per prefix of the events.

    Returns arrays of shape ``terms.shape``: entry t is the interval after the first t + 1 events
    (running intersection, so the intervals are nested, always with low <= high). With probability
    >= 1 - alpha every one contains the mean (see the module docstring for the conditions, and for
    what happens on drifting data). ``bounds``: a priori bounds on every term (required).
    """
    t, squeeze = _rows(terms)
    blocks = list(_sequence(t, alpha, bounds))
    lo = np.concatenate([b[0] for b in blocks], axis=1)
    hi = np.concatenate([b[1] for b in blocks], axis=1)
    return (lo[0], hi[0]) if squeeze else (lo.T, hi.T)


def _cs_last(
    t: FloatArray, alpha: float, bounds: tuple[float, float] | None
) -> tuple[FloatArray, FloatArray]:
    lo = hi = np.empty(0)
    for lo_block, hi_block in _sequence(t, alpha, bounds):
        lo, hi = lo_block[:, -1], hi_block[:, -1]
    return lo, hi


def cs_interval(
    terms: Any, *, alpha: float = 0.05, bounds: tuple[float, float]
) -> tuple[FloatArray, FloatArray]:
    """The confidence sequence at the last event (valid even if this look was chosen by peeking).

    ``bounds``: a priori bounds on every term (required).
    """
    t, squeeze = _rows(terms)
    return _out(*_cs_last(t, alpha, bounds), squeeze)


def dispatch_interval(
    t: FloatArray,
    kind: str,
    alpha: float,
    rng: Seed,
    n_boot: int,
    bounds: tuple[float, float] | None,
) -> tuple[FloatArray, FloatArray]:
    """Interval ``kind`` of the row means of a validated C-contiguous (k, n) array: (k,), (k,)."""
    if kind == "bootstrap":
        return _bootstrap(t, alpha, n_boot, rng, DEFAULT_MAX_UNITS)
    if kind == "normal":
        return _normal(t, alpha)
    if kind == "bernstein":
        return _bernstein(t, alpha, bounds)
    if kind == "cs":
        return _cs_last(t, alpha, bounds)
    raise ValueError(f"interval must be one of {list(INTERVALS)}, got {kind!r}")


def confidence_interval(
    terms: Any,
    kind: str = "bootstrap",
    *,
    alpha: float = 0.05,
    rng: Seed = None,
    n_boot: int = DEFAULT_N_BOOT,
    bounds: tuple[float, float] | None = None,
) -> tuple[FloatArray, FloatArray]:
    """The interval named ``kind`` (one of :data:`INTERVALS`) of the mean of ``terms``.

    ``bounds`` (a priori bounds on every term) are required by ``bernstein`` and ``cs`` and
    ignored by the others.
    """
    t, squeeze = _rows(terms)
    return _out(*dispatch_interval(t, kind, alpha, rng, n_boot, bounds), squeeze)
