"""A rank request end to end before it is logged: its candidates (sent, or retrieved by the
request's retriever arm), the decision (`decide`), then the shadow retriever's summary.

**Retriever arms.** With a canary retriever, `LoopIndexes.arm` puts the request's unit (user
id, else event id) in the canary arm with probability p = canary_percent / 100 by the keyed hash
of :mod:`explore.arms` (salted by the retriever's version): that arm retrieves with the canary
retriever's index. `retrieval.arm` and `retrieval.arm_probability` (p, 1 - p, or 1) are logged;
the pmf logged is over the candidates the arm retrieved and stays the exact propensity (the arm
is a function of the request).

**Shadow retriever.** After the decision is made, the shadow retriever retrieves top-k for the
same request (same k, rules, filters, exclusions; no draw from the sampling stream) and only
`retrieval.shadow` is added (`decision_service.retrieval.shadow_retrieval`): the response and
every other logged field are exactly those without a shadow. A shadow that fails logs
``shadow: null`` and is counted (`/v1/status`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from typing import Any

from decision_service.decide import decide
from decision_service.rank_input import RankInput
from decision_service.retrieval import LoopIndexes, Retrieved, ServingIndex, shadow_retrieval
from decision_service.runtime import LoopRuntime
from explore.arms import CANARY
from log.records import DecisionRecord

logger = logging.getLogger(__name__)

__all__ = ["decide_request", "with_shadow_retrieval"]


def decide_request(
    req: RankInput,
    body: dict[str, Any],
    runtime: LoopRuntime,
    now: datetime,
    event_id: str,
    indexes: LoopIndexes | None,
) -> DecisionRecord:
    """The decision of a request (`indexes`: the loop's serving indexes, for a `retrieve`)."""
    if req.retrieve is None or indexes is None:
        return decide(req, body, runtime, now, event_id)
    arm, index, arm_probability = indexes.arm(runtime.config.sampling_key, req.user_id, event_id)
    assert index is not None
    retrieved = index.retrieve(
        req.context,
        req.retrieve.k,
        runtime.config.retrieval,
        req.retrieve.filters,
        frozenset(req.excluded),
        now,
    )
    retrieved = replace(retrieved, arm=arm, arm_probability=arm_probability)
    if arm == CANARY:
        runtime.counters.retriever_canary_served += 1
    record = decide(req, body, runtime, now, event_id, retrieved)
    if indexes.shadow is not None:
        record = with_shadow_retrieval(runtime, req, record, retrieved, indexes.shadow, now)
    return record


def with_shadow_retrieval(
    runtime: LoopRuntime,
    req: RankInput,
    record: DecisionRecord,
    retrieved: Retrieved,
    shadow: ServingIndex,
    now: datetime,
) -> DecisionRecord:
    """`record` with the shadow retriever's summary in `retrieval.shadow` (null when it
    failed: counted); nothing else changes."""
    assert req.retrieve is not None and record.retrieval is not None
    chosen = [slot["action_id"] for slot in record.slots]
    counters = runtime.counters
    summary: dict[str, Any] | None
    try:
        summary = shadow_retrieval(
            shadow,
            retrieved,
            chosen,
            req.context,
            req.retrieve.k,
            runtime.config.retrieval,
            req.retrieve.filters,
            frozenset(req.excluded),
            now,
        )
        counters.retriever_shadow_retrieved += 1
    except Exception as err:  # the shadow must never fail a request
        summary = None
        counters.retriever_shadow_failed += 1
        if counters.retriever_shadow_failed % 1000 == 1:
            logger.warning(
                "loop %s: shadow retriever %s failed (%d so far): %s",
                runtime.name,
                shadow.retriever,
                counters.retriever_shadow_failed,
                err,
            )
    return replace(record, retrieval={**record.retrieval, "shadow": summary})
