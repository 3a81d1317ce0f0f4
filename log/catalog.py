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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from log.models import CatalogClock, CatalogItemRow

__all__ = [
    "CLIENT_EMBEDDING",
    "CatalogItem",
    "CatalogSnapshot",
    "ItemUpsert",
    "catalog_seq",
    "delete_items",
    "get_item",
    "iter_items_to_embed",
    "list_items",
    "read_snapshot",
    "set_active",
    "upsert_items",
    "write_embeddings",
]

CLIENT_EMBEDDING = "client"
"""`embedding_model` of an embedding the client sent precomputed."""


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
) -> int:
    """Insert or replace `items` (ids distinct) in one transaction; returns how many were new.
    `embed`: embeddings computed by the server (item id -> (vector, model version)) for items
    sent without one."""
    embed = embed or {}
    if not items:
        return 0
    ids = [i.item_id for i in items]
    with engine.begin() as conn:
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
        bump_clock(conn, loop)
    return len(set(ids) - existing)


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
    engine: Engine, loop: str, model: str | None = None, *, chunk: int = 10_000
) -> CatalogSnapshot:
    """The active items with an embedding (by `model` or the client's, when `model` is given),
    in item-id order, and the clock they are as of (one transaction: a change committed
    meanwhile is in neither)."""
    ids: list[str] = []
    vectors: list[bytes] = []
    features: list[dict[str, Any]] = []
    created: list[datetime] = []
    models: list[str | None] = []
    with engine.connect() as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        seq = conn.execute(select(CatalogClock.seq).where(CatalogClock.loop == loop)).scalar()
        result = conn.execution_options(yield_per=chunk).execute(
            select(
                CatalogItemRow.item_id,
                CatalogItemRow.embedding,
                CatalogItemRow.features,
                CatalogItemRow.created_at,
                CatalogItemRow.embedding_model,
            )
            .where(
                CatalogItemRow.loop == loop,
                CatalogItemRow.active.is_(True),
                CatalogItemRow.embedding.is_not(None),
                *(
                    ()
                    if model is None
                    else (CatalogItemRow.embedding_model.in_([model, CLIENT_EMBEDDING]),)
                ),
            )
            .order_by(CatalogItemRow.item_id)
        )
        for row in result:
            ids.append(row.item_id)
            vectors.append(row.embedding)
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
) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Chunks of (item id, features) of items whose embedding is not `model`'s nor the
    client's (to be embedded by `model`'s item tower)."""
    after = ""
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                select(CatalogItemRow.item_id, CatalogItemRow.features)
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
        yield [(r.item_id, r.features) for r in rows]
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
