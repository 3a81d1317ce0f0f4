"""Run calls concurrently, all released at once (concurrency tests of the registry)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def race(n: int, call: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    """`call(i)` for i in range(n) in n threads released together by a barrier: the results and
    the exceptions raised."""
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results.append(call(i))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors
