"""Per-worker state of each loop: its configuration, explorer and serving policy.

Workers poll the database (every `DS_LOOP_REFRESH_S`) for loop configurations and each loop's live
model version; a new live version is loaded and swapped in without a restart. A request takes one
`LoopRuntime` snapshot, so the version it logs is the one that scored it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from deploy.registry import ModelVersion, live_versions, load_artifact
from explore import Explorer, make_explorer
from log.loops import LoopConfig, StoredLoop, get_loop, list_loops
from log.schema import Engine
from policies import VWPolicy

logger = logging.getLogger(__name__)


def explorer_for(config: LoopConfig) -> Explorer:
    if config.exploration == "softmax":
        return make_explorer("softmax", lam=config.softmax_lambda)
    return make_explorer("epsilon_greedy", epsilon=config.epsilon)


@dataclass(frozen=True)
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

    def _policy_for(
        self, stored: StoredLoop, live: ModelVersion | None, current: LoopRuntime | None
    ) -> VWPolicy:
        if live is not None:
            if current is not None and current.policy.version == live.version:
                return current.policy
            return VWPolicy(
                live.vw_args, model=load_artifact(self.engine, live.version), version=live.version
            )
        if (
            current is not None
            and current.policy.version == "untrained"
            and current.config.vw_args == stored.config.vw_args
        ):
            return current.policy
        return VWPolicy(stored.config.vw_args)

    def _install(self, stored: StoredLoop, live: ModelVersion | None) -> LoopRuntime:
        current = self.loops.get(stored.name)
        policy = self._policy_for(stored, live, current)
        if (
            current is not None
            and current.updated_at == stored.updated_at
            and current.policy is policy
        ):
            return current
        runtime = LoopRuntime(
            stored.name, stored.config, stored.updated_at, explorer_for(stored.config), policy
        )
        self.loops[stored.name] = runtime
        if current is None or current.policy is not policy:
            logger.info("loop %s serves model %s", stored.name, policy.version)
        return runtime

    def refresh(self) -> None:
        """Re-read every loop and live version (blocking; run it off the event loop)."""
        live = live_versions(self.engine)
        for stored in list_loops(self.engine):
            try:
                self._install(stored, live.get(stored.name))
            except Exception:  # a bad artifact must not stop the other loops
                logger.exception("could not load loop %s", stored.name)

    def load(self, name: str) -> LoopRuntime | None:
        """Read one loop from the database (blocking)."""
        stored = get_loop(self.engine, name)
        if stored is None:
            return None
        return self._install(stored, live_versions(self.engine).get(name))

    def install(self, stored: StoredLoop) -> LoopRuntime:
        return self._install(stored, live_versions(self.engine).get(stored.name))
