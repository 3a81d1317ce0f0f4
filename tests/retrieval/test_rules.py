"""Post-processing rules: hard filters never serve a filtered item; freshness boost, per-creator
cap and minimum share change the distribution BEFORE sampling, so the logged probabilities are
the frequencies at which items are served (chi-square, each rule)."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pytest
from scipy.stats import chisquare

from decision_service.decide import decide
from decision_service.rank_input import RankInput, RetrieveSpec
from decision_service.retrieval import Retrieved
from decision_service.runtime import LoopRuntime, explorer_for
from explore import Action
from explore.rules import (
    FeaturePredicate,
    RetrievalRules,
    cap_mask,
    freshness_bonus,
    min_share,
    passes,
)
from log.loops import LoopConfig
from policies import VWPolicy

NOW = datetime(2026, 12, 1, tzinfo=UTC)
ALPHA = 1e-3  # each chi-square test fails a correct implementation once in a thousand runs


def _runtime(rules: RetrievalRules, epsilon: float = 0.3) -> LoopRuntime:
    config = LoopConfig(
        exploration="epsilon_greedy", epsilon=epsilon, retrieval=rules, vw_args="--cb_type ips"
    )
    return LoopRuntime("default", config, NOW, explorer_for(config), VWPolicy(config.vw_args))


def _items(n: int, creators: list[str], groups: list[str], ages_s: list[float]) -> Retrieved:
    actions = [
        Action(f"i{j}", {"creator": creators[j], "group": groups[j], "q": float(j)})
        for j in range(n)
    ]
    created = np.array([NOW.timestamp() - a for a in ages_s])
    return Retrieved(actions, created, "r-test", "ix-test")


def _request(slots: int | None) -> RankInput:
    return RankInput(None, {"u": "a"}, [], [], slots, False, None, RetrieveSpec(k=4))


def _draw(runtime: LoopRuntime, retrieved: Retrieved, slots: int | None, n: int) -> tuple:
    """Counts of served slates (tuples of ids) and the logged probability of each."""
    counts: Counter[tuple[str, ...]] = Counter()
    logged: dict[tuple[str, ...], float] = {}
    req = _request(slots)
    for i in range(n):
        record = decide(req, {"i": i}, runtime, NOW, f"e{i}", retrieved)
        served = tuple(s["action_id"] for s in record.slots)
        p = float(np.prod([s["probability"] for s in record.slots]))
        counts[served] += 1
        if served in logged:
            assert logged[served] == pytest.approx(p)  # the same slate, the same probability
        logged[served] = p
        assert record.retrieval == {
            "retriever": "r-test",
            "index": "ix-test",
            "k": 4,
            "filters": [],
            "arm": "live",
            "arm_probability": 1.0,
        }
    return counts, logged


def _chi_square(counts: Counter, probs: dict, n: int) -> float:
    keys = sorted(probs)
    assert set(counts) <= set(keys)
    observed = [counts.get(k, 0) for k in keys]
    expected = [probs[k] * n for k in keys]
    return float(chisquare(observed, expected).pvalue)


def test_hard_filters() -> None:
    rules = RetrievalRules(
        excluded_ids=["x1"],
        blocked_creators=["bad"],
        max_age_s=3600,
        predicates=[{"feature": "meta.lang", "op": "in", "value": ["en", "fr"]}],
    )
    ok = {"creator": "good", "meta": {"lang": "en"}}
    assert passes(rules, "a", ok, 10)
    assert not passes(rules, "x1", ok, 10)  # excluded id
    assert not passes(rules, "a", {**ok, "creator": "bad"}, 10)  # blocked creator
    assert not passes(rules, "a", ok, 3601)  # too old
    assert not passes(rules, "a", {"creator": "good", "meta": {"lang": "de"}}, 10)
    assert not passes(rules, "a", {"creator": "good"}, 10)  # missing feature fails
    request = [FeaturePredicate("price", "lt", 10)]
    assert not passes(rules, "a", {**ok, "price": 12}, 10, request)
    assert passes(rules, "a", {**ok, "price": 9.5}, 10, request)
    assert not passes(rules, "a", {**ok, "price": True}, 10, request)  # booleans are no numbers


@pytest.mark.parametrize(
    "bad",
    [
        {"creator_cap": 51},
        {"min_share": 1.0},
        {"min_share": 0.3},  # without a group
        {"max_age_s": -1},
        {"predicates": [{"feature": "a", "op": "like", "value": 1}]},
        {"predicates": [{"feature": "a", "op": "lt", "value": "x"}]},
        {"overfetch": 0.5},
        {"excluded_ids": ["a"] * 10_001},
        {"unknown": 1},
    ],
)
def test_settings_are_bounded(bad: dict) -> None:
    with pytest.raises(ValueError):
        RetrievalRules.from_json(bad)


def test_shaping_functions() -> None:
    p = np.array([0.7, 0.2, 0.1])
    shared = min_share(p, np.array([False, True, True]), 0.5)
    assert shared.sum() == pytest.approx(1.0)
    assert shared[1:].sum() == pytest.approx(0.5)
    assert shared[1] / shared[2] == pytest.approx(2.0)  # proportions kept inside the group
    assert np.array_equal(min_share(p, np.array([True, False, False]), 0.5), p)  # has enough
    mask = cap_mask(["a", "a", "b", None], np.array([1, 2, 3]), [0], 1)
    assert mask.tolist() == [False, True, True]
    assert cap_mask(["a", "a"], np.array([1]), [0], 1).tolist() == [True]  # lifted: no other
    bonus = freshness_bonus(
        RetrievalRules(freshness_boost=2, freshness_half_life_s=10), np.array([0, 10, 20])
    )
    assert bonus.tolist() == pytest.approx([2.0, 1.0, 0.5])


def test_filtered_items_are_never_served() -> None:
    """A request whose candidates all passed the filters can serve only them: the service's
    retrieval drops filtered items before scoring (decision_service.retrieval)."""
    from decision_service.retrieval import ServingIndex
    from policies.ann_index import build_index
    from policies.two_tower import TwoTower, TwoTowerConfig

    model = TwoTower(TwoTowerConfig(buckets=64, hidden=8, dim=4))
    features = [{"creator": f"c{j % 5}", "n": j} for j in range(60)]
    vectors = model.embed_items(features)
    index = ServingIndex(
        "default",
        "ix",
        "r",
        1,
        model,
        build_index(vectors),
        [f"i{j}" for j in range(60)],
        features,
        np.array([NOW.timestamp() - 100.0 * j for j in range(60)]),
    )
    rules = RetrievalRules(
        excluded_ids=["i1", "i2"], blocked_creators=["c3"], max_age_s=4000, overfetch=10
    )
    filters = (FeaturePredicate("n", "ne", 7),)
    runtime = _runtime(rules, epsilon=1.0)
    served: set[str] = set()
    for i in range(300):
        got = index.retrieve({"u": i % 7}, 10, rules, filters, frozenset({"i4"}), NOW)
        assert len(got.actions) == 10
        record = decide(_request(3), {"i": i}, runtime, NOW, f"e{i}", got)
        served.update(s["action_id"] for s in record.slots)
    assert served
    for item in served:
        j = int(item[1:])
        assert item not in ("i1", "i2", "i4", "i7")
        assert features[j]["creator"] != "c3"
        assert 100.0 * j <= 4000


@pytest.mark.parametrize(
    ("rule", "slots"),
    [
        ("none", None),
        ("freshness", None),
        ("min_share", None),
        ("creator_cap", 2),
        ("cap_and_share", 2),
    ],
)
def test_logged_probabilities_are_exact(rule: str, slots: int | None) -> None:
    """Each rule: the served frequencies match the logged probabilities (chi-square), and the
    rule did what it says (the boost moved mass to fresh items, the group got its share, the
    cap held)."""
    settings = {
        "none": {},
        "freshness": {"freshness_boost": 3.0, "freshness_half_life_s": 600.0},
        "min_share": {"group_feature": "group", "group_value": "g", "min_share": 0.6},
        "creator_cap": {"creator_cap": 1},
        "cap_and_share": {
            "creator_cap": 1,
            "group_feature": "group",
            "group_value": "g",
            "min_share": 0.5,
        },
    }[rule]
    rules = RetrievalRules(**settings)
    retrieved = _items(4, ["a", "a", "b", "c"], ["h", "h", "h", "g"], [0.0, 3600.0, 7200.0, 9000.0])
    n = 4000
    counts, logged = _draw(_runtime(rules), retrieved, slots, n)
    assert _chi_square(counts, logged, n) > ALPHA
    if slots is None:
        assert sum(logged.values()) == pytest.approx(1.0)
    else:  # every possible slate's logged probability: they sum to 1 (all were drawn)
        assert len(logged) <= len(list(itertools.permutations(range(4), 2)))
    if rule == "freshness":
        assert logged[("i0",)] > 0.5  # the newest item wins the boost
    if rule == "min_share":
        assert logged[("i3",)] == pytest.approx(0.6)
    if rule in ("creator_cap", "cap_and_share"):
        assert ("i0", "i1") not in counts and ("i1", "i0") not in counts  # one "a" per slate
    if rule == "cap_and_share":  # each slot's conditional pmf gives the group its share
        for i in range(50):
            record = decide(_request(2), {"i": i}, _runtime(rules), NOW, f"x{i}", retrieved)
            first, second = record.slots
            assert first["pmf"][3] >= 0.5 - 1e-9
            if first["action_id"] != "i3":
                assert second["pmf"][3] >= 0.5 - 1e-9
            if first["action_id"] in ("i0", "i1"):  # creator "a" is placed: the other "a" is 0
                other = 1 if first["action_id"] == "i0" else 0
                assert second["pmf"][other] == 0.0
