"""Personalizer compatibility: the evaluations of the Personalizer API.

- personalizer_evaluations: a Personalizer evaluation (its id, chosen by the client in the
  2022-09-01-preview API, or the run's id in v1.x) -> the native evaluation run that computes it
  (`evaluations.id`), with the contract as sent (name, window, policies, optimization discovery)
  and the Personalizer name of each native policy.

Revision ID: 0009
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ID = 256
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "personalizer_evaluations",
        sa.Column("loop", sa.String(_ID), primary_key=True),
        sa.Column("evaluation_id", sa.String(_ID), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("contract", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index(
        "ix_personalizer_evaluations_loop_created",
        "personalizer_evaluations",
        ["loop", "created_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_personalizer_evaluations_loop_created", "personalizer_evaluations")
    op.drop_table("personalizer_evaluations")
