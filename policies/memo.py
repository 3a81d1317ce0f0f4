"""A memo cache bounded in bytes, with least-recently-used eviction.

The VW text encoding memoises names, values and whole action lines (catalogs repeat them).
Bounding such caches by entry count does not bound memory: entries are as large as the features
clients send (300 distinct 1 MiB strings once held ~600 MiB for good). `ByteLRU` charges each
entry an estimate of the bytes it keeps alive (key and value), evicts the least recently used
entries to stay within its budget, and never stores an entry larger than a quarter of it.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["ENTRY_OVERHEAD", "ByteLRU", "size_of"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
# What an OrderedDict entry costs beyond its key and value (hash slot, links, refcounts).
ENTRY_OVERHEAD = 100
_getsizeof = sys.getsizeof


def size_of(obj: object) -> int:
    """Bytes held by `obj`, following tuples (our keys are tuples of strings and numbers)."""
    if type(obj) is tuple:
        return _getsizeof(obj) + sum(size_of(item) for item in obj)
    return _getsizeof(obj)


class ByteLRU(Generic[K, V]):
    """`get`/`put` with at most `max_bytes` of estimated memory; not thread-safe (one caller).

    Hot paths may bind `data.get` and `data.move_to_end` once and call them directly (a hit is
    then two C calls): `data` is never replaced, only mutated."""

    __slots__ = ("_max_entry", "_sizer", "_sizes", "data", "max_bytes", "nbytes")

    def __init__(self, max_bytes: int, sizer: Callable[[K, V], int] | None = None) -> None:
        self.data: OrderedDict[K, V] = OrderedDict()
        self._sizes: dict[K, int] = {}
        self._sizer = sizer or (lambda k, v: size_of(k) + size_of(v))
        self.nbytes = 0
        self.max_bytes = 0
        self._max_entry = 0
        self.resize(max_bytes)

    def __len__(self) -> int:
        return len(self.data)

    def get(self, key: K) -> V | None:
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        size = self._sizer(key, value) + ENTRY_OVERHEAD
        if size > self._max_entry:
            return  # larger than a quarter of the budget: not worth caching
        if key in self._sizes:
            del self.data[key]
            self.nbytes -= self._sizes.pop(key)
        self._evict(self.max_bytes - size)
        self.data[key] = value
        self._sizes[key] = size
        self.nbytes += size

    def _evict(self, target: int) -> None:
        data, sizes = self.data, self._sizes
        while data and self.nbytes > target:
            old, _ = data.popitem(last=False)
            self.nbytes -= sizes.pop(old)

    def clear(self) -> None:
        self.data.clear()
        self._sizes.clear()
        self.nbytes = 0

    def resize(self, max_bytes: int) -> None:
        """A new budget; evicts down to it."""
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._max_entry = max_bytes // 4
        self._evict(max_bytes)
