"""A callback run just before each COMMIT an engine issues while a block runs (after the
transaction's statements, before the database makes them durable).

Used for fault injection: the learner's kill-and-restart tests kill the process there, which
proves that a step killed inside its transaction leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event

__all__ = ["before_commit"]


@contextmanager
def before_commit(engine: Engine, callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback()` before every commit on `engine` while the block runs."""

    def on_commit(_conn: Any) -> None:
        callback()

    event.listen(engine, "commit", on_commit)
    try:
        yield
    finally:
        event.remove(engine, "commit", on_commit)
