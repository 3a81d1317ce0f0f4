"""The cost of scoring one rank, bounded before Vowpal Wabbit runs.

Bounding interaction arity (`check_vw_args`) does not bound the work of a rank: a 3-way
interaction of a context with 256 features is 2.8 million feature products per action, half a
second per 50-action rank on the serving thread. The work VW does is the number of features it
hashes: per action, the context's, the slot's and the action's own features plus, for each
interaction term, the combinations its namespaces produce (VW skips permutations of a repeated
namespace: a namespace of n features taken k times gives C(n + k - 1, k)). `rank_features`
counts that from the example's text; a rank above the budget (`DS_MAX_RANK_FEATURES`) is refused
(422 `limit_exceeded`) before anything is scored or written.
"""

from __future__ import annotations

import math
import shlex
from collections import Counter
from collections.abc import Sequence

from explore.errors import InvalidInput

__all__ = [
    "DEFAULT_MAX_RANK_FEATURES",
    "check_rank_cost",
    "configure_rank_budget",
    "interaction_terms",
    "rank_budget",
    "rank_features",
]

DEFAULT_MAX_RANK_FEATURES = 4_000_000  # ~15 ms of VW on one core at ~270k features/ms
_INTERACTION_OPTIONS = ("-q", "--quadratic", "--cubic", "--interactions")
_budget = [0]  # no limit until a serving worker sets one (offline jobs score what was logged)


def configure_rank_budget(max_features: int) -> None:
    """Set this process's budget of features scored per rank (0: no limit). Serving workers set
    it from `DS_MAX_RANK_FEATURES`; training and evaluation processes leave it unlimited."""
    if isinstance(max_features, bool) or not isinstance(max_features, int) or max_features < 0:
        raise ValueError(f"max_features must be an int >= 0, got {max_features!r}")
    _budget[0] = max_features


def rank_budget() -> int:
    return _budget[0]


def interaction_terms(vw_args: str) -> tuple[str, ...]:
    """The interaction terms (namespace letters, e.g. "ca") that `vw_args` asks for."""
    try:
        tokens = shlex.split(vw_args)
    except ValueError:
        return ()
    terms: list[str] = []
    for i, token in enumerate(tokens):
        name, eq, value = token.partition("=")
        if name in _INTERACTION_OPTIONS[1:]:
            term = value if eq else (tokens[i + 1] if i + 1 < len(tokens) else "")
        elif token.startswith("-q"):
            term = token[2:] or (tokens[i + 1] if i + 1 < len(tokens) else "")
        else:
            continue
        if term:
            terms.append(term)
    return tuple(terms)


def _term_features(term: str, counts: dict[str, int]) -> int:
    total = 1
    widest = max(counts.values(), default=0)
    for namespace, k in Counter(term).items():
        n = widest if namespace == ":" else counts.get(namespace, 0)
        total *= math.comb(n + k - 1, k)
    return total


def _shared_counts(shared: str) -> tuple[int, int]:
    context_part, _, slot_part = shared.partition(" |s ")
    # "shared |c f1 f2" -> 2; "shared |c " -> 0
    n_c = max(context_part.count(" ") - 1 - context_part.endswith(" "), 0)
    n_s = slot_part.count(" ") + 1 if slot_part else 0
    return n_c, n_s


def _per_action(terms: Sequence[str], n_c: int, n_s: int, n_a: int) -> int:
    counts = {"c": n_c, "a": n_a, "s": n_s}
    return n_c + n_s + n_a + sum(_term_features(t, counts) for t in terms)


def rank_features(terms: Sequence[str], lines: Sequence[str]) -> int:
    """Features VW hashes to score the multi-line example `lines` (shared line first, one line
    per action: `example_lines`' format) with interaction `terms` (VW's constant feature and
    its interactions aside)."""
    n_c, n_s = _shared_counts(lines[0])
    # "|a id=x f1" -> 2; "|a id=x " -> 1
    per_width = Counter(line.count(" ") - line.endswith(" ") for line in lines[1:])
    return sum(m * _per_action(terms, n_c, n_s, n_a) for n_a, m in per_width.items())


def check_rank_cost(terms: Sequence[str], lines: Sequence[str]) -> None:
    """Refuse (InvalidInput `limit_exceeded`) a rank that would hash more features than the
    budget allows. A bound from the longest action line settles most ranks in a few
    microseconds; the exact count runs only when that bound is over the budget."""
    budget = _budget[0]
    if not budget:
        return
    n_c, n_s = _shared_counts(lines[0])
    # a feature takes at least two characters of its line (itself and a space)
    widest = (max(map(len, lines[1:])) + 1) // 2 if len(lines) > 1 else 0
    if (len(lines) - 1) * _per_action(terms, n_c, n_s, widest) <= budget:
        return
    n = rank_features(terms, lines)
    if n > budget:
        raise InvalidInput(
            f"this rank would score {n:,} features (the loop's interactions multiply context and "
            f"action features); the limit is {budget:,} (DS_MAX_RANK_FEATURES): send fewer "
            "actions or features",
            "limit_exceeded",
        )
