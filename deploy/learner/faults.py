"""Fault injection for the learner's kill-and-restart tests.

`DS_LEARNER_FAULT=<step>` makes the learner process kill itself (SIGKILL, no clean-up) inside
that step: for a training step after its first learned event, for a step that writes in the
middle of its transaction (after its statements, before COMMIT); `<step>:after` kills it just
after the step completed. Steps: ``join``, ``freshness-train``, ``freshness-register``,
``candidate-train``, ``candidate-register``, ``gate``, ``transition``. Unset (the default), the
hooks cost nothing.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from log.commit_hooks import before_commit
from log.schema import Engine

__all__ = ["FAULT_ENV", "STEPS", "Faults"]

logger = logging.getLogger(__name__)

FAULT_ENV = "DS_LEARNER_FAULT"
STEPS = (
    "join",
    "freshness-train",
    "freshness-register",
    "candidate-train",
    "candidate-register",
    "gate",
    "transition",
)


def _die(where: str) -> None:
    logger.error("fault injection: killing the learner %s", where)
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


class Faults:
    """The fault to inject (None: none). `spec` is "<step>" or "<step>:after"."""

    def __init__(self, spec: str | None = None) -> None:
        self.step: str | None = None
        self.after_step = False
        if spec:
            step, _, when = spec.partition(":")
            if step not in STEPS or when not in ("", "after"):
                raise ValueError(
                    f"{FAULT_ENV} must be one of {list(STEPS)}, optionally with ':after', "
                    f"got {spec!r}"
                )
            self.step, self.after_step = step, when == "after"

    @classmethod
    def from_env(cls) -> Faults:
        return cls(os.environ.get(FAULT_ENV) or None)

    def _inside(self, step: str) -> bool:
        return self.step == step and not self.after_step

    @contextmanager
    def writing(self, engine: Engine, step: str, *, nth: int = 1) -> Iterator[None]:
        """A step that writes: killed before its `nth` COMMIT (or just after the step, with
        ':after')."""
        if self._inside(step):
            commits = 0

            def commit() -> None:
                nonlocal commits
                commits += 1
                if commits >= nth:
                    _die(f"inside {step!r}, before its commit")

            with before_commit(engine, commit):
                yield
        else:
            yield
        if self.step == step and self.after_step:
            _die(f"after {step!r}")

    def training(
        self, step: str, on_event: Callable[[int], None] | None
    ) -> Callable[[int], None] | None:
        """The on_event callback of a training step: killed after its first learned event."""
        if not self._inside(step):
            return on_event

        def hook(n: int) -> None:
            if on_event is not None:
                on_event(n)
            _die(f"inside {step!r}, after {n} event(s) learned")

        return hook

    def trained(self, step: str) -> None:
        """Called when a training step finished (kills with '<step>:after')."""
        if self.step == step and self.after_step:
            _die(f"after {step!r}")
