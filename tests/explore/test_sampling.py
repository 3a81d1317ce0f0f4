"""Seeded sampling of one action: determinism, the distribution, masks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from scipy.stats import chisquare

from explore import mask_pmf, rng_for, sample_index

N_DRAWS = 50_000
P_MIN = 1e-3


def draws(rng: np.random.Generator, n: int = 5) -> list[float]:
    return rng.random(n).tolist()


# --- rng_for ----------------------------------------------------------------------------------
K7 = bytes(range(32))
K8 = bytes(range(1, 33))


def test_rng_for_same_inputs_same_stream() -> None:
    assert draws(rng_for(K7, "evt-1")) == draws(rng_for(K7, "evt-1"))


def test_rng_for_different_inputs_differ() -> None:
    base = draws(rng_for(K7, "evt-1"))
    assert draws(rng_for(K7, "evt-2")) != base
    assert draws(rng_for(K8, "evt-1")) != base


def test_rng_for_derivation_is_pinned() -> None:
    # Replays across versions depend on this exact derivation.
    digest = hashlib.blake2b(b"evt-1", key=K7, person=b"ds-sample").digest()
    expected = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    assert draws(rng_for(K7, "evt-1")) == draws(expected)


def test_rng_for_is_stable_across_processes() -> None:
    code = (
        "from explore import rng_for; print(rng_for(bytes(range(32)), 'évt-ü').random(3).tolist())"
    )
    outs = set()
    for hash_seed in ("0", "123"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        ).stdout.strip()
        outs.add(out)
    assert outs == {str(draws(rng_for(K7, "évt-ü"), 3))}


@pytest.mark.parametrize(
    ("key", "event_id", "match"),
    [
        (1, "e", r"^key must be 32 bytes, got int"),
        (True, "e", r"^key must be 32 bytes, got bool"),
        (K7[:31], "e", r"^key must be 32 bytes, got 31 bytes"),
        (K7, "", r"^event_id must be a non-empty string, got ''"),
        (K7, 5, r"^event_id must be a non-empty string, got int"),
    ],
)
def test_rng_for_rejects(key: Any, event_id: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rng_for(key, event_id)


# --- sample_index -----------------------------------------------------------------------------


def test_sample_index_matches_pmf() -> None:
    pmf = np.array([0.4, 0.0, 0.25, 0.15, 0.1, 0.07, 0.03, 0.0])
    rng = np.random.default_rng(20260101)
    counts = np.bincount([sample_index(pmf, rng) for _ in range(N_DRAWS)], minlength=pmf.size)
    assert counts[pmf == 0].sum() == 0
    support = pmf > 0
    result = chisquare(counts[support], N_DRAWS * pmf[support])
    assert result.pvalue > P_MIN


def test_sample_index_uses_one_uniform() -> None:
    pmf = np.array([0.2, 0.3, 0.5])
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    sample_index(pmf, rng_a)
    rng_b.random()
    assert rng_a.random() == rng_b.random()


class FixedUniform:
    """A stand-in generator whose `random()` returns a chosen value."""

    def __init__(self, u: float) -> None:
        self.u = u

    def random(self) -> float:
        return self.u


@pytest.mark.parametrize(
    ("pmf", "u", "expected"),
    [
        ([0.0, 1.0], 0.0, 1),  # leading zero is skipped even at u = 0
        ([0.5, 0.5, 0.0], np.nextafter(1.0, 0.0), 1),  # never the trailing zero
        ([0.1] * 10 + [0.0, 0.0], np.nextafter(1.0, 0.0), 9),  # cumsum round-off at the end
        ([0.3, 0.0, 0.0, 0.7], 0.3, 3),  # boundary skips the zero run
        ([0.3, 0.0, 0.0, 0.7], 0.2999, 0),
        ([1.0], 0.999, 0),
        # u = 1 is outside [0, 1), but it drives the search past the end of the cumsum.
        ([0.5, 0.5, 0.0, 0.0], 1.0, 1),
    ],
)
def test_sample_index_never_returns_zero_probability(
    pmf: list[float], u: float, expected: int
) -> None:
    assert sample_index(np.array(pmf), FixedUniform(u)) == expected  # type: ignore[arg-type]


def test_sample_index_with_cumsum_short_of_one() -> None:
    # Sums to 1 - 3e-7: the last positive index is still reachable and zero ones are not.
    pmf = np.array([0.5, 0.5 - 3e-7, 0.0])
    assert sample_index(pmf, FixedUniform(np.nextafter(1.0, 0.0))) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pmf", "match"),
    [
        ([], r"^pmf must be a non-empty 1-D array .* shape \(0,\)"),
        ([0.5, 0.6], r"^pmf must be .* got sum 1.1"),
        ([1.5, -0.5], r"^pmf must be .* got -0.5 at index 1"),
        ([np.nan, 1.0], r"^pmf must be .* got nan at index 0"),
    ],
)
def test_sample_index_rejects(pmf: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample_index(np.array(pmf), np.random.default_rng(0))


# --- mask_pmf ---------------------------------------------------------------------------------


def test_mask_pmf_renormalises() -> None:
    pmf = np.array([0.4, 0.3, 0.2, 0.1])
    out = mask_pmf(pmf, np.array([True, False, True, False]))
    np.testing.assert_allclose(out, [2 / 3, 0.0, 1 / 3, 0.0])
    np.testing.assert_array_equal(pmf, [0.4, 0.3, 0.2, 0.1])


def test_mask_pmf_masked_samples_match() -> None:
    pmf = np.array([0.1, 0.2, 0.3, 0.4])
    allowed = np.array([True, True, False, True])
    masked = mask_pmf(pmf, allowed)
    rng = np.random.default_rng(99)
    counts = np.bincount([sample_index(masked, rng) for _ in range(20_000)], minlength=4)
    assert counts[2] == 0
    assert chisquare(counts[allowed], 20_000 * masked[allowed]).pvalue > P_MIN


@pytest.mark.parametrize(
    ("pmf", "allowed", "match"),
    [
        ([0.5, 0.5], [False, False], r"^allowed must allow at least one action, got all False"),
        ([1.0, 0.0], [False, True], r"^allowed must allow at least one action with probability"),
        ([0.5, 0.5], [1, 0], r"^allowed must be a boolean array of shape \(2,\), got dtype int"),
        ([0.5, 0.5], [True], r"^allowed must be a boolean array .* shape \(1,\)"),
        ([0.5, 0.4], [True, True], r"^pmf must be .* got sum"),
    ],
)
def test_mask_pmf_rejects(pmf: list[float], allowed: list[Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mask_pmf(np.array(pmf), np.array(allowed))
