"""Retrieval on the serving path: each loop's index over its catalog, rebuilt and swapped in
without a restart, and the retrieval of a request's candidates.

A loop with a live retriever gets a `ServingIndex`: the retriever's towers, an ANN index over
the active items' embeddings (`policies.ann_index`) and the items' features and ages as of the
catalog clock it was built at; a retriever in shadow or canary gets one of its own, over its
own embeddings of the catalog (`LoopIndexes` holds the three). Every `DS_LOOP_REFRESH_S` the
worker compares each loop's (catalog clock, live / shadow / canary retrievers) with its
indexes'; when one moved it builds new indexes off the request path and replaces the reference
in one assignment: a request holds the indexes it started with to its end, so a swap never
fails or mixes a request. A canary retriever retrieves for its share of the units
(`LoopIndexes.arm`); a shadow retrieves after the served decision (`shadow_retrieval`) and
changes nothing served. Each build's numbers (kind,
items, recall@k against exact search, build time) are stored in `retrieval_indexes` under its
index version, a digest of (retriever, catalog clock, index parameters): with one math thread
per process the build, and so retrieval, is deterministic given the context and that version.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from deploy.retriever_rollout import move_retriever, rollback_retriever
from explore import Action
from explore.arms import CANARY, LIVE, ArmSplit, retriever_salt, split_unit
from explore.errors import Conflict, InvalidInput
from explore.rules import FeaturePredicate, RetrievalRules, passes
from log.catalog import (
    ItemUpsert,
    RolloutMoved,
    catalog_seq,
    read_snapshot,
    upsert_items,
)
from log.retrievers import (
    RetrieverVersion,
    live_retriever,
    read_retriever_artifact,
    record_index_build,
    rolled_out,
)
from log.schema import Engine
from policies.ann_index import AnnIndex, IndexParams, build_index

logger = logging.getLogger(__name__)

__all__ = ["LoopIndexes", "RetrievalRegistry", "Retrieved", "ServingIndex", "shadow_retrieval"]


@dataclass(frozen=True)
class Retrieved:
    """A request's candidates (best first by the retriever) with their creation times."""

    actions: list[Action]
    created_ts: np.ndarray  # epoch seconds
    retriever: str
    index_version: str
    arm: str = LIVE  # the retriever arm: "live", or "canary" (the canary retriever's units)
    arm_probability: float = 1.0  # the probability of that arm (p, 1 - p, or 1)


@dataclass(frozen=True)
class ServingIndex:
    loop: str
    version: str
    retriever: str
    catalog_seq: int
    model: Any  # policies.two_tower.TwoTower (torch is loaded only where retrieval is used)
    ann: AnnIndex
    ids: list[str]
    features: list[dict[str, Any]]
    created_ts: np.ndarray

    def retrieve(
        self,
        context: dict[str, Any],
        k: int,
        rules: RetrievalRules,
        filters: tuple[FeaturePredicate, ...],
        excluded: frozenset[str],
        now: datetime,
    ) -> Retrieved:
        """The k best items (by the retriever's score) that pass the hard filters, asking the
        index for k x overfetch."""
        user = self.model.embed_user(context)
        if not np.isfinite(user).all():
            raise InvalidInput("the context's user embedding is not finite", "invalid_context")
        fetch = min(self.ann.n, math.ceil(k * rules.overfetch))
        _, positions = self.ann.search(user, fetch)
        now_ts = now.timestamp()
        actions: list[Action] = []
        created: list[float] = []
        for pos in positions[0].tolist():
            if pos < 0:
                continue
            item_id, features = self.ids[pos], self.features[pos]
            if item_id in excluded:
                continue
            created_at = float(self.created_ts[pos])
            if not passes(rules, item_id, features, now_ts - created_at, filters):
                continue
            actions.append(Action.validated(item_id, features))
            created.append(created_at)
            if len(actions) == k:
                break
        if not actions:
            raise InvalidInput(
                "no catalog item passes the filters among the retrieved ones", "no_candidates"
            )
        return Retrieved(actions, np.asarray(created), self.retriever, self.version)


def index_version(retriever: str, seq: int, params: IndexParams) -> str:
    digest = hashlib.sha256(f"{retriever}|{seq}|{params}".encode()).hexdigest()
    return f"ix-{digest[:16]}"


def build_serving_index(
    engine: Engine,
    loop: str,
    params: IndexParams | None = None,
    models: Any = None,
    retriever: RetrieverVersion | None = None,
) -> ServingIndex | None:
    """Build `loop`'s index for `retriever` (default: the live one) from its embeddings of the
    catalog (a shadow's or canary's are its own, `item_embeddings`); None without a retriever
    or items."""
    from policies.two_tower import load_two_tower, one_torch_thread

    one_torch_thread()
    params = params or IndexParams()
    chosen = retriever if retriever is not None else live_retriever(engine, loop)
    if chosen is None:
        return None
    snapshot = read_snapshot(engine, loop, chosen.version, side=chosen.status != "live")
    if not snapshot.ids:
        return None
    model = (
        models(chosen.version)
        if models
        else load_two_tower(read_retriever_artifact(engine, chosen.version))
    )
    if snapshot.embeddings.shape[1] != model.config.dim:
        logger.error("loop %s: catalog embeddings do not match retriever %s", loop, chosen.version)
        return None
    ann = build_index(snapshot.embeddings, params)
    version = index_version(chosen.version, snapshot.seq, params)
    created = np.asarray([c.timestamp() for c in snapshot.created_at])
    details = {
        **ann.details(),
        "retriever": chosen.version,
        "role": chosen.status,
        "catalog_seq": snapshot.seq,
        "index_mb": round(ann.size_bytes() / 2**20, 3),
    }
    record_index_build(engine, loop, version, details, datetime.now(UTC))
    logger.info("loop %s: index %s built (%s)", loop, version, details)
    return ServingIndex(
        loop,
        version,
        chosen.version,
        snapshot.seq,
        model,
        ann,
        snapshot.ids,
        snapshot.features,
        created,
    )


@dataclass(frozen=True)
class LoopIndexes:
    """A loop's serving indexes in this worker, swapped together by one assignment: the live
    retriever's, and those of its shadow and canary retrievers (with the canary's percent)."""

    live: ServingIndex | None
    shadow: ServingIndex | None = None
    canary: ServingIndex | None = None
    canary_percent: float | None = None

    def arm(
        self, key: bytes, user_id: str | None, event_id: str
    ) -> tuple[str, ServingIndex | None, float]:
        """(retriever arm, its index, the arm's probability) of a request: the canary
        retriever's share of units (:mod:`explore.arms`, salted by its version) retrieve with
        it; without a canary index every request retrieves with live (probability 1)."""
        pct = self.canary_percent
        if self.canary is None or pct is None or not 0.0 < pct < 100.0:
            return LIVE, self.live, 1.0
        split = ArmSplit(key, retriever_salt(self.canary.retriever), pct / 100.0)
        name, probability = split.arm(split_unit(user_id, event_id))
        return name, self.canary if name == CANARY else self.live, probability

    def versions(self) -> dict[str, str | None]:
        held = (("live", self.live), ("shadow", self.shadow), ("canary", self.canary))
        return {role: None if index is None else index.retriever for role, index in held}


def shadow_retrieval(
    shadow: ServingIndex,
    served: Retrieved,
    chosen: list[str],
    context: dict[str, Any],
    k: int,
    rules: RetrievalRules,
    filters: tuple[FeaturePredicate, ...],
    excluded: frozenset[str],
    now: datetime,
) -> dict[str, Any]:
    """What the shadow retriever would have retrieved for the same request (same k, rules,
    filters and exclusions), summarised against the served candidate set: its size `n`, the
    items in `common`, `overlap` = common / max(n, served size) (1 exactly when the two sets are
    equal), whether each served slot's item (`slots_in`; `chosen_in` the first) is in its set.
    Raises when it cannot retrieve (the caller logs null)."""
    got = shadow.retrieve(context, k, rules, filters, excluded, now)
    ids = {a.id for a in got.actions}
    common = len(ids & {a.id for a in served.actions})
    return {
        "retriever": got.retriever,
        "index": got.index_version,
        "n": len(ids),
        "common": common,
        "overlap": common / max(len(ids), len(served.actions)),
        "chosen_in": chosen[0] in ids,
        "slots_in": [item in ids for item in chosen],
    }


_ROLES = ("live", "shadow", "canary")


class RetrievalRegistry:
    """This worker's serving indexes per loop (live, shadow, canary retrievers); rebuilt off
    the request path, swapped by one reference assignment."""

    def __init__(self, engine: Engine, params: IndexParams | None = None) -> None:
        self.engine = engine
        self.params = params or IndexParams()
        self.loops: dict[str, LoopIndexes] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.builds = 0
        self._models: dict[str, Any] = {}

    @property
    def indexes(self) -> dict[str, ServingIndex]:
        """Loop -> its live index (as this worker serves it now)."""
        return {loop: held.live for loop, held in self.loops.items() if held.live is not None}

    def _lock(self, loop: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(loop, threading.Lock())

    def rebuild(self, loop: str) -> ServingIndex | None:
        """Rebuild those of `loop`'s indexes whose retriever or catalog moved (blocking), then
        swap them in at once; returns the live one. A shadow or canary whose index cannot be
        built is left out (logged): the loop serves live alone."""
        with self._lock(loop):
            current = self.loops.get(loop, LoopIndexes(None))
            held = {role: getattr(current, role) for role in _ROLES}
            versions = rolled_out(self.engine, loop)
            seq = catalog_seq(self.engine, loop)
            built: dict[str, ServingIndex | None] = {}
            changed = False
            start = time.perf_counter()
            for role in _ROLES:
                record = versions.get(role)
                if record is None:
                    built[role] = None
                    changed |= held[role] is not None
                    continue
                reuse = next(
                    (
                        index
                        for index in held.values()
                        if index is not None
                        and index.retriever == record.version
                        and index.catalog_seq == seq
                    ),
                    None,
                )
                if reuse is not None:
                    built[role] = reuse
                    changed |= held[role] is not reuse
                    continue
                try:
                    built[role] = build_serving_index(
                        self.engine, loop, self.params, self._model, record
                    )
                except Exception:
                    if role == "live":
                        raise
                    logger.exception(
                        "loop %s: %s retriever %s: index failed", loop, role, record.version
                    )
                    built[role] = None
                self.builds += 1
                changed = True
            canary = versions.get("canary")
            pct = None if canary is None else canary.canary_percent
            if changed or pct != current.canary_percent:
                fresh = LoopIndexes(built["live"], built["shadow"], built["canary"], pct)
                self.loops[loop] = fresh  # the swap: one reference assignment
                logger.info(
                    "loop %s: indexes %s swapped in %.2fs",
                    loop,
                    fresh.versions(),
                    time.perf_counter() - start,
                )
            return built["live"]

    def refresh(self, loops: list[str]) -> None:
        for loop in loops:
            try:
                self.rebuild(loop)
            except Exception:  # keep serving the indexes it has
                logger.exception("loop %s: index rebuild failed", loop)

    def _model(self, version: str) -> Any:
        from policies.two_tower import load_two_tower

        with self._guard:
            model = self._models.get(version)
        if model is None:
            model = load_two_tower(read_retriever_artifact(self.engine, version))
            with self._guard:
                self._models = {version: model, **dict(list(self._models.items())[:5])}
        return model

    def item_tower(self, loop: str) -> tuple[str, Any] | None:
        """(version, model) of the loop's live retriever, for cold-start embeddings."""
        live = live_retriever(self.engine, loop)
        return None if live is None else (live.version, self._model(live.version))

    def upsert(self, loop: str, items: list[ItemUpsert]) -> tuple[int, int]:
        """Store items (one transaction), embedding them by every rolled-out retriever's item
        tower (cold start): the live one's for items sent without an embedding, a shadow's or
        canary's into its own embeddings. Retried when a retriever moved meanwhile. Returns
        (inserted, embedded by live)."""
        for attempt in range(5):
            try:
                return self._upsert(loop, items)
            except RolloutMoved:
                if attempt == 4:
                    raise Conflict(
                        f"loop {loop!r}: retrievers kept moving during the upsert; retry it",
                        "transition_conflict",
                    ) from None
        raise AssertionError("unreachable")

    def _upsert(self, loop: str, items: list[ItemUpsert]) -> tuple[int, int]:
        versions = rolled_out(self.engine, loop)
        for record in versions.values():
            dim = self._model(record.version).config.dim
            for item in items:
                if item.embedding is not None and len(item.embedding) != dim:
                    raise InvalidInput(
                        f"item {item.item_id!r}: embedding has {len(item.embedding)} numbers; "
                        f"the {record.status} retriever {record.version} embeds in {dim}",
                        "embedding_dimension",
                    )
        embed: dict[str, tuple[tuple[float, ...], str]] = {}
        side: dict[str, dict[str, np.ndarray]] = {}
        missing = [item for item in items if item.embedding is None]
        for role, record in versions.items():
            if not missing:
                break
            vectors = self._model(record.version).embed_items([item.features for item in missing])
            if not np.isfinite(vectors).all():
                raise InvalidInput("an item's features give a non-finite embedding")
            if role == "live":
                for item, vector in zip(missing, vectors, strict=True):
                    embed[item.item_id] = (tuple(float(x) for x in vector), record.version)
            else:
                side[record.version] = {
                    item.item_id: vector for item, vector in zip(missing, vectors, strict=True)
                }
        inserted = upsert_items(
            self.engine,
            loop,
            items,
            datetime.now(UTC),
            embed,
            side=side,
            rolled_out=frozenset(r.version for r in versions.values()),
        )
        return inserted, len(embed)

    def move(
        self,
        loop: str,
        version: str,
        to: str,
        actor: str,
        *,
        role: str | None = None,
        reason: str | None = None,
        override: bool = False,
        canary_percent: float | None = None,
    ) -> RetrieverVersion:
        """Move a retriever (:func:`deploy.retriever_rollout.move_retriever`) with this
        worker's models, then rebuild the loop's indexes."""
        record = move_retriever(
            self.engine,
            loop,
            version,
            to,
            actor=actor,
            role=role,
            reason=reason,
            override=override,
            canary_percent=canary_percent,
            model_of=self._model,
        )
        self.rebuild(loop)
        return record

    def promote(
        self,
        loop: str,
        version: str,
        actor: str,
        *,
        reason: str | None = None,
        override: bool = False,
        role: str | None = None,
    ) -> RetrieverVersion:
        """Make `version` live: its latest retriever-gate verdict must have passed, unless
        `override` with a `reason`. A shadow's or canary's own embeddings become the catalog's;
        a candidate's are computed first."""
        return self.move(loop, version, "live", actor, role=role, reason=reason, override=override)

    def rollback(
        self,
        loop: str,
        actor: str,
        *,
        reason: str,
        role: str | None = None,
        to: str | None = None,
        expected_live: str | None = None,
    ) -> RetrieverVersion:
        record = rollback_retriever(
            self.engine,
            loop,
            actor=actor,
            role=role,
            reason=reason,
            to=to,
            expected_live=expected_live,
            model_of=self._model,
        )
        self.rebuild(loop)
        return record

    def serving(self, loop: str) -> LoopIndexes:
        """The loop's indexes, built now when this worker has none yet (blocking); Conflict
        ``no_retriever`` without a live index."""
        held = self.loops.get(loop)
        if held is None or held.live is None:
            self.rebuild(loop)
            held = self.loops.get(loop)
        if held is None or held.live is None:
            raise Conflict(
                f"loop {loop!r} has no live retriever or no catalog item with an embedding: "
                "send actions, or load items and register a retriever",
                "no_retriever",
            )
        return held

    def get(self, loop: str) -> ServingIndex:
        """The loop's live index, built now when this worker has none yet (blocking)."""
        live = self.serving(loop).live
        assert live is not None
        return live
