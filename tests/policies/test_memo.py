"""Memo caches bounded in bytes (LRU): `ByteLRU`, and the VW text encoding's caches under load."""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Iterator

import pytest

from explore import Action
from policies import vw_text
from policies.memo import ENTRY_OVERHEAD, ByteLRU, size_of

MIB = 1024 * 1024


def test_evicts_least_recently_used_first() -> None:
    cache: ByteLRU[str, str] = ByteLRU(4 * (ENTRY_OVERHEAD + 200), sizer=lambda k, v: 200)
    for key in "abcd":
        cache.put(key, key.upper())
    assert cache.get("a") == "A"  # a is now the most recently used
    cache.put("e", "E")  # evicts b, the least recently used
    assert cache.get("b") is None
    assert [cache.get(k) for k in "acde"] == ["A", "C", "D", "E"]
    assert cache.nbytes == 4 * (ENTRY_OVERHEAD + 200) == cache.max_bytes


def test_byte_budget_holds_whatever_the_entry_sizes() -> None:
    cache: ByteLRU[str, str] = ByteLRU(10_000)
    for i in range(1000):
        cache.put(f"k{i}", "x" * (i % 700))
        assert cache.nbytes <= cache.max_bytes
    assert cache.nbytes == sum(
        size_of(k) + size_of(v) + ENTRY_OVERHEAD for k, v in cache.data.items()
    )


def test_entry_larger_than_a_quarter_is_not_cached_and_replacing_keeps_the_count() -> None:
    cache: ByteLRU[str, str] = ByteLRU(4000)
    cache.put("big", "x" * 1000)
    assert cache.get("big") is None and cache.nbytes == 0
    cache.put("k", "v")
    before = cache.nbytes
    cache.put("k", "w")
    assert cache.get("k") == "w" and cache.nbytes == before and len(cache) == 1


def test_resize_evicts_and_zero_disables() -> None:
    cache: ByteLRU[str, str] = ByteLRU(100_000)
    for i in range(100):
        cache.put(f"k{i}", "v" * 100)
    cache.resize(1000)
    assert cache.nbytes <= 1000 and cache.get("k99") is not None
    cache.resize(0)
    cache.put("k", "v")
    assert len(cache) == 0 and cache.nbytes == 0
    with pytest.raises(ValueError, match="max_bytes must be an int >= 0"):
        cache.resize(-1)


def test_size_of_follows_tuples() -> None:
    key = ("id", ("name", "x" * 1000))
    assert size_of(key) >= sys.getsizeof("x" * 1000) + sys.getsizeof(key)


@pytest.fixture
def fresh_caches() -> Iterator[None]:
    vw_text.configure_text_caches(0)  # drop what other tests cached
    vw_text.configure_text_caches(vw_text.DEFAULT_CACHE_BYTES)
    yield
    vw_text.configure_text_caches(0)
    vw_text.configure_text_caches(vw_text.DEFAULT_CACHE_BYTES)


def test_300_distinct_1mib_features_stay_within_the_budget(fresh_caches: None) -> None:
    """Regression: 300 distinct 1 MiB feature strings once left ~600 MiB resident for good (the
    caches were bounded in entries). Now the caches' byte count never exceeds the budget, and the
    memory actually retained (tracemalloc) is within it too."""
    budget = vw_text.DEFAULT_CACHE_BYTES
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        peak_count = 0
        for i in range(300):
            big = f"{i:04d}" + "x" * (MIB - 4)
            context = {"user": big}
            actions = [Action(f"a{i}", {"blob": big[::-1]}), Action("b", {"n": 1})]
            lines = vw_text.example_lines(context, actions)
            assert len(lines[0]) > MIB and len(lines[1]) > MIB
            del big, context, actions, lines
            peak_count = max(peak_count, vw_text.text_cache_bytes())
            assert vw_text.text_cache_bytes() <= budget
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    print(
        f"\n300 x 1 MiB features: cache {vw_text.text_cache_bytes() / MIB:.1f} MiB "
        f"(peak {peak_count / MIB:.1f}), retained {retained / MIB:.1f} MiB, "
        f"budget {budget / MIB:.0f}"
    )
    assert peak_count > budget / 2  # the caches were used, not bypassed
    assert retained <= budget + 4 * MIB
    assert retained <= vw_text.text_cache_bytes() + 4 * MIB  # the byte count is not an undercount


def test_hot_entries_survive_a_flood(fresh_caches: None) -> None:
    """LRU: an action seen on every rank keeps its cached line while 1 MiB strings stream by."""
    hot = Action("hot", {"kind": "sports"})
    vw_text.action_line(hot)
    key = ("hot", ("kind", "sports"))
    flood = 400  # x ~0.5 MiB per cached line (key and text): several times the line budget
    for i in range(flood):
        blob = f"{i:04d}" + "y" * (MIB // 4)
        vw_text.example_lines({"u": 1}, [hot, Action(f"c{i}", {"v": blob})])
    assert vw_text._LINE_CACHE.get(key) is not None
    assert vw_text._LINE_CACHE.get(("c0", ("v", "0000" + "y" * (MIB // 4)))) is None  # evicted
