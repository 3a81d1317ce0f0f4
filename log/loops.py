"""Loop configuration: one decision problem, stored in the `loops` table."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update

from log.models import Loop

AGGREGATIONS = ("earliest", "sum", "mean", "max", "min")
STRATEGIES = ("epsilon_greedy", "softmax")
DEFAULT_LOOP = "default"


@dataclass(frozen=True)
class LoopConfig:
    """Configuration of a loop. Validated on construction; stored as JSON."""

    exploration: str = "epsilon_greedy"
    epsilon: float = 0.2
    softmax_lambda: float = 1.0
    reward_wait_s: float = 600.0
    default_reward: float = 0.0
    reward_aggregation: str = "earliest"
    min_reward: float = -1.0
    max_reward: float = 1.0
    vw_args: str = "-q ca --cb_type mtr"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.exploration not in STRATEGIES:
            raise ValueError(f"exploration must be one of {STRATEGIES}, got {self.exploration!r}")
        if not (0.0 <= self.epsilon <= 1.0):
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if not (math.isfinite(self.softmax_lambda) and self.softmax_lambda >= 0):
            raise ValueError(f"softmax_lambda must be finite and >= 0, got {self.softmax_lambda}")
        if not (math.isfinite(self.reward_wait_s) and self.reward_wait_s >= 0):
            raise ValueError(f"reward_wait_s must be finite and >= 0, got {self.reward_wait_s}")
        if self.reward_aggregation not in AGGREGATIONS:
            raise ValueError(
                f"reward_aggregation must be one of {AGGREGATIONS}, got {self.reward_aggregation!r}"
            )
        if not (math.isfinite(self.min_reward) and math.isfinite(self.max_reward)):
            raise ValueError("min_reward and max_reward must be finite")
        if self.min_reward > self.max_reward:
            raise ValueError(
                f"min_reward ({self.min_reward}) must not exceed max_reward ({self.max_reward})"
            )
        if not (self.min_reward <= self.default_reward <= self.max_reward):
            raise ValueError(
                f"default_reward must be in [min_reward, max_reward], got {self.default_reward}"
            )
        if not (0 <= self.seed < 2**63):
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoopConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class StoredLoop:
    name: str
    config: LoopConfig
    created_at: datetime
    updated_at: datetime


def _stored(row: Loop) -> StoredLoop:
    return StoredLoop(row.loop, LoopConfig.from_json(row.config), row.created_at, row.updated_at)


def get_loop(engine: Engine, name: str) -> StoredLoop | None:
    with engine.connect() as conn:
        row = conn.execute(select(Loop).where(Loop.loop == name)).first()
    return None if row is None else _stored(Loop(**row._mapping))


def list_loops(engine: Engine) -> list[StoredLoop]:
    with engine.connect() as conn:
        rows = conn.execute(select(Loop).order_by(Loop.loop)).all()
    return [_stored(Loop(**r._mapping)) for r in rows]


def put_loop(engine: Engine, name: str, config: LoopConfig) -> tuple[StoredLoop, bool]:
    """Create or replace a loop's configuration. Returns (loop, created)."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        row = conn.execute(select(Loop.created_at).where(Loop.loop == name)).first()
        if row is None:
            conn.execute(
                insert(Loop).values(
                    loop=name, config=config.to_json(), created_at=now, updated_at=now
                )
            )
            created_at, created = now, True
        else:
            conn.execute(
                update(Loop)
                .where(Loop.loop == name)
                .values(config=config.to_json(), updated_at=now)
            )
            created_at, created = row[0], False
    return StoredLoop(name, config, created_at, now), created


def ensure_default_loop(engine: Engine, seed: int) -> None:
    """The `default` loop exists from the first start."""
    if get_loop(engine, DEFAULT_LOOP) is None:
        try:
            put_loop(engine, DEFAULT_LOOP, LoopConfig(seed=seed))
        except Exception:
            # Another worker created it first.
            if get_loop(engine, DEFAULT_LOOP) is None:
                raise
