"""The decision path of one rank request: arm, filter, score, explore, sample (DESIGN §4).

**Arms.** Without a canary every request is served by the live policy (`policy_arm` "live",
`arm_probability` 1). With a canary, a stable keyed hash of the request's unit (its `user_id`
when it sends one, else its event id; :mod:`explore.arms`) sends `canary_percent` % of the units
to the canary: the decision logs `policy_arm` ("live" or "canary"), `model_version` = that arm's
version, `pmf`/`slots` = that arm's probabilities, and `arm_probability` = the share of units
the arm gets (p for the canary, 1 - p for live). The user id itself is stored nowhere new: the
context is logged as sent, the arm the id led to is in `policy_arm`, and the id enters only the
request digest (a SHA-256 of the whole body), so a retry with another user id is a 409.

**Why the logged pmf is the propensity.** The arm is a deterministic function of the request
(its unit, the loop's secret key and the canary's version): given the request, the only
randomness in what is served is the draw from the arm's pmf. So the logging policy is the
context-dependent mixture ``pi_log(a | x) = pmf_canary(a | x) if x's unit hashes into the
canary else pmf_live(a | x)``, and the probability of the logged action given the request is
exactly the logged ``pmf[chosen]`` (or each slot's conditional probability). IPS/DR estimators,
training (the label probability) and the chi-square tests use it as it is. It is not to be
multiplied by `arm_probability` (``p * pmf_arm(a)`` is the joint probability of the arm and the
action over a random unit, not the action's probability given this request). The average
``p pmf_canary + (1 - p) pmf_live`` is the action's probability with the unit's hash
marginalised out: also unbiased for IPS (the keyed hash is independent of contexts and rewards),
but it needs both arms' pmfs, and only the serving arm's is logged.

**Where `arm_probability` matters.** In the A/B analysis of the arms (canary vs live, built
by deploy/ from `policy_arm` and `arm_probability`): each arm's decisions are a random sample
of the units (the keyed hash acts as a random assignment with probability p), so the arm's mean
reward estimates what that arm would give on all traffic, and totals over the whole traffic
weight an arm's decisions by 1 / arm_probability. Units, not decisions, are what is randomised:
several decisions of one user are correlated.

**Shadow.** A shadow version scores the same candidates with the same explorer (same exclusions;
for a slate its first-slot pmf over all actions); its pmf is logged as
``shadow = {"version", "pmf"}`` beside the served one. It is never served: it is computed after
the served decision, draws nothing from the event's sampling stream (the draws are those of the
served arm alone, so a replay is identical), and never changes the response. A shadow that fails
to score (non-finite scores, over the feature budget, any error) logs ``shadow = null`` and is
counted (`/v1/status`); the request is served as if there were no shadow.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson

from decision_service.rank_input import RankInput
from decision_service.runtime import LoopRuntime
from explore import Action, event_stream, rank_order, sample_index, sample_slate
from explore.arms import CANARY
from explore.errors import InvalidInput
from log.records import DecisionRecord

logger = logging.getLogger(__name__)

# hashlib releases the GIL while it hashes 2,048 bytes or more at once; a serving thread that
# lets go of the GIL for a few microseconds hands it to the writer thread and waits up to a
# switch interval to get it back. Fed in smaller pieces, the hash keeps it.
_HASH_PIECE = 2047


def request_digest(body: dict[str, Any]) -> str:
    """Digest of a rank request without its event id: a retry must carry the same request."""
    payload = orjson.dumps(
        {k: v for k, v in body.items() if k != "event_id"}, option=orjson.OPT_SORT_KEYS
    )
    digest = hashlib.sha256()
    view = memoryview(payload)
    for start in range(0, len(view), _HASH_PIECE):
        digest.update(view[start : start + _HASH_PIECE])
    return digest.hexdigest()


def decide(
    req: RankInput, body: dict[str, Any], runtime: LoopRuntime, now: datetime, event_id: str
) -> DecisionRecord:
    """Compute the decision for `event_id`; its `response` is what is served."""
    actions = req.actions
    excluded = set(req.excluded)
    allowed = np.flatnonzero([a.id not in excluded for a in actions])
    candidates = [actions[i] for i in allowed]

    arm, policy, arm_probability = runtime.arm(req.user_id, event_id)
    scores_c = policy.scores(req.context, candidates)
    if not np.isfinite(scores_c).all():
        raise InvalidInput(
            "feature values overflow the model's 32-bit floats: keep numbers (and the products "
            "of interacted features) below 3.4e38 in magnitude"
        )
    explorer = runtime.explorer_of(policy)
    rng = event_stream(runtime.config.sampling_key, event_id)
    pmf_c = explorer.pmf(scores_c)
    if req.slots is None:
        k = sample_index(pmf_c, rng)
        choices = [(k, float(pmf_c[k]))]
    else:
        slot_pmfs: list[np.ndarray] = []

        def slot_pmf(_slot: int, remaining: np.ndarray) -> np.ndarray:
            conditional = explorer.pmf(scores_c[remaining])
            full = np.zeros(len(actions))
            full[allowed[remaining]] = conditional
            slot_pmfs.append(full)
            return conditional

        choices = sample_slate(slot_pmf, len(candidates), req.slots, rng)

    n = len(actions)
    pmf = np.zeros(n)
    pmf[allowed] = pmf_c
    scores = np.full(n, np.finfo(float).min)  # excluded actions rank last
    scores[allowed] = scores_c
    chosen = [int(allowed[i]) for i, _ in choices]
    order = rank_order(pmf, scores, chosen)

    slots = [
        {"slot": s, "action_id": actions[idx].id, "probability": p}
        for s, (idx, (_, p)) in enumerate(zip(chosen, choices, strict=True))
    ]
    # Logged slots also keep each slot's whole conditional distribution (aligned with `actions`,
    # 0 for actions excluded or already placed), which slate estimators need.
    logged_slots = (
        [dict(slot, pmf=full.tolist()) for slot, full in zip(slots, slot_pmfs, strict=True)]
        if req.slots is not None
        else slots
    )
    response: dict[str, Any] = {
        "event_id": event_id,
        "model_version": policy.version,
        "ranking": [{"id": actions[i].id, "probability": float(pmf[i])} for i in order],
        "reward_action_id": actions[chosen[0]].id,
    }
    if req.slots is not None:
        response["slots"] = slots
    deferred = req.defer_activation
    if arm == CANARY:
        runtime.counters.canary_served += 1
    return DecisionRecord(
        loop=runtime.name,
        event_id=event_id,
        decided_at=now,
        model_version=policy.version,
        policy_arm=arm,
        request_digest=request_digest(body),
        context=req.context,
        actions=[{"id": a.id, "features": a.features} for a in actions],
        pmf=pmf.tolist(),
        excluded=req.excluded,
        chosen=actions[chosen[0]].id,
        slots=logged_slots,
        n_slots=len(slots),
        is_slate=req.slots is not None,
        deferred=deferred,
        activated_at=None,
        reward_deadline=None if deferred else now + timedelta(seconds=runtime.config.reward_wait_s),
        response=response,
        arm_probability=arm_probability,
        shadow=None if runtime.shadow is None else shadow_pmf(runtime, req, candidates, allowed),
    )


def shadow_pmf(
    runtime: LoopRuntime, req: RankInput, candidates: list[Action], allowed: np.ndarray
) -> dict[str, Any] | None:
    """The shadow's pmf over the request's actions (excluded ones 0), as logged; None when it
    cannot score this request (counted; the request is served all the same)."""
    shadow = runtime.shadow
    assert shadow is not None
    try:
        scores = shadow.scores(req.context, candidates)
        if not np.isfinite(scores).all():
            raise ValueError("non-finite scores")
        pmf_c = runtime.explorer_of(shadow).pmf(scores)
    except Exception as err:  # the shadow must never fail a request
        runtime.counters.shadow_failed += 1
        if runtime.counters.shadow_failed == 1 or runtime.counters.shadow_failed % 1000 == 0:
            logger.warning(
                "loop %s: shadow %s could not score a request (%d so far): %s",
                runtime.name,
                shadow.version,
                runtime.counters.shadow_failed,
                err,
            )
        return None
    runtime.counters.shadow_scored += 1
    pmf = np.zeros(len(req.actions))
    pmf[allowed] = pmf_c
    return {"version": shadow.version, "pmf": pmf.tolist()}
