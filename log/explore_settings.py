"""A loop's exploration: the strategy's parameters (`ExploreSettings`, the section
``exploration_options`` of `LoopConfig`), the explorer that turns a model's output into the pmf
served, and the VW reduction a strategy that explores inside the model needs.

Strategies (``LoopConfig.exploration``):

============== ======== ===========================================================================
strategy       computed parameters
============== ======== ===========================================================================
epsilon_greedy explore  ``epsilon`` (top level), ``epsilon_decay``, ``epsilon_min``:
                        ``epsilon_t = max(epsilon_min, epsilon (1 + t) ** -epsilon_decay)``
softmax        explore  ``softmax_lambda`` (top level)
squarecb       explore  ``squarecb_gamma0``, ``squarecb_power``:
                        inverse-gap weighting with ``gamma_t = gamma0 t ** power``
regcbopt       VW       ``regcb_mellowness`` (VW ``--regcbopt --mellowness``; cost range from
                        the loop's reward range)
cover          VW       ``cover_size``, ``cover_psi``, ``epsilon`` (VW ``--cover --psi --epsilon``)
bag            VW       ``bag_size``, ``epsilon`` (VW ``--bag --epsilon``)
============== ======== ===========================================================================

``t`` is the number of examples the served model has learned (read from the model when it is
loaded, fixed for that version). Every strategy takes ``floor``, the minimum probability of any
action (a mixture with uniform, applied last: the logged probability is the one sampled from;
default 0.003, capped at 1/K, so that every logged action set supports off-policy evaluation).

"VW" strategies need several score vectors (confidence bounds, several policies), so they run as
VW's own ``cb_explore_adf`` reductions: the loop's models are trained with `explore_args`
appended to its ``vw_args``, their prediction is a distribution, and the service normalises it
(`explore.VWPmf`), applies the floor and samples. A model that does not explore itself (trained
before the loop switched to a VW strategy) is served with epsilon-greedy at ``epsilon`` until
a model trained with the reduction replaces it.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, fields
from typing import Any

from explore import Explorer, make_explorer
from explore.modern import DecayingEpsilonGreedy, Floored, SquareCB, VWPmf

__all__ = [
    "DEFAULT_FLOOR",
    "DEFAULT_MELLOWNESS",
    "EXPLORE_BOUNDS",
    "REGCB_UNWEIGHTED",
    "SCORE_STRATEGIES",
    "VW_STRATEGIES",
    "ExploreSettings",
    "explore_args",
    "loop_explorer",
    "without_option",
]

# Chosen by the decision-quality suite with the loop defaults (README "Defaults"): RegCB's
# confidence width, and a floor that keeps every action in the log's support (off-policy
# evaluation and the gate need it; importance weights stay <= 1/0.003, about 333).
DEFAULT_FLOOR = 0.003
DEFAULT_MELLOWNESS = 0.02
# RegCB learns by unweighted regression: VW's reduction sets each label's probability to 1 before
# learning, but only for all examples but the last of the multi-example (it expects the text
# format's empty end-of-example line there, which a parsed example list has not), so the last
# action offered was learned with importance weights and the others without: learning depended
# on where the app listed an action. `--clip_p 1` makes every weight 1; the loop's own
# `--clip_p` (importance weights, meaningless for RegCB) gives way to it.
REGCB_UNWEIGHTED = ("--clip_p", "1")

SCORE_STRATEGIES = ("epsilon_greedy", "softmax", "squarecb")
VW_STRATEGIES = ("regcbopt", "cover", "bag")

# name -> closed interval; the README quotes them.
EXPLORE_BOUNDS: dict[str, tuple[float, float]] = {
    "floor": (0.0, 0.5),
    "epsilon_decay": (0.0, 1.0),
    "epsilon_min": (0.0, 1.0),
    "squarecb_gamma0": (0.0, 1e6),
    "squarecb_power": (0.0, 1.0),
    "regcb_mellowness": (1e-6, 10.0),
    "cover_size": (1, 16),
    "cover_psi": (0.0, 100.0),
    "bag_size": (2, 16),
}
_INTS = {"cover_size", "bag_size"}


@dataclass(frozen=True)
class ExploreSettings:
    """The exploration strategies' parameters (see the module's table); all bounded."""

    floor: float = DEFAULT_FLOOR
    epsilon_decay: float = 0.0
    epsilon_min: float = 0.0
    squarecb_gamma0: float = 10.0
    squarecb_power: float = 0.5
    regcb_mellowness: float = DEFAULT_MELLOWNESS
    cover_size: int = 4
    cover_psi: float = 1.0
    bag_size: int = 4

    def __post_init__(self) -> None:
        for f in fields(self):
            lo, hi = EXPLORE_BOUNDS[f.name]
            value = getattr(self, f.name)
            integer = f.name in _INTS
            ok = (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and lo <= value <= hi
                and (not integer or float(value).is_integer())
            )
            if not ok:
                kind = "an integer" if integer else "a number"
                raise ValueError(
                    f"exploration_options.{f.name} must be {kind} in [{lo:g}, {hi:g}], "
                    f"got {value!r}"
                )
            object.__setattr__(self, f.name, int(value) if integer else float(value))


def explore_args(
    strategy: str,
    options: ExploreSettings,
    *,
    epsilon: float,
    reward_range: tuple[float, float],
) -> str:
    """The VW reduction a VW strategy trains its models with ("" for the others); RegCB's
    includes `REGCB_UNWEIGHTED` (see `without_option` for the loop's own ``--clip_p``)."""
    if strategy == "regcbopt":
        lo, hi = reward_range
        return (
            f"--cb_explore_adf --regcbopt --mellowness {options.regcb_mellowness!r} "
            f"--cb_min_cost {-hi!r} --cb_max_cost {-lo!r} {' '.join(REGCB_UNWEIGHTED)}"
        )
    if strategy == "cover":
        return (
            f"--cb_explore_adf --cover {options.cover_size} --psi {options.cover_psi!r} "
            f"--epsilon {float(epsilon)!r}"
        )
    if strategy == "bag":
        return f"--cb_explore_adf --bag {options.bag_size} --epsilon {float(epsilon)!r}"
    return ""


def without_option(vw_args: str, name: str) -> str:
    """`vw_args` without option `name` and its value (``--name v`` or ``--name=v``)."""
    tokens = shlex.split(vw_args)
    out: list[str] = []
    skip = False
    for token in tokens:
        if skip:
            skip = False
        elif token == name:
            skip = True
        elif not token.startswith(name + "="):
            out.append(token)
    return shlex.join(out)


def loop_explorer(
    strategy: str,
    options: ExploreSettings,
    *,
    epsilon: float,
    softmax_lambda: float,
    examples_seen: float = 0.0,
    vw_pmf: bool = False,
) -> Explorer:
    """The explorer serving a model: `examples_seen` is what it has learned (``t``), `vw_pmf`
    whether its prediction is already a distribution (a ``cb_explore_adf`` model)."""
    t = max(float(examples_seen), 0.0)
    inner: Any
    if vw_pmf:
        inner = VWPmf()
    elif strategy == "softmax":
        inner = make_explorer("softmax", lam=softmax_lambda)
    elif strategy == "squarecb":
        inner = SquareCB(options.squarecb_gamma0, options.squarecb_power, t)
    elif strategy == "epsilon_greedy" and options.epsilon_decay == 0.0 and not options.epsilon_min:
        inner = make_explorer("epsilon_greedy", epsilon=epsilon)
    else:
        decay = options.epsilon_decay if strategy == "epsilon_greedy" else 0.0
        inner = DecayingEpsilonGreedy(epsilon, decay, options.epsilon_min, t)
    if options.floor > 0.0:
        return Floored(inner, options.floor)
    explorer: Explorer = inner
    return explorer
