"""Personalizer's service configuration and policy, mapped onto the loop's settings (pure).

| Personalizer | loop setting | what this service accepts |
| --- | --- | --- |
| rewardWaitTime (ISO 8601 duration) | `reward_wait_s` | 1 s to 30 days |
| defaultReward | `default_reward` | within [min_reward, max_reward] (default [-1, 1]) |
| rewardAggregation | `reward_aggregation` | earliest, sum, average (mean), min, max |
| explorationPercentage | `epsilon` | [0, 1]; a softmax loop becomes epsilon-greedy |
| modelExportFrequency | `learner.freshness_s` | 0 (off) or 1 s to 1 day |
| learningMode | `personalizer.learning_mode` | Online, Apprentice, LoggingOnly |
| logRetentionDays | — | -1 only: logs are kept until `DELETE /logs` |
| isAutoOptimizationEnabled | — | false only (evaluations and candidates go through the gate) |
| logMirrorEnabled | — | false only |

Read-only fields (lastConfigurationEditDate, latestApprenticeModeMetrics) and unknown fields
are ignored on PUT. Like Personalizer, a PUT that changes the learning mode may not also change
the reward settings (`InvalidLearningModeServiceConfiguration`).

Policy: `arguments` is a VW command line. The reduction and exploration flags the service sets
itself (`--cb_explore_adf`, `--ccb_explore_adf`, `--epsilon X`, `--json`, `--dsjson`,
`--quiet`, `--id X`) are dropped; Personalizer's all-namespace interaction `-q ::` becomes
`-q ca` (context x action: this service's features live in namespaces c, a and s); the rest is
checked by the same allowlist as a native loop's `vw_args`, and together with the loop's
exploration (VW's `cover` refuses `--cb_type dm`). Resetting the policy gives the loop the
default VW arguments, or `-q ca --cb_type mtr` (`COVER_POLICY`) when its exploration is
`cover`.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError

from explore.errors import InvalidInput
from log.loops import LoopConfig
from log.personalizer_settings import LEARNING_MODES, MAX_POLICY_NAME
from policies import check_model_args, check_vw_args

__all__ = [
    "COVER_POLICY",
    "DEFAULT_POLICY",
    "apply_policy",
    "apply_service_configuration",
    "iso_duration",
    "policy_json",
    "service_configuration",
]

_DURATION = TypeAdapter(timedelta)
AGGREGATIONS = {"earliest": "earliest", "sum": "sum", "average": "mean", "mean": "mean"}
AGGREGATIONS.update({"min": "min", "max": "max"})
_SHOWN_AGGREGATION = {"mean": "average"}
_DROPPED_FLAGS = {"--cb_explore_adf", "--ccb_explore_adf", "--json", "--dsjson", "--quiet"}
_DROPPED_WITH_VALUE = {"--epsilon", "--id"}
MAX_POLICY_ARGUMENTS = 1024
DEFAULT_POLICY = LoopConfig().vw_args
COVER_POLICY = "-q ca --cb_type mtr"  # the reset policy of a cover loop (cover refuses dm)
_REWARD_FIELDS = (
    ("rewardWaitTime", "reward_wait_s"),
    ("defaultReward", "default_reward"),
    ("rewardAggregation", "reward_aggregation"),
)


def _bad(message: str, code: str = "invalid_config") -> InvalidInput:
    return InvalidInput(message, code)


def iso_duration(seconds: float) -> str:
    """`seconds` as an ISO 8601 duration (P1DT2H3M4.5S; PT0S for zero)."""
    whole = int(seconds)
    fraction = seconds - whole
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    out = f"P{days}D" if days else "P"
    time = ""
    if hours:
        time += f"{hours}H"
    if minutes:
        time += f"{minutes}M"
    if secs or fraction:
        time += f"{secs + fraction:g}S"
    if time:
        out += "T" + time
    return out if out != "P" else "PT0S"


def parse_duration(value: Any, field: str) -> float:
    """Seconds of an ISO 8601 duration (or the .NET form 00:10:00, or a number of seconds)."""
    if isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?:\d{2}:\d{2}(\.\d+)?", value):
        parts = value.split(":")
        days_hours = parts[0].split(".")
        hours = int(days_hours[-1]) + (24 * int(days_hours[0]) if len(days_hours) == 2 else 0)
        return hours * 3600 + int(parts[1]) * 60 + float(parts[2])
    try:
        seconds = _DURATION.validate_python(value).total_seconds()
    except ValidationError:
        raise _bad(f"{field} must be an ISO 8601 duration such as PT10M, got {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise _bad(f"{field} must be a non-negative duration, got {value!r}")
    return seconds


def service_configuration(config: LoopConfig, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The loop's settings as Personalizer's ServiceConfiguration."""
    p = config.personalizer
    out: dict[str, Any] = {
        "rewardWaitTime": iso_duration(config.reward_wait_s),
        "defaultReward": config.default_reward,
        "rewardAggregation": _SHOWN_AGGREGATION.get(
            config.reward_aggregation, config.reward_aggregation
        ),
        "explorationPercentage": config.epsilon,
        "modelExportFrequency": iso_duration(config.learner.freshness_s),
        "logRetentionDays": -1,
        "modelRetrainDays": 0,
        "logMirrorEnabled": False,
        "isAutoOptimizationEnabled": False,
        "learningMode": p.learning_mode,
    }
    if p.edited_at is not None:
        out["lastConfigurationEditDate"] = p.edited_at
    if metrics is not None:
        out["latestApprenticeModeMetrics"] = metrics
    return out


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{name} must be a number, got {value!r}")
    return float(value)


def apply_service_configuration(config: LoopConfig, body: Any, now: datetime) -> LoopConfig:
    """The loop's configuration with a ServiceConfiguration applied (fields absent keep their
    value). Raises InvalidInput naming what cannot be honoured."""
    if not isinstance(body, dict):
        raise _bad("the body must be a ServiceConfiguration object")
    changes: dict[str, Any] = {}
    if body.get("rewardWaitTime") is not None:
        wait = parse_duration(body["rewardWaitTime"], "rewardWaitTime")
        if wait < 1:
            raise _bad("rewardWaitTime must be at least 1 second")
        changes["reward_wait_s"] = wait
    default_reward = _number(body, "defaultReward")
    if default_reward is not None:
        changes["default_reward"] = default_reward
    aggregation = body.get("rewardAggregation")
    if aggregation is not None:
        mapped = AGGREGATIONS.get(str(aggregation).lower())
        if mapped is None:
            raise _bad(
                f"rewardAggregation {aggregation!r} is not supported: use one of "
                f"{sorted(set(AGGREGATIONS) - {'mean'})}"
            )
        changes["reward_aggregation"] = mapped
    exploration = _number(body, "explorationPercentage")
    if exploration is not None:
        changes["epsilon"] = exploration
        changes["exploration"] = "epsilon_greedy"
    learner = config.learner
    if body.get("modelExportFrequency") is not None:
        every = parse_duration(body["modelExportFrequency"], "modelExportFrequency")
        try:
            learner = replace(learner, freshness_s=every)
        except ValueError as err:
            raise _bad(f"modelExportFrequency: {err}") from None
    retention = body.get("logRetentionDays")
    if retention is not None and retention != -1:
        raise _bad(
            "logRetentionDays must be -1: this service keeps logs until DELETE /logs "
            f"(got {retention!r})"
        )
    for name in ("isAutoOptimizationEnabled", "logMirrorEnabled"):
        if body.get(name) not in (None, False):
            raise _bad(f"{name} is not supported by this service: send false or leave it out")
    personalizer = config.personalizer
    mode = body.get("learningMode")
    if mode is not None and mode != personalizer.learning_mode:
        if mode not in LEARNING_MODES:
            raise _bad(f"learningMode must be one of {list(LEARNING_MODES)}, got {mode!r}")
        changed = [
            name
            for name, key in _REWARD_FIELDS
            if key in changes and changes[key] != getattr(config, key)
        ]
        if changed:
            raise _bad(
                f"the learning mode and the reward settings ({', '.join(changed)}) must be "
                "changed in two separate calls",
                "InvalidLearningModeServiceConfiguration",
            )
        since = now.isoformat() if mode == "Apprentice" else personalizer.apprentice_since
        personalizer = replace(personalizer, learning_mode=mode, apprentice_since=since)
    personalizer = replace(personalizer, edited_at=now.astimezone(UTC).isoformat())
    try:
        return replace(config, **changes, learner=learner, personalizer=personalizer)
    except ValueError as err:
        raise _bad(str(err)) from None


# ------------------------------------------------------------------------------------- policy
def policy_json(config: LoopConfig) -> dict[str, Any]:
    """The loop's learning settings as Personalizer's PolicyContract."""
    return {
        "name": config.personalizer.policy_name,
        "arguments": f"--cb_explore_adf --epsilon {config.epsilon:g} {config.vw_args}".strip(),
    }


def native_arguments(arguments: str) -> str:
    """A Personalizer VW command line as a native loop's `vw_args` (checked by the allowlist)."""
    tokens = arguments.split()
    kept: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in _DROPPED_FLAGS:
            i += 1
            continue
        if token in _DROPPED_WITH_VALUE:
            i += 2
            continue
        if token in ("-q", "--quadratic") and i + 1 < len(tokens) and tokens[i + 1] == "::":
            kept += ["-q", "ca"]
            i += 2
            continue
        kept.append(token)
        i += 1
    try:
        return check_vw_args(" ".join(kept))
    except ValueError as err:
        raise _bad(str(err)) from None


def apply_policy(config: LoopConfig, body: Any, now: datetime) -> LoopConfig:
    if not isinstance(body, dict):
        raise _bad("the body must be a PolicyContract {name, arguments}")
    name, arguments = body.get("name"), body.get("arguments")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_POLICY_NAME:
        raise _bad(f"name must be a string of 1-{MAX_POLICY_NAME} characters")
    if not isinstance(arguments, str) or len(arguments) > MAX_POLICY_ARGUMENTS:
        raise _bad(f"arguments must be a string of at most {MAX_POLICY_ARGUMENTS} characters")
    personalizer = replace(config.personalizer, policy_name=name, edited_at=now.isoformat())
    return _checked(replace(config, vw_args=native_arguments(arguments), personalizer=personalizer))


def reset_policy(config: LoopConfig, now: datetime) -> LoopConfig:
    personalizer = replace(config.personalizer, policy_name="default", edited_at=now.isoformat())
    vw_args = COVER_POLICY if config.exploration == "cover" else DEFAULT_POLICY
    return _checked(replace(config, vw_args=vw_args, personalizer=personalizer))


def _checked(config: LoopConfig) -> LoopConfig:
    """`config` if VW accepts its arguments with its exploration reduction (as a native PUT
    checks them); InvalidInput otherwise."""
    try:
        check_model_args(config.model_args)
    except ValueError as err:
        raise _bad(str(err)) from None
    return config
