"""Service settings (pydantic-settings, ``DS_`` prefix), reached through `get_settings()`."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy.keys import parse_token


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value (DS_ADMIN_KEY, a database URL with its password)
    # is never echoed in the error
    model_config = SettingsConfigDict(env_prefix="DS_", extra="ignore", hide_input_in_errors=True)

    database_url: str = Field(
        "sqlite:///./decision_service.db",
        description="SQLAlchemy URL of the event store (SQLite file or postgresql://...).",
    )
    durability: Literal["durable", "fast"] = Field(
        "durable",
        description="durable: answer after the decision is durable; fast: after it is queued.",
    )
    fast_max_pending: int = Field(
        10_000,
        ge=1,
        description="fast mode: most rows queued and not yet durable (the most a crash loses); "
        "beyond it requests wait for durability",
    )
    spool_dir: str = Field(
        "./spool", description="Local append-only log used while the database is unreachable."
    )
    group_commit_ms: float = Field(2.0, ge=0, le=1000, description="Gather window of a group.")
    group_commit_max_rows: int = Field(1024, ge=1, description="Most rows in one group.")
    max_actions: int = Field(1000, ge=1, description="Most actions in one rank request.")
    max_slots: int = Field(50, ge=1, description="Most slots in one slate request.")
    max_id_length: int = Field(256, ge=1, le=256, description="Longest event, action or loop id.")
    max_features: int = Field(
        256, ge=1, description="Most features in a context or an action (nested counted)."
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body.")
    join_interval_s: float = Field(5.0, gt=0, description="How often the service runs the joiner.")
    join_grace_s: float = Field(
        5.0, ge=0, description="Windows are closed this long after their deadline."
    )
    loop_refresh_s: float = Field(2.0, gt=0, description="How often workers re-read loops.")
    start_retry_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="A worker started while the database is unreachable answers 503 and "
        "retries its start-up this often.",
    )
    gc_tuning: bool = Field(
        True, description="Freeze start-up objects and raise GC thresholds (serving latency)."
    )
    max_evaluations_per_loop: int = Field(
        2,
        ge=1,
        le=64,
        description="Most offline evaluations queued or running at once per loop; beyond, a "
        "POST answers 429 too_many_evaluations.",
    )
    evaluation_timeout_s: float = Field(
        6 * 3600.0,
        gt=0,
        description="An evaluation job still running after this long is killed and failed; "
        "older queued/running rows no longer count against the per-loop limit.",
    )
    max_rank_features: int = Field(
        4_000_000,
        ge=0,
        description="Most features Vowpal Wabbit may hash to score one rank (context, slot and "
        "action features plus the products of the loop's interactions, over all actions); "
        "beyond, 422 limit_exceeded. 0: no limit.",
    )
    text_cache_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Memory budget (bytes, per worker) of the memo caches of the VW text "
        "encoding (least recently used entries are evicted; 0 disables them).",
    )
    admin_key: SecretStr | None = Field(
        None,
        description="An admin key (dsk_<12 hex>_<43 url-safe base64 characters>, e.g. from "
        "`decision-service keys generate`) registered at start-up under the name 'bootstrap' "
        "unless its id is already stored (a revoked one stays revoked).",
    )
    admin_key_file: str = Field(
        "./decision_service.admin-key",
        min_length=1,
        max_length=4096,
        description="Where the first start writes the admin key it creates when no active "
        "admin key exists and DS_ADMIN_KEY is not set (created once, mode 0600).",
    )
    key_cache_s: float = Field(
        2.0,
        gt=0,
        le=60,
        description="How long a worker trusts a key it verified before reading it again: a key "
        "revoked elsewhere stops working in every worker within this time.",
    )

    metrics_flush_s: float = Field(
        30.0,
        ge=1,
        le=300,
        description="How often each worker writes its rank-latency histogram and error counts "
        "(per loop and 5-minute bucket) to the database for the metrics rollup.",
    )

    # -- operate (issue 12): the learner process runs the rollup, the alarm rules, the webhook
    operate_interval_s: float = Field(
        60.0,
        ge=5,
        le=3600,
        description="How often the learner process runs the metrics "
        "rollup, the alarm rules and webhook delivery.",
    )
    metrics_settle_s: float = Field(
        900.0,
        ge=0,
        le=7 * 86_400,
        description="Each rollup recomputes the 5-minute buckets of "
        "this long before its watermark (rows that land late).",
    )
    metrics_retention_5m_days: float = Field(
        14.0, ge=1, le=90, description="How long 5-minute metrics are kept (days)."
    )
    metrics_retention_1h_days: float = Field(
        90.0, ge=7, le=730, description="How long hourly metrics are kept (days)."
    )
    metrics_retention_1d_days: float = Field(
        730.0, ge=30, le=3650, description="How long daily metrics are kept (days)."
    )
    alarm_webhook_url: SecretStr | None = Field(
        None,
        description="http(s) URL every alarm state change is POSTed to (JSON); unset: "
        "alarms are stored and shown only.",
    )
    alarm_webhook_attempts: int = Field(
        5, ge=1, le=20, description="Attempts per webhook delivery."
    )
    alarm_webhook_backoff_s: float = Field(
        1.0, ge=0, le=60, description="Wait before the first retry; doubled at each next one."
    )
    dashboard_session_s: float = Field(
        8 * 3600.0, ge=60, le=7 * 86_400, description="How long a dashboard login lasts."
    )

    @field_validator("admin_key")
    @classmethod
    def _admin_key_form(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and parse_token(value.get_secret_value()) is None:
            raise ValueError(
                "DS_ADMIN_KEY must be a key of the service's form, dsk_<12 hex digits>_<43 "
                "url-safe base64 characters> (`decision-service keys generate` prints one)"
            )
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
