"""Retrieval on the serving path: each loop's index over its catalog, rebuilt and swapped in
without a restart, and the retrieval of a request's candidates.

A loop with a live retriever gets a `ServingIndex`: the retriever's towers, an ANN index over
the active items' embeddings (`policies.ann_index`) and the items' features and ages as of the
catalog clock it was built at. Every `DS_LOOP_REFRESH_S` the worker compares each loop's
(catalog clock, live retriever) with its index's; when either moved it builds a new index off
the request path and replaces the reference in one assignment: a request holds the index it
started with to its end, so a swap never fails or mixes a request. Each build's numbers (kind,
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

from explore import Action
from explore.errors import Conflict, InvalidInput
from explore.rules import FeaturePredicate, RetrievalRules, passes
from log.catalog import (
    ItemUpsert,
    catalog_seq,
    iter_items_to_embed,
    read_snapshot,
    upsert_items,
)
from log.retrievers import (
    RetrieverVersion,
    live_retriever,
    promote_retriever,
    read_retriever_artifact,
    record_index_build,
)
from log.schema import Engine
from log.verdicts import latest_verdict
from policies.ann_index import AnnIndex, IndexParams, build_index

logger = logging.getLogger(__name__)

__all__ = ["RetrievalRegistry", "Retrieved", "ServingIndex"]


@dataclass(frozen=True)
class Retrieved:
    """A request's candidates (best first by the retriever) with their creation times."""

    actions: list[Action]
    created_ts: np.ndarray  # epoch seconds
    retriever: str
    index_version: str


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
    engine: Engine, loop: str, params: IndexParams | None = None, models: Any = None
) -> ServingIndex | None:
    """Build `loop`'s index from its live retriever and catalog (None without either)."""
    from policies.two_tower import load_two_tower, one_torch_thread

    one_torch_thread()
    params = params or IndexParams()
    live = live_retriever(engine, loop)
    if live is None:
        return None
    snapshot = read_snapshot(engine, loop, live.version)
    if not snapshot.ids:
        return None
    model = (
        models(live.version)
        if models
        else load_two_tower(read_retriever_artifact(engine, live.version))
    )
    if snapshot.embeddings.shape[1] != model.config.dim:
        logger.error("loop %s: catalog embeddings do not match retriever %s", loop, live.version)
        return None
    ann = build_index(snapshot.embeddings, params)
    version = index_version(live.version, snapshot.seq, params)
    created = np.asarray([c.timestamp() for c in snapshot.created_at])
    details = {
        **ann.details(),
        "retriever": live.version,
        "catalog_seq": snapshot.seq,
        "index_mb": round(ann.size_bytes() / 2**20, 3),
    }
    record_index_build(engine, loop, version, details, datetime.now(UTC))
    logger.info("loop %s: index %s built (%s)", loop, version, details)
    return ServingIndex(
        loop,
        version,
        live.version,
        snapshot.seq,
        model,
        ann,
        snapshot.ids,
        snapshot.features,
        created,
    )


class RetrievalRegistry:
    """This worker's serving index per loop; rebuilt off the request path, swapped by one
    reference assignment."""

    def __init__(self, engine: Engine, params: IndexParams | None = None) -> None:
        self.engine = engine
        self.params = params or IndexParams()
        self.indexes: dict[str, ServingIndex] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.builds = 0
        self._models: dict[str, Any] = {}

    def _lock(self, loop: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(loop, threading.Lock())

    def _stale(self, loop: str) -> bool:
        current = self.indexes.get(loop)
        live = live_retriever(self.engine, loop)
        if live is None:
            return current is not None
        return (
            current is None
            or current.retriever != live.version
            or current.catalog_seq != catalog_seq(self.engine, loop)
        )

    def rebuild(self, loop: str) -> ServingIndex | None:
        """Rebuild `loop`'s index if its catalog or retriever moved (blocking), then swap."""
        with self._lock(loop):
            if not self._stale(loop):
                return self.indexes.get(loop)
            start = time.perf_counter()
            built = build_serving_index(self.engine, loop, self.params, self._model)
            self.builds += 1
            if built is None:
                self.indexes.pop(loop, None)
            else:
                self.indexes[loop] = built  # the swap: one reference assignment
                logger.info("loop %s: index swapped in %.2fs", loop, time.perf_counter() - start)
            return built

    def refresh(self, loops: list[str]) -> None:
        for loop in loops:
            try:
                self.rebuild(loop)
            except Exception:  # keep serving the index it has
                logger.exception("loop %s: index rebuild failed", loop)

    def _model(self, version: str) -> Any:
        from policies.two_tower import load_two_tower

        with self._guard:
            model = self._models.get(version)
        if model is None:
            model = load_two_tower(read_retriever_artifact(self.engine, version))
            with self._guard:
                self._models = {version: model, **dict(list(self._models.items())[:3])}
        return model

    def item_tower(self, loop: str) -> tuple[str, Any] | None:
        """(version, model) of the loop's live retriever, for cold-start embeddings."""
        live = live_retriever(self.engine, loop)
        return None if live is None else (live.version, self._model(live.version))

    def upsert(self, loop: str, items: list[ItemUpsert]) -> tuple[int, int]:
        """Store items (one transaction), embedding those sent without one by the live item
        tower (cold start). Returns (inserted, embedded)."""
        tower = self.item_tower(loop)
        embed: dict[str, tuple[tuple[float, ...], str]] = {}
        if tower is not None:
            version, model = tower
            for item in items:
                if item.embedding is not None and len(item.embedding) != model.config.dim:
                    raise InvalidInput(
                        f"item {item.item_id!r}: embedding has {len(item.embedding)} numbers; "
                        f"the live retriever {version} embeds in {model.config.dim}",
                        "embedding_dimension",
                    )
            missing = [item for item in items if item.embedding is None]
            if missing:
                vectors = model.embed_items([item.features for item in missing])
                if not np.isfinite(vectors).all():
                    raise InvalidInput("an item's features give a non-finite embedding")
                for item, vector in zip(missing, vectors, strict=True):
                    embed[item.item_id] = (tuple(float(x) for x in vector), version)
        inserted = upsert_items(self.engine, loop, items, datetime.now(UTC), embed)
        return inserted, len(embed)

    def promote(
        self,
        loop: str,
        version: str,
        actor: str,
        *,
        reason: str | None = None,
        override: bool = False,
    ) -> RetrieverVersion:
        """Embed the catalog by `version`'s item tower and make it live in one transaction
        (its latest retriever-gate verdict must have passed, unless `override` with a
        `reason`; see :func:`log.retrievers.promote_retriever`)."""
        if override and not (reason and reason.strip()):
            raise InvalidInput("an override needs a reason", "reason_required")
        if not override:  # fail fast, before embedding the catalog (checked again inside)
            verdict = latest_verdict(self.engine, version)
            if verdict is None or not verdict.passed:
                seen = "no gate verdict" if verdict is None else f"its latest is {verdict.decision}"
                raise Conflict(
                    f"retriever {version} has not passed the retriever gate ({seen}): run the "
                    "check, or override with a reason",
                    "gate_not_passed",
                )
        model = self._model(version)
        vectors: list[tuple[str, np.ndarray]] = []
        for chunk in iter_items_to_embed(self.engine, loop, version):
            embedded = model.embed_items([features for _, features in chunk])
            vectors.extend(zip([i for i, _ in chunk], embedded, strict=True))
        record = promote_retriever(
            self.engine,
            loop,
            version,
            datetime.now(UTC),
            actor,
            vectors,
            reason,
            override=override,
        )
        self.rebuild(loop)
        return record

    def get(self, loop: str) -> ServingIndex:
        """The loop's index, built now when this worker has none yet (blocking)."""
        index = self.indexes.get(loop)
        if index is None:
            index = self.rebuild(loop)
        if index is None:
            raise Conflict(
                f"loop {loop!r} has no live retriever or no catalog item with an embedding: "
                "send actions, or load items and register a retriever",
                "no_retriever",
            )
        return index
