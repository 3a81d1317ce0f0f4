"""Retriever rollout: shadow and canary retrievers with their own item embeddings.

- item_embeddings: the item-tower embedding of each catalog item by each retriever version in
  shadow or canary (the live retriever's stay in catalog_items.embedding), with the item's
  updated_at they were computed from; dropped when the version is rejected or promoted.
- retrievers.canary_percent (the canary's share of traffic), retrievers.replaced (the live
  version a promotion retired: the rollback target).
- ux_retrievers_one_shadow / ux_retrievers_one_canary: at most one of each per loop.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_ID = 256
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "item_embeddings",
        sa.Column("loop", sa.String(_ID), primary_key=True),
        sa.Column("retriever", sa.String(_ID), primary_key=True),
        sa.Column("item_id", sa.String(_ID), primary_key=True),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("features_at", _TS, nullable=False),
    )
    with op.batch_alter_table("retrievers") as batch_op:
        batch_op.add_column(sa.Column("canary_percent", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("replaced", sa.String(_ID), nullable=True))
    for status in ("shadow", "canary"):
        op.create_index(
            f"ux_retrievers_one_{status}",
            "retrievers",
            ["loop"],
            unique=True,
            sqlite_where=sa.text(f"status = '{status}'"),
            postgresql_where=sa.text(f"status = '{status}'"),
        )


def downgrade() -> None:
    for status in ("shadow", "canary"):
        op.drop_index(f"ux_retrievers_one_{status}", table_name="retrievers")
    with op.batch_alter_table("retrievers") as batch_op:
        batch_op.drop_column("replaced")
        batch_op.drop_column("canary_percent")
    op.drop_table("item_embeddings")
