"""The suite's own checks, on synthetic data: a fault test that passes must be unable to miss a
lost, duplicated or misstated write, a window joined without its rewards, or a reward that was
answered "joined" while it was late. Fast, no processes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.faults.harness import (
    REWARD_SCALE,
    Attempt,
    Ledger,
    RankAck,
    RewardAck,
    StoreSnapshot,
    check_store,
    join_figures,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def response(event_id: str, chosen: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "model_version": "untrained",
        "ranking": [{"id": chosen, "probability": 0.9}, {"id": "z", "probability": 0.1}],
        "reward_action_id": chosen,
    }


def decision(event_id: str, rq: str, chosen: str, deadline: datetime | None = None) -> dict:
    return {
        "event_id": event_id,
        "context": {"rq": rq, "round": 1},
        "response": response(event_id, chosen),
        "deferred": False,
        "activated_at": None,
        "joined_at": None,
        "reward_deadline": deadline,
    }


def rank(event_id: str, rq: str, chosen: str, phase: str = "load") -> RankAck:
    return RankAck(event_id, rq, True, False, 1, 1, phase, response(event_id, chosen), 0.0)


def reward_row(event_id: str, k: int, at: datetime, late: bool = False) -> dict:
    value = k / REWARD_SCALE
    return {"event_id": event_id, "slot": 0, "value": value, "late": late, "received_at": at}


def reward(event_id: str, k: int, phase: str = "load", joined: bool = True) -> RewardAck:
    body = {"event_id": event_id, "slot": 0, "status": "accepted", "joined": joined}
    return RewardAck(event_id, 0, k / REWARD_SCALE, 1, phase, body)


def test_check_store_counts_lost_duplicated_and_misstated_writes() -> None:
    ledger = Ledger()
    for ack in (rank("ok", "q1", "a"), rank("lost", "q2", "a"), rank("wrong", "q3", "a")):
        ledger.ranks[ack.event_id] = ack
    ledger.rewards += [reward("ok", 1), reward("ok", 2), reward("ok", 3)]
    ledger.activations = {"ok": (202, "load", 1), "gone": (202, "load", 1)}
    ledger.failed.append(Attempt("rank_server_id", 1, "load", "transport:ReadError", rq="q4"))
    ledger.failed.append(Attempt("reward", 1, "load", "500:x", "ok", slot=0, value=4 / 2**20))
    store = StoreSnapshot(
        decisions={
            "ok": decision("ok", "q1", "a"),
            "wrong": decision("wrong", "q3", "b"),  # stored another choice than the one served
            "ok-again": decision("ok-again", "q1", "a"),  # the same request stored twice
            "orphan": decision("orphan", "q4", "a"),  # unacknowledged, stored: allowed
        },
        rewards=[
            reward_row("ok", 1, T0),
            reward_row("ok", 3, T0),
            reward_row("ok", 3, T0),  # stored twice
            reward_row("ok", 4, T0),  # unacknowledged, stored once: allowed
        ],
        activations={"ok"},
        outcomes={},
    )
    f = check_store(store, ledger)
    assert (f.ranks_acked, f.ranks_stored, f.ranks_lost) == (3, 2, 1)
    assert f.ranks_misstated == 1 and f.ranks_duplicated == 1
    assert (f.ranks_unacked, f.ranks_unacked_stored) == (1, 1)
    assert (f.rewards_acked, f.rewards_stored, f.rewards_lost, f.rewards_duplicated) == (3, 2, 1, 1)
    assert (f.rewards_unacked, f.rewards_unacked_stored) == (1, 1)
    assert (f.activations_acked, f.activations_stored, f.activations_lost) == (2, 1, 1)
    assert f.lost == 3 and f.duplicated == 2
    assert "lost=3 duplicated=2 misstated=1" in f.line()


def test_check_store_is_clean_when_everything_is_stored_once() -> None:
    ledger = Ledger()
    ledger.ranks["e"] = rank("e", "q", "a")
    ledger.rewards.append(reward("e", 7))
    store = StoreSnapshot({"e": decision("e", "q", "a")}, [reward_row("e", 7, T0)], set(), {})
    f = check_store(store, ledger)
    assert (f.acknowledged, f.stored, f.lost, f.duplicated, f.ranks_misstated) == (2, 2, 0, 0, 0)


def test_join_figures_find_windows_closed_without_their_rewards() -> None:
    deadline = T0 + timedelta(seconds=3)
    ledger = Ledger()
    for e in ("good", "missed", "open", "late"):
        ledger.ranks[e] = rank(e, f"q-{e}", "a", phase="outage")
    ledger.rewards += [
        reward("good", 1, "outage"),
        reward("good", 2, "outage"),
        reward("missed", 3, "outage"),  # spooled, the window was closed without it
        reward("late", 4, "outage", joined=True),  # answered joined, but after the deadline
    ]
    store = StoreSnapshot(
        decisions={e: decision(e, f"q-{e}", "a", deadline) for e in ("good", "missed", "late")}
        | {"open": decision("open", "q-open", "a", deadline)},
        rewards=[
            reward_row("good", 1, T0),
            reward_row("good", 2, T0 + timedelta(seconds=1)),
            reward_row("missed", 3, T0),
            reward_row("late", 4, deadline + timedelta(seconds=1), late=False),
        ],
        activations=set(),
        outcomes={
            ("good", 0): {"reward": 3 / REWARD_SCALE, "n_rewards": 2, "default_applied": False},
            ("missed", 0): {"reward": 0.0, "n_rewards": 0, "default_applied": True},
            ("late", 0): {"reward": 0.0, "n_rewards": 0, "default_applied": True},
        },
    )
    fig, examples = join_figures(store, ledger)
    assert (fig["windows"], fig["joined"], fig["unjoined"]) == (4, 3, 1)
    assert fig["wrong_aggregate"] == 1 and fig["rewards_joined"] == 3
    assert (fig["outage_rewards_in_window"], fig["outage_rewards_joined"]) == (3, 2)
    assert fig["answered_joined_but_late"] == 1 and fig["late_flag_mismatch"] == 1
    assert any("missed" in e for e in examples)
