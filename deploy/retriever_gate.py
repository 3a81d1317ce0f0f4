"""The retriever gate: does a candidate two-tower retriever find rewarded items better than the
live one, on events it was not trained on?

The VW gate replays policies off-policy; a retriever retrieves items the log never showed, so
importance weighting has no support. This gate measures instead, on the held-out joined
decisions (decided after the candidate's ``trained_until``, from its metrics), per event with a
rewarded item still in the active catalog, whether that item is in each retriever's top-k over
the active catalog (recall@k: a hit is 1 when at most k items score at least as high, ties
counting against it), and the ROC AUC of each retriever's scores on the shown items. The
comparison is the live retriever or, when the loop has none, a popularity baseline (items
ranked by how often they were rewarded in events decided up to ``trained_until``).

:func:`decide` (pure) turns the paired difference of recall@k (candidate - baseline, with the
VW gate's interval: the anytime-valid confidence sequence when ``gate.sequential``, else the
bootstrap; terms bounded in [0, 1]) and the loop's :class:`~log.deploy_settings.GateSettings`
into a verdict, in this order:

1. ``pending`` when there is no estimate (fewer than 2 held-out events with a rewarded item, no
   ``trained_until`` in the candidate's metrics).
2. ``fail`` when the difference's UPPER bound is below ``gate.margin`` (it cannot be better by
   the margin).
3. ``pass`` when ``n >= gate.min_events`` and the LOWER bound is above ``gate.margin``.
4. ``fail`` once ``gate.max_events`` held-out events were read (at most that many are), else
   ``pending`` with what is missing.

The AUCs are reported, not decided on (an AUC over shown items says how the retriever orders
what the log showed, recall@k what it would retrieve). Every verdict is stored in
``gate_verdicts`` (``numbers["kind"] == "retriever"``) and returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from deploy.gate import gate_alpha, gate_interval
from deploy.interval import Interval
from evaluation.paired import paired_difference
from evaluation.simulator_catalog import roc_auc
from explore.errors import Conflict, NotFound
from log.deploy_settings import GateSettings, section_json
from log.loops import get_loop
from log.retriever_gate_reads import (
    HeldOutEvent,
    active_item_features,
    held_out_events,
    rewarded_counts,
)
from log.retrievers import get_retriever, live_retriever, read_retriever_artifact
from log.schema import Engine
from log.verdicts import VerdictRecord, store_verdict

__all__ = [
    "DEFAULT_K",
    "MAX_K",
    "RetrieverNumbers",
    "check_retriever",
    "decide",
    "recall_hits",
]

DEFAULT_K = 50
MAX_K = 10_000
_SCORE_CELLS = 1 << 24  # scores computed per chunk of events (events x items float32)


@dataclass(frozen=True)
class RetrieverNumbers:
    """What the retriever gate decides from: `n` held-out events with a rewarded item in the
    active catalog; `difference`: recall@k (candidate - baseline) with its interval (None: no
    estimate, `error` says why)."""

    n: int
    difference: Interval | None
    error: str | None = None
    held_out: int = 0  # held-out events read (with a rewarded item or not)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def decide(numbers: RetrieverNumbers, settings: GateSettings) -> tuple[str, str]:
    """The (decision, reason) of the retriever gate (see the module docstring). Pure."""
    conf = f"{settings.confidence:.3g}"
    diff = numbers.difference
    if numbers.error is not None or diff is None or numbers.n < 2:
        why = numbers.error or f"{numbers.n} held-out events with a rewarded item"
        return "pending", f"no estimate yet: {why}"
    if diff.ci_high < settings.margin:
        return "fail", (
            f"recall@k is not better than the baseline by the margin {_fmt(settings.margin)}: "
            f"the difference is at most {_fmt(diff.ci_high)} (estimate {_fmt(diff.value)}, "
            f"confidence {conf}, {numbers.n} events)"
        )
    if numbers.n >= settings.min_events and diff.ci_low > settings.margin:
        return "pass", (
            f"recall@k is better than the baseline by more than {_fmt(settings.margin)}: the "
            f"difference is at least {_fmt(diff.ci_low)} (estimate {_fmt(diff.value)}, "
            f"confidence {conf}, {numbers.n} events)"
        )
    missing: list[str] = []
    if numbers.n < settings.min_events:
        missing.append(f"{numbers.n} held-out events of the {settings.min_events} needed")
    if diff.ci_low <= settings.margin:
        missing.append(
            f"the difference's interval [{_fmt(diff.ci_low)}, {_fmt(diff.ci_high)}] does not "
            f"exclude the margin {_fmt(settings.margin)}"
        )
    if max(numbers.n, numbers.held_out) >= settings.max_events:
        seen = max(numbers.n, numbers.held_out)
        return "fail", f"undecided after {seen} held-out events: " + "; ".join(missing)
    return "pending", "; ".join(missing)


def recall_hits(scores: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """Per row of `scores` (events x items), 1.0 when the item at column `target` is in the
    top `k`: at most `k` items (itself included) score at least as high."""
    own = scores[np.arange(len(target)), target][:, None]
    return ((scores >= own).sum(axis=1) <= k).astype(np.float64)


@dataclass(frozen=True)
class _Measured:
    hits: np.ndarray
    auc: float


def _measure(
    events: Sequence[HeldOutEvent],
    targets: np.ndarray,
    rows: Sequence[int],
    user_vectors: Callable[[Sequence[dict[str, Any]]], np.ndarray],
    item_matrix: np.ndarray,
    shown_scores: Callable[[np.ndarray, Sequence[HeldOutEvent]], np.ndarray],
    k: int,
) -> _Measured:
    """Recall@k hits over the catalog for the events `rows` (their rewarded item `targets`)
    and the AUC of the scores of the shown items of every event."""
    chunk = max(1, _SCORE_CELLS // max(1, item_matrix.shape[0]))
    hits: list[np.ndarray] = []
    scores_shown: list[np.ndarray] = []
    labels: list[bool] = []
    for start in range(0, len(events), chunk):
        part = events[start : start + chunk]
        scores_shown.append(shown_scores(user_vectors([e.context for e in part]), part))
        for event in part:
            labels.extend(event.rewarded)
    for start in range(0, len(rows), chunk):
        sel = [events[i] for i in rows[start : start + chunk]]
        users = user_vectors([e.context for e in sel])
        scores = users.astype(np.float64) @ item_matrix.T
        hits.append(recall_hits(scores, targets[start : start + chunk], k))
    all_hits = np.concatenate(hits) if hits else np.zeros(0)
    shown = np.concatenate(scores_shown) if scores_shown else np.zeros(0)
    return _Measured(all_hits, roc_auc(shown, np.asarray(labels, dtype=bool)))


def _model_scorer(
    engine: Engine, version: str, items: list[tuple[str, dict[str, Any]]]
) -> tuple[Callable[[Sequence[dict[str, Any]]], np.ndarray], np.ndarray, Any]:
    from policies.two_tower import load_two_tower

    model = load_two_tower(read_retriever_artifact(engine, version))
    matrix = model.embed_items([f for _, f in items]).astype(np.float64)

    def shown(users: np.ndarray, events: Sequence[HeldOutEvent]) -> np.ndarray:
        """Scores of the shown items by their features as logged."""
        vectors = model.embed_items([f for e in events for f in e.features]).astype(np.float64)
        repeat = np.repeat(users.astype(np.float64), [len(e.shown) for e in events], axis=0)
        return np.einsum("ij,ij->i", repeat, vectors)

    return model.embed_users, matrix, shown


def _finite(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def check_retriever(
    engine: Engine,
    loop: str,
    version: str,
    *,
    k: int = DEFAULT_K,
    now: datetime | None = None,
) -> VerdictRecord:
    """Measure `version` against the live retriever (or the popularity baseline) on its
    held-out events, decide, store the verdict and return it. Raises NotFound (``loop_not_found``,
    ``not_found``), Conflict ``not_a_candidate`` (the version is not a candidate, shadow or canary),
    ValueError (k
    out of [1, MAX_K])."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be in [1, {MAX_K}], got {k}")
    stored = get_loop(engine, loop)
    if stored is None:
        raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
    settings = stored.config.gate
    info = get_retriever(engine, version)
    if info is None or info.loop != loop:
        raise NotFound(f"no retriever version {version!r} in loop {loop!r}", "not_found")
    if info.status not in ("candidate", "shadow", "canary"):
        raise Conflict(
            f"retriever {version} is {info.status}: the gate checks candidates (also in shadow "
            "or canary)",
            "not_a_candidate",
        )
    live = live_retriever(engine, loop)
    baseline = "popularity" if live is None else f"retriever:{live.version}"
    as_json: dict[str, Any] = {"kind": "retriever", "k": k, "baseline": baseline}
    numbers = RetrieverNumbers(n=0, difference=None)
    trained_until = info.metrics.get("trained_until")
    if not isinstance(trained_until, int | float) or isinstance(trained_until, bool):
        numbers = RetrieverNumbers(
            0, None, "the candidate's metrics have no trained_until (held-out events unknown)"
        )
    else:
        until = datetime.fromtimestamp(float(trained_until), UTC)
        as_json["trained_until"] = until.isoformat()
        numbers, measured = _numbers(engine, loop, version, live, until, settings, k)
        as_json.update(measured)
    as_json["n"] = numbers.n
    as_json["error"] = numbers.error
    decision, reason = decide(numbers, settings)
    return store_verdict(
        engine,
        VerdictRecord(
            loop=loop,
            version=version,
            incumbent=None if live is None else live.version,
            at=now or datetime.now(UTC),
            decision=decision,
            reason=reason,
            criteria={
                **section_json(settings),
                "interval": gate_interval(settings),
                "alpha": gate_alpha(settings),
                "estimator": f"recall@{k}",
                "kind": "retriever",
            },
            numbers=as_json,
        ),
    )


def _numbers(
    engine: Engine,
    loop: str,
    version: str,
    live: Any,
    until: datetime,
    settings: GateSettings,
    k: int,
) -> tuple[RetrieverNumbers, dict[str, Any]]:
    items = active_item_features(engine, loop)
    # at most max_events held-out events are read (the gate decides by then)
    events = held_out_events(engine, loop, until, limit=settings.max_events)
    index = {item_id: i for i, (item_id, _) in enumerate(items)}
    rows: list[int] = []
    targets: list[int] = []
    for i, event in enumerate(events):
        hit = next(
            (s for s, r in zip(event.shown, event.rewarded, strict=True) if r and s in index),
            None,
        )
        if hit is not None:
            rows.append(i)
            targets.append(index[hit])
    out: dict[str, Any] = {"items": len(items), "held_out": len(events)}
    if len(rows) < 2 or not items:
        return RetrieverNumbers(len(rows), None, held_out=len(events)), out
    target = np.asarray(targets, dtype=np.int64)
    cand = _measure(events, target, rows, *_model_scorer(engine, version, items), k)
    if live is not None:
        base = _measure(events, target, rows, *_model_scorer(engine, live.version, items), k)
    else:
        counts = rewarded_counts(engine, loop, until)
        pop = np.asarray([float(counts.get(i, 0)) for i, _ in items])

        def constant(contexts: Sequence[dict[str, Any]]) -> np.ndarray:
            return np.ones((len(contexts), 1))

        def shown(_: np.ndarray, part: Sequence[HeldOutEvent]) -> np.ndarray:
            return np.asarray([float(counts.get(i, 0)) for e in part for i in e.shown])

        base = _measure(events, target, rows, constant, pop[:, None], shown, k)
    paired = paired_difference(
        cand.hits,
        base.hits,
        interval=gate_interval(settings),
        alpha=gate_alpha(settings),
        bounds=(0.0, 1.0),
        rng=0,
    )
    d = paired.difference
    diff = Interval(d.value, d.ci_low, d.ci_high)
    out.update(
        {
            "recall": {"candidate": float(cand.hits.mean()), "live": float(base.hits.mean())},
            "difference": diff.to_json(),
            "auc": {"candidate": _finite(cand.auc), "live": _finite(base.auc)},
            "interval": gate_interval(settings),
            "alpha": gate_alpha(settings),
        }
    )
    return RetrieverNumbers(len(rows), diff, held_out=len(events)), out
