"""The decision path without I/O: scores -> pmf -> keyed sample of an action or a slate."""

from explore.modern import (
    DecayingEpsilonGreedy,
    Floored,
    SquareCB,
    VWPmf,
    floor_pmf,
    squarecb,
    vw_pmf,
)
from explore.ranking import rank_order
from explore.sampling import (
    SAMPLING_KEY_BYTES,
    EventStream,
    UniformSource,
    check_sampling_key,
    event_stream,
    mask_pmf,
    new_sampling_key,
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
    "SAMPLING_KEY_BYTES",
    "Action",
    "Context",
    "DecayingEpsilonGreedy",
    "Decision",
    "EpsilonGreedy",
    "EventStream",
    "Explorer",
    "Floored",
    "Greedy",
    "SlotChoice",
    "Softmax",
    "SquareCB",
    "UniformSource",
    "VWPmf",
    "check_pmf",
    "check_probability",
    "check_sampling_key",
    "check_scores",
    "epsilon_greedy",
    "event_stream",
    "floor_pmf",
    "make_explorer",
    "mask_pmf",
    "new_sampling_key",
    "rank_order",
    "rng_for",
    "sample_index",
    "sample_slate",
    "slate_probability",
    "softmax",
    "squarecb",
    "vw_pmf",
]
