"""The rollout of one loop's candidates, one step per learner tick, as far as the loop allows.

Every step is one audited transaction (`deploy.rollout.transition`, actor "learner"), so a
kill between two steps leaves every version in a state it may be in, and the next tick goes on
from there:

1. **Gate**: each candidate whose latest verdict is missing or "pending" is checked again
   (`deploy.gate.check_candidate`; the gate is sequential, repeated looks are fine). "fail":
   the candidate is rejected with the verdict's reason. "pass": it moves to shadow when
   `rollout.auto` is "shadow" or further and the loop has no shadow; otherwise it waits (with
   "none", for a gatekeeper).
2. **Shadow -> canary**: once the shadow scored `rollout.shadow_min_events` decisions, when
   `rollout.auto` is "canary" or "live" and the loop has no canary, it becomes the canary on
   `rollout.canary_percent` % of traffic.
3. **Canary**: analysed every tick (`deploy.ab.analyse_canary`, sequential: valid at every
   look). "worse" or "guardrail": an alarm ("canary_rolled_back", or "canary_worse" without
   `rollout.auto_rollback`) and, with `auto_rollback`, the canary is rejected with the
   analysis' numbers (live was serving the rest all along: rejecting it IS the rollback). Not
   worse and at least `rollout.canary_min_events` joined decisions served by the canary: it goes
   live when
   `rollout.auto` is "live". Otherwise a gatekeeper's approval (a transition to live through
   the API, which needs the passed gate verdict) is what makes it live.

4. **Retrievers** (kind ``retriever``, :mod:`deploy.retriever_gate`): each candidate retriever
   whose latest verdict is missing or "pending" is checked again; "fail": it is rejected
   (audited, actor "learner"); "pass": it waits for a gatekeeper, who moves it to shadow,
   canary or live (:mod:`deploy.retriever_rollout`; each of those embeds the whole catalog).

The alarm of an automatic rollback is raised before the transition that rejects the canary,
and not raised twice for one version: a kill between the two leaves the alarm, and the next
tick (which sees the same analysis) makes the transition.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from deploy.ab import analyse_canary
from deploy.gate import check_candidate, latest_gate_verdict
from deploy.learner.candidates import IN_ROLLOUT
from deploy.learner.faults import Faults
from deploy.learner.versions import LEARNER
from deploy.registry import ModelVersion
from deploy.retriever_gate import check_retriever
from deploy.rollout import transition
from log.alarms import raise_alarm_once
from log.deploy_settings import AUTO_LEVELS
from log.learner_state import LearnerRun
from log.loops import StoredLoop
from log.registry_store import list_models
from log.retrievers import list_retrievers, reject_retriever
from log.rollout_counts import count_shadowed
from log.schema import Engine
from log.verdicts import latest_verdict

__all__ = ["ROLLBACK_ALARM", "WORSE_ALARM", "run_rollout"]

logger = logging.getLogger(__name__)

ROLLBACK_ALARM = "canary_rolled_back"
WORSE_ALARM = "canary_worse"


def _level(auto: str) -> int:
    return AUTO_LEVELS.index(auto)


class _Rollout:
    def __init__(self, engine: Engine, stored: StoredLoop, now: datetime, faults: Faults) -> None:
        self.engine, self.stored, self.now, self.faults = engine, stored, now, faults
        self.settings = stored.config.rollout
        self.steps: list[dict[str, Any]] = []

    def move(
        self,
        version: ModelVersion,
        to: str,
        reason: str,
        details: dict[str, Any],
        canary_percent: float | None = None,
    ) -> None:
        with self.faults.writing(self.engine, "transition"):
            transition(
                self.engine,
                version.version,
                to,
                actor=LEARNER,
                role=None,
                reason=reason,
                canary_percent=canary_percent,
                details=details,
            )
        self.steps.append({"version": version.version, "from": version.status, "to": to})
        logger.info(
            "loop %s: %s %s -> %s (%s)",
            self.stored.name,
            version.version,
            version.status,
            to,
            reason,
        )

    def gate(self, candidate: ModelVersion) -> str:
        """The candidate's gate decision, checking it again unless it is final."""
        latest = latest_gate_verdict(self.engine, candidate.version)
        if latest is None or latest.decision == "pending":
            with self.faults.writing(self.engine, "gate"):
                latest = check_candidate(
                    self.engine, self.stored.name, candidate.version, now=self.now
                )
            self.steps.append(
                {"version": candidate.version, "gate": latest.decision, "look": latest.look}
            )
        if latest.decision == "fail":
            self.move(
                candidate,
                "rejected",
                f"the gate failed it: {latest.reason}",
                {"verdict": latest.id, "look": latest.look, "numbers": latest.numbers},
            )
        return latest.decision

    def retrievers(self) -> None:
        """Check the loop's candidate retrievers that have no final verdict; reject a fail."""
        loop = self.stored.name
        for candidate in list_retrievers(self.engine, loop):
            if candidate.status != "candidate":
                continue
            latest = latest_verdict(self.engine, candidate.version)
            if latest is None or latest.decision == "pending":
                with self.faults.writing(self.engine, "gate"):
                    latest = check_retriever(self.engine, loop, candidate.version, now=self.now)
                self.steps.append(
                    {
                        "version": candidate.version,
                        "kind": "retriever",
                        "gate": latest.decision,
                        "look": latest.look,
                    }
                )
            if latest.decision == "fail":
                with self.faults.writing(self.engine, "transition"):
                    reject_retriever(
                        self.engine,
                        loop,
                        candidate.version,
                        self.now,
                        LEARNER,
                        f"the retriever gate failed it: {latest.reason}",
                    )
                self.steps.append(
                    {
                        "version": candidate.version,
                        "kind": "retriever",
                        "from": "candidate",
                        "to": "rejected",
                    }
                )

    def canary(self, canary: ModelVersion) -> None:
        loop = self.stored.name
        analysis = analyse_canary(self.engine, loop, settings=self.settings)
        numbers = analysis.to_json()
        decision = analysis.decision
        self.steps.append({"version": canary.version, "analysis": decision})
        if decision in ("worse", "guardrail"):
            kind = ROLLBACK_ALARM if self.settings.auto_rollback else WORSE_ALARM
            what = "significantly worse than live" if decision == "worse" else "trips a guardrail"
            message = f"canary {canary.version} of loop {loop!r} {what}" + (
                ": rolled back" if self.settings.auto_rollback else " (auto_rollback is off)"
            )
            if raise_alarm_once(
                self.engine,
                loop=loop,
                kind=kind,
                version=canary.version,
                message=message,
                at=self.now,
                details={"version": canary.version, "analysis": numbers},
            ):
                logger.error("%s (analysis: %s)", message, numbers)
            if self.settings.auto_rollback:
                self.move(canary, "rejected", message, {"analysis": numbers, "auto_rollback": True})
            return
        served = analysis.n_canary  # joined decisions the canary served
        if served < self.settings.canary_min_events:
            return
        if self.settings.auto == "live":
            self.move(
                canary,
                "live",
                f"canary not worse than live after {served} decisions ({decision}); "
                "rollout.auto is live",
                {"analysis": numbers, "canary_decisions": served},
            )

    def run(self) -> LearnerRun:
        loop = self.stored.name
        level = _level(self.settings.auto)
        versions = list_models(self.engine, loop, statuses=IN_ROLLOUT)
        shadow = next((v for v in versions if v.status == "shadow"), None)
        canary = next((v for v in versions if v.status == "canary"), None)
        for candidate in (v for v in versions if v.status == "candidate"):
            decision = self.gate(candidate)
            if decision == "pass" and level >= _level("shadow") and shadow is None:
                self.move(candidate, "shadow", "passed the gate", {})
                shadow = candidate
        if (
            shadow is not None
            and shadow.status == "shadow"  # not the candidate moved to shadow this tick
            and canary is None
            and level >= _level("canary")
        ):
            seen = count_shadowed(self.engine, loop, shadow.version, since=shadow.updated_at)
            if seen >= self.settings.shadow_min_events:
                self.move(
                    shadow,
                    "canary",
                    f"shadowed {seen} decisions",
                    {"shadowed": seen},
                    canary_percent=self.settings.canary_percent,
                )
        if canary is not None:
            self.canary(canary)
        self.retrievers()
        moved = [s for s in self.steps if "to" in s]
        outcome = "moved" if moved else ("checked" if self.steps else "idle")
        message = (
            "; ".join(f"{s['version']} {s['from']} -> {s['to']}" for s in moved)
            or f"{len(versions)} version(s) in rollout, nothing to move"
        )
        return LearnerRun("rollout", self.now, outcome, message, details={"steps": self.steps})


def run_rollout(engine: Engine, stored: StoredLoop, *, now: datetime, faults: Faults) -> LearnerRun:
    """One rollout step of the loop (see the module docstring)."""
    return _Rollout(engine, stored, now, faults).run()
