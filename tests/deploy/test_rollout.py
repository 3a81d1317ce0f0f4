"""Rollout states: the transition table, the gate requirement and its override, one version per
slot, concurrent approvals, rollback, the freshness track, every change audited."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from deploy import registry
from deploy.rollout import (
    EXPLICIT,
    STATUSES,
    TARGETS,
    TRANSITIONS,
    GateNotPassed,
    InvalidTransition,
    NoLiveVersion,
    NoRollbackTarget,
    RolloutSlotTaken,
    TransitionConflict,
    check_transition,
    rollback,
    transition,
)
from explore.errors import InvalidInput, NotFound
from log.audit import AuditEntry, read_audit
from log.deploy_settings import RolloutSettings
from log.loops import LoopConfig, put_loop
from log.models import AuditRow
from log.registry_store import model_history, override_versions
from log.schema import make_engine, migrate
from log.verdicts import VerdictRecord, store_verdict
from tests.deploy.race import race as _race

LOOP = "default"
REASON = "looks good"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    migrate(eng)
    put_loop(eng, LOOP, LoopConfig(rollout=RolloutSettings(canary_percent=5.0)))
    put_loop(eng, "other", LoopConfig())
    yield eng
    eng.dispose()


_counter = itertools.count()


def new_version(engine: Engine, loop: str = LOOP, **kwargs: Any) -> str:
    args: dict[str, Any] = {"kind": "batch", "vw_args": "", "artifact": b"m%d" % next(_counter)}
    args.update(kwargs)
    return registry.register(engine, loop=loop, **args).version


def verdict(engine: Engine, version: str, decision: str, loop: str = LOOP) -> None:
    store_verdict(
        engine,
        VerdictRecord(loop, version, None, datetime.now(UTC), decision, f"test {decision}"),
    )


def approve(engine: Engine, version: str, **kwargs: Any) -> Any:
    args: dict[str, Any] = {"actor": "gk", "role": "gatekeeper", "reason": REASON}
    args.update(kwargs)
    return transition(engine, version, "live", **args)


def status(engine: Engine, version: str) -> str:
    found = registry.get_version(engine, version)
    assert found is not None
    return found.status


def audit(engine: Engine) -> list[AuditEntry]:
    return read_audit(engine, loop=LOOP, limit=1000)


def in_state(engine: Engine, state: str) -> str:
    """A fresh version of LOOP in `state`, reached through the public API."""
    v = new_version(engine)
    if state == "candidate":
        return v
    if state in ("shadow", "canary", "rejected"):
        transition(engine, v, state, actor="t", role=None, reason=REASON)
        return v
    verdict(engine, v, "pass")
    approve(engine, v)
    if state == "retired":
        w = new_version(engine)
        verdict(engine, w, "pass")
        approve(engine, w)
    return v


def test_the_table() -> None:
    assert set(TRANSITIONS) == set(STATUSES) == set(EXPLICIT)
    for src in STATUSES:
        assert EXPLICIT[src] <= TRANSITIONS[src]
    for src, dst in itertools.product(STATUSES, TARGETS):
        if dst in EXPLICIT[src]:
            check_transition(src, dst)
        elif src == dst:
            with pytest.raises(TransitionConflict, match="already"):
                check_transition(src, dst)
        else:
            with pytest.raises(InvalidTransition):
                check_transition(src, dst)
    with pytest.raises(InvalidInput):
        check_transition("candidate", "candidate")  # not a target of transition()
    assert EXPLICIT["candidate"] == {"shadow", "canary", "live", "rejected"}
    assert EXPLICIT["shadow"] == {"canary", "live", "rejected"}
    assert EXPLICIT["canary"] == {"live", "rejected"}
    assert EXPLICIT["live"] == EXPLICIT["retired"] == EXPLICIT["rejected"] == frozenset()


@pytest.mark.parametrize("src", STATUSES)
def test_every_transition_on_the_database(engine: Engine, src: str) -> None:
    """Each allowed move happens, with one audit row; each refused one changes nothing."""
    for dst in TARGETS:
        # free the shadow and canary slots the previous moves may have taken
        for other in registry.list_versions(engine, LOOP):
            if other.status in ("shadow", "canary"):
                transition(engine, other.version, "rejected", actor="t", role=None, reason="x")
        v = in_state(engine, src)
        if dst == "live":
            verdict(engine, v, "pass")
        before = len(audit(engine))
        if dst in EXPLICIT[src]:
            out = transition(engine, v, dst, actor="t", role=None, reason=REASON)
            assert out.status == dst == status(engine, v)
            rows = audit(engine)
            assert len(rows) == before + 1
            assert rows[-1].target == v and rows[-1].action == f"model.{dst}"
            assert rows[-1].details["from"] == src
        else:
            expected = TransitionConflict if src == dst else InvalidTransition
            with pytest.raises(expected):
                transition(engine, v, dst, actor="t", role=None, reason=REASON)
            assert status(engine, v) == src
            assert len(audit(engine)) == before


def test_to_live_needs_a_passed_gate_or_a_flagged_override(engine: Engine) -> None:
    v = new_version(engine)
    with pytest.raises(GateNotPassed, match="no gate verdict"):
        approve(engine, v)
    verdict(engine, v, "fail")
    with pytest.raises(GateNotPassed, match="is fail"):
        approve(engine, v)
    with pytest.raises(InvalidInput, match="reason"):
        approve(engine, v, override=True, reason="  ")
    assert status(engine, v) == "candidate" and audit(engine) == []
    out = approve(engine, v, override=True, reason="the gate cannot see the holiday traffic")
    assert out.status == "live" and out.live_since is not None and out.replaced is None
    (row,) = audit(engine)
    assert row.action == "model.live_override" and row.details["override"] is True
    assert row.details["verdict"]["decision"] == "fail" and row.role == "gatekeeper"
    assert override_versions(engine, LOOP) == {v}

    w = new_version(engine)
    verdict(engine, w, "pending")
    verdict(engine, w, "pass")
    out = approve(engine, w, override=True)  # override given but not needed: not flagged
    assert out.replaced == v and status(engine, v) == "retired"
    last = audit(engine)[-1]
    assert last.action == "model.live" and last.details["override"] is False
    assert last.details["retired"] == v and last.details["verdict"]["look"] == 2
    assert override_versions(engine, LOOP) == {v}
    assert [e.action for e in model_history(engine, LOOP, w)] == ["model.live"]


def test_slots_and_canary_percent(engine: Engine) -> None:
    a, b = new_version(engine), new_version(engine)
    out = transition(engine, a, "canary", actor="t", role=None, reason=REASON)
    assert out.canary_percent == 5.0  # the loop's default
    with pytest.raises(RolloutSlotTaken, match="already canary"):
        transition(engine, b, "canary", actor="t", role=None, reason=REASON, canary_percent=20)
    transition(engine, b, "shadow", actor="t", role=None, reason=REASON)
    with pytest.raises(RolloutSlotTaken, match="already shadow"):
        transition(engine, new_version(engine), "shadow", actor="t", role=None, reason=REASON)
    for bad in (0.05, 50.5, float("nan"), True):
        with pytest.raises(InvalidInput, match="canary_percent"):
            transition(engine, b, "canary", actor="t", role=None, reason="x", canary_percent=bad)
    with pytest.raises(InvalidInput, match="canary only"):
        transition(engine, b, "rejected", actor="t", role=None, reason="x", canary_percent=10)
    rejected = transition(engine, a, "rejected", actor="t", role=None, reason="worse")
    assert rejected.canary_percent is None
    out = transition(engine, b, "canary", actor="t", role=None, reason=REASON, canary_percent=20)
    assert out.canary_percent == 20.0
    verdict(engine, b, "pass")
    live = approve(engine, b)
    assert live.canary_percent is None and live.status == "live"
    with pytest.raises(NotFound):
        transition(engine, "nope", "live", actor="t", role=None, reason=REASON)
    with pytest.raises(InvalidInput, match="actor"):
        transition(engine, a, "live", actor="", role=None, reason=REASON)
    with pytest.raises(InvalidInput, match="reason"):
        transition(engine, a, "live", actor="t", role=None, reason="x" * 2001)


def _live_rows(engine: Engine, version: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(AuditRow)
                .where(AuditRow.target == version, AuditRow.action.like("model.live%"))
            ).scalar_one()
        )


def test_concurrent_approvals_make_exactly_one_transition(engine: Engine) -> None:
    old = in_state(engine, "live")
    for _ in range(3):
        v = new_version(engine)
        verdict(engine, v, "pass")

        def one(i: int, v: str = v) -> Any:
            return approve(engine, v, actor=f"gk{i}")

        results, errors = _race(6, one)
        assert len(results) == 1, errors
        assert len(errors) == 5 and all(isinstance(e, TransitionConflict) for e in errors)
        assert all(e.code == "transition_conflict" for e in errors)  # type: ignore[attr-defined]
        assert status(engine, v) == "live" and _live_rows(engine, v) == 1
        assert registry.get_version(engine, v).replaced == old  # type: ignore[union-attr]
        assert status(engine, old) == "retired"
        old = v
    # two gatekeepers rolling back the same live version: one rollback, not two
    current = registry.live_version(engine, LOOP)
    assert current is not None
    results, errors = _race(
        4,
        lambda i: rollback(
            engine, LOOP, actor=f"gk{i}", role=None, reason="bad", expected_live=current.version
        ),
    )
    assert len(results) == 1 and len(errors) == 3
    assert all(isinstance(e, TransitionConflict) for e in errors)
    assert sum(e.action == "model.rollback" for e in audit(engine)) == 1


def test_rollback_restores_the_previous_live_version(engine: Engine) -> None:
    with pytest.raises(NoLiveVersion):
        rollback(engine, LOOP, actor="gk", role=None, reason="x")
    v1 = in_state(engine, "live")
    with pytest.raises(NoRollbackTarget):
        rollback(engine, LOOP, actor="gk", role=None, reason="x")
    v2 = new_version(engine)
    verdict(engine, v2, "pass")
    approve(engine, v2)
    with pytest.raises(InvalidInput, match="reason"):
        rollback(engine, LOOP, actor="gk", role=None, reason="")
    with pytest.raises(TransitionConflict, match="changed since"):
        rollback(engine, LOOP, actor="gk", role=None, reason="x", expected_live=v1)
    restored = rollback(engine, LOOP, actor="gk", role="gatekeeper", reason="conversions fell")
    assert restored.version == v1 and restored.status == "live"
    assert status(engine, v2) == "retired"
    assert registry.live_version(engine, LOOP) == registry.get_version(engine, v1)
    row = audit(engine)[-1]
    assert (row.action, row.target, row.reason, row.actor) == (
        "model.rollback",
        v2,
        "conversions fell",
        "gk",
    )
    assert row.details["restored"] == v1 and row.details["rolled_back"] == v2
    # an explicit target: only a retired version of the loop
    cand = new_version(engine)
    for to, err in ((cand, InvalidTransition), ("nope", NotFound), (v1, InvalidTransition)):
        with pytest.raises(err):
            rollback(engine, LOOP, actor="gk", role=None, reason="x", to=to)
    back = rollback(engine, LOOP, actor="gk", role=None, reason="it was fine", to=v2)
    assert back.version == v2 and status(engine, v1) == "retired"
    other = new_version(engine, loop="other")
    with pytest.raises(NotFound):
        rollback(engine, LOOP, actor="gk", role=None, reason="x", to=other)


def test_freshness_continuations_inherit_the_rollback_target(engine: Engine) -> None:
    v1 = in_state(engine, "live")
    v2 = new_version(engine, vw_args="")
    verdict(engine, v2, "pass")
    approve(engine, v2)  # replaced = v1
    # the learner's freshness track: continuations of live, no gate verdict, not overrides
    c1 = new_version(engine, kind="online", parent=v2)
    assert registry.get_version(engine, c1).replaced == v1  # type: ignore[union-attr]
    out = transition(engine, c1, "live", actor="learner", role=None, reason=None)
    assert out.replaced == v1 and status(engine, v2) == "retired"
    c2 = registry.register(
        engine,
        loop=LOOP,
        kind="online",
        vw_args="",
        artifact=b"c2",
        parent=c1,
        promote_now=True,
        actor="learner",
    )
    assert c2.status == "live" and c2.replaced == v1
    assert "model.live_override" not in [e.action for e in audit(engine)]
    assert override_versions(engine, LOOP) == set()
    assert audit(engine)[-1].details["track"] == "freshness"
    # a continuation with other arguments is a candidate like any other
    odd = new_version(engine, kind="online", parent=c2.version, vw_args="-q ab")
    with pytest.raises(GateNotPassed):
        transition(engine, odd, "live", actor="learner", role=None, reason=None)
    # rollback undoes the whole lineage
    assert rollback(engine, LOOP, actor="gk", role=None, reason="drift").version == v1
    assert status(engine, c2.version) == "retired"


def test_cli_promote_is_audited_as_an_override(engine: Engine) -> None:
    v = new_version(engine)
    assert registry.promote(engine, v).status == "live"
    assert registry.promote(engine, v).status == "live"  # already live: nothing changes
    w = registry.register(
        engine, loop=LOOP, kind="batch", vw_args="", artifact=b"w", promote_now=True
    )
    assert w.status == "live" and w.replaced == v and w.live_since is not None
    rows = audit(engine)
    assert [(r.action, r.actor) for r in rows] == [("model.live_override", "cli")] * 2
    assert override_versions(engine, LOOP) == {v, w.version}
    # the legacy promote also brings a retired version back
    assert registry.promote(engine, v).status == "live"
