"""Deploy: rollout states, gate verdicts, keys, audit log, alarms, guardrail metrics, learner

- models: `canary_percent` (share of traffic while canary), `replaced` (the version that was live
  when this one's lineage became live: what a rollback returns to), `live_since`; at most one
  canary and one shadow version per loop (unique partial indexes, like the live one).
- decisions: `arm_probability` (probability of the arm that served it: 1 without a canary split)
  and `shadow` (the shadow candidate's version and pmf, logged beside the served one).
- rewards: `metric` ('' for the reward; a guardrail's name, such as "report", otherwise).
- outcomes: `guardrails` (per guardrail metric, how many were received inside the window).
- gate_verdicts: every verdict of the promotion gate with its numbers and its reason.
- api_keys: hashed API keys with a role and an optional list of loops.
- audit_log: append-only (triggers refuse UPDATE and DELETE) record of every state change.
- alarms: raised and cleared alarms per loop.
- learner_state: per loop, the learner's freshness track (stopped by a failed check) and times.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ID = 256
_TS = sa.DateTime(timezone=True)
_BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_PG_APPEND_ONLY = (
    """
    CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$
    BEGIN
      RAISE EXCEPTION 'audit_log is append-only';
    END;
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()
    """,
)
_SQLITE_APPEND_ONLY = (
    """
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END
    """,
    """
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END
    """,
)


def _one_per_loop(name: str, status: str) -> None:
    op.create_index(
        name,
        "models",
        ["loop"],
        unique=True,
        sqlite_where=sa.text(f"status = '{status}'"),
        postgresql_where=sa.text(f"status = '{status}'"),
    )


def upgrade() -> None:
    with op.batch_alter_table("models") as batch_op:
        batch_op.add_column(sa.Column("canary_percent", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("replaced", sa.String(_ID), nullable=True))
        batch_op.add_column(sa.Column("live_since", _TS, nullable=True))
    _one_per_loop("ux_models_one_canary", "canary")
    _one_per_loop("ux_models_one_shadow", "shadow")
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.add_column(
            sa.Column("arm_probability", sa.Float(), nullable=False, server_default="1.0")
        )
        batch_op.add_column(sa.Column("shadow", sa.JSON(), nullable=True))
    with op.batch_alter_table("rewards") as batch_op:
        batch_op.add_column(sa.Column("metric", sa.String(64), nullable=False, server_default=""))
    with op.batch_alter_table("outcomes") as batch_op:
        batch_op.add_column(sa.Column("guardrails", sa.JSON(), nullable=True))
    op.create_table(
        "gate_verdicts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("loop", sa.String(_ID), nullable=False),
        sa.Column("version", sa.String(_ID), nullable=False),
        sa.Column("incumbent", sa.String(_ID), nullable=True),
        sa.Column("at", _TS, nullable=False),
        sa.Column("look", sa.Integer(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("criteria", sa.JSON(), nullable=False),
        sa.Column("numbers", sa.JSON(), nullable=False),
    )
    op.create_index("ix_gate_verdicts_loop_version", "gate_verdicts", ["loop", "version", "at"])
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(_ID), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("loops", sa.JSON(), nullable=True),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(_ID), nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.Column("revoked_by", sa.String(_ID), nullable=True),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", _BIGID, primary_key=True, autoincrement=True),
        sa.Column("at", _TS, nullable=False),
        sa.Column("actor", sa.String(_ID), nullable=False),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("loop", sa.String(_ID), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(_ID), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    op.create_index("ix_audit_log_loop_seq", "audit_log", ["loop", "seq"])
    statements = (
        _PG_APPEND_ONLY if op.get_bind().dialect.name == "postgresql" else _SQLITE_APPEND_ONLY
    )
    for statement in statements:
        op.execute(sa.text(statement))
    op.create_table(
        "alarms",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("loop", sa.String(_ID), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("raised_at", _TS, nullable=False),
        sa.Column("cleared_at", _TS, nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    op.create_index("ix_alarms_loop_state", "alarms", ["loop", "state"])
    op.create_table(
        "learner_state",
        sa.Column("loop", sa.String(_ID), primary_key=True),
        sa.Column("freshness_stopped_at", _TS, nullable=True),
        sa.Column("freshness_reason", sa.Text(), nullable=True),
        sa.Column("last_freshness_at", _TS, nullable=True),
        sa.Column("last_candidate_at", _TS, nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("learner_state")
    op.drop_index("ix_alarms_loop_state", table_name="alarms")
    op.drop_table("alarms")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.text("DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log"))
        op.execute(sa.text("DROP FUNCTION IF EXISTS audit_log_append_only()"))
    op.drop_index("ix_audit_log_loop_seq", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("api_keys")
    op.drop_index("ix_gate_verdicts_loop_version", table_name="gate_verdicts")
    op.drop_table("gate_verdicts")
    with op.batch_alter_table("outcomes") as batch_op:
        batch_op.drop_column("guardrails")
    with op.batch_alter_table("rewards") as batch_op:
        batch_op.drop_column("metric")
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.drop_column("shadow")
        batch_op.drop_column("arm_probability")
    op.drop_index("ux_models_one_shadow", table_name="models")
    op.drop_index("ux_models_one_canary", table_name="models")
    with op.batch_alter_table("models") as batch_op:
        batch_op.drop_column("live_since")
        batch_op.drop_column("replaced")
        batch_op.drop_column("canary_percent")
