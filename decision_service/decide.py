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

**Retrieval arms.** With a canary retriever, the request's retriever arm is the same keyed hash
of its unit, salted by the retriever's version (``explore.arms.retriever_salt``): the canary
retriever's share of the units retrieve their candidates with it. `retrieval` logs ``arm`` and
``arm_probability`` (1 without a retriever canary). The arm is a function of the request, so
the logged pmf (over the candidates that arm retrieved) is still the exact propensity; a model
canary splits by another salt, independently. A shadow retriever retrieves after the decision
(in the service) and only adds ``retrieval.shadow``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson

from decision_service.rank_input import RankInput
from decision_service.retrieval import Retrieved
from decision_service.runtime import LoopRuntime
from explore import Action, event_stream, rank_order, sample_index, sample_slate
from explore.arms import CANARY
from explore.errors import InvalidInput
from explore.rules import cap_mask, freshness_bonus, min_share
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


def _finite(scores: np.ndarray) -> np.ndarray:
    if not np.isfinite(scores).all():  # a model whose weights went non-finite
        raise InvalidInput("the model's scores are not finite for these features")
    return scores


def decide(
    req: RankInput,
    body: dict[str, Any],
    runtime: LoopRuntime,
    now: datetime,
    event_id: str,
    retrieved: Retrieved | None = None,
) -> DecisionRecord:
    """Compute the decision for `event_id`; its `response` is what is served. With
    `retrieved` (a `retrieve` request) the candidates are the retrieved items, and the loop's
    retrieval rules shape every slot's distribution before it is sampled (explore.rules)."""
    if retrieved is not None:
        req = replace(req, actions=retrieved.actions, excluded=[])
    actions = req.actions
    excluded = set(req.excluded)
    allowed = np.flatnonzero([a.id not in excluded for a in actions])
    candidates = [actions[i] for i in allowed]

    arm, policy, arm_probability = runtime.arm(req.user_id, event_id)
    scores_c = _finite(policy.scores(req.context, candidates))
    explorer = runtime.explorer_of(policy)
    rng = event_stream(runtime.config.sampling_key, event_id)
    rules = runtime.config.retrieval
    shaped = retrieved is not None and (rules.min_share > 0 or rules.creator_cap > 0)
    bonus = None
    if retrieved is not None and rules.freshness_boost > 0:
        bonus = freshness_bonus(rules, now.timestamp() - retrieved.created_ts)
        scores_c = scores_c + bonus
    in_group = np.array([shaped and rules.in_group(a.features) for a in candidates], dtype=bool)
    creators = [rules.creator(a.features) for a in candidates] if shaped else []
    # A model that explores itself (a VW reduction: RegCB-optimistic, cover, bagging) outputs a
    # distribution over the set it is given, not a score per action: a slate's later slot, over
    # fewer candidates, asks it again for those (its distribution over all of them puts its mass
    # on the first slot's action and says nothing about the order of the rest).
    per_set = bool(getattr(policy, "outputs_pmf", False))

    def subset_scores(subset: np.ndarray) -> np.ndarray:
        if not per_set or subset.size == len(candidates):
            return scores_c[subset]
        scores = _finite(policy.scores(req.context, [candidates[i] for i in subset]))
        return scores if bonus is None else scores + bonus[subset]

    def distribution(subset: np.ndarray) -> np.ndarray:
        p = explorer.pmf(subset_scores(subset))
        return min_share(p, in_group[subset], rules.min_share) if shaped else p

    pmf_c = distribution(np.arange(len(candidates)))
    # Apprentice / LoggingOnly (Personalizer learning modes): the baseline is served with
    # probability 1 and the model's own pmf is logged beside it (`baseline_shadow`).
    baseline = runtime.config.personalizer.learning_mode != "Online"
    model_pmf_c = pmf_c
    if baseline:
        pmf_c = first_only(len(candidates))
    if req.slots is None:
        k = sample_index(pmf_c, rng)
        choices = [(k, float(pmf_c[k]))]
    else:
        slot_pmfs: list[np.ndarray] = []
        placed: list[int] = []

        def slot_pmf(_slot: int, remaining: np.ndarray) -> np.ndarray:
            if baseline:  # each slot serves the first remaining action: slot s gets action s
                conditional = first_only(len(remaining))
            elif shaped:
                # the per-creator cap given the slots already placed, then the group's share
                mask = cap_mask(creators, remaining, placed, rules.creator_cap)
                conditional = np.zeros(len(remaining))
                conditional[mask] = distribution(remaining[mask])
            else:
                conditional = distribution(remaining)
            full = np.zeros(len(actions))
            full[allowed[remaining]] = conditional
            slot_pmfs.append(full)
            return conditional

        def track(slot: int, remaining: np.ndarray) -> np.ndarray:
            # the slots placed so far are the candidates no longer remaining
            placed[:] = sorted(set(range(len(candidates))) - set(remaining.tolist()))
            return slot_pmf(slot, remaining)

        if req.slots > len(candidates):
            raise InvalidInput(
                f"{req.slots} slots but only {len(candidates)} candidates were retrieved",
                "too_many_slots",
            )
        choices = sample_slate(track, len(candidates), req.slots, rng)

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
    shadow = None
    if baseline:
        shadow = baseline_shadow(runtime, policy.version, model_pmf_c, allowed, n)
    elif runtime.shadow is not None:
        shadow = shadow_pmf(runtime, req, candidates, allowed)
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
        shadow=shadow,
        retrieval=None
        if retrieved is None or req.retrieve is None
        else {
            "retriever": retrieved.retriever,
            "index": retrieved.index_version,
            **req.retrieve.to_json(),
            "arm": retrieved.arm,
            "arm_probability": retrieved.arm_probability,
        },
    )


def first_only(n: int) -> np.ndarray:
    """The pmf of serving the first of `n` candidates for sure (the baseline)."""
    pmf = np.zeros(n)
    pmf[0] = 1.0
    return pmf


def baseline_shadow(
    runtime: LoopRuntime, version: str, model_pmf_c: np.ndarray, allowed: np.ndarray, n: int
) -> dict[str, Any]:
    """What a decision served in Apprentice or LoggingOnly mode logs as `shadow`: the live
    model's pmf over the request's actions (first slot's for a slate), never served, and the
    mode (the learner imitates the baseline on Apprentice decisions and skips LoggingOnly
    ones). A shadow candidate is not scored in these modes."""
    pmf = np.zeros(n)
    pmf[allowed] = model_pmf_c
    mode = runtime.config.personalizer.learning_mode
    return {"version": version, "pmf": pmf.tolist(), "mode": mode}


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
