"""SQLAlchemy 2 models of the event store (DESIGN §5). Every table carries `loop`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

ID_LEN = 256


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every dialect (SQLite drops the offset otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Loop(Base):
    """One decision problem and its configuration (exploration, reward window, VW args, seed)."""

    __tablename__ = "loops"

    loop: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class DecisionRow(Base):
    """A served decision with the context and candidates exactly as they were at decision time."""

    __tablename__ = "decisions"

    loop: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    model_version: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    policy_arm: Mapped[str] = mapped_column(String(64), nullable=False)
    request_digest: Mapped[str] = mapped_column(String(64), nullable=False)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    # In request order: [[id, digest], ...] referring to `action_features` (revision 0012,
    # log/action_store.py); rows written before it hold [{"id": ..., "features": {...}}, ...].
    actions: Mapped[list[Any]] = mapped_column(JSON, nullable=False)
    # probability of each action (request order) of the distribution the first choice was
    # sampled from; excluded actions 0.
    pmf: Mapped[list[float]] = mapped_column(JSON, nullable=False)
    excluded: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    chosen: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    # [{"slot": k, "action_id": ..., "probability": conditional p}], one per slot (1 if no slate).
    slots: Mapped[list[Any]] = mapped_column(JSON, nullable=False)
    n_slots: Mapped[int] = mapped_column(Integer, nullable=False)
    is_slate: Mapped[bool] = mapped_column(Boolean, nullable=False)
    deferred: Mapped[bool] = mapped_column(Boolean, nullable=False)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # None while a deferred decision waits for activation.
    reward_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The exact response served, returned again on an idempotent retry.
    response: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    # Set by the joiner when the window closed and outcomes were written.
    joined_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The join batch that closed the window: commit-ordered per loop (see log/joiner.py).
    join_seq: Mapped[int | None] = mapped_column(BigInteger)
    # The probability of the arm (live or canary) that served it: 1 without a canary split.
    arm_probability: Mapped[float] = mapped_column(
        Float, nullable=False, server_default=text("1.0")
    )
    # The shadow candidate's {"version", "pmf"} scored beside the served decision, never served.
    shadow: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Ranked from the catalog: {"retriever", "index", "k", "filters"}; None when the request
    # sent its actions.
    retrieval: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        Index(
            "ix_decisions_open_windows",
            "loop",
            "reward_deadline",
            sqlite_where=text("joined_at IS NULL"),
            postgresql_where=text("joined_at IS NULL"),
        ),
        # the training and evaluation orders, whole (revision 0011; on PostgreSQL join_seq is
        # NULLS FIRST there, as the reads order it)
        Index("ix_decisions_loop_decided_event", "loop", "decided_at", "event_id"),
        Index("ix_decisions_loop_joined", "loop", "joined_at"),
        Index("ix_decisions_loop_seq_event", "loop", "join_seq", "event_id"),
    )


class ActionFeaturesRow(Base):
    """An action's body (its JSON without the id: ``{"features": {...}}``) stored once per loop
    under its BLAKE2b-128 digest; decisions refer to it (log/action_store.py). Append-only."""

    __tablename__ = "action_features"

    loop: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    digest: Mapped[str] = mapped_column(String(32), primary_key=True)
    body: Mapped[str] = mapped_column(Text, nullable=False)


class RewardRow(Base):
    """Append-only: every reward as received; `reward_id` makes spool shipping exactly-once."""

    __tablename__ = "rewards"

    reward_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    loop: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    event_id: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    slot: Mapped[int] = mapped_column(Integer, nullable=False)
    value: Mapped[float] = mapped_column(Float, nullable=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    late: Mapped[bool] = mapped_column(Boolean, nullable=False)
    # "" for the reward; otherwise the name of a guardrail metric ("report", "hide"...).
    metric: Mapped[str] = mapped_column(String(64), nullable=False, server_default=text("''"))

    __table_args__ = (
        Index("ix_rewards_loop_event", "loop", "event_id"),
        Index("ix_rewards_loop_received", "loop", "received_at"),  # the metrics rollup
    )


class OutcomeRow(Base):
    """The join: one row per (decision, slot) once its reward window closed."""

    __tablename__ = "outcomes"

    loop: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    reward: Mapped[float] = mapped_column(Float, nullable=False)
    default_applied: Mapped[bool] = mapped_column(Boolean, nullable=False)
    n_rewards: Mapped[int] = mapped_column(Integer, nullable=False)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    join_seq: Mapped[int | None] = mapped_column(BigInteger)
    # Per guardrail metric, how many of its signals were received inside the window.
    guardrails: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_outcomes_loop_decided", "loop", "decided_at"),
        Index("ix_outcomes_loop_joined", "loop", "joined_at"),  # the metrics rollup
    )


class ModelRow(Base):
    """A model version: artifact bytes with their sha256, lineage and status."""

    __tablename__ = "models"

    version: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    loop: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    vw_args: Mapped[str] = mapped_column(Text, nullable=False)
    artifact: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    parent: Mapped[str | None] = mapped_column(String(ID_LEN))
    trained_from: Mapped[datetime | None] = mapped_column(UTCDateTime())
    trained_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    n_events: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Online continuation resumes after this join watermark (outcomes joined later are new).
    checkpoint: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # ... and after this join_seq (commit-ordered; the watermark online continuation uses).
    checkpoint_seq: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    # The share of traffic (percent) a canary version serves.
    canary_percent: Mapped[float | None] = mapped_column(Float)
    # The version that was live when this version's lineage became live (rollback target).
    replaced: Mapped[str | None] = mapped_column(String(ID_LEN))
    live_since: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_models_loop_status", "loop", "status"),
        # at most one live, one canary and one shadow version per loop, enforced by the database
        *(
            Index(
                f"ux_models_one_{status}",
                "loop",
                unique=True,
                sqlite_where=text(f"status = '{status}'"),
                postgresql_where=text(f"status = '{status}'"),
            )
            for status in ("live", "canary", "shadow")
        ),
    )


class EvaluationRow(Base):
    """An offline evaluation run of a loop: its request, status, progress and result (JSON)."""

    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    loop: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    # queued -> running -> succeeded | failed
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    request: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # 0..1, updated while running.
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_evaluations_loop_created", "loop", "created_at"),)


class JoinClock(Base):
    """Per-loop join sequence. The joiner increments it last in each batch's transaction and
    holds the row lock until commit, so join_seq order is commit order."""

    __tablename__ = "join_clock"

    loop: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)


class ActivationRow(Base):
    """A deferred decision's activation, kept whichever of it and its decision lands first;
    the joiner copies it onto the decision (`applied`)."""

    __tablename__ = "activations"

    loop: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    activated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    reward_deadline: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    applied: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))

    __table_args__ = (
        Index(
            "ix_activations_pending",
            "loop",
            sqlite_where=text("NOT applied"),
            postgresql_where=text("NOT applied"),
        ),
    )


class WriterRow(Base):
    """A writer process and its watermark: every row it acknowledged whose timestamp is at or
    before `watermark` is in the database. The joiner closes no window past the lowest."""

    __tablename__ = "writers"

    writer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    spool_dir: Mapped[str] = mapped_column(Text, nullable=False)
    watermark: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class GateVerdictRow(Base):
    """One verdict of the promotion gate on a candidate: passed or not, why, and every number."""

    __tablename__ = "gate_verdicts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    loop: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    version: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    incumbent: Mapped[str | None] = mapped_column(String(ID_LEN))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    # 1 for the first check of this candidate, 2 for the next... (sequential looks)
    look: Mapped[int] = mapped_column(Integer, nullable=False)
    passed: Mapped[bool] = mapped_column(Boolean, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    criteria: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    numbers: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)

    __table_args__ = (Index("ix_gate_verdicts_loop_version", "loop", "version", "at"),)


class ApiKeyRow(Base):
    """An API key: only a hash of its secret is stored. `loops` NULL: every loop."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    loops: Mapped[list[str] | None] = mapped_column(JSON)
    secret_hash: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    created_by: Mapped[str | None] = mapped_column(String(ID_LEN))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_by: Mapped[str | None] = mapped_column(String(ID_LEN))


class AuditRow(Base):
    """Append-only (database triggers refuse UPDATE and DELETE): who did what, when, why."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    actor: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    role: Mapped[str | None] = mapped_column(String(16))
    loop: Mapped[str | None] = mapped_column(String(ID_LEN))
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str | None] = mapped_column(String(ID_LEN))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)

    __table_args__ = (Index("ix_audit_log_loop_seq", "loop", "seq"),)


class AlarmRow(Base):
    """An alarm of a loop: firing until cleared."""

    __tablename__ = "alarms"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    loop: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    message: Mapped[str] = mapped_column(Text, nullable=False)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    # the last state delivered to the alarm webhook ("firing" / "cleared"); NULL: none yet
    notified: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (Index("ix_alarms_loop_state", "loop", "state"),)


class LearnerStateRow(Base):
    """The learner's per-loop state: the freshness track (stopped by a failed safety check
    until a gatekeeper resumes it) and when each track last ran."""

    __tablename__ = "learner_state"

    loop: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    freshness_stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    freshness_reason: Mapped[str | None] = mapped_column(Text)
    last_freshness_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_candidate_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)


class CatalogItemRow(Base):
    """An item of a loop's catalog: features, age, whether it may be retrieved, and its
    embedding (float32 bytes) with the model that produced it ("client": sent precomputed)."""

    __tablename__ = "catalog_items"

    loop: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    features: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    embedding_model: Mapped[str | None] = mapped_column(String(ID_LEN))

    __table_args__ = (Index("ix_catalog_items_loop_active", "loop", "active"),)


class CatalogClock(Base):
    """Per loop, bumped by every change of its catalog (in the change's transaction)."""

    __tablename__ = "catalog_clock"

    loop: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)


class RetrieverRow(Base):
    """A two-tower retriever version of a loop: candidate | shadow | canary | live | retired |
    rejected; `canary_percent` while canary, `replaced` (the rollback target) once live."""

    __tablename__ = "retrievers"

    version: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    loop: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    artifact: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    canary_percent: Mapped[float | None] = mapped_column(Float)
    replaced: Mapped[str | None] = mapped_column(String(ID_LEN))

    __table_args__ = (
        Index("ix_retrievers_loop_status", "loop", "status"),
        *(
            Index(
                f"ux_retrievers_one_{status}",
                "loop",
                unique=True,
                sqlite_where=text(f"status = '{status}'"),
                postgresql_where=text(f"status = '{status}'"),
            )
            for status in ("live", "shadow", "canary")
        ),
    )


class ItemEmbeddingRow(Base):
    """An item's embedding by a retriever in shadow or canary (the live retriever's are in
    `catalog_items`), computed from the item's features as of `features_at` (its updated_at)."""

    __tablename__ = "item_embeddings"

    loop: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    retriever: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    features_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class RetrievalIndexRow(Base):
    """One build of a loop's ANN index: its kind, size and measured recall@k."""

    __tablename__ = "retrieval_indexes"

    index_version: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    loop: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    built_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)

    __table_args__ = (Index("ix_retrieval_indexes_loop", "loop", "built_at"),)


class _MetricsColumns:
    """Additive sums of one bucket of a loop, per arm and model version ("*": all). Rates,
    means and quantiles are derived when read (log/metrics_math.py), so coarser buckets are
    plain sums of finer ones."""

    loop: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    arm: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    decisions: Mapped[int] = mapped_column(BigInteger, nullable=False)
    explored: Mapped[int] = mapped_column(BigInteger, nullable=False)
    prob_sum: Mapped[float] = mapped_column(Float, nullable=False)
    prob_min: Mapped[float | None] = mapped_column(Float)
    entropy_sum: Mapped[float] = mapped_column(Float, nullable=False)
    top_sum: Mapped[float] = mapped_column(Float, nullable=False)
    rewards: Mapped[int] = mapped_column(BigInteger, nullable=False)
    late_rewards: Mapped[int] = mapped_column(BigInteger, nullable=False)
    joined: Mapped[int] = mapped_column(BigInteger, nullable=False)
    rewarded: Mapped[int] = mapped_column(BigInteger, nullable=False)
    default_rewards: Mapped[int] = mapped_column(BigInteger, nullable=False)
    reward_sum: Mapped[float] = mapped_column(Float, nullable=False)
    reward_sq_sum: Mapped[float] = mapped_column(Float, nullable=False)
    join_lag_sum_s: Mapped[float] = mapped_column(Float, nullable=False)
    join_lag_max_s: Mapped[float | None] = mapped_column(Float)
    guardrails: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False)
    latency_hist: Mapped[list[int]] = mapped_column(JSON, nullable=False)
    errors: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    spool_backlog_max: Mapped[int] = mapped_column(BigInteger, nullable=False)


class Metrics5mRow(_MetricsColumns, Base):
    __tablename__ = "metrics_5m"
    __table_args__ = (Index("ix_metrics_5m_bucket", "bucket"),)


class Metrics1hRow(_MetricsColumns, Base):
    __tablename__ = "metrics_1h"
    __table_args__ = (Index("ix_metrics_1h_bucket", "bucket"),)


class Metrics1dRow(_MetricsColumns, Base):
    __tablename__ = "metrics_1d"
    __table_args__ = (Index("ix_metrics_1d_bucket", "bucket"),)


class RequestStatsRow(Base):
    """What one worker saw of a loop's rank requests in one 5-minute bucket since its last
    flush: additive (several rows per worker and bucket are summed by the rollup)."""

    __tablename__ = "request_stats"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    loop: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    bucket: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    worker: Mapped[str] = mapped_column(String(64), nullable=False)
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False)
    latency_hist: Mapped[list[int]] = mapped_column(JSON, nullable=False)
    errors: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    spool_backlog_max: Mapped[int] = mapped_column(BigInteger, nullable=False)
    flushed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = (Index("ix_request_stats_loop_bucket", "loop", "bucket"),)


class MetricsStateRow(Base):
    """Per loop, the end of the last 5-minute bucket the rollup computed."""

    __tablename__ = "metrics_state"

    loop: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    through: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class DashboardSessionRow(Base):
    """A dashboard session: the cookie carries a random token, only its sha256 is stored."""

    __tablename__ = "dashboard_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), nullable=False)
    csrf: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class PersonalizerEvaluationRow(Base):
    """A Personalizer API evaluation (its id in that API) -> the native evaluation run computing
    it, with the Personalizer contract as sent (revision 0009)."""

    __tablename__ = "personalizer_evaluations"

    loop: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    evaluation_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), nullable=False)
    contract: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = (Index("ix_personalizer_evaluations_loop_created", "loop", "created_at"),)
