"""Personalizer's offline evaluations as native evaluation runs (pure translations).

An EvaluationContract (`name`, `startTime`, `endTime`, `policies: [{name, arguments}]`,
`enableOfflineExperimentation` in v1.x / `enablePolicyOptimization` in 2022) becomes the native
run (`learn.offline_eval`) of these targets on the loop's joined events decided in
[startTime, endTime):

| Personalizer policy (policySource) | native target |
| --- | --- |
| Online | `live` (the logged policy, on-policy) |
| Baseline | `first_action` (the first non-excluded action) |
| Random | `uniform` |
| Custom (`policies`) | `vw_args`, the arguments translated as for PUT /configurations/policy |
| OfflineExperimentation (discovery) | `vw_args`: a fixed grid around the loop's own (`DISCOVERY`) |

A `vw_args` target learns on the earlier half of the window's joined events and is scored on
the later half (the native time split; the docs' "blank virtual model replayed in time order"
is the same idea). Every estimate is the native IPS with its 95% bootstrap interval;
`expectedReward` is its value and `confidenceInterval` its [low, high]. The optimal policy
follows Personalizer's auto-optimize rule: the policy with the highest expected reward whose
lower bound exceeds Online's lower bound, else Online.

Time series (2022 `GET` with `startTime`, `endTime`, `intervalInMinutes`, `window`): the run
estimates the whole window, not buckets, so each policy's series has one point (the window's
start) carrying the whole-window estimate; the query is validated and echoed. Multi-slot events
are scored on their first slot (`slates: slot0`), as Personalizer's offline evaluation does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from explore.errors import InvalidInput
from learn.offline_eval_spec import MAX_NAME

__all__ = [
    "DISCOVERY",
    "INTERVALS",
    "WINDOWS",
    "evaluation_json",
    "native_spec",
    "optimal_policy",
    "policy_arguments",
]

ESTIMATOR = "ips"
INTERVALS = (5, 60, 360, 720, 1440)
WINDOWS = ("Expanding", "Rolling")
BASELINES = (("Online", "live"), ("Baseline", "first_action"), ("Random", "uniform"))
# Optimization discovery: variations of the loop's own arguments (added to them).
DISCOVERY = ("--cb_type ips", "--cb_type dr", "-l 0.1", "--l2 1e-6")
MAX_CUSTOM = 16
_STATUS = {"queued": "Running", "running": "Running", "succeeded": "Succeeded", "failed": "Failed"}


def variant(args: str, extra: str) -> str:
    """`args` with the options of `extra` (each `--option value`) set to extra's values."""
    tokens, changes = args.split(), extra.split()
    names = set(changes[::2])
    kept: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] in names:
            i += 2
            continue
        kept.append(tokens[i])
        i += 1
    return " ".join(kept + changes)


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message, "invalid_evaluation")


def _time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise _bad(f"{name} is required (an ISO 8601 time with its offset)")
    try:
        out = datetime.fromisoformat(value)
    except ValueError:
        raise _bad(f"{name} must be an ISO 8601 time, got {value!r}") from None
    if out.tzinfo is None:
        raise _bad(f"{name} must carry its offset (e.g. 2024-01-01T00:00:00Z), got {value!r}")
    return out


def native_spec(
    contract: Any, loop_args: str, translate: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the native evaluation request, the contract as stored). `translate` turns Personalizer
    VW arguments into native ones (raising InvalidInput)."""
    if not isinstance(contract, dict):
        raise _bad("the body must be an EvaluationContract object")
    name = contract.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise _bad(f"name must be 1-{MAX_NAME} characters")
    start = _time(contract.get("startTime"), "startTime")
    end = _time(contract.get("endTime"), "endTime")
    if start >= end:
        raise _bad("startTime must be before endTime")
    custom = contract.get("policies") or []
    if not isinstance(custom, list) or len(custom) > MAX_CUSTOM:
        raise _bad(f"policies must be a list of at most {MAX_CUSTOM} {{name, arguments}}")
    policies: list[dict[str, Any]] = [{"kind": kind, "name": n} for n, kind in BASELINES]
    sources = {n: n for n, _ in BASELINES}
    arguments: dict[str, str] = {"Online": loop_args}
    for i, p in enumerate(custom):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise _bad(f"policies[{i}] must be an object with name and arguments")
        pname, pargs = p["name"], p.get("arguments")
        if not 0 < len(pname) <= MAX_NAME or pname in sources:
            raise _bad(f"policies[{i}].name {pname!r} is empty, too long or used twice")
        if not isinstance(pargs, str):
            raise _bad(f"policies[{i}].arguments must be a VW command line")
        policies.append({"kind": "vw_args", "name": pname, "args": translate(pargs)})
        sources[pname] = "Custom"
        arguments[pname] = pargs
    discover = bool(
        contract.get("enableOfflineExperimentation") or contract.get("enablePolicyOptimization")
    )
    if discover:
        for k, extra in enumerate(DISCOVERY, start=1):
            pname = f"Optimized{k}"
            args = translate(variant(loop_args, extra))
            policies.append({"kind": "vw_args", "name": pname, "args": args})
            sources[pname] = "OfflineExperimentation"
            arguments[pname] = args
    request = {
        "policies": policies,
        "since": start.isoformat(),
        "until": end.isoformat(),
        "estimators": [ESTIMATOR],
        "slates": "slot0",
    }
    stored = {
        "name": name,
        "startTime": start.isoformat(),
        "endTime": end.isoformat(),
        "enablePolicyOptimization": discover,
        "sources": sources,
        "arguments": arguments,
    }
    return request, stored


def policy_arguments(stored: dict[str, Any], policy: str) -> tuple[str, str] | None:
    """(source, Personalizer arguments) of an evaluated policy, None if it was not evaluated."""
    source = stored.get("sources", {}).get(policy)
    if source is None:
        return None
    return source, stored.get("arguments", {}).get(policy, "")


def _estimate(result: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    if result is None:
        return None
    for p in result.get("policies", []):
        if p.get("name") == name:
            est = p.get("estimates", {}).get(ESTIMATOR)
            if isinstance(est, dict) and "value" in est:
                return est
    return None


def optimal_policy(stored: dict[str, Any], result: dict[str, Any] | None) -> str | None:
    """Personalizer's rule: the highest expected reward among the policies whose lower bound
    beats Online's lower bound; Online when none does; None before the run succeeded."""
    online = _estimate(result, "Online")
    if online is None:
        return None
    best, best_value = "Online", online["value"]
    for name in stored.get("sources", {}):
        est = _estimate(result, name)
        if est is None or name == "Online":
            continue
        if est["ci_low"] > online["ci_low"] and est["value"] > best_value:
            best, best_value = name, est["value"]
    return best


def _summary_v1(est: dict[str, Any] | None, start: str) -> dict[str, Any]:
    if est is None:
        return {}
    n = int(est.get("n") or 0)
    half = (est["ci_high"] - est["ci_low"]) / 2
    return {
        "timeStamp": start,
        "ipsEstimatorNumerator": est["value"] * n,
        "ipsEstimatorDenominator": n,
        "snipsEstimatorDenominator": n,
        "aggregateTimeWindow": "PT0S",
        "nonZeroProbability": n,
        "confidenceInterval": half,
        "averageReward": est["value"],
    }


def evaluation_json(
    evaluation_id: str,
    stored: dict[str, Any],
    created_at: datetime,
    status: str,
    result: dict[str, Any] | None,
    *,
    version_2022: bool,
    query: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Evaluation as the Personalizer API shows it (v1.x or 2022)."""
    out: dict[str, Any] = {
        "id": evaluation_id,
        "name": stored["name"],
        "startTime": stored["startTime"],
        "endTime": stored["endTime"],
        "status": _STATUS.get(status, "Failed"),
        "evaluationType": "Manual",
        "creationTime": created_at.isoformat(),
    }
    optimal = optimal_policy(stored, result)
    if optimal is not None:
        out["optimalPolicy"] = optimal
    if query is None:  # a listing
        return out
    values = []
    for name, source in stored.get("sources", {}).items():
        est = _estimate(result, name)
        entry: dict[str, Any] = {
            "name": name,
            "arguments": stored.get("arguments", {}).get(name, ""),
            "policySource": source,
        }
        if version_2022:
            if est is not None:
                summary = {
                    "expectedReward": est["value"],
                    "confidenceInterval": [est["ci_low"], est["ci_high"]],
                }
                entry["summary"] = summary
                entry["timeseries"] = {"data": [{"timeStamp": stored["startTime"], **summary}]}
            entry["slotId"] = ""
        else:
            summary_v1 = _summary_v1(est, stored["startTime"])
            entry["summary"] = [summary_v1] if summary_v1 else []
            entry["totalSummary"] = summary_v1
        values.append(entry)
    if version_2022:
        out["content"] = {**query, "value": values}
    else:
        out["policyResults"] = values
        out["featureImportance"] = []
        out["jobId"] = evaluation_id
    return out
