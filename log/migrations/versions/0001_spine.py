"""spine

Revision ID: 0001
Revises:
Create Date: 2026-11-23 05:07:36.135436
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("loop", sa.String(length=256), nullable=False),
        sa.Column("event_id", sa.String(length=256), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(length=256), nullable=False),
        sa.Column("policy_arm", sa.String(length=64), nullable=False),
        sa.Column("request_digest", sa.String(length=64), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.Column("pmf", sa.JSON(), nullable=False),
        sa.Column("excluded", sa.JSON(), nullable=False),
        sa.Column("chosen", sa.String(length=256), nullable=False),
        sa.Column("slots", sa.JSON(), nullable=False),
        sa.Column("n_slots", sa.Integer(), nullable=False),
        sa.Column("is_slate", sa.Boolean(), nullable=False),
        sa.Column("deferred", sa.Boolean(), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reward_deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("loop", "event_id"),
    )
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index("ix_decisions_loop_decided", ["loop", "decided_at"], unique=False)
        batch_op.create_index(
            "ix_decisions_open_windows",
            ["loop", "reward_deadline"],
            unique=False,
            sqlite_where=sa.text("joined_at IS NULL"),
            postgresql_where=sa.text("joined_at IS NULL"),
        )

    op.create_table(
        "loops",
        sa.Column("loop", sa.String(length=256), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("loop"),
    )
    op.create_table(
        "models",
        sa.Column("version", sa.String(length=256), nullable=False),
        sa.Column("loop", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("vw_args", sa.Text(), nullable=False),
        sa.Column("artifact", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("parent", sa.String(length=256), nullable=True),
        sa.Column("trained_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trained_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("n_events", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_index("ix_models_loop_status", ["loop", "status"], unique=False)

    op.create_table(
        "outcomes",
        sa.Column("loop", sa.String(length=256), nullable=False),
        sa.Column("event_id", sa.String(length=256), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("reward", sa.Float(), nullable=False),
        sa.Column("default_applied", sa.Boolean(), nullable=False),
        sa.Column("n_rewards", sa.Integer(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("loop", "event_id", "slot"),
    )
    with op.batch_alter_table("outcomes", schema=None) as batch_op:
        batch_op.create_index("ix_outcomes_loop_decided", ["loop", "decided_at"], unique=False)

    op.create_table(
        "rewards",
        sa.Column("reward_id", sa.String(length=36), nullable=False),
        sa.Column("loop", sa.String(length=256), nullable=False),
        sa.Column("event_id", sa.String(length=256), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("reward_id"),
    )
    with op.batch_alter_table("rewards", schema=None) as batch_op:
        batch_op.create_index("ix_rewards_loop_event", ["loop", "event_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("rewards", schema=None) as batch_op:
        batch_op.drop_index("ix_rewards_loop_event")

    op.drop_table("rewards")
    with op.batch_alter_table("outcomes", schema=None) as batch_op:
        batch_op.drop_index("ix_outcomes_loop_decided")

    op.drop_table("outcomes")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index("ix_models_loop_status")

    op.drop_table("models")
    op.drop_table("loops")
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_decisions_open_windows",
            sqlite_where=sa.text("joined_at IS NULL"),
            postgresql_where=sa.text("joined_at IS NULL"),
        )
        batch_op.drop_index("ix_decisions_loop_decided")

    op.drop_table("decisions")
