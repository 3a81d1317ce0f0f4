"""The decision path without I/O: scores -> pmf -> seeded sample of an action or a slate."""

from explore.ranking import rank_order
from explore.sampling import (
    EventStream,
    UniformSource,
    event_stream,
    mask_pmf,
    rng_for,
    sample_index,
    sample_slate,
    slate_probability,
)
from explore.strategies import (
    EpsilonGreedy,
    Explorer,
    Greedy,
    Softmax,
    epsilon_greedy,
    make_explorer,
    softmax,
)
from explore.types import Action, Context, Decision, SlotChoice
from explore.validation import check_pmf, check_probability, check_scores

__all__ = [
    "Action",
    "Context",
    "Decision",
    "EpsilonGreedy",
    "EventStream",
    "Explorer",
    "Greedy",
    "SlotChoice",
    "Softmax",
    "UniformSource",
    "check_pmf",
    "check_probability",
    "check_scores",
    "epsilon_greedy",
    "event_stream",
    "make_explorer",
    "mask_pmf",
    "rank_order",
    "rng_for",
    "sample_index",
    "sample_slate",
    "slate_probability",
    "softmax",
]
