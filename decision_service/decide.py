"""The decision path of one rank request: filter, score, explore, sample (DESIGN §4)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson

from decision_service.rank_input import RankInput
from decision_service.runtime import LoopRuntime
from explore import event_stream, rank_order, sample_index, sample_slate
from explore.errors import InvalidInput
from log.records import DecisionRecord

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

    policy = runtime.policy
    scores_c = policy.scores(req.context, candidates)
    if not np.isfinite(scores_c).all():
        raise InvalidInput(
            "feature values overflow the model's 32-bit floats: keep numbers (and the products "
            "of interacted features) below 3.4e38 in magnitude"
        )
    explorer = runtime.explorer
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
    return DecisionRecord(
        loop=runtime.name,
        event_id=event_id,
        decided_at=now,
        model_version=policy.version,
        policy_arm="live",
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
    )
