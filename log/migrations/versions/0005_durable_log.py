"""Durable log: commit-ordered join sequence, activations, writer watermarks, one live model

- decisions.join_seq / outcomes.join_seq: the join batch that closed the window, from a per-loop
  counter whose row lock is held until commit, so sequence order is commit order.
- join_clock: that counter.
- activations: a deferred decision's activation, stored on its own (kept whichever of decision
  and activation reaches the database first; the joiner applies it).
- writers: each writer process's watermark (every row it acknowledged with a timestamp at or
  before it is in the database); the joiner closes no window past the lowest.
- models.checkpoint_seq: the join_seq an online continuation resumes after;
  at most one live version per loop (unique partial index).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.add_column(sa.Column("join_seq", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_decisions_loop_join_seq", ["loop", "join_seq"], unique=False)
    with op.batch_alter_table("outcomes") as batch_op:
        batch_op.add_column(sa.Column("join_seq", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("models") as batch_op:
        batch_op.add_column(sa.Column("checkpoint_seq", sa.BigInteger(), nullable=True))
    op.create_index(
        "ux_models_one_live",
        "models",
        ["loop"],
        unique=True,
        sqlite_where=sa.text("status = 'live'"),
        postgresql_where=sa.text("status = 'live'"),
    )
    op.create_table(
        "join_clock",
        sa.Column("loop", sa.String(256), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "activations",
        sa.Column("loop", sa.String(256), primary_key=True),
        sa.Column("event_id", sa.String(256), primary_key=True),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reward_deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "ix_activations_pending",
        "activations",
        ["loop"],
        sqlite_where=sa.text("NOT applied"),
        postgresql_where=sa.text("NOT applied"),
    )
    op.create_table(
        "writers",
        sa.Column("writer_id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("spool_dir", sa.Text(), nullable=False),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    )
    _backfill_join_seq()


# Windows joined before this revision: one join_seq per distinct joined_at of a loop (a join run
# stamped all its batches with one joined_at), in joined_at order; the clock continues after
# the highest; a model's checkpoint (a joined_at) becomes the highest join_seq at or before it.
_BACKFILL = (
    """
    UPDATE decisions SET join_seq = (
      SELECT r.seq FROM (
        SELECT loop, joined_at, DENSE_RANK() OVER (PARTITION BY loop ORDER BY joined_at) AS seq
        FROM decisions WHERE joined_at IS NOT NULL
      ) r WHERE r.loop = decisions.loop AND r.joined_at = decisions.joined_at LIMIT 1)
    WHERE joined_at IS NOT NULL AND join_seq IS NULL
    """,
    """
    UPDATE outcomes SET join_seq = (
      SELECT d.join_seq FROM decisions d
      WHERE d.loop = outcomes.loop AND d.event_id = outcomes.event_id)
    WHERE join_seq IS NULL
    """,
    """
    INSERT INTO join_clock (loop, seq)
    SELECT loop, MAX(join_seq) FROM decisions WHERE join_seq IS NOT NULL GROUP BY loop
    """,
    """
    UPDATE models SET checkpoint_seq = (
      SELECT MAX(d.join_seq) FROM decisions d
      WHERE d.loop = models.loop AND d.joined_at <= models.checkpoint)
    WHERE checkpoint IS NOT NULL AND checkpoint_seq IS NULL
    """,
)


def _backfill_join_seq() -> None:
    for statement in _BACKFILL:
        op.execute(sa.text(statement))


def downgrade() -> None:
    op.drop_table("writers")
    op.drop_index("ix_activations_pending", table_name="activations")
    op.drop_table("activations")
    op.drop_table("join_clock")
    op.drop_index("ux_models_one_live", table_name="models")
    with op.batch_alter_table("models") as batch_op:
        batch_op.drop_column("checkpoint_seq")
    with op.batch_alter_table("outcomes") as batch_op:
        batch_op.drop_column("join_seq")
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.drop_index("ix_decisions_loop_join_seq")
        batch_op.drop_column("join_seq")
