"""Operate: 5-minute, hourly and daily metrics, per-worker request statistics, the rollup's
watermarks, dashboard sessions, and alarm delivery state.

- metrics_5m / metrics_1h / metrics_1d: additive sums per (loop, bucket, arm, model version);
  the row with arm "*" and model_version "*" is the loop's total. Derived figures (rates,
  means, quantiles) are computed when read.
- request_stats: additive rows each worker flushes (rank latency histogram, errors by code,
  spool backlog), merged by the rollup.
- metrics_state: per loop, the end of the last computed 5-minute bucket (the watermark the
  rollup recomputes from).
- dashboard_sessions: server-side dashboard sessions (a hash of the cookie's token, the key id,
  the CSRF token, expiry).
- alarms.notified: the last alarm state delivered to the webhook (raised / cleared), NULL
  when none was.
- indexes outcomes (loop, joined_at) and rewards (loop, received_at): what the rollup reads.

Revision ID: 0008
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_ID = 256
_TS = sa.DateTime(timezone=True)
GRAINS = ("5m", "1h", "1d")


def _metrics_table(name: str) -> None:
    op.create_table(
        name,
        sa.Column("loop", sa.String(_ID), primary_key=True),
        sa.Column("bucket", _TS, primary_key=True),
        sa.Column("arm", sa.String(64), primary_key=True),
        sa.Column("model_version", sa.String(_ID), primary_key=True),
        sa.Column("decisions", sa.BigInteger(), nullable=False),
        sa.Column("explored", sa.BigInteger(), nullable=False),
        sa.Column("prob_sum", sa.Float(), nullable=False),
        sa.Column("prob_min", sa.Float(), nullable=True),
        sa.Column("entropy_sum", sa.Float(), nullable=False),
        sa.Column("top_sum", sa.Float(), nullable=False),
        sa.Column("rewards", sa.BigInteger(), nullable=False),
        sa.Column("late_rewards", sa.BigInteger(), nullable=False),
        sa.Column("joined", sa.BigInteger(), nullable=False),
        sa.Column("rewarded", sa.BigInteger(), nullable=False),
        sa.Column("default_rewards", sa.BigInteger(), nullable=False),
        sa.Column("reward_sum", sa.Float(), nullable=False),
        sa.Column("reward_sq_sum", sa.Float(), nullable=False),
        sa.Column("join_lag_sum_s", sa.Float(), nullable=False),
        sa.Column("join_lag_max_s", sa.Float(), nullable=True),
        sa.Column("guardrails", sa.JSON(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("latency_hist", sa.JSON(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("spool_backlog_max", sa.BigInteger(), nullable=False),
    )
    op.create_index(f"ix_{name}_bucket", name, ["bucket"])


def upgrade() -> None:
    for grain in GRAINS:
        _metrics_table(f"metrics_{grain}")
    op.create_table(
        "request_stats",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("loop", sa.String(_ID), nullable=False),
        sa.Column("bucket", _TS, nullable=False),
        sa.Column("worker", sa.String(64), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("latency_hist", sa.JSON(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("spool_backlog_max", sa.BigInteger(), nullable=False),
        sa.Column("flushed_at", _TS, nullable=False),
    )
    op.create_index("ix_request_stats_loop_bucket", "request_stats", ["loop", "bucket"])
    op.create_table(
        "metrics_state",
        sa.Column("loop", sa.String(_ID), primary_key=True),
        sa.Column("through", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "dashboard_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
    )
    with op.batch_alter_table("alarms") as batch_op:
        batch_op.add_column(sa.Column("notified", sa.String(16), nullable=True))
    # the rollup reads outcomes by join time and rewards by arrival time
    op.create_index("ix_outcomes_loop_joined", "outcomes", ["loop", "joined_at"])
    op.create_index("ix_rewards_loop_received", "rewards", ["loop", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_rewards_loop_received", table_name="rewards")
    op.drop_index("ix_outcomes_loop_joined", table_name="outcomes")
    with op.batch_alter_table("alarms") as batch_op:
        batch_op.drop_column("notified")
    op.drop_table("dashboard_sessions")
    op.drop_table("metrics_state")
    op.drop_index("ix_request_stats_loop_bucket", table_name="request_stats")
    op.drop_table("request_stats")
    for grain in GRAINS:
        op.drop_index(f"ix_metrics_{grain}_bucket", table_name=f"metrics_{grain}")
        op.drop_table(f"metrics_{grain}")
