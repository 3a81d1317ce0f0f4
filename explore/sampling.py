"""Keyed sampling of one action or of a slate (slot by slot, without replacement)."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import secrets
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from explore.validation import (
    check_int,
    check_non_empty_str,
    check_pmf,
    check_probability,
)

__all__ = [
    "SAMPLING_KEY_BYTES",
    "EventStream",
    "UniformSource",
    "check_sampling_key",
    "event_stream",
    "mask_pmf",
    "new_sampling_key",
    "rng_for",
    "sample_index",
    "sample_slate",
    "slate_probability",
]


class UniformSource(Protocol):
    """Anything that draws uniforms in [0, 1): a numpy Generator or an `EventStream`."""

    def random(self) -> float: ...


SAMPLING_KEY_BYTES = 32  # a loop's secret sampling key: 256 bits
_PERSON = b"ds-sample"  # blake2b personalisation: these hashes serve sampling only


def new_sampling_key() -> bytes:
    """A fresh secret sampling key (256 bits from the OS's CSPRNG)."""
    return secrets.token_bytes(SAMPLING_KEY_BYTES)


def check_sampling_key(key: object, name: str = "key") -> bytes:
    """`key` if it is a sampling key (exactly 32 bytes); ValueError naming `name` otherwise."""
    if not isinstance(key, bytes) or len(key) != SAMPLING_KEY_BYTES:
        got = f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__
        raise ValueError(f"{name} must be {SAMPLING_KEY_BYTES} bytes, got {got}")
    return key


class EventStream:
    """A deterministic stream of uniforms for one event, keyed by the loop's secret key.

    The k-th draw is the first 53 bits of the keyed hash
    ``blake2b(event_id.encode() + k.to_bytes(8, "big"), key=key, person=b"ds-sample",
    digest_size=8)``, divided by 2**53 (k has a fixed width, so distinct (event id, k) never
    hash the same input). blake2b with a secret key is a pseudo-random function: a client who
    chooses event ids, and sees every decision the service returns, learns nothing about the
    draws of an event id it has not been served yet, so it cannot steer the sample. The same
    (key, event id) gives the same draws in any process (replays are deterministic).
    """

    __slots__ = ("_event", "_k", "_key")

    def __init__(self, key: bytes, event_id: str) -> None:
        self._key = key
        self._event = event_id.encode()
        self._k = 0

    def random(self) -> float:
        digest = hashlib.blake2b(
            self._event + self._k.to_bytes(8, "big"),
            key=self._key,
            person=_PERSON,
            digest_size=8,
        ).digest()
        self._k += 1
        return (int.from_bytes(digest, "big") >> 11) / 9007199254740992.0


def event_stream(key: bytes, event_id: str) -> EventStream:
    """The uniform stream the service samples an event's decision from (see `EventStream`);
    `key` is the loop's 32-byte secret sampling key."""
    return EventStream(check_sampling_key(key), check_non_empty_str(event_id, "event_id"))


def rng_for(key: bytes, event_id: str) -> np.random.Generator:
    """A numpy generator for one event, seeded by the first 8 bytes (big-endian) of the keyed
    ``blake2b(event_id.encode(), key=key, person=b"ds-sample")``: deterministic per
    (key, event id) in any process, unpredictable without the key."""
    key = check_sampling_key(key)
    event_id = check_non_empty_str(event_id, "event_id")
    digest = hashlib.blake2b(event_id.encode(), key=key, person=_PERSON).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def sample_index(pmf: np.ndarray, rng: UniformSource) -> int:
    """Draw an index from `pmf` by inverse CDF with one uniform; never a zero-probability index."""
    p = check_pmf(pmf)
    # Plain Python on the (small) CDF: numpy's searchsorted releases the GIL, which costs a
    # serving thread more than the search itself.
    cdf = list(itertools.accumulate(p.tolist()))
    u = rng.random() * cdf[-1]
    i = bisect.bisect_right(cdf, u)
    # Zero-probability entries cannot be hit (their CDF step is empty) except past the end
    # through round-off; send that to the last index with positive probability.
    last = int(np.flatnonzero(p > 0)[-1])
    return min(i, last)


def mask_pmf(pmf: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Zero the entries where `allowed` is False and renormalise the rest."""
    p = check_pmf(pmf)
    mask = np.asarray(allowed)
    if mask.dtype != np.bool_ or mask.shape != p.shape:
        raise ValueError(
            f"allowed must be a boolean array of shape {p.shape}, "
            f"got dtype {mask.dtype} and shape {mask.shape}"
        )
    if not mask.any():
        raise ValueError("allowed must allow at least one action, got all False")
    out = np.where(mask, p, 0.0)
    total = out.sum()
    if total <= 0.0:
        raise ValueError("allowed must allow at least one action with probability > 0, got none")
    return out / total


def sample_slate(
    slot_pmf: Callable[[int, np.ndarray], np.ndarray],
    n_actions: int,
    n_slots: int,
    rng: UniformSource,
) -> list[tuple[int, float]]:
    """Sample `n_slots` distinct actions slot by slot.

    For slot k, `slot_pmf(k, remaining)` gets the still-available action indices (ascending)
    and returns a pmf over them. Returns (action index, conditional probability) per slot.
    """
    n_actions = check_int(n_actions, "n_actions", minimum=1)
    n_slots = check_int(n_slots, "n_slots", minimum=1)
    if n_slots > n_actions:
        raise ValueError(f"n_slots must be <= n_actions ({n_actions}), got {n_slots}")
    remaining = np.arange(n_actions)
    choices: list[tuple[int, float]] = []
    for k in range(n_slots):
        name = f"slot_pmf({k}, remaining)"
        p = check_pmf(slot_pmf(k, remaining.copy()), name)
        if p.size != remaining.size:
            raise ValueError(
                f"{name} must return one probability per remaining action "
                f"({remaining.size}), got {p.size}"
            )
        i = sample_index(p, rng)
        choices.append((int(remaining[i]), float(p[i])))
        remaining = np.delete(remaining, i)
    return choices


def slate_probability(choices: Sequence[tuple[int, float]]) -> float:
    """Probability of a sampled slate: the product of its per-slot conditional probabilities."""
    if len(choices) == 0:
        raise ValueError("choices must be a non-empty sequence of (index, probability), got []")
    return math.prod(
        check_probability(p, f"choices[{k}] probability", positive=True)
        for k, (_, p) in enumerate(choices)
    )
