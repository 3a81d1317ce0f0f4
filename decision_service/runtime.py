"""Per-worker state of each loop: its configuration, explorer and serving policies.

Workers poll the database (every `DS_LOOP_REFRESH_S`) for loop configurations and, in one query
(`log.serving_reads`), each loop's live, canary (with its share) and shadow versions. A new
version is loaded and swapped in without a restart; a version already loaded (same version id,
in whichever role) is reused. A request takes one `LoopRuntime` snapshot, so the versions it
logs are the ones that scored it.

A canary or shadow version that cannot be loaded (missing or corrupt artifact, a database
error) does not stop the loop: it serves live alone (no split, no shadow) and the failure is
logged (once per version; the load is retried at every refresh). A live version that cannot be
loaded keeps the loop on what it served before (or, for a loop not loaded yet, the error
propagates: the loop cannot be served).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from deploy.registry import ModelVersion, load_artifact
from explore import Explorer
from explore.arms import CANARY, LIVE, ArmSplit, split_unit
from log.loops import LoopConfig, StoredLoop, get_loop, list_loops
from log.schema import Engine
from log.serving_reads import ServingVersions, loop_serving_versions, serving_versions
from policies import VWPolicy

logger = logging.getLogger(__name__)

__all__ = ["LoopRegistry", "LoopRuntime", "ServingCounters", "explorer_for"]


def explorer_for(config: LoopConfig, policy: VWPolicy | None = None) -> Explorer:
    """The loop's explorer for `policy` (its learned-example count and whether it predicts a
    distribution itself; see `log.explore_settings`)."""
    if policy is None:
        return config.explorer()
    return config.explorer(examples_seen=policy.examples_seen, vw_pmf=policy.outputs_pmf)


@dataclass
class ServingCounters:
    """This worker's counts for one loop since it started (updated on the event loop thread,
    shown by /v1/status): decisions served by the canary, shadow pmfs logged, shadow scorings
    that failed (logged as shadow = null); the same for retrievers (decisions retrieved by the
    canary retriever, shadow retrievals logged, and failed: logged as retrieval.shadow = null)."""

    canary_served: int = 0
    shadow_scored: int = 0
    shadow_failed: int = 0
    retriever_canary_served: int = 0
    retriever_shadow_retrieved: int = 0
    retriever_shadow_failed: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "canary_served": self.canary_served,
            "shadow_scored": self.shadow_scored,
            "shadow_failed": self.shadow_failed,
            "retriever_canary_served": self.retriever_canary_served,
            "retriever_shadow_retrieved": self.retriever_shadow_retrieved,
            "retriever_shadow_failed": self.retriever_shadow_failed,
        }


@dataclass(frozen=True)
class LoopRuntime:
    """One loop as this worker serves it: `policy` is the live arm; with a canary, `split`
    sends its share of the units to `canary`; `shadow` scores every request beside them."""

    name: str
    config: LoopConfig
    updated_at: datetime
    explorer: Explorer
    policy: VWPolicy
    canary: VWPolicy | None = None
    split: ArmSplit | None = None
    shadow: VWPolicy | None = None
    counters: ServingCounters = field(default_factory=ServingCounters, compare=False)

    def explorer_of(self, policy: VWPolicy) -> Explorer:
        """The explorer serving `policy` (the live one's is built once, at install)."""
        if policy is self.policy:
            return self.explorer
        return explorer_for(self.config, policy)

    def arm(self, user_id: str | None, event_id: str) -> tuple[str, VWPolicy, float]:
        """(arm name, its policy, the probability of that arm) for a request."""
        if self.canary is None or self.split is None:
            return LIVE, self.policy, 1.0
        name, probability = self.split.arm(split_unit(user_id, event_id))
        return name, self.canary if name == CANARY else self.policy, probability

    def serving_json(self) -> dict[str, Any]:
        return {
            "live": self.policy.version,
            "canary": None if self.canary is None else self.canary.version,
            "canary_percent": None if self.split is None else self.split.share * 100.0,
            "shadow": None if self.shadow is None else self.shadow.version,
            **self.counters.to_json(),
        }


def _share(record: ModelVersion) -> float | None:
    """The canary's share of traffic in (0, 1), None when its percent is unusable."""
    percent = record.canary_percent
    if percent is None or not math.isfinite(percent) or not 0.0 < percent < 100.0:
        return None
    return percent / 100.0


class LoopRegistry:
    """Loops known to this worker, refreshed from the database periodically."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.loops: dict[str, LoopRuntime] = {}
        self._counters: dict[str, ServingCounters] = {}
        self._failed: set[str] = set()  # canary/shadow versions whose load failure was logged

    def _load(self, record: ModelVersion, current: LoopRuntime | None) -> VWPolicy:
        """`record`'s policy: the one this loop already holds under that version, or loaded."""
        if current is not None:
            for held in (current.policy, current.canary, current.shadow):
                if held is not None and held.version == record.version:
                    return held
        return VWPolicy(
            record.vw_args, model=load_artifact(self.engine, record.version), version=record.version
        )

    def _live_policy(
        self, stored: StoredLoop, live: ModelVersion | None, current: LoopRuntime | None
    ) -> VWPolicy:
        if live is not None:
            return self._load(live, current)
        if (
            current is not None
            and current.policy.version == "untrained"
            and current.config.model_args == stored.config.model_args
        ):
            return current.policy
        return VWPolicy(stored.config.model_args)

    def _optional(
        self, loop: str, role: str, record: ModelVersion | None, current: LoopRuntime | None
    ) -> VWPolicy | None:
        """The canary's or shadow's policy; None (and logged once) when it cannot be loaded:
        the loop keeps serving live."""
        if record is None:
            return None
        try:
            policy = self._load(record, current)
        except Exception:
            if record.version not in self._failed:
                self._failed.add(record.version)
                logger.exception(
                    "loop %s: %s version %s could not be loaded; serving without it",
                    loop,
                    role,
                    record.version,
                )
            return None
        self._failed.discard(record.version)
        return policy

    def _install(self, stored: StoredLoop, versions: ServingVersions) -> LoopRuntime:
        name = stored.name
        current = self.loops.get(name)
        policy = self._live_policy(stored, versions.live, current)
        canary, split = None, None
        if versions.canary is not None:
            share = _share(versions.canary)
            if share is None:
                if versions.canary.version not in self._failed:
                    self._failed.add(versions.canary.version)
                    logger.error(
                        "loop %s: canary %s has canary_percent %r (not in (0, 100)); not served",
                        name,
                        versions.canary.version,
                        versions.canary.canary_percent,
                    )
            else:
                canary = self._optional(name, "canary", versions.canary, current)
                if canary is not None:
                    split = ArmSplit(stored.config.sampling_key, canary.version, share)
        shadow = self._optional(name, "shadow", versions.shadow, current)
        if (
            current is not None
            and current.updated_at == stored.updated_at
            and current.policy is policy
            and current.canary is canary
            and current.split == split
            and current.shadow is shadow
        ):
            return current
        counters = self._counters.setdefault(name, ServingCounters())
        runtime = LoopRuntime(
            name,
            stored.config,
            stored.updated_at,
            explorer_for(stored.config, policy),
            policy,
            canary,
            split,
            shadow,
            counters,
        )
        self.loops[name] = runtime
        if current is None or current.serving_json() != runtime.serving_json():
            logger.info(
                "loop %s serves live %s, canary %s (%s%%), shadow %s",
                name,
                policy.version,
                None if canary is None else canary.version,
                None if split is None else split.share * 100.0,
                None if shadow is None else shadow.version,
            )
        return runtime

    def refresh(self) -> None:
        """Re-read every loop and its serving versions (blocking; run it off the event loop)."""
        versions = serving_versions(self.engine)
        for stored in list_loops(self.engine):
            try:
                self._install(stored, versions.get(stored.name, ServingVersions()))
            except Exception:  # a bad artifact must not stop the other loops
                logger.exception("could not load loop %s", stored.name)

    def load(self, name: str) -> LoopRuntime | None:
        """Read one loop from the database (blocking)."""
        stored = get_loop(self.engine, name)
        if stored is None:
            return None
        return self._install(stored, loop_serving_versions(self.engine, name))

    def install(self, stored: StoredLoop) -> LoopRuntime:
        return self._install(stored, loop_serving_versions(self.engine, stored.name))
