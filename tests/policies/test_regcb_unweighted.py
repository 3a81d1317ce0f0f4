"""RegCB learns by unweighted regression, whatever the position of the chosen action.

VW's RegCB reduction sets each label's probability to 1 before learning, but only for all
examples except the last of the multi-example (it expects the text format's empty end line).
A parsed example list has no such line, so the last action offered was learned with
importance weights and the others without. The service's RegCB arguments end with
``--clip_p 1`` (`log.explore_settings.REGCB_UNWEIGHTED`), so every weight is 1: a model learns
the same from an event whatever probability was logged, and whichever position the chosen
action had.
"""

from __future__ import annotations

import numpy as np
import pytest

from explore import Action
from log.loops import LoopConfig
from policies import VWPolicy
from policies.vw_text import example_lines

ACTIONS = [Action(f"a{i}", {"kind": f"k{i}"}) for i in range(3)]
CONTEXT = {"user": "u1"}


def learned_weights(args: str, position: int, probability: float) -> np.ndarray:
    policy = VWPolicy(args)
    try:
        for i in range(30):
            reward = 1.0 if i % 3 else 0.0
            policy.learn_lines(
                example_lines(CONTEXT, ACTIONS, label=(position, -reward, probability))
            )
        ws = policy._ws
        return np.array([ws.get_weight(i, 0) for i in range(ws.num_weights())])
    finally:
        policy.close()


@pytest.mark.parametrize("position", range(len(ACTIONS)))
def test_a_regcb_loop_learns_the_same_whatever_probability_was_logged(position: int) -> None:
    args = LoopConfig(exploration="regcbopt", vw_args="-q ca --cb_type mtr -b 12").model_args
    often = learned_weights(args, position, 0.9)
    rarely = learned_weights(args, position, 0.02)
    assert np.abs(often).max() > 0  # it learned something
    assert np.array_equal(often, rarely)


def test_without_it_vw_weights_the_last_action_only() -> None:
    """What `--clip_p 1` corrects (if VW fixes its reduction, this test says so)."""
    args = "-q ca --cb_type mtr -b 12 --cb_explore_adf --regcbopt --cb_min_cost -1 --cb_max_cost 1"
    for position in range(len(ACTIONS)):
        same = np.array_equal(
            learned_weights(args, position, 0.9), learned_weights(args, position, 0.02)
        )
        assert same == (position < len(ACTIONS) - 1), position
