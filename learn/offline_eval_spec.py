"""What an offline evaluation run evaluates: target policies, window, estimators (validated).

The same spec comes from the HTTP body (``POST /v1/loops/{loop}/evaluations``), from the
command line (``decision-service evaluate``) and, stored as JSON in the `evaluations` table, is
read back by the background job. Checks that need no database are made here (construction
raises :class:`SpecError`); :func:`learn.offline_eval.resolve_spec` checks the rest (the loop,
the model versions, the VW arguments).

Target policies (``kind``):

- ``live``: the logging policy itself, as logged (on-policy: its IPS is the mean reward). Always
  evaluated (added when not asked for): every other policy is compared with it.
- ``uniform``: uniform over the event's candidates (the non-excluded actions).
- ``first_action``: all mass on the first candidate (Personalizer's "baseline action").
- ``model``: a registered model version: greedy on its scores, or with the loop's exploration
  (``explore``, default: as it would be served). Evaluated only on events decided after its
  ``trained_until`` (time split).
- ``vw_args``: a fresh Vowpal Wabbit policy with these arguments, trained on the joined events
  decided in ``[train_since, train_until)`` and evaluated on events decided at or after
  ``train_until``. Without ``train_until``: the evaluation's ``since``, or when that is open too,
  the median decided_at of the window's joined events (earlier half trains, later half evaluates).

``exploration`` (``model`` and ``vw_args``): overrides of the loop's exploration for this target
(``exploration``, ``epsilon``, ``softmax_lambda``, ``exploration_options``; bounded like a
loop's), e.g. ``{"exploration": "squarecb", "exploration_options": {"squarecb_gamma0": 50}}``.
A ``vw_args`` target of a strategy that explores inside the model (regcbopt, cover, bag) is
trained with that strategy's VW reduction. ``decision-service tune`` builds grids of these.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from evaluation import ESTIMATORS, INTERVALS
from log.deploy_settings import GUARDRAIL_NAME, MAX_GUARDRAILS
from log.loops import LoopConfig
from policies import check_vw_args

__all__ = [
    "BASELINE_KINDS",
    "DEFAULT_ESTIMATORS",
    "NEEDS_Q",
    "POLICY_KINDS",
    "SLATE_MODES",
    "EvaluationSpec",
    "PolicySpec",
    "SpecError",
    "check_eval_vw_args",
    "check_exploration",
    "explored_config",
    "parse_time",
]

POLICY_KINDS = ("live", "uniform", "first_action", "model", "vw_args")
BASELINE_KINDS = ("live", "uniform", "first_action")
SLATE_MODES = ("skip", "slot0")
DEFAULT_ESTIMATORS = ("ips", "snips", "dr")
NEEDS_Q = frozenset({"dm", "dr", "sndr", "switch_dr"})
MAX_POLICIES = 32
MAX_NAME = 128
MAX_ARGS = 2000


class SpecError(ValueError):
    """An evaluation request that cannot run; `code` names the problem for the HTTP answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_time(value: Any, name: str) -> datetime | None:
    """None, a timezone-aware datetime, or an ISO 8601 string with an offset."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise SpecError(
                "invalid_window", f"{name} must be an ISO 8601 timestamp, got {value!r}"
            ) from None
    if not isinstance(value, datetime):
        raise SpecError("invalid_window", f"{name} must be a timestamp, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise SpecError(
            "invalid_window",
            f"{name} must carry a timezone (e.g. 2026-01-01T00:00:00Z), got {value.isoformat()}",
        )
    return value


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# VW options that read or write files on the machine; policies.check_vw_args refuses some of
# them, these close the rest (its own check builds a workspace, which would write them).
_FILE_OPTIONS = frozenset(
    {
        "-r",
        "--raw_predictions",
        "--readable_model",
        "--invert_hash",
        "--output_feature_regularizer_binary",
        "--output_feature_regularizer_text",
        "--input_feature_regularizer",
        "--feature_mask",
        "--dictionary",
        "--dictionary_path",
        "--save_per_pass",
        "--pid_file",
        "--port_file",
        "--audit_regressor",
        "--cache_file",
    }
)
_ATTACHED_FILE = re.compile(r"^-[fpridc].")


def check_eval_vw_args(args: str) -> str:
    """VW arguments of a candidate: no file options, accepted by VW. Returns them normalised."""
    if not isinstance(args, str) or not args.strip() or len(args) > MAX_ARGS or "\x00" in args:
        raise SpecError(
            "invalid_vw_args", f"args must be a non-empty string of at most {MAX_ARGS} characters"
        )
    try:
        tokens = shlex.split(args)
    except ValueError as err:
        raise SpecError("invalid_vw_args", f"args could not be parsed: {err}") from None
    bad = sorted(
        {t.split("=")[0] for t in tokens if t.split("=")[0] in _FILE_OPTIONS}
        | {t for t in tokens if _ATTACHED_FILE.match(t)}
    )
    if bad:
        raise SpecError(
            "invalid_vw_args", f"args must not use options that touch files: {', '.join(bad)}"
        )
    try:
        return check_vw_args(args)
    except ValueError as err:
        raise SpecError("invalid_vw_args", str(err)) from None


def _check_str(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit or "\x00" in value:
        raise SpecError(
            "invalid_request",
            f"{name} must be a non-empty string of at most {limit} characters, without NUL",
        )
    return value


@dataclass(frozen=True)
class PolicySpec:
    """One target policy; see the module docstring for the kinds. `name` defaults to the kind
    (``model:<version>``, ``vw:<args>``)."""

    kind: str
    name: str = ""
    version: str | None = None
    args: str | None = None
    explore: bool = True
    train_since: datetime | None = None
    train_until: datetime | None = None
    exploration: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.exploration is not None:
            if self.kind not in ("model", "vw_args"):
                raise SpecError(
                    "invalid_request", "exploration applies to 'model' and 'vw_args' only"
                )
            object.__setattr__(self, "exploration", check_exploration(self.exploration))
        if self.kind not in POLICY_KINDS:
            raise SpecError(
                "invalid_request", f"kind must be one of {list(POLICY_KINDS)}, got {self.kind!r}"
            )
        if not isinstance(self.explore, bool):
            raise SpecError(
                "invalid_request", f"explore must be true or false, got {self.explore!r}"
            )
        if self.kind == "model":
            _check_str(self.version, "version", 256)
        elif self.version is not None:
            raise SpecError(
                "invalid_request", f"version applies to kind 'model', not {self.kind!r}"
            )
        if self.kind == "vw_args":
            _check_str(self.args, "args", MAX_ARGS)
        else:
            if self.args is not None:
                raise SpecError(
                    "invalid_request", f"args applies to kind 'vw_args', not {self.kind!r}"
                )
            if self.train_since is not None or self.train_until is not None:
                raise SpecError(
                    "invalid_request",
                    f"train_since/train_until apply to kind 'vw_args', not {self.kind!r}",
                )
        if self.kind in BASELINE_KINDS and not self.explore:
            raise SpecError("invalid_request", "explore applies to 'model' and 'vw_args' only")
        since = parse_time(self.train_since, "train_since")
        until = parse_time(self.train_until, "train_until")
        if since is not None and until is not None and since >= until:
            raise SpecError(
                "invalid_window",
                f"train_since must be before train_until, got {since.isoformat()} >= "
                f"{until.isoformat()}",
            )
        object.__setattr__(self, "train_since", since)
        object.__setattr__(self, "train_until", until)
        name = self.name or self.default_name()
        _check_str(name, "name", MAX_NAME)
        object.__setattr__(self, "name", name)

    def default_name(self) -> str:
        if self.kind == "model":
            return f"model:{self.version}"
        if self.kind == "vw_args":
            return f"vw:{self.args}"[:MAX_NAME]
        return self.kind

    @property
    def scored(self) -> bool:
        """Whether the policy scores candidates with a VW model."""
        return self.kind in ("model", "vw_args")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "model":
            out["version"] = self.version
        if self.kind == "vw_args":
            out["args"] = self.args
            out["train_since"] = _iso(self.train_since)
            out["train_until"] = _iso(self.train_until)
        if self.scored:
            out["explore"] = self.explore
        if self.exploration is not None:
            out["exploration"] = dict(self.exploration)
        return out

    @classmethod
    def from_json(cls, data: Any) -> PolicySpec:
        if isinstance(data, str):  # shorthand: a baseline by its kind
            return cls(kind=data)
        if not isinstance(data, Mapping):
            raise SpecError("invalid_request", f"a policy must be an object, got {data!r}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise SpecError("invalid_request", f"unknown policy fields: {unknown}")
        fields = dict(data)
        fields.setdefault("name", "")
        if fields["name"] is None:
            fields["name"] = ""
        if fields.get("explore") is None:
            fields["explore"] = True
        if "kind" not in fields:
            raise SpecError("invalid_request", "a policy needs a kind")
        return cls(**fields)


EXPLORATION_FIELDS = ("exploration", "epsilon", "softmax_lambda", "exploration_options")


def check_exploration(value: Any) -> dict[str, Any]:
    """Exploration overrides of a target, checked against the loop settings' bounds."""
    if not isinstance(value, Mapping):
        raise SpecError("invalid_request", f"exploration must be an object, got {value!r}")
    unknown = sorted(set(value) - set(EXPLORATION_FIELDS))
    if unknown:
        raise SpecError(
            "invalid_request",
            f"exploration may set {list(EXPLORATION_FIELDS)}, got unknown {unknown}",
        )
    try:
        config = LoopConfig(**dict(value))
    except (TypeError, ValueError) as err:
        raise SpecError("invalid_request", f"exploration: {err}") from None
    out = dict(value)
    if "exploration_options" in out:
        out["exploration_options"] = asdict(config.exploration_options)
    return out


def explored_config(config: LoopConfig, exploration: Mapping[str, Any] | None) -> LoopConfig:
    """`config` with a target's exploration overrides (see `check_exploration`)."""
    if not exploration:
        return config
    return replace(config, **dict(exploration))


def _check_guardrails(value: Any) -> tuple[str, ...]:
    """Distinct guardrail metric names (as in a loop's gate.guardrails), at most 8."""
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise SpecError("invalid_request", "guardrails must be a list of metric names")
    names = tuple(value)
    if len(names) > MAX_GUARDRAILS:
        raise SpecError("invalid_request", f"guardrails must name at most {MAX_GUARDRAILS} metrics")
    for name in names:
        if not isinstance(name, str) or not GUARDRAIL_NAME.fullmatch(name):
            raise SpecError(
                "invalid_request",
                "guardrails: metric names are 1-64 characters of a-z 0-9 _ starting with a "
                f"letter, got {name!r}",
            )
    if len(set(names)) != len(names):
        raise SpecError("invalid_request", f"guardrails must be distinct, got {list(names)}")
    return names


def _default_policies() -> tuple[PolicySpec, ...]:
    return tuple(PolicySpec(kind) for kind in BASELINE_KINDS)


@dataclass(frozen=True)
class EvaluationSpec:
    """A run: the targets, the evaluation window [since, until) of decided_at, the estimators
    (each with a 1 - alpha interval of kind `interval`), what to do with slates, the seed, and
    the guardrail metrics whose rates (share of events with at least one signal of the metric)
    each target is estimated to have, beside the live policy's on the same events."""

    policies: tuple[PolicySpec, ...] = field(default_factory=_default_policies)
    since: datetime | None = None
    until: datetime | None = None
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS
    alpha: float = 0.05
    interval: str = "bootstrap"
    slates: str = "skip"
    seed: int = 0
    guardrails: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        policies = tuple(self.policies)
        if not policies or len(policies) > MAX_POLICIES:
            raise SpecError("invalid_request", f"policies must hold 1 to {MAX_POLICIES} policies")
        if not all(isinstance(p, PolicySpec) for p in policies):
            raise SpecError("invalid_request", "policies must be PolicySpec objects")
        if not any(p.kind == "live" for p in policies):
            policies = (PolicySpec("live"), *policies)
        if sum(p.kind == "live" for p in policies) > 1:
            raise SpecError("duplicate_policy", "the live policy may be listed once")
        names = [p.name for p in policies]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SpecError("duplicate_policy", f"policy names must be unique, got {dupes} twice")
        object.__setattr__(self, "policies", policies)
        estimators = tuple(self.estimators)
        bad = [e for e in estimators if e not in ESTIMATORS]
        if not estimators or bad or len(set(estimators)) != len(estimators):
            raise SpecError(
                "invalid_request",
                f"estimators must be distinct names among {sorted(ESTIMATORS)}, got "
                f"{list(estimators)}",
            )
        object.__setattr__(self, "estimators", estimators)
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
            raise SpecError("invalid_request", f"alpha must be in (0, 1), got {alpha!r}")
        if not math.isfinite(alpha):
            raise SpecError("invalid_request", f"alpha must be finite, got {alpha!r}")
        object.__setattr__(self, "alpha", float(alpha))
        if self.interval not in INTERVALS:
            raise SpecError(
                "invalid_request",
                f"interval must be one of {list(INTERVALS)}, got {self.interval!r}",
            )
        if self.slates not in SLATE_MODES:
            raise SpecError(
                "invalid_request", f"slates must be one of {list(SLATE_MODES)}, got {self.slates!r}"
            )
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not 0 <= self.seed < 2**32
        ):
            raise SpecError(
                "invalid_request", f"seed must be an int in [0, 2**32), got {self.seed!r}"
            )
        since = parse_time(self.since, "since")
        until = parse_time(self.until, "until")
        if since is not None and until is not None and since >= until:
            raise SpecError(
                "invalid_window",
                f"since must be before until, got {since.isoformat()} >= {until.isoformat()}",
            )
        object.__setattr__(self, "since", since)
        object.__setattr__(self, "until", until)
        object.__setattr__(self, "guardrails", _check_guardrails(self.guardrails))
        for p in policies:
            if until is not None and p.train_until is not None and p.train_until >= until:
                raise SpecError(
                    "invalid_window",
                    f"policy {p.name!r}: train_until ({p.train_until.isoformat()}) must be before "
                    f"until ({until.isoformat()}): it is evaluated on later events only",
                )
            if until is not None and p.train_since is not None and p.train_since >= until:
                raise SpecError(
                    "invalid_window",
                    f"policy {p.name!r}: train_since must be before until ({until.isoformat()})",
                )

    @property
    def needs_q(self) -> bool:
        """Whether an estimator needs the reward model (q_hat)."""
        return any(e in NEEDS_Q for e in self.estimators)

    def to_json(self) -> dict[str, Any]:
        return {
            "policies": [p.to_json() for p in self.policies],
            "since": _iso(self.since),
            "until": _iso(self.until),
            "estimators": list(self.estimators),
            "alpha": self.alpha,
            "interval": self.interval,
            "slates": self.slates,
            "seed": self.seed,
            "guardrails": list(self.guardrails),
        }

    @classmethod
    def from_json(cls, data: Any) -> EvaluationSpec:
        """From the JSON form (``to_json``, or a request body); defaults fill what is missing."""
        if not isinstance(data, Mapping):
            raise SpecError("invalid_request", "the evaluation request must be a JSON object")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise SpecError("invalid_request", f"unknown fields: {unknown}")
        fields: dict[str, Any] = {k: v for k, v in data.items() if v is not None}
        if "policies" in fields:
            if not isinstance(fields["policies"], list):
                raise SpecError("invalid_request", "policies must be a list")
            fields["policies"] = tuple(PolicySpec.from_json(p) for p in fields["policies"])
        if "estimators" in fields:
            if not isinstance(fields["estimators"], list):
                raise SpecError("invalid_request", "estimators must be a list of names")
            fields["estimators"] = tuple(fields["estimators"])
        if "guardrails" in fields:
            if not isinstance(fields["guardrails"], list):
                raise SpecError("invalid_request", "guardrails must be a list of metric names")
            fields["guardrails"] = tuple(fields["guardrails"])
        return cls(**fields)
