"""Catalog and retrieval: items per loop, retriever versions, index builds, the decision's
retrieval record.

- catalog_items: one row per (loop, item): features, created_at, active, an optional embedding
  (float32 bytes) with the model that produced it ("client" for a precomputed one), updated_at.
- catalog_clock: per loop, a counter bumped by every change of the catalog (the serving index is
  rebuilt when it moves).
- retrievers: two-tower model versions of a loop (artifact with its sha256, metrics, status).
- retrieval_indexes: every index build (kind, items, recall@k against exact search).
- decisions.retrieval: the retriever version, index version and k a decision was ranked from.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_ID = 256
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "catalog_items",
        sa.Column("loop", sa.String(_ID), primary_key=True),
        sa.Column("item_id", sa.String(_ID), primary_key=True),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("embedding_model", sa.String(_ID), nullable=True),
    )
    op.create_index("ix_catalog_items_loop_active", "catalog_items", ["loop", "active"])
    op.create_table(
        "catalog_clock",
        sa.Column("loop", sa.String(_ID), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "retrievers",
        sa.Column("version", sa.String(_ID), primary_key=True),
        sa.Column("loop", sa.String(_ID), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("artifact", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_index("ix_retrievers_loop_status", "retrievers", ["loop", "status"])
    op.create_index(
        "ux_retrievers_one_live",
        "retrievers",
        ["loop"],
        unique=True,
        sqlite_where=sa.text("status = 'live'"),
        postgresql_where=sa.text("status = 'live'"),
    )
    op.create_table(
        "retrieval_indexes",
        sa.Column("index_version", sa.String(_ID), primary_key=True),
        sa.Column("loop", sa.String(_ID), nullable=False),
        sa.Column("built_at", _TS, nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    op.create_index("ix_retrieval_indexes_loop", "retrieval_indexes", ["loop", "built_at"])
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.add_column(sa.Column("retrieval", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.drop_column("retrieval")
    op.drop_index("ix_retrieval_indexes_loop", table_name="retrieval_indexes")
    op.drop_table("retrieval_indexes")
    op.drop_index("ux_retrievers_one_live", table_name="retrievers")
    op.drop_index("ix_retrievers_loop_status", table_name="retrievers")
    op.drop_table("retrievers")
    op.drop_table("catalog_clock")
    op.drop_index("ix_catalog_items_loop_active", table_name="catalog_items")
    op.drop_table("catalog_items")
