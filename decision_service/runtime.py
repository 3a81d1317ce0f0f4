"""Per-worker state of each loop: its configuration, explorer and serving policy."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from explore import Explorer, make_explorer
from log.loops import LoopConfig, StoredLoop, get_loop, list_loops
from policies import VWPolicy

logger = logging.getLogger(__name__)


def explorer_for(config: LoopConfig) -> Explorer:
    if config.exploration == "softmax":
        return make_explorer("softmax", lam=config.softmax_lambda)
    return make_explorer("epsilon_greedy", epsilon=config.epsilon)


@dataclass
class LoopRuntime:
    name: str
    config: LoopConfig
    updated_at: datetime
    explorer: Explorer
    policy: VWPolicy


class LoopRegistry:
    """Loops known to this worker, refreshed from the database periodically."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.loops: dict[str, LoopRuntime] = {}

    def _install(self, stored: StoredLoop) -> LoopRuntime:
        current = self.loops.get(stored.name)
        if current is not None and current.updated_at == stored.updated_at:
            return current
        if current is not None and current.config.vw_args == stored.config.vw_args:
            policy = current.policy
        else:
            policy = VWPolicy(stored.config.vw_args)
        runtime = LoopRuntime(
            stored.name, stored.config, stored.updated_at, explorer_for(stored.config), policy
        )
        self.loops[stored.name] = runtime
        return runtime

    def refresh(self) -> None:
        """Re-read every loop (blocking; run it off the event loop)."""
        for stored in list_loops(self.engine):
            self._install(stored)

    def load(self, name: str) -> LoopRuntime | None:
        """Read one loop from the database (blocking)."""
        stored = get_loop(self.engine, name)
        return None if stored is None else self._install(stored)

    def install(self, stored: StoredLoop) -> LoopRuntime:
        return self._install(stored)
