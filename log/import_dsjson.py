"""Import a DSJSON log (Azure Personalizer's / Vowpal Wabbit's decision-service format, and this
service's own export, `log/export_dsjson.py`) into a loop: decisions with their logged
probabilities and their joined outcomes, so that a team leaving Personalizer can evaluate and
warm-start on its history.

What a line becomes (the inverse of the export):

* CB line (`a`, `p`, `c._multi`): one decision. The candidates are `_multi` in order (an
  action's id: its `id` feature, or an `id=<id>` feature name as this service exports it, else
  its 1-based position); `pmf[a[i] - 1] = p[i]` (they must sum to 1 within 1e-3); the chosen
  action is `a[0]`. The context is `c` without `_multi`, `_slots` and `_`-prefixed keys: its
  namespaces become nested objects, except this service's own namespace `c`, whose VW-JSON
  `name: value` pairs are kept as they are (VW reads `user=u1:1.0` as it reads `user=u1`, so a
  model trained on an imported export equals one trained on the original).
* CCB line (`_outcomes`): one slate; slot k's action and conditional probability are its
  `_a[0]` and `_p[0]`; the slate's pmf is slot 0's (`_a`, `_p`). Slot features (`c._slots`) are
  not kept (the service's slates share one context).
* Reward: `-_label_cost` (`-_original_label_cost` when present: the true reward of an apprentice
  line). An outcome whose observation list (`o`/`_o`) is present but has no `v` is marked as the
  default reward, as the export writes it.
* `_skipLearn: true` (a deferred decision never activated): stored deferred, no outcome. An
  observation `{"ActionTaken": true}`: deferred and activated at decision time.
* `Timestamp` -> decided_at; `EventId` -> event_id (required); `VWState.m` -> model_version
  (else "imported"); `_policy_arm`, `_arm_probability`, `_shadow` (this service's rollout fields)
  are restored (with `_shadow.mode`, the Personalizer learning mode a decision was served in).
  `pdrop` and `_ba` are not kept.

Atomicity: every line is parsed and checked first; with `skip_invalid=False` a single malformed
line fails the import and nothing is written; otherwise malformed lines are skipped and
reported with their numbers. Everything valid is then written in **one transaction**, with one
join sequence number (learners and evaluations see the whole import or none of it). Decisions
are insert-if-absent: an event id the loop already has is left as it is and counted, so running
the same import twice writes nothing the second time.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from sqlalchemy import Engine, update

from log.apply import apply_records, dialect_insert
from log.joiner import next_join_seq
from log.models import DecisionRow, OutcomeRow
from log.records import DecisionRecord

__all__ = ["ImportStats", "LineError", "ParsedLine", "import_dsjson", "parse_line"]

MAX_REPORTED = 100
_TOLERANCE = 1e-3


class LineError(ValueError):
    """A line that cannot be imported (its message says why)."""


@dataclass(frozen=True)
class ParsedLine:
    record: DecisionRecord
    outcomes: dict[int, tuple[float, bool]]  # slot -> (reward, default applied)


@dataclass
class ImportStats:
    lines: int = 0
    imported: int = 0
    joined: int = 0
    slates: int = 0
    already_present: int = 0
    invalid: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, why), capped

    def to_json(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "imported": self.imported,
            "joined": self.joined,
            "slates": self.slates,
            "already_present": self.already_present,
            "invalid": self.invalid,
            "errors": [{"line": n, "error": e} for n, e in self.errors],
        }


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LineError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise LineError("Timestamp is required")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    head, dot, rest = text.partition(".")
    if dot:  # producers write up to 7 fractional digits; Python reads 6
        digits = "".join(ch for ch in rest if ch.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise LineError(f"Timestamp {value!r} is not an ISO 8601 time") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _visible(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _context(c: dict[str, Any]) -> dict[str, Any]:
    shown = _visible(c)
    if set(shown) == {"c"} and isinstance(shown["c"], dict):
        return dict(shown["c"])  # this service's own namespace: VW-JSON pairs as they are
    return shown


def _action(raw: Any, i: int) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise LineError(f"c._multi[{i}] must be an object")
    shown = _visible(raw)
    if set(shown) == {"a"} and isinstance(shown["a"], dict):  # this service's export
        features = dict(shown["a"])
        ids = [k for k in features if k.startswith("id=")]
        if ids:
            features.pop(ids[0])
            return {"id": ids[0][3:], "features": features}
        return {"id": str(i + 1), "features": features}
    features = {}
    action_id: str | None = None
    for key, value in shown.items():
        if isinstance(value, dict) and action_id is None and isinstance(value.get("id"), str):
            action_id = value["id"]
            value = {k: v for k, v in value.items() if k != "id"}
        elif key == "id" and isinstance(value, str) and action_id is None:
            action_id = value
            continue
        features[key] = value
    return {"id": action_id or str(i + 1), "features": features}


def _observed(obs: Any) -> tuple[bool, bool]:
    """(an observation list was given and has no value -> default reward, activated)."""
    if not isinstance(obs, list):
        return False, False
    valued = any(isinstance(o, dict) and "v" in o for o in obs)
    activated = any(isinstance(o, dict) and o.get("ActionTaken") is True for o in obs)
    return not valued, activated


def _reward(holder: dict[str, Any], where: str) -> float | None:
    cost = holder.get("_original_label_cost", holder.get("_label_cost"))
    # 0.0 - cost, as the export writes 0.0 - reward: no negative zero either way
    return None if cost is None else 0.0 - _number(cost, f"{where}_label_cost")


def parse_line(data: Any, loop: str, raw: bytes) -> ParsedLine:
    """One DSJSON line (parsed JSON) as a decision of `loop` with its outcomes (LineError)."""
    if not isinstance(data, dict):
        raise LineError("a line must be a JSON object")
    event_id = data.get("EventId")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 256:
        raise LineError("EventId must be a string of 1-256 characters")
    decided_at = _time(data.get("Timestamp"))
    c = data.get("c")
    if not isinstance(c, dict) or not isinstance(c.get("_multi"), list) or not c["_multi"]:
        raise LineError("c._multi (the actions) is required")
    actions = [_action(raw_action, i) for i, raw_action in enumerate(c["_multi"])]
    ids = [a["id"] for a in actions]
    if len(set(ids)) != len(ids):
        raise LineError("two actions have the same id")
    n = len(actions)
    state = data.get("VWState")
    version = str(state.get("m")) if isinstance(state, dict) and state.get("m") else "imported"
    outcomes: dict[int, tuple[float, bool]] = {}
    skip = data.get("_skipLearn") is True
    if "_outcomes" in data:  # CCB
        slates = data["_outcomes"]
        if not isinstance(slates, list) or not slates:
            raise LineError("_outcomes must be a non-empty list")
        slots: list[dict[str, Any]] = []
        pmf = [0.0] * n
        activated = False
        for k, outcome in enumerate(slates):
            if not isinstance(outcome, dict):
                raise LineError(f"_outcomes[{k}] must be an object")
            a, p = outcome.get("_a"), outcome.get("_p")
            if not isinstance(a, list) or not isinstance(p, list) or not a or len(a) != len(p):
                raise LineError(f"_outcomes[{k}]: _a and _p must be aligned non-empty lists")
            for j, idx in enumerate(a):
                if not isinstance(idx, int) or not 0 <= idx < n:
                    raise LineError(f"_outcomes[{k}]._a[{j}] is not an action index")
            probs = [_number(x, f"_outcomes[{k}]._p") for x in p]
            if not 0 < probs[0] <= 1:
                raise LineError(
                    f"_outcomes[{k}]: the chosen action's probability must be in (0, 1]"
                )
            slot: dict[str, Any] = {"slot": k, "action_id": ids[a[0]], "probability": probs[0]}
            if k == 0:
                for idx, prob in zip(a, probs, strict=True):
                    pmf[idx] = prob
                slot["pmf"] = list(pmf)
            slots.append(slot)
            reward = _reward(outcome, f"_outcomes[{k}].")
            default, act = _observed(outcome.get("_o"))
            activated = activated or act
            if reward is not None and not skip:
                outcomes[k] = (reward, default)
        if len({s["action_id"] for s in slots}) != len(slots):
            raise LineError("two slots serve the same action")
        chosen = slots[0]["action_id"]
        is_slate = True
    else:  # CB
        a, p = data.get("a"), data.get("p")
        if not isinstance(a, list) or not isinstance(p, list) or not a or len(a) != len(p):
            raise LineError("a and p must be aligned non-empty lists")
        pmf = [0.0] * n
        for j, (idx, prob) in enumerate(zip(a, p, strict=True)):
            if not isinstance(idx, int) or not 1 <= idx <= n:
                raise LineError(f"a[{j}] = {idx!r} is not a 1-based action index")
            pmf[idx - 1] = _number(prob, f"p[{j}]")
        if pmf[a[0] - 1] <= 0:
            raise LineError("the chosen action's probability must be positive")
        chosen = ids[a[0] - 1]
        slots = [{"slot": 0, "action_id": chosen, "probability": pmf[a[0] - 1]}]
        reward = _reward(data, "")
        default, activated = _observed(data.get("o"))
        if reward is not None and not skip:
            outcomes[0] = (reward, default)
        is_slate = False
    if outcomes and len(outcomes) != len(slots):
        raise LineError("some slots have a label and others not: label every slot or none")
    if any(x < 0 for x in pmf) or abs(sum(pmf) - 1.0) > _TOLERANCE:
        raise LineError(f"the probabilities must be >= 0 and sum to 1 (they sum to {sum(pmf):.6g})")
    deferred = skip or activated
    excluded: list[str] = []
    shadow = None
    rollout_shadow = data.get("_shadow")
    if isinstance(rollout_shadow, dict) and isinstance(rollout_shadow.get("p"), list):
        order = [i - 1 for i in data["a"]] if not is_slate else data["_outcomes"][0]["_a"]
        if len(order) == len(rollout_shadow["p"]):
            spmf = [0.0] * n
            for idx, prob in zip(order, rollout_shadow["p"], strict=True):
                spmf[idx] = _number(prob, "_shadow.p")
            shadow = {"version": str(rollout_shadow.get("m")), "pmf": spmf}
            if isinstance(rollout_shadow.get("mode"), str):
                shadow["mode"] = rollout_shadow["mode"]
    arm = data.get("_policy_arm")
    arm_probability = data.get("_arm_probability", 1.0)
    ranking = sorted(range(n), key=lambda i: (ids[i] != chosen, -pmf[i]))
    response: dict[str, Any] = {
        "event_id": event_id,
        "model_version": version,
        "ranking": [{"id": ids[i], "probability": pmf[i]} for i in ranking],
        "reward_action_id": chosen,
    }
    if is_slate:
        response["slots"] = [{k: v for k, v in s.items() if k != "pmf"} for s in slots]
    record = DecisionRecord(
        loop=loop,
        event_id=event_id,
        decided_at=decided_at,
        model_version=version,
        policy_arm=arm if arm in ("live", "canary") else "live",
        request_digest=hashlib.sha256(raw.strip()).hexdigest(),
        context=_context(c),
        actions=actions,
        pmf=pmf,
        excluded=excluded,
        chosen=chosen,
        slots=slots,
        n_slots=len(slots),
        is_slate=is_slate,
        deferred=deferred,
        activated_at=decided_at if activated else None,
        reward_deadline=None if skip else decided_at,
        response=response,
        arm_probability=_number(arm_probability, "_arm_probability"),
        shadow=shadow,
    )
    return ParsedLine(record, outcomes)


def _lines(source: IO[bytes] | str | os.PathLike[str]) -> Iterator[bytes]:
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as fh:
            yield from fh
    else:
        source.seek(0)
        yield from source


def _parsed(lines: Iterable[bytes], loop: str, stats: ImportStats) -> Iterator[ParsedLine]:
    first_line: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        stats.lines += 1
        try:
            parsed = parse_line(orjson.loads(raw), loop, raw)
            seen = first_line.setdefault(parsed.record.event_id, number)
            if seen != number:
                raise LineError(f"EventId {parsed.record.event_id!r} is also on line {seen}")
            yield parsed
        except (orjson.JSONDecodeError, LineError) as err:
            stats.invalid += 1
            if len(stats.errors) < MAX_REPORTED:
                stats.errors.append((number, str(err)))


def import_dsjson(
    engine: Engine,
    loop: str,
    source: IO[bytes] | str | os.PathLike[str],
    *,
    skip_invalid: bool = False,
    batch: int = 2000,
) -> ImportStats:
    """Import the file's lines into `loop` (module docstring). With invalid lines and
    `skip_invalid` False nothing is written (the stats say which lines and why)."""
    if not isinstance(source, str | os.PathLike):  # read twice: check, then write
        source = io.BytesIO(source.read())
    check = ImportStats()
    for _ in _parsed(_lines(source), loop, check):
        pass
    if check.invalid and not skip_invalid:
        return check
    stats = ImportStats()
    now = datetime.now(UTC)
    with engine.begin() as conn:
        seq: int | None = None
        chunk: list[ParsedLine] = []

        def flush() -> None:
            nonlocal seq
            inserted = apply_records(conn, [p.record for p in chunk])
            new = [p for p, ok in zip(chunk, inserted, strict=True) if ok]
            stats.already_present += len(chunk) - len(new)
            stats.imported += len(new)
            stats.slates += sum(p.record.is_slate for p in new)
            joined = [p for p in new if p.outcomes]
            if joined:
                if seq is None:
                    seq = next_join_seq(conn, loop)
                rows = [
                    {
                        "loop": loop,
                        "event_id": p.record.event_id,
                        "slot": slot,
                        "reward": reward,
                        "default_applied": default,
                        "n_rewards": 0 if default else 1,
                        "decided_at": p.record.decided_at,
                        "joined_at": now,
                        "join_seq": seq,
                    }
                    for p in joined
                    for slot, (reward, default) in sorted(p.outcomes.items())
                ]
                conn.execute(dialect_insert(conn, OutcomeRow).on_conflict_do_nothing(), rows)
                conn.execute(
                    update(DecisionRow)
                    .where(
                        DecisionRow.loop == loop,
                        DecisionRow.event_id.in_([p.record.event_id for p in joined]),
                    )
                    .values(joined_at=now, join_seq=seq)
                )
                stats.joined += len(joined)
            chunk.clear()

        for parsed in _parsed(_lines(source), loop, stats):
            chunk.append(parsed)
            if len(chunk) >= batch:
                flush()
        if chunk:
            flush()
    return stats
