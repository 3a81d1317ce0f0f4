"""Export a loop's joined decisions as DSJSON, Vowpal Wabbit's decision-service log format.

One JSON object per line, readable by ``vw --cb_explore_adf --dsjson`` (single decisions) and
``vw --ccb_explore_adf --dsjson`` (slates). What goes in a line:

* Candidates: the decision's actions in stored (request) order **without the excluded ones**:
  those had probability 0 and were never servable, so they are no part of the candidate set
  VW should learn over. `a` (1-based) and the CCB `_a` (0-based) index this list.
* Features are encoded so that VW hashes them exactly as serving does (policies/vw_text.py):
  context features in namespace ``c``, action features in namespace ``a`` with ``id=<id>``
  first; every feature is a JSON ``"name": number`` pair whose name is the text-format name
  (``user=u1``, ``price``, ``loc.city=Paris``...), strings as ``name=value`` with value 1,
  nested mappings flattened with dots. A model trained on this file therefore scores serving's
  text examples the same as one trained from them. Consequences of VW's JSON parser: a
  feature whose name starts with ``_`` is dropped by VW (Personalizer's hidden fields), and
  repeated names (a list with repeated strings) are merged into one feature whose value is the
  count. Non-finite numbers are left out (JSON cannot carry them).
* Single decision: ``_label_cost`` = -reward (slot 0), ``_label_probability`` = p[0],
  ``_label_Action`` = a[0], ``_labelIndex`` = a[0]-1, ``a`` = the chosen action first, then the
  others by logged probability (descending, ties in stored order), ``p`` aligned with ``a``.
  The labels come first in the line: VW's parser reads the label before ``c``, a label written
  after ``c`` is silently ignored.
* Slate: ``c`` also has ``_slots`` (``_id`` = slot index as a string) and ``_outcomes`` (after
  ``c``: VW rejects it before) holds per slot ``_label_cost``, ``_id``, ``_a`` (0-based, chosen
  first) and ``_p``. Slot 0 lists every candidate with the logged pmf; for later slots the store
  keeps only the chosen action's conditional probability, so ``_a``/``_p`` hold that one entry
  (VW learns from the first entry only).
* ``o`` / ``_o``: the joined (aggregated) reward as ``{"v", "EventId", "ActionTaken": false}``,
  none when the loop's default reward was applied, plus ``{"EventId", "ActionTaken": true}`` for
  an activated deferred decision.
* ``Timestamp`` = decided_at in UTC as ``YYYY-MM-DDThh:mm:ss.fffffffZ`` (the producers'
  seven-digit form), ``Version`` "1", ``EventId``, ``VWState`` ``{"m": model_version}`` (the
  version of the arm that served it).
* Rollout fields, last in the line, named with a leading ``_`` (VW's parser skips unknown keys;
  the tests check a model learns the same with and without them): ``_policy_arm`` ("live" or
  "canary"), ``_arm_probability`` (the share of units in that arm; not a propensity: ``p`` /
  ``_p`` are the serving arm's probabilities, which are), and, when a shadow scored the decision,
  ``_shadow`` = ``{"m": shadow version, "p": its probabilities}`` with ``p`` aligned with ``a``
  (single decision) or with slot 0's ``_a`` (slate: the shadow's first-slot pmf); a decision
  served in Apprentice or LoggingOnly mode adds ``"mode"`` (the pmf is then the live model's).

Decisions without outcomes (window still open, or deferred and never activated) are **not
written**: there is no label yet, and VW drops a ``_skipLearn`` line's features anyway (and
rejects an unlabelled CCB line). They are counted in `ExportStats.skipped`; the Parquet export
keeps every decision.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from sqlalchemy import Engine

from log.export import DEFAULT_YIELD_PER, ExportStats, LoggedDecision, iter_decisions

__all__ = ["cb_line", "ccb_line", "dsjson_line", "export_dsjson", "timestamp", "vw_features"]

# The VW text format reserves whitespace, ':' and '|' (same rule as policies/vw_text.py).
_BAD = re.compile(r"[\s:|]")


def _clean(text: str) -> str:
    return _BAD.sub("_", text)


def _num(value: float) -> float:
    # serving writes numbers as `name:{value:.9g}`; carry the same decimal value
    return float(f"{float(value):.9g}")


def _add(out: dict[str, float], name: str, value: float) -> None:
    if math.isfinite(value):
        out[name] = out.get(name, 0.0) + value


def vw_features(features: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The features serving's text encoding gives `features`, as VW-JSON ``name: value`` pairs."""
    out: dict[str, float] = {}
    _encode(features, prefix, out)
    return out


def _encode(features: Mapping[str, Any], prefix: str, out: dict[str, float]) -> None:
    for key, value in features.items():
        name = _clean(prefix + str(key))
        if isinstance(value, bool):
            if value:
                _add(out, name, 1.0)
        elif isinstance(value, int | float):
            _add(out, name, _num(value))
        elif isinstance(value, str):
            _add(out, f"{name}={_clean(value)}", 1.0)
        elif isinstance(value, Mapping):
            _encode(value, f"{name}.", out)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, bool):
                    if item:
                        _add(out, f"{name}={str(item).lower()}", 1.0)
                elif isinstance(item, int | float):
                    _add(out, f"{name}_{i}", _num(item))
                elif item is not None:
                    _add(out, f"{name}={_clean(str(item))}", 1.0)


def timestamp(when: datetime) -> str:
    """``YYYY-MM-DDThh:mm:ss.fffffffZ`` in UTC, as decision-service producers write it."""
    t = when.astimezone(UTC)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond:06d}0Z"


def _candidates(d: LoggedDecision) -> tuple[list[dict[str, Any]], list[float]]:
    excluded = set(d.record.excluded)
    kept = [
        (a, p)
        for a, p in zip(d.record.actions, d.record.pmf, strict=True)
        if a["id"] not in excluded
    ]
    return [a for a, _ in kept], [float(p) for _, p in kept]


def _context(
    d: LoggedDecision, actions: list[dict[str, Any]], slots: int | None = None
) -> dict[str, Any]:
    multi = [
        {"a": {f"id={_clean(str(a['id']))}": 1.0, **vw_features(a.get("features") or {})}}
        for a in actions
    ]
    c: dict[str, Any] = {"c": vw_features(d.record.context), "_multi": multi}
    if slots is not None:
        c["_slots"] = [{"_id": str(k)} for k in range(slots)]
    return c


def _ranked(pmf: list[float], chosen: int) -> list[int]:
    """`chosen` first, then the others by probability, descending (stable)."""
    rest = sorted((i for i in range(len(pmf)) if i != chosen), key=lambda i: -pmf[i])
    return [chosen, *rest]


def _index(actions: list[dict[str, Any]], action_id: str, event_id: str) -> int:
    for i, a in enumerate(actions):
        if a["id"] == action_id:
            return i
    raise ValueError(f"decision {event_id!r}: chosen action {action_id!r} is not a candidate")


def _observations(d: LoggedDecision, slot: int, index: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    outcome = d.outcomes[slot]
    if not outcome.default_applied:
        obs: dict[str, Any] = {"v": outcome.reward, "EventId": d.record.event_id}
        if index is not None:
            obs["Index"] = index
        obs["ActionTaken"] = False
        out.append(obs)
    if d.record.deferred and d.record.activated_at is not None:
        act: dict[str, Any] = {"EventId": d.record.event_id}
        if index is not None:
            act["Index"] = index
        act["ActionTaken"] = True
        out.append(act)
    return out


def _rollout(d: LoggedDecision, order: list[int]) -> dict[str, Any]:
    """The rollout fields; `order` lists the candidates (indices into `_candidates`) in the
    order of the line's `a` (or slot 0's `_a`), which `_shadow.p` follows."""
    out: dict[str, Any] = {
        "_policy_arm": d.record.policy_arm,
        "_arm_probability": float(d.record.arm_probability),
    }
    shadow = d.record.shadow
    if shadow is not None:
        excluded = set(d.record.excluded)
        kept = [
            float(p)
            for a, p in zip(d.record.actions, shadow["pmf"], strict=True)
            if a["id"] not in excluded
        ]
        out["_shadow"] = {"m": str(shadow["version"]), "p": [kept[i] for i in order]}
        if "mode" in shadow:  # served in a Personalizer learning mode (Apprentice, LoggingOnly)
            out["_shadow"]["mode"] = str(shadow["mode"])
    return out


def cb_line(d: LoggedDecision) -> dict[str, Any]:
    """The ``--cb_explore_adf --dsjson`` line of a joined single decision (key order matters)."""
    actions, pmf = _candidates(d)
    chosen = _index(actions, d.record.chosen, d.record.event_id)
    order = _ranked(pmf, chosen)
    a = [i + 1 for i in order]
    p = [pmf[i] for i in order]
    return {
        "_label_cost": 0.0 - d.outcomes[0].reward,
        "_label_probability": p[0],
        "_label_Action": a[0],
        "_labelIndex": a[0] - 1,
        "o": _observations(d, 0, None),
        "Timestamp": timestamp(d.record.decided_at),
        "Version": "1",
        "EventId": d.record.event_id,
        "a": a,
        "c": _context(d, actions),
        "p": p,
        "VWState": {"m": d.record.model_version},
        **_rollout(d, [i - 1 for i in a]),
    }


def ccb_line(d: LoggedDecision) -> dict[str, Any]:
    """The ``--ccb_explore_adf --dsjson`` line of a joined slate decision."""
    actions, pmf = _candidates(d)
    outcomes = []
    first_order: list[int] = []
    for slot in sorted(d.record.slots, key=lambda s: int(s["slot"])):
        k = int(slot["slot"])
        chosen = _index(actions, slot["action_id"], d.record.event_id)
        if k == 0:
            order = _ranked(pmf, chosen)
            first_order = order
            probs = [pmf[i] for i in order]
            probs[0] = float(slot["probability"])
        else:
            order, probs = [chosen], [float(slot["probability"])]
        outcomes.append(
            {
                "_label_cost": 0.0 - d.outcomes[k].reward,
                "_id": str(k),
                "_a": order,
                "_p": probs,
                "_o": _observations(d, k, str(k)),
            }
        )
    return {
        "Timestamp": timestamp(d.record.decided_at),
        "Version": "1",
        "EventId": d.record.event_id,
        "c": _context(d, actions, slots=d.record.n_slots),
        "_outcomes": outcomes,
        "VWState": {"m": d.record.model_version},
        **_rollout(d, first_order),
    }


def dsjson_line(d: LoggedDecision) -> bytes:
    """One line (with its newline) for a joined decision."""
    line = ccb_line(d) if d.record.is_slate else cb_line(d)
    return orjson.dumps(line) + b"\n"


@contextmanager
def _open(out: IO[bytes] | str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    if isinstance(out, str | os.PathLike):
        with open(out, "wb") as fh:
            yield fh
    else:
        yield out


def export_dsjson(
    engine: Engine,
    loop: str,
    out: IO[bytes] | str | os.PathLike[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    yield_per: int = DEFAULT_YIELD_PER,
) -> ExportStats:
    """Write the joined decisions of `loop` with since <= decided_at < until as DSJSON lines
    to `out` (a binary file object, or a path that is created or overwritten), oldest first.
    Decisions not joined yet are left out and counted in `skipped`."""
    stats = ExportStats()
    decisions = iter_decisions(engine, loop, since=since, until=until, yield_per=yield_per)
    with _open(out) as fh:
        for d in decisions:
            if not d.joined:
                stats.skipped += 1
                continue
            fh.write(dsjson_line(d))
            stats.rows += 1
            stats.joined += 1
            stats.slates += d.record.is_slate
    return stats
