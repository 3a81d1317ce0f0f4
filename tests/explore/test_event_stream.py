"""EventStream: the deterministic uniforms the service samples decisions from."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from explore import EventStream, event_stream, sample_index, sample_slate


def draws(seed: int, event_id: str, n: int) -> list[float]:
    stream = event_stream(seed, event_id)
    return [stream.random() for _ in range(n)]


def test_same_inputs_same_draws_in_another_process() -> None:
    code = (
        "from explore import event_stream as e; s = e(7, 'evt-1');"
        "print([s.random() for _ in range(3)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    ).stdout
    assert out.strip() == str(draws(7, "evt-1", 3))


def test_different_events_and_seeds_differ() -> None:
    assert draws(7, "a", 4) != draws(7, "b", 4)
    assert draws(7, "a", 4) != draws(8, "a", 4)
    assert len(set(draws(7, "a", 100))) == 100


def test_uniform_on_unit_interval() -> None:
    values = np.array([event_stream(3, f"e{i}").random() for i in range(20_000)])
    assert values.min() >= 0.0 and values.max() < 1.0
    assert stats.kstest(values, "uniform").pvalue > 1e-3


def test_sampling_matches_pmf() -> None:
    pmf = np.array([0.5, 0.05, 0.3, 0.0, 0.15])
    counts = np.bincount(
        [sample_index(pmf, event_stream(11, f"e{i}")) for i in range(30_000)], minlength=5
    )
    assert counts[3] == 0
    keep = pmf > 0
    assert stats.chisquare(counts[keep], 30_000 * pmf[keep]).pvalue > 1e-3


def test_slate_with_event_stream() -> None:
    uniform = lambda _k, remaining: np.full(remaining.size, 1 / remaining.size)  # noqa: E731
    slate = sample_slate(uniform, 5, 3, EventStream(1, "x"))
    assert len({i for i, _ in slate}) == 3
    assert [p for _, p in slate] == pytest.approx([1 / 5, 1 / 4, 1 / 3])


@pytest.mark.parametrize(
    ("seed", "event_id", "match"), [(-1, "e", "loop_seed"), (1, "", "event_id")]
)
def test_rejects(seed: int, event_id: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        event_stream(seed, event_id)
