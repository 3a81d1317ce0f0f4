"""The per-rank feature budget: the count, the refusal, and that it tracks VW's actual cost."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

from explore import Action
from explore.errors import InvalidInput
from policies import VWPolicy
from policies.rank_cost import (
    check_rank_cost,
    configure_rank_budget,
    interaction_terms,
    rank_budget,
    rank_features,
)
from policies.vw_text import example_lines


@pytest.fixture
def budget() -> Iterator[None]:
    before = rank_budget()
    configure_rank_budget(4_000_000)
    yield
    configure_rank_budget(before)


@pytest.mark.parametrize(
    ("args", "terms"),
    [
        ("-q ca --cb_type mtr", ("ca",)),
        ("-qca -qcc", ("ca", "cc")),
        ("--quadratic ca --cubic cca --interactions=cas", ("ca", "cca", "cas")),
        ("--interactions ::", ("::",)),
        ("-l 0.1 --cb_type dr", ()),
        ('-q "ca', ()),
    ],
)
def test_interaction_terms(args: str, terms: tuple[str, ...]) -> None:
    assert interaction_terms(args) == terms


def lines(n_context: int, n_action_features: int, n_actions: int) -> list[str]:
    context = {f"c{i}": 1.5 for i in range(n_context)}
    actions = [
        Action(f"a{i}", {f"f{j}": 0.5 for j in range(n_action_features)}) for i in range(n_actions)
    ]
    return example_lines(context, actions)


def test_counts_features_and_combinations() -> None:
    ex = lines(10, 4, 3)  # per action: 10 context, 5 action features (id + 4)
    assert rank_features((), ex) == 3 * (10 + 5)
    assert rank_features(("ca",), ex) == 3 * (10 + 5 + 50)
    # a repeated namespace counts combinations with repetition, as VW does without permutations
    assert rank_features(("cc",), ex) == 3 * (15 + math.comb(11, 2))
    assert rank_features(("cca",), ex) == 3 * (15 + math.comb(11, 2) * 5)
    assert rank_features(("ccc",), ex) == 3 * (15 + math.comb(12, 3))
    assert rank_features(("::",), ex) == 3 * (15 + math.comb(11, 2))  # wildcard: the widest
    slot = example_lines({"c": 1}, [Action("a", {})], slot={"s1": 1, "s2": 2})
    assert rank_features(("cs",), slot) == (1 + 2 + 1) + 1 * 2


def test_refuses_over_budget_naming_the_limit(budget: None) -> None:
    check_rank_cost(("ca",), lines(20, 20, 1000))  # 1000 x (20 + 21 + 420): accepted
    with pytest.raises(InvalidInput, match=r"limit is 4,000,000 \(DS_MAX_RANK_FEATURES\)") as err:
        check_rank_cost(("ccc",), lines(256, 1, 50))
    assert err.value.code == "limit_exceeded"
    configure_rank_budget(0)  # 0: no limit (training and evaluation processes)
    check_rank_cost(("ccc",), lines(256, 1, 50))


def test_the_policy_refuses_before_vw_runs(budget: None) -> None:
    """The half-second rank (3-way interaction of a 256-feature context) is refused in far less
    time than VW would take; a rank within the budget is scored."""
    policy = VWPolicy("--interactions ccc")
    context = {f"c{i}": i * 0.1 + 0.1 for i in range(256)}
    actions = [Action(f"a{i}", {"f": 1.0}) for i in range(50)]
    t0 = time.perf_counter()
    with pytest.raises(InvalidInput, match=r"DS_MAX_RANK_FEATURES"):
        policy.scores(context, actions)
    refused = time.perf_counter() - t0
    small = {f"c{i}": 1.0 for i in range(20)}
    assert policy.scores(small, actions).shape == (50,)
    configure_rank_budget(0)
    t0 = time.perf_counter()
    policy.scores(context, actions)
    scored = time.perf_counter() - t0
    print(
        f"\n3-way interaction, 256 context features, 50 actions: refused in {refused * 1e3:.1f} "
        f"ms; scoring it takes {scored * 1e3:.0f} ms"
    )
    assert refused < scored / 5


@pytest.mark.parametrize(
    ("args", "n_context", "n_action_features", "n_actions"),
    [
        ("-q ca", 256, 255, 60),  # wide two-way
        ("--interactions ccc", 54, 1, 140),  # three-way of the context
        ("--interactions cca", 40, 9, 480),  # three-way, many actions
        ("-q ca -q cc -q aa", 40, 40, 1000),  # several terms
    ],
)
def test_a_rank_within_the_budget_stays_fast(
    budget: None, args: str, n_context: int, n_action_features: int, n_actions: int
) -> None:
    """Whatever the shape of the interactions, a rank just under the budget takes VW tens of
    milliseconds at most: the count bounds the work."""
    policy = VWPolicy(args)
    context = {f"c{i}": i * 0.01 + 0.5 for i in range(n_context)}
    acts = [
        Action(f"a{i}", {f"f{j}": j * 0.01 + 0.5 for j in range(n_action_features)})
        for i in range(n_actions)
    ]
    n = rank_features(interaction_terms(args), example_lines(context, acts))
    assert 0.6 * rank_budget() < n <= rank_budget(), n
    policy.scores(context, acts)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        policy.scores(context, acts)
        best = min(best, time.perf_counter() - t0)
    print(f"\n{args}: {n:,} features in {best * 1e3:.1f} ms")
    assert best < 0.1


@pytest.mark.parametrize("terms", [(), ("ca",), ("cca",), ("ca", "aa"), ("ccc",)])
def test_refuses_exactly_when_the_count_is_over_budget(terms: tuple[str, ...]) -> None:
    """The quick bound never decides differently from the exact count."""
    before = rank_budget()
    try:
        for n_context, n_features, n_actions in [(5, 3, 10), (30, 10, 200), (64, 1, 40)]:
            ex = lines(n_context, n_features, n_actions)
            exact = rank_features(terms, ex)
            for budget in (exact - 1, exact, exact + 1):
                configure_rank_budget(max(budget, 1))
                if exact > max(budget, 1):
                    with pytest.raises(InvalidInput):
                        check_rank_cost(terms, ex)
                else:
                    check_rank_cost(terms, ex)
    finally:
        configure_rank_budget(before)
