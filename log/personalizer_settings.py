"""A loop's Azure Personalizer settings: what the compatibility routes (`/personalizer/...`) keep
that no native setting holds. Part of `LoopConfig` (section `personalizer`), bounded like every
other setting.

- `learning_mode`: `Online` (the normal loop), `Apprentice` (the baseline is served with
  probability 1, the live model's pmf is logged beside it, the learner imitates the baseline),
  `LoggingOnly` (the baseline is served and logged; nothing is learned from these decisions).
- `apprentice_since`: when the loop last entered Apprentice mode (ISO 8601, UTC), the start of
  the apprentice metrics; `None` if it never did.
- `policy_name`: the name given with the last `PUT /configurations/policy`.
- `edited_at`: the last change made through the compatibility routes (ISO 8601, UTC).

The other Personalizer settings map onto native ones (rewardWaitTime -> `reward_wait_s`,
explorationPercentage -> `epsilon`, modelExportFrequency -> `learner.freshness_s`, ...); see
`decision_service/personalizer/config.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["LEARNING_MODES", "MAX_POLICY_NAME", "PersonalizerSettings"]

LEARNING_MODES = ("Online", "Apprentice", "LoggingOnly")
MAX_POLICY_NAME = 256


def _check_time(name: str, value: str | None) -> None:
    if value is None:
        return
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"personalizer.{name} must be an ISO 8601 time, got {value!r}") from None


@dataclass(frozen=True)
class PersonalizerSettings:
    learning_mode: str = "Online"
    apprentice_since: str | None = None
    policy_name: str = "default"
    edited_at: str | None = None

    def __post_init__(self) -> None:
        if self.learning_mode not in LEARNING_MODES:
            raise ValueError(
                f"personalizer.learning_mode must be one of {list(LEARNING_MODES)}, "
                f"got {self.learning_mode!r}"
            )
        if not isinstance(self.policy_name, str) or not 0 < len(self.policy_name) <= (
            MAX_POLICY_NAME
        ):
            raise ValueError(
                f"personalizer.policy_name must be 1-{MAX_POLICY_NAME} characters, "
                f"got {self.policy_name!r}"
            )
        _check_time("apprentice_since", self.apprentice_since)
        _check_time("edited_at", self.edited_at)
