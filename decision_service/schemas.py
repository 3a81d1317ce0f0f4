"""Bodies at the HTTP edge (pydantic): requests, responses, the error body.

The rank body is checked in rank_input.py (one pass, with the settings' limits); `RankRequest`
documents it. Response models document what routes return (the routes build their JSON
directly); the OpenAPI contract test holds the two together.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from decision_service.schemas_operate import AlarmsIn
from log.deploy_settings import AUTO_LEVELS, DEPLOY_BOUNDS
from log.explore_settings import EXPLORE_BOUNDS, ExploreSettings
from log.loops import (
    AGGREGATIONS,
    BOUNDS,
    DEFAULT_EXPLORATION,
    DEFAULT_VW_ARGS,
    MAX_VW_ARGS_CHARS,
    STRATEGIES,
)
from log.personalizer_settings import LEARNING_MODES

Number = StrictInt | StrictFloat


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ------------------------------------------------------------------------------------ requests
class ActionIn(_Body):
    id: str = Field(min_length=1)
    features: dict[str, Any] = Field(default_factory=dict)


class PredicateIn(_Body):
    feature: str = Field(min_length=1, max_length=256, description="Item feature (dots nest).")
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in"]
    value: Any = Field(description="A string, number or boolean; a list for in / not_in.")


class RetrieveIn(_Body):
    k: StrictInt = Field(ge=1, description="Candidates to retrieve (at most DS_MAX_ACTIONS).")
    filters: list[PredicateIn] = Field(
        default_factory=list,
        max_length=8,
        description="Item predicates every candidate must meet (beside the loop's rules).",
    )


class RankRequest(_Body):
    event_id: str | None = Field(default=None, min_length=1)
    user_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="The user the decision is for: the unit of a canary split (the same user "
        "id always lands in the same arm of a canary; without it the event id is the unit). "
        "Hashed with the loop's secret key; not stored (the context is logged as sent). "
        "At most DS_MAX_ID_LENGTH characters, no control characters.",
    )
    context: dict[str, Any] = Field(default_factory=dict)
    actions: list[ActionIn] | None = Field(
        default=None,
        min_length=1,
        description="The candidates. Exactly one of `actions` and `retrieve` is required.",
    )
    retrieve: RetrieveIn | None = Field(
        default=None,
        description="Retrieve the candidates from the loop's catalog instead of sending them: "
        "the live retriever's user embedding of the context, the k nearest active items, the "
        "loop's retrieval rules, then the policy (README: Retrieval). 409 no_retriever when "
        "the loop has no live retriever or no index.",
    )
    excluded_actions: list[str] = Field(
        default_factory=list,
        description="Ids never served (with `retrieve`: never retrieved).",
    )
    slots: StrictInt | None = Field(default=None, ge=1)
    defer_activation: StrictBool = False


class RewardRequest(_Body):
    value: Number
    slot: StrictInt | None = Field(default=None, ge=0)
    reward_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Idempotency key: a retry with the same key is stored once; the same key "
        "with another value, slot or metric is a 409 reward_conflict.",
    )
    metric: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Absent: the reward. Otherwise a guardrail signal (negative feedback such as "
        "report or hide) of a metric declared in the loop's gate.guardrails (else 422 "
        "unknown_metric): it is not part of the reward; the joiner counts the signals of each "
        "metric received inside the window, and the gate compares their rates. Its value must "
        "lie in [0, 1e9]: it is stored, but only the signal is counted.",
    )


def _bounded(default: float, name: str, description: str) -> Any:
    """A loop setting whose bound is documented in the schema and enforced by `LoopConfig`
    (so that a value outside answers 422 `invalid_config` naming the field and the bound)."""
    lo, hi = BOUNDS[name]
    return Field(
        default,
        description=f"{description} In [{lo:.10g}, {hi:.10g}].",
        json_schema_extra={"minimum": lo, "maximum": hi},
    )


def _deploy(default: Any, section: str, name: str, description: str) -> Any:
    """A deploy setting (log.deploy_settings), its bound documented and enforced the same way."""
    lo, hi = DEPLOY_BOUNDS[(section, name)]
    return Field(
        default,
        description=f"{description} In [{lo:.10g}, {hi:.10g}].",
        json_schema_extra={"minimum": lo, "maximum": hi},
    )


class GateIn(_Body):
    """The promotion gate's criteria (every field optional)."""

    confidence: Number = _deploy(0.95, "gate", "confidence", "Confidence level of the gate.")
    margin: Number = _deploy(
        0.0, "gate", "margin", "The lower bound of (candidate - live) must exceed this."
    )
    min_events: StrictInt = _deploy(
        1000, "gate", "min_events", "Fewest held-out events before a candidate can pass."
    )
    min_ess: Number = _deploy(200.0, "gate", "min_ess", "Smallest effective sample size.")
    max_weight: Number = _deploy(
        1000.0, "gate", "max_weight", "Largest importance weight allowed on the held-out events."
    )
    min_support: Number = _deploy(
        0.99,
        "gate",
        "min_support",
        "Smallest share of the candidate's probability on actions the logging policy could serve.",
    )
    max_events: StrictInt = _deploy(
        1_000_000, "gate", "max_events", "A candidate undecided after this many is rejected."
    )
    sequential: StrictBool = Field(
        True,
        description="Anytime-valid confidence sequence (repeated looks as data arrive) instead "
        "of a one-look interval.",
    )
    guardrails: dict[str, Number] = Field(
        default_factory=dict,
        description="Guardrail metric (a reward's `metric`, e.g. report) -> the largest increase "
        "of its rate allowed, in [0, 1]. At most 8.",
    )


class RolloutIn(_Body):
    """How far candidates move without a gatekeeper, and the canary's split and analysis."""

    auto: str = Field(
        "canary",
        description="Furthest state the learner moves a candidate that passed the gate to.",
        json_schema_extra={"enum": list(AUTO_LEVELS)},
    )
    canary_percent: Number = _deploy(
        10.0, "rollout", "canary_percent", "Share of traffic (%) a canary serves."
    )
    shadow_min_events: StrictInt = _deploy(
        1000, "rollout", "shadow_min_events", "Shadowed decisions before a shadow moves on."
    )
    canary_min_events: StrictInt = _deploy(
        1000, "rollout", "canary_min_events", "Canary decisions before a canary may go live."
    )
    confidence: Number = _deploy(
        0.95, "rollout", "confidence", "Confidence of the canary's sequential A/B analysis."
    )
    auto_rollback: StrictBool = Field(
        True, description="Roll a canary back when it is significantly worse or trips a guardrail."
    )


class LearnerIn(_Body):
    """The learner's schedule for the loop."""

    freshness_s: Number = _deploy(
        60.0,
        "learner",
        "freshness_s",
        "Seconds between freshness updates of the live model (0: off).",
    )
    freshness_min_events: StrictInt = _deploy(
        100, "learner", "freshness_min_events", "Fewest new joined events for a freshness update."
    )
    collapse_ratio: Number = _deploy(
        0.5,
        "learner",
        "collapse_ratio",
        "A freshness update whose served-distribution entropy falls below this share of the "
        "previous version's is refused.",
    )
    candidate_interval_s: Number = _deploy(
        3600.0, "learner", "candidate_interval_s", "Seconds between candidate trainings."
    )
    train_window_s: Number = _deploy(
        604800.0, "learner", "train_window_s", "Candidates learn the events of this last window."
    )
    holdout_fraction: Number = _deploy(
        0.3, "learner", "holdout_fraction", "Newest share of the window held out for the gate."
    )
    candidates: list[str] = Field(
        default_factory=list,
        description="VW argument sets trained as candidates (batch), at most 8.",
    )


class PersonalizerIn(_Body):
    """Azure Personalizer compatibility settings (also set by /personalizer/.../configurations)."""

    learning_mode: str = Field(
        "Online",
        description="Online: the loop explores and learns. Apprentice: the baseline (first "
        "action; each slot's first) is served with probability 1, the model's pmf is logged "
        "beside it, the learner imitates the baseline. LoggingOnly: the baseline is served and "
        "logged, nothing is learned.",
        json_schema_extra={"enum": list(LEARNING_MODES)},
    )
    apprentice_since: str | None = Field(
        None, description="Start of the apprentice metrics (ISO 8601; set on entering Apprentice)."
    )
    policy_name: str = Field(
        "default", min_length=1, max_length=256, description="Name of the Personalizer policy."
    )
    edited_at: str | None = Field(None, description="Last change through the Personalizer API.")


def _explore(name: str, description: str) -> Any:
    """An exploration option (log.explore_settings): its default is `ExploreSettings`'s, its
    bound documented and enforced."""
    lo, hi = EXPLORE_BOUNDS[name]
    return Field(
        ExploreSettings.__dataclass_fields__[name].default,
        description=f"{description} In [{lo:.10g}, {hi:.10g}].",
        json_schema_extra={"minimum": lo, "maximum": hi},
    )


class ExploreOptionsIn(_Body):
    """The exploration strategies' parameters (every field optional; see the README)."""

    floor: Number = _explore(
        "floor",
        "Minimum probability of every action (any strategy; capped at 1/K): keeps every "
        "action in the log's support for off-policy evaluation.",
    )
    epsilon_decay: Number = _explore(
        "epsilon_decay", "epsilon_greedy: epsilon_t = epsilon (1 + t)^-decay (0: constant)."
    )
    epsilon_min: Number = _explore("epsilon_min", "epsilon_greedy: lower limit of epsilon_t.")
    squarecb_gamma0: Number = _explore(
        "squarecb_gamma0", "squarecb: gamma_t = gamma0 t^power (inverse-gap weighting)."
    )
    squarecb_power: Number = _explore("squarecb_power", "squarecb: the exponent of t.")
    regcb_mellowness: Number = _explore(
        "regcb_mellowness", "regcbopt: VW's --mellowness (width of the confidence bounds)."
    )
    cover_size: StrictInt = _explore("cover_size", "cover: number of cover policies.")
    cover_psi: Number = _explore("cover_psi", "cover: VW's --psi (disagreement weight).")
    bag_size: StrictInt = _explore("bag_size", "bag: number of bootstrapped policies.")


class LoopConfigIn(_Body):
    """Every field optional; PUT replaces the configuration (missing fields take defaults).
    The loop's sampling key is the server's secret: it cannot be set and is never shown."""

    exploration: str = Field(
        DEFAULT_EXPLORATION,
        description="Exploration strategy: epsilon_greedy, softmax, squarecb (computed by the "
        "service over the model's scores), regcbopt, cover, bag (VW's own cb_explore_adf "
        "reductions; the model predicts the distribution). exploration_options holds their "
        "parameters.",
        json_schema_extra={"enum": list(STRATEGIES)},
    )
    epsilon: Number = _bounded(
        0.2, "epsilon", "epsilon_greedy: probability of exploring; cover and bag: VW's --epsilon."
    )
    softmax_lambda: Number = _bounded(1.0, "softmax_lambda", "softmax: inverse temperature.")
    reward_wait_s: Number = _bounded(
        600.0, "reward_wait_s", "Seconds a decision's reward window stays open (30 days max)."
    )
    default_reward: Number = _bounded(
        0.0, "default_reward", "Reward of a window that closes without one; in [min, max]."
    )
    reward_aggregation: str = Field(
        "earliest",
        description="How several rewards of one slot are combined.",
        json_schema_extra={"enum": list(AGGREGATIONS)},
    )
    min_reward: Number = _bounded(-1.0, "min_reward", "Smallest accepted reward.")
    max_reward: Number = _bounded(1.0, "max_reward", "Largest accepted reward (>= min_reward).")
    vw_args: str = Field(
        DEFAULT_VW_ARGS,
        description="Vowpal Wabbit learning options from a safe set (interactions of arity <= 3, "
        "--cb_type, learning rate, regularisation, -b <= 24, ...).",
        json_schema_extra={"maxLength": MAX_VW_ARGS_CHARS},
    )
    gate: GateIn = Field(default_factory=GateIn, description="The promotion gate's criteria.")
    rollout: RolloutIn = Field(default_factory=RolloutIn, description="The rollout policy.")
    learner: LearnerIn = Field(default_factory=LearnerIn, description="The learner's schedule.")
    retrieval: dict[str, Any] | None = Field(
        None,
        description="Post-processing rules of retrieved candidates (`retrieve` requests): "
        "excluded_ids, creator_feature, blocked_creators, max_age_s, predicates, "
        "freshness_boost, freshness_half_life_s, creator_cap, group_feature, group_value, "
        "min_share, overfetch (README: Retrieval).",
    )
    alarms: AlarmsIn = Field(default_factory=AlarmsIn, description="The alarm rules.")
    personalizer: PersonalizerIn = Field(
        default_factory=PersonalizerIn, description="Azure Personalizer compatibility settings."
    )
    exploration_options: ExploreOptionsIn = Field(
        default_factory=ExploreOptionsIn,
        description="Parameters of the exploration strategies (floor, decay, SquareCB's "
        "schedule, RegCB, cover, bagging).",
    )


# ----------------------------------------------------------------------------------- responses
class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(description="Machine-readable reason (stable; listed in the README).")
    message: str = Field(description="What went wrong and what to fix.")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


class RankedAction(BaseModel):
    id: str
    probability: float = Field(ge=0, le=1)


class SlotOut(BaseModel):
    slot: int = Field(ge=0)
    action_id: str
    probability: float = Field(gt=0, le=1)


class RankResponse(BaseModel):
    event_id: str
    model_version: str
    ranking: list[RankedAction] = Field(
        description="Every action, the served one first, with the probability it was served."
    )
    reward_action_id: str
    slots: list[SlotOut] | None = Field(
        None, description="Slates only: each slot's action and conditional probability."
    )


class RewardResponse(BaseModel):
    event_id: str
    slot: int = Field(ge=0)
    status: Literal["accepted", "late", "pending_activation", "accepted_unverified"] = Field(
        description="late: stored and counted, never joined; pending_activation: joined only "
        "once the deferred decision is activated; accepted_unverified: stored durably while the "
        "store could not be read, checked when it is joined."
    )
    joined: bool
    replayed: bool = Field(description="A retry with a known reward_id: nothing new stored.")


class ActivateResponse(BaseModel):
    event_id: str
    status: Literal["activated", "already_activated", "activated_unverified"]
    reward_deadline: datetime | None


class PersonalizerOut(BaseModel):
    learning_mode: str
    apprentice_since: str | None
    policy_name: str
    edited_at: str | None


class LoopConfigOut(BaseModel):
    exploration: str
    epsilon: float
    softmax_lambda: float
    reward_wait_s: float
    default_reward: float
    reward_aggregation: str
    min_reward: float
    max_reward: float
    vw_args: str
    gate: GateIn
    rollout: RolloutIn
    learner: LearnerIn
    alarms: AlarmsIn
    personalizer: PersonalizerOut
    exploration_options: ExploreOptionsIn


class LoopCounts(BaseModel):
    decisions: int
    rewards: int
    late_rewards: int
    outcomes: int


class LoopOut(BaseModel):
    loop: str
    config: LoopConfigOut
    created_at: datetime
    updated_at: datetime
    counts: LoopCounts | None = Field(None, description="GET /v1/loops/{loop} only.")


class LoopsOut(BaseModel):
    loops: list[LoopOut]


class ServingOut(BaseModel):
    live: str = Field(description="The live version (or `untrained`).")
    canary: str | None = Field(description="The canary version this worker serves, if any.")
    canary_percent: float | None = Field(description="The canary's share of units (%).")
    shadow: str | None = Field(description="The shadow version scored beside, if any.")
    canary_served: int = Field(description="Decisions the canary served in this worker.")
    shadow_scored: int = Field(description="Decisions logged with a shadow pmf.")
    shadow_failed: int = Field(description="Shadow scorings that failed (logged shadow null).")
    retriever_canary_served: int = Field(
        0, description="Decisions whose candidates the canary retriever retrieved."
    )
    retriever_shadow_retrieved: int = Field(
        0, description="Decisions logged with a shadow retriever's overlap."
    )
    retriever_shadow_failed: int = Field(
        0, description="Shadow retrievals that failed (logged retrieval.shadow null)."
    )


class StatusOut(BaseModel):
    durability: str
    writer: dict[str, Any]
    loops: dict[str, str] = Field(description="Loop -> the live model version this worker serves.")
    serving: dict[str, ServingOut] = Field(
        description="Loop -> its live, canary and shadow versions in this worker, with counts."
    )


# Models of bodies the routes read themselves (no FastAPI body parameter): the app registers
# them as components so that `$ref`s to them resolve.
REQUEST_MODELS: tuple[type[BaseModel], ...] = (RankRequest, RewardRequest, LoopConfigIn)


def body_ref(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra of a route whose required JSON body is `model` (read by the route)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries: each status answers the error body."""
    described = {
        400: "The body is not JSON (or holds NaN/Infinity).",
        404: "Unknown loop or resource.",
        409: "Conflicts with what is stored.",
        413: "The body is larger than DS_MAX_BODY_BYTES.",
        422: "The request breaks a rule or a limit.",
        429: "Too many at once; retry after Retry-After seconds.",
        503: "The store cannot verify the request now; retry after Retry-After seconds.",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": described[status]}
        if status in (429, 503):
            entry["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer", "minimum": 0},
                }
            }
        out[status] = entry
    return out
