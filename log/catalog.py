"""The item catalog of each loop (table `catalog_items`) and its change clock: all the SQL.

An item has an id, features (what the policy scores and the rules read), `created_at` (its age
for the rules), `active` (only active items are retrieved) and an optional embedding (float32
bytes) with the model that produced it: a retriever version, or "client" for one sent
precomputed. Every change bumps the loop's `catalog_clock` in its own transaction: a serving
index built at clock value s holds exactly the catalog of s.

Upserting an item that exists replaces its features (and embedding when one is given), keeps its
`created_at` unless one is sent, and makes it active again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from log.loop_lock import lock_loop, take_write_lock
from log.models import CatalogClock, CatalogItemRow, ItemEmbeddingRow, RetrieverRow

__all__ = [
    "CLIENT_EMBEDDING",
    "CatalogItem",
    "CatalogSnapshot",
    "Embedder",
    "ItemUpsert",
    "RolloutMoved",
    "catalog_seq",
    "catch_up_catalog",
    "catch_up_side",
    "copy_side_to_catalog",
    "delete_items",
    "drop_side",
    "get_item",
    "iter_items_to_embed",
    "list_items",
    "read_snapshot",
    "rolled_out_in",
    "set_active",
    "upsert_items",
    "write_embeddings",
]

CLIENT_EMBEDDING = "client"
"""`embedding_model` of an embedding the client sent precomputed."""

Embedder = Callable[[str, list[dict[str, Any]]], np.ndarray]
"""(retriever version, items' features) -> their embeddings by that version's item tower."""


class RolloutMoved(Exception):
    """The loop's rolled-out retrievers changed between embedding an upsert's items and storing
    them: the upsert is retried with the new set (nothing was written)."""


@dataclass(frozen=True)
class ItemUpsert:
    """One item as sent: `created_at` None keeps the stored one (now for a new item);
    `embedding` None keeps the stored one (a new item gets the live item tower's, if any)."""

    item_id: str
    features: dict[str, Any]
    created_at: datetime | None = None
    embedding: tuple[float, ...] | None = None


@dataclass(frozen=True)
class CatalogItem:
    item_id: str
    features: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    active: bool
    embedding: tuple[float, ...] | None
    embedding_model: str | None

    def to_json(self, *, with_embedding: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.item_id,
            "features": self.features,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "active": self.active,
            "embedding_model": self.embedding_model,
        }
        if with_embedding:
            out["embedding"] = None if self.embedding is None else list(self.embedding)
        return out


@dataclass(frozen=True)
class CatalogSnapshot:
    """The active items that have an embedding, in item-id order, at clock value `seq`."""

    seq: int
    ids: list[str]
    embeddings: np.ndarray  # (n, dim) float32
    features: list[dict[str, Any]]
    created_at: list[datetime]
    models: list[str | None]


def _vector(blob: bytes | None) -> tuple[float, ...] | None:
    if blob is None:
        return None
    return tuple(float(x) for x in np.frombuffer(blob, dtype=np.float32))


def pack(vector: Sequence[float] | np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def bump_clock(conn: Connection, loop: str) -> None:
    """Count one change of `loop`'s catalog (inside the change's transaction)."""
    stmt = _insert(conn)(CatalogClock).values(loop=loop, seq=1)
    conn.execute(
        stmt.on_conflict_do_update(index_elements=["loop"], set_={"seq": CatalogClock.seq + 1})
    )


def catalog_seq(engine: Engine, loop: str) -> int:
    with engine.connect() as conn:
        seq = conn.execute(select(CatalogClock.seq).where(CatalogClock.loop == loop)).scalar()
    return int(seq or 0)


def upsert_items(
    engine: Engine,
    loop: str,
    items: Sequence[ItemUpsert],
    now: datetime,
    embed: dict[str, tuple[tuple[float, ...], str]] | None = None,
    side: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    rolled_out: frozenset[str] | None = None,
) -> int:
    """Insert or replace `items` (ids distinct) in one transaction; returns how many were new.
    `embed`: embeddings computed by the server (item id -> (vector, model version)) for items
    sent without one. `side`: per retriever in shadow or canary, its embeddings of the items
    (stored in `item_embeddings` as of `now`). `rolled_out`: the retriever versions (live,
    shadow, canary) the embeddings were computed for; checked under the loop's lock (the lock of
    the retrievers' transitions), RolloutMoved when the set changed meanwhile (nothing
    written), so every rolled-out retriever has an embedding of every item it may retrieve."""
    embed = embed or {}
    if not items:
        return 0
    ids = [i.item_id for i in items]
    with engine.begin() as conn:
        if rolled_out is not None:
            take_write_lock(conn)
            lock_loop(conn, loop)
            if frozenset(rolled_out_in(conn, loop)) != rolled_out:
                raise RolloutMoved(loop)
        existing = set(
            conn.execute(
                select(CatalogItemRow.item_id).where(
                    CatalogItemRow.loop == loop, CatalogItemRow.item_id.in_(ids)
                )
            ).scalars()
        )
        insert = _insert(conn)
        # Four statement shapes: with/without created_at, with/without an embedding.
        groups: dict[tuple[bool, bool], list[dict[str, Any]]] = {}
        for item in items:
            row: dict[str, Any] = {
                "loop": loop,
                "item_id": item.item_id,
                "features": item.features,
                "created_at": item.created_at or now,
                "updated_at": now,
                "active": True,
                "embedding": None,
                "embedding_model": None,
            }
            has_embedding = True
            if item.embedding is not None:
                row["embedding"], row["embedding_model"] = pack(item.embedding), CLIENT_EMBEDDING
            elif item.item_id in embed:
                vector, model = embed[item.item_id]
                row["embedding"], row["embedding_model"] = pack(vector), model
            else:
                has_embedding = False
            groups.setdefault((item.created_at is not None, has_embedding), []).append(row)
        for (sent_created, has_embedding), rows in groups.items():
            stmt = insert(CatalogItemRow)
            changed = {"features": stmt.excluded.features, "updated_at": stmt.excluded.updated_at}
            changed["active"] = stmt.excluded.active
            if sent_created:
                changed["created_at"] = stmt.excluded.created_at
            if has_embedding:
                changed["embedding"] = stmt.excluded.embedding
                changed["embedding_model"] = stmt.excluded.embedding_model
            conn.execute(
                stmt.on_conflict_do_update(index_elements=["loop", "item_id"], set_=changed), rows
            )
        for version, vectors in (side or {}).items():
            write_side(conn, loop, version, [(i, v, now) for i, v in vectors.items()])
        bump_clock(conn, loop)
    return len(set(ids) - existing)


def rolled_out_in(conn: Connection, loop: str) -> dict[str, str]:
    """Version -> status of `loop`'s retrievers that serve or watch traffic (live, shadow,
    canary), read on the caller's connection."""
    rows = conn.execute(
        select(RetrieverRow.version, RetrieverRow.status).where(
            RetrieverRow.loop == loop, RetrieverRow.status.in_(("live", "shadow", "canary"))
        )
    ).all()
    return {r.version: r.status for r in rows}


def write_side(
    conn: Connection,
    loop: str,
    version: str,
    vectors: Sequence[tuple[str, Sequence[float] | np.ndarray, datetime]],
) -> None:
    """Insert or replace `version`'s embeddings (item id, vector, the item's updated_at they
    were computed from) in `item_embeddings`, inside the caller's transaction."""
    if not vectors:
        return
    stmt = _insert(conn)(ItemEmbeddingRow)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["loop", "retriever", "item_id"],
            set_={"embedding": stmt.excluded.embedding, "features_at": stmt.excluded.features_at},
        ),
        [
            {
                "loop": loop,
                "retriever": version,
                "item_id": item_id,
                "embedding": pack(vector),
                "features_at": at,
            }
            for item_id, vector, at in vectors
        ],
    )


def drop_side(conn: Connection, loop: str, versions: Sequence[str]) -> None:
    """Delete the `item_embeddings` of `versions` (rejected, promoted or retired)."""
    if versions:
        conn.execute(
            delete(ItemEmbeddingRow).where(
                ItemEmbeddingRow.loop == loop, ItemEmbeddingRow.retriever.in_(list(versions))
            )
        )


def _not_client() -> Any:
    return or_(
        CatalogItemRow.embedding_model.is_(None),
        CatalogItemRow.embedding_model != CLIENT_EMBEDDING,
    )


def catch_up_side(
    conn: Connection, loop: str, version: str, embed: Embedder, *, chunk: int = 2_000
) -> int:
    """Embed by `version` every item of `loop` (not client-embedded) that has no embedding of
    it or one computed from older features (`features_at` != the item's updated_at), inside
    the caller's locked transaction. Returns how many were embedded."""
    ie = ItemEmbeddingRow
    stale = (
        select(CatalogItemRow.item_id, CatalogItemRow.features, CatalogItemRow.updated_at)
        .outerjoin(
            ie,
            and_(
                ie.loop == CatalogItemRow.loop,
                ie.retriever == version,
                ie.item_id == CatalogItemRow.item_id,
            ),
        )
        .where(
            CatalogItemRow.loop == loop,
            _not_client(),
            or_(ie.item_id.is_(None), ie.features_at != CatalogItemRow.updated_at),
        )
        .order_by(CatalogItemRow.item_id)
    )
    rows = conn.execute(stale).all()
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        vectors = embed(version, [r.features for r in part])
        write_side(
            conn,
            loop,
            version,
            [(r.item_id, v, r.updated_at) for r, v in zip(part, vectors, strict=True)],
        )
    return len(rows)


def copy_side_to_catalog(conn: Connection, loop: str, version: str) -> int:
    """Make `version`'s fresh side embeddings (computed from the item's current features) the
    catalog's (`embedding_model` = `version`; client embeddings kept), inside the caller's
    transaction: a shadow or canary promoted reuses what it computed."""
    ie = ItemEmbeddingRow
    match = and_(
        ie.loop == CatalogItemRow.loop,
        ie.retriever == version,
        ie.item_id == CatalogItemRow.item_id,
        ie.features_at == CatalogItemRow.updated_at,
    )
    n = conn.execute(
        update(CatalogItemRow)
        .where(CatalogItemRow.loop == loop, _not_client(), exists().where(match))
        .values(
            embedding=select(ie.embedding).where(match).scalar_subquery(),
            embedding_model=version,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    return int(n or 0)


def catch_up_catalog(
    conn: Connection, loop: str, version: str, embed: Embedder, *, chunk: int = 2_000
) -> int:
    """Embed by `version` every item of `loop` whose catalog embedding is neither `version`'s
    nor the client's, inside the caller's locked transaction. Returns how many."""
    rows = conn.execute(
        select(CatalogItemRow.item_id, CatalogItemRow.features)
        .where(
            CatalogItemRow.loop == loop,
            or_(
                CatalogItemRow.embedding_model.is_(None),
                CatalogItemRow.embedding_model.not_in([version, CLIENT_EMBEDDING]),
            ),
        )
        .order_by(CatalogItemRow.item_id)
    ).all()
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        vectors = embed(version, [r.features for r in part])
        write_embeddings(
            conn, loop, [(r.item_id, v) for r, v in zip(part, vectors, strict=True)], version
        )
    return len(rows)


def set_active(engine: Engine, loop: str, ids: Sequence[str], active: bool, now: datetime) -> int:
    """(De)activate items; returns how many exist among `ids`."""
    with engine.begin() as conn:
        n = conn.execute(
            update(CatalogItemRow)
            .where(CatalogItemRow.loop == loop, CatalogItemRow.item_id.in_(list(ids)))
            .values(active=active, updated_at=now)
        ).rowcount
        if n:
            bump_clock(conn, loop)
    return int(n)


def delete_items(engine: Engine, loop: str, ids: Sequence[str]) -> int:
    with engine.begin() as conn:
        n = conn.execute(
            delete(CatalogItemRow).where(
                CatalogItemRow.loop == loop, CatalogItemRow.item_id.in_(list(ids))
            )
        ).rowcount
        conn.execute(
            delete(ItemEmbeddingRow).where(
                ItemEmbeddingRow.loop == loop, ItemEmbeddingRow.item_id.in_(list(ids))
            )
        )
        if n:
            bump_clock(conn, loop)
    return int(n)


_COLUMNS = (
    CatalogItemRow.item_id,
    CatalogItemRow.features,
    CatalogItemRow.created_at,
    CatalogItemRow.updated_at,
    CatalogItemRow.active,
    CatalogItemRow.embedding,
    CatalogItemRow.embedding_model,
)


def _item(row: Any) -> CatalogItem:
    return CatalogItem(
        item_id=row.item_id,
        features=row.features,
        created_at=row.created_at,
        updated_at=row.updated_at,
        active=row.active,
        embedding=_vector(row.embedding),
        embedding_model=row.embedding_model,
    )


def get_item(engine: Engine, loop: str, item_id: str) -> CatalogItem | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(*_COLUMNS).where(CatalogItemRow.loop == loop, CatalogItemRow.item_id == item_id)
        ).first()
    return None if row is None else _item(row)


def list_items(
    engine: Engine, loop: str, *, after: str | None, limit: int, active: bool | None = None
) -> tuple[list[CatalogItem], int]:
    """A page of items in item-id order after the cursor `after` (stable under concurrent
    changes: an item is on the page of its id), and the loop's total count."""
    query = select(*_COLUMNS).where(CatalogItemRow.loop == loop)
    count = select(func.count()).select_from(CatalogItemRow).where(CatalogItemRow.loop == loop)
    if active is not None:
        query = query.where(CatalogItemRow.active == active)
        count = count.where(CatalogItemRow.active == active)
    if after is not None:
        query = query.where(CatalogItemRow.item_id > after)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(CatalogItemRow.item_id).limit(limit)).all()
        total = int(conn.execute(count).scalar() or 0)
    return [_item(r) for r in rows], total


def read_snapshot(
    engine: Engine, loop: str, model: str | None = None, *, side: bool = False, chunk: int = 10_000
) -> CatalogSnapshot:
    """The active items with an embedding (by `model` or the client's, when `model` is given),
    in item-id order, and the clock they are as of (one transaction: a change committed
    meanwhile is in neither). `side`: `model` is a shadow or canary retriever, whose
    embeddings are in `item_embeddings` (a client's embedding still wins)."""
    ids: list[str] = []
    vectors: list[bytes] = []
    features: list[dict[str, Any]] = []
    created: list[datetime] = []
    models: list[str | None] = []
    with engine.connect() as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        seq = conn.execute(select(CatalogClock.seq).where(CatalogClock.loop == loop)).scalar()
        if side and model is not None:
            ie = ItemEmbeddingRow
            query = (
                select(
                    CatalogItemRow.item_id,
                    CatalogItemRow.embedding,
                    CatalogItemRow.features,
                    CatalogItemRow.created_at,
                    CatalogItemRow.embedding_model,
                    ie.embedding.label("side_embedding"),
                )
                .outerjoin(
                    ie,
                    and_(
                        ie.loop == CatalogItemRow.loop,
                        ie.retriever == model,
                        ie.item_id == CatalogItemRow.item_id,
                    ),
                )
                .where(
                    CatalogItemRow.loop == loop,
                    CatalogItemRow.active.is_(True),
                    or_(
                        ie.item_id.is_not(None),
                        and_(
                            CatalogItemRow.embedding_model == CLIENT_EMBEDDING,
                            CatalogItemRow.embedding.is_not(None),
                        ),
                    ),
                )
            )
        else:
            query = select(
                CatalogItemRow.item_id,
                CatalogItemRow.embedding,
                CatalogItemRow.features,
                CatalogItemRow.created_at,
                CatalogItemRow.embedding_model,
            ).where(
                CatalogItemRow.loop == loop,
                CatalogItemRow.active.is_(True),
                CatalogItemRow.embedding.is_not(None),
                *(
                    ()
                    if model is None
                    else (CatalogItemRow.embedding_model.in_([model, CLIENT_EMBEDDING]),)
                ),
            )
        result = conn.execution_options(yield_per=chunk).execute(
            query.order_by(CatalogItemRow.item_id)
        )
        for row in result:
            client = row.embedding_model == CLIENT_EMBEDDING and row.embedding is not None
            ids.append(row.item_id)
            vectors.append(row.embedding if client or not side else row.side_embedding)
            features.append(row.features)
            created.append(row.created_at)
            models.append(row.embedding_model)
    dims = {len(v) for v in vectors}
    if len(dims) > 1:  # embeddings of another size (an older model's) are left out
        common = max(dims, key=lambda d: sum(len(v) == d for v in vectors))
        keep = [i for i, v in enumerate(vectors) if len(v) == common]
        ids = [ids[i] for i in keep]
        vectors = [vectors[i] for i in keep]
        features = [features[i] for i in keep]
        created = [created[i] for i in keep]
        models = [models[i] for i in keep]
    matrix = (
        np.frombuffer(b"".join(vectors), dtype=np.float32).reshape(len(ids), -1)
        if ids
        else np.zeros((0, 0), dtype=np.float32)
    )
    return CatalogSnapshot(int(seq or 0), ids, matrix, features, created, models)


def iter_items_to_embed(
    engine: Engine, loop: str, model: str, *, chunk: int = 2_000
) -> Iterator[list[tuple[str, dict[str, Any], datetime]]]:
    """Chunks of (item id, features, updated_at) of items whose catalog embedding is not
    `model`'s nor the client's (to be embedded by `model`'s item tower)."""
    after = ""
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                select(CatalogItemRow.item_id, CatalogItemRow.features, CatalogItemRow.updated_at)
                .where(
                    CatalogItemRow.loop == loop,
                    CatalogItemRow.item_id > after,
                    (CatalogItemRow.embedding_model.is_(None))
                    | (CatalogItemRow.embedding_model.not_in([model, CLIENT_EMBEDDING])),
                )
                .order_by(CatalogItemRow.item_id)
                .limit(chunk)
            ).all()
        if not rows:
            return
        yield [(r.item_id, r.features, r.updated_at) for r in rows]
        after = rows[-1].item_id


def write_embeddings(
    conn: Connection, loop: str, vectors: Sequence[tuple[str, np.ndarray]], model: str
) -> None:
    """Store embeddings computed by `model` inside the caller's transaction (bumps the clock)."""
    if not vectors:
        return
    conn.execute(
        update(CatalogItemRow)
        .where(CatalogItemRow.loop == loop, CatalogItemRow.item_id == bindparam("b_item_id"))
        .values(embedding=bindparam("b_embedding"), embedding_model=model),
        [{"b_item_id": i, "b_embedding": pack(v)} for i, v in vectors],
    )
    bump_clock(conn, loop)
