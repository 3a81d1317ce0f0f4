"""The promotion gate: is a candidate better than live on events it was not trained on?

:func:`check_candidate` runs the off-policy evaluation (:func:`learn.offline_eval.run_evaluation`,
estimator ``dr``) of the candidate against the logging policy ("live") on the SAME held-out
events (those decided after the candidate's ``trained_until``): the paired difference
(candidate - live) with its interval at the loop's confidence, the importance-weight
diagnostics and, per guardrail metric, the paired difference of the rates of events with a
negative signal. :func:`decide` (pure) turns those numbers and the loop's
:class:`~log.deploy_settings.GateSettings` into a verdict; it is stored
(:mod:`log.verdicts`) with every number and its reason, and returned.

The interval: with ``sequential`` (the default) the anytime-valid confidence sequence ``cs``
(:mod:`evaluation.intervals`) evaluated at the last event, so the gate may be checked again and
again as data arrive without inflating false promotions; otherwise a one-look ``bootstrap``
interval. ``alpha = 1 - confidence`` (two-sided: a false pass needs the lower bound above the
truth, probability at most alpha / 2 per the sequence's guarantee).

The decision, in this order:

1. ``pending`` when there are no numbers yet (fewer than 2 held-out events, an estimator error).
2. ``fail`` when the estimate cannot be trusted whatever more data come: an importance weight
   above ``max_weight`` (weights only grow with more events), or support below ``min_support``
   (the candidate's probability on actions live could serve).
3. ``fail`` when the candidate is conclusively worse than allowed: a guardrail's rate
   difference has its LOWER bound above the allowed increase, or the reward difference has its
   UPPER bound below ``margin`` (it cannot be better by the margin).
4. ``pass`` when ``n >= min_events``, ``ess >= min_ess``, the reward difference's LOWER bound is
   above ``margin`` and every guardrail's UPPER bound is at most its allowed increase (at the
   gate's confidence the rate cannot have increased by more than allowed).
5. Otherwise ``fail`` once ``n >= max_events`` (undecided for too long), else ``pending`` with
   what is missing (too few events, too small an ess, an interval straddling the margin, a
   guardrail not yet shown within its allowance, or not reported).

A version is checked while it is a candidate, shadow or canary (409 ``not_a_candidate``
otherwise); `look` counts the checks of the version (1 for the first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import deploy.registry as registry
from deploy.interval import Interval
from explore.errors import Conflict, NotFound
from learn.offline_eval import EvaluationError, run_evaluation
from learn.offline_eval_spec import EvaluationSpec, PolicySpec, SpecError
from log.deploy_settings import GateSettings, section_json
from log.loops import get_loop
from log.schema import Engine
from log.verdicts import VerdictRecord, latest_verdict, list_verdicts, store_verdict

__all__ = [
    "DECISIONS",
    "ESTIMATOR",
    "GateNumbers",
    "GateVerdict",
    "check_candidate",
    "decide",
    "gate_alpha",
    "gate_criteria",
    "gate_interval",
    "latest_gate_verdict",
    "numbers_from_result",
    "verdicts_of",
]

DECISIONS = ("pass", "fail", "pending")
ESTIMATOR = "dr"
CHECKABLE = frozenset({"candidate", "shadow", "canary"})


def gate_interval(settings: GateSettings) -> str:
    """The interval kind the gate uses: ``cs`` when sequential, ``bootstrap`` otherwise."""
    return "cs" if settings.sequential else "bootstrap"


def gate_alpha(settings: GateSettings) -> float:
    return round(1.0 - settings.confidence, 12)


def gate_criteria(settings: GateSettings) -> dict[str, Any]:
    """The criteria a verdict applied: the gate settings, the interval, alpha, the estimator."""
    return {
        **section_json(settings),
        "interval": gate_interval(settings),
        "alpha": gate_alpha(settings),
        "estimator": ESTIMATOR,
    }


@dataclass(frozen=True)
class GateNumbers:
    """What the gate decides from. `difference`: (candidate - live) of the reward on the same
    events, with its interval; `ess`, `max_weight`: of the candidate's importance weights;
    `support`: the candidate's probability on actions the logging policy could serve (None:
    not measured); `guardrails`: per metric, (candidate - live) of the rate of events with a
    negative signal; `error`: why there are no estimates (then `difference` is None)."""

    n: int
    difference: Interval | None
    ess: float = 0.0
    max_weight: float = 0.0
    support: float | None = None
    guardrails: Mapping[str, Interval] = field(default_factory=dict)
    error: str | None = None


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def decide(numbers: GateNumbers, settings: GateSettings) -> tuple[str, str]:
    """The gate's (decision, reason) from `numbers` under `settings` (see the module docstring
    for the rules). Pure."""
    conf = f"{settings.confidence:.3g}"
    diff = numbers.difference
    if numbers.error is not None or diff is None or numbers.n < 2:
        why = numbers.error or f"{numbers.n} held-out events"
        return "pending", f"no estimate yet: {why}"
    if numbers.max_weight > settings.max_weight:
        return "fail", (
            f"an importance weight of {_fmt(numbers.max_weight)} exceeds max_weight "
            f"{_fmt(settings.max_weight)}: the candidate cannot be evaluated reliably off-policy "
            "(its probability on actions live rarely takes is too high)"
        )
    if numbers.support is not None and numbers.support < settings.min_support:
        return "fail", (
            f"support {numbers.support:.4f} is below min_support {settings.min_support}: the "
            "candidate puts probability on actions the logging policy never serves"
        )
    for metric, allowed in settings.guardrails.items():
        g = numbers.guardrails.get(metric)
        if g is not None and g.ci_low > allowed:
            return "fail", (
                f"guardrail {metric!r}: its rate increased by at least {_fmt(g.ci_low)} (at "
                f"confidence {conf}), more than the {_fmt(allowed)} allowed"
            )
    if diff.ci_high < settings.margin:
        return "fail", (
            f"not better than live by the margin {_fmt(settings.margin)}: the difference is at "
            f"most {_fmt(diff.ci_high)} (estimate {_fmt(diff.value)}, confidence {conf})"
        )
    missing: list[str] = []
    if numbers.n < settings.min_events:
        missing.append(f"{numbers.n} held-out events of the {settings.min_events} needed")
    if numbers.ess < settings.min_ess:
        missing.append(f"effective sample size {_fmt(numbers.ess)} below {_fmt(settings.min_ess)}")
    if diff.ci_low <= settings.margin:
        missing.append(
            f"the difference's interval [{_fmt(diff.ci_low)}, {_fmt(diff.ci_high)}] does not "
            f"exclude the margin {_fmt(settings.margin)}"
        )
    for metric, allowed in settings.guardrails.items():
        g = numbers.guardrails.get(metric)
        if g is None:
            missing.append(f"guardrail {metric!r} is not reported")
        elif g.ci_high > allowed:
            missing.append(
                f"guardrail {metric!r} may have increased by up to {_fmt(g.ci_high)} (allowed "
                f"{_fmt(allowed)})"
            )
    if not missing:
        return "pass", (
            f"better than live by more than {_fmt(settings.margin)}: difference "
            f"{_fmt(diff.value)} in [{_fmt(diff.ci_low)}, {_fmt(diff.ci_high)}] at confidence "
            f"{conf} on {numbers.n} held-out events"
            + (", every guardrail within its allowance" if settings.guardrails else "")
        )
    if numbers.n >= settings.max_events:
        return "fail", (
            f"still undecided after {numbers.n} held-out events (max_events "
            f"{settings.max_events}): " + "; ".join(missing)
        )
    return "pending", "; ".join(missing)


@dataclass(frozen=True)
class GateVerdict:
    """One verdict of the gate on `version`, compared with `incumbent` (the live version; None
    when the loop had none and the logging policy was the comparison)."""

    version: str
    incumbent: str | None
    look: int
    decision: str
    passed: bool
    reason: str
    numbers: dict[str, Any]
    criteria: dict[str, Any]
    at: datetime
    loop: str = ""
    id: str = ""

    @classmethod
    def from_record(cls, r: VerdictRecord) -> GateVerdict:
        return cls(
            version=r.version,
            incumbent=r.incumbent,
            look=r.look,
            decision=r.decision,
            passed=r.passed,
            reason=r.reason,
            numbers=r.numbers,
            criteria=r.criteria,
            at=r.at,
            loop=r.loop,
            id=r.id,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["at"] = self.at.isoformat()
        return out


def _interval(data: Any) -> Interval | None:
    if not isinstance(data, Mapping) or "error" in data:
        return None
    try:
        return Interval.from_json(data)
    except (KeyError, TypeError, ValueError):
        return None


def numbers_from_result(
    result: Mapping[str, Any], name: str, guardrails: tuple[str, ...] = ()
) -> tuple[GateNumbers, dict[str, Any]]:
    """The gate's numbers for target `name` of a runner result, and the JSON of every number
    kept with the verdict."""
    p = next(x for x in result["policies"] if x["name"] == name)
    n = int(p.get("n") or 0)
    diag = p.get("diagnostics") or {}
    vs_live = (p.get("vs_live") or {}).get(ESTIMATOR) or {}
    diff = _interval(vs_live.get("difference"))
    error = p.get("error") or vs_live.get("error")
    if error is None and diff is None:
        error = "the runner reported no difference"
    unsupported = diag.get("unsupported_mass")
    reported = p.get("guardrails") or {}
    g_numbers: dict[str, Interval] = {}
    g_json: dict[str, Any] = {}
    for metric in guardrails:
        entry = reported.get(metric)
        g_json[metric] = entry
        d = _interval(entry.get("difference")) if isinstance(entry, Mapping) else None
        if d is not None:
            g_numbers[metric] = d
    numbers = GateNumbers(
        n=n,
        difference=diff,
        ess=float(diag.get("ess") or 0.0),
        max_weight=float(diag.get("max_weight") or 0.0),
        support=None if unsupported is None else 1.0 - float(unsupported),
        guardrails=g_numbers,
        error=None if error is None else str(error),
    )
    as_json = {
        "n": n,
        "estimator": ESTIMATOR,
        "interval": result.get("interval"),
        "alpha": result.get("alpha"),
        "difference": vs_live.get("difference"),
        "live": vs_live.get("live"),
        "candidate": (p.get("estimates") or {}).get(ESTIMATOR),
        "diagnostics": diag or None,
        "support": numbers.support,
        "guardrails": g_json,
        "eval_from": p.get("eval_from"),
        "time_split": p.get("time_split"),
        "problems": p.get("problems") or [],
        "warnings": p.get("warnings") or [],
        "error": numbers.error,
        "as_of": result.get("as_of"),
        "as_of_seq": result.get("as_of_seq"),
        "window": result.get("window"),
    }
    return numbers, as_json


def check_candidate(
    engine: Engine, loop: str, version: str, *, now: datetime | None = None
) -> GateVerdict:
    """Evaluate `version` against live on its held-out events, decide, store the verdict (with
    every number and its reason) and return it. Raises NotFound (unknown loop
    ``loop_not_found``, unknown version or one of another loop ``model_not_found``), Conflict
    ``not_a_candidate`` (the version is live, retired or rejected)."""
    stored = get_loop(engine, loop)
    if stored is None:
        raise NotFound(f"loop {loop!r} does not exist", "loop_not_found")
    settings = stored.config.gate
    info = registry.get_version(engine, version)
    if info is None or info.loop != loop:
        raise NotFound(
            f"model version {version!r} does not exist in loop {loop!r}", "model_not_found"
        )
    if info.status not in CHECKABLE:
        raise Conflict(
            f"version {version!r} is {info.status}: the gate checks candidates, shadows and "
            "canaries",
            "not_a_candidate",
        )
    incumbent = registry.live_version(engine, loop)
    guardrails = tuple(settings.guardrails)
    target = PolicySpec("model", version=version)
    spec = EvaluationSpec(
        policies=(target,),
        since=info.trained_until,
        estimators=(ESTIMATOR,),
        alpha=gate_alpha(settings),
        interval=gate_interval(settings),
        guardrails=guardrails,
    )
    try:
        result = run_evaluation(engine, loop, spec, registry=registry)
        numbers, as_json = numbers_from_result(result, target.name, guardrails)
    except EvaluationError as err:
        numbers = GateNumbers(n=0, difference=None, error=str(err))
        as_json = {"n": 0, "estimator": ESTIMATOR, "error": str(err)}
    except SpecError as err:
        raise NotFound(err.message, "model_not_found") from None
    except LookupError as err:
        raise NotFound(str(err), "loop_not_found") from None
    decision, reason = decide(numbers, settings)
    record = store_verdict(
        engine,
        VerdictRecord(
            loop=loop,
            version=version,
            incumbent=None if incumbent is None else incumbent.version,
            at=now or datetime.now(UTC),
            decision=decision,
            reason=reason,
            criteria=gate_criteria(settings),
            numbers=as_json,
        ),
    )
    return GateVerdict.from_record(record)


def latest_gate_verdict(engine: Engine, version: str) -> GateVerdict | None:
    found = latest_verdict(engine, version)
    return None if found is None else GateVerdict.from_record(found)


def verdicts_of(engine: Engine, version: str, *, limit: int = 100) -> list[GateVerdict]:
    """The version's verdicts, latest first."""
    return [GateVerdict.from_record(r) for r in list_verdicts(engine, version, limit=limit)]
