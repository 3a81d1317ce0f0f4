"""An estimate with its confidence interval, as the gate and the canary analysis use it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Interval"]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval ``[ci_low, ci_high]`` (finite, ``ci_low <= ci_high``)."""

    value: float
    ci_low: float
    ci_high: float

    def __post_init__(self) -> None:
        for name in ("value", "ci_low", "ci_high"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise ValueError(f"{name} must be a finite number, got {x!r}")
            object.__setattr__(self, name, float(x))
        if self.ci_low > self.ci_high:
            raise ValueError(f"ci_low must be <= ci_high, got {self.ci_low} > {self.ci_high}")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Interval:
        """From an Estimate dict of the evaluation runner (extra keys ignored)."""
        return cls(float(data["value"]), float(data["ci_low"]), float(data["ci_high"]))

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}
