"""Feature values past VW's float32 range are refused before VW predicts, whatever the model
outputs (scores or, for RegCB / cover / bagging, a distribution that would hide them), and an
update on them never runs (it would turn weights NaN for good)."""

from __future__ import annotations

import numpy as np
import pytest

from explore.errors import InvalidInput
from explore.types import Action
from policies import VWPolicy

SCORES = "-q ca --cb_type mtr"
PMF = "-q ca --cb_type mtr --cb_explore_adf --regcbopt --mellowness 0.1"
CUBIC = "--cubic cca --cb_type mtr"
ACTIONS = [Action("a", {"y": 1.0}), Action("b", {"y": 2.0})]


@pytest.mark.parametrize("args", [SCORES, PMF])
@pytest.mark.parametrize(
    ("context", "actions"),
    [
        ({"x": 1e39}, ACTIONS),  # not a float32 at all
        ({"x": 1e20}, ACTIONS),  # a float32, but its square (normalised updates) is not
        ({"x": [1.0, -1e20]}, ACTIONS),
        ({"x": 1.0}, [Action("a", {"y": -1e20})]),
        ({"x": 1e19, "z": 1e19, "w": 1e19, "v": 1e19}, ACTIONS),  # the sum of squares overflows
    ],
)
def test_values_past_float32_are_refused(args: str, context: dict, actions: list[Action]) -> None:
    policy = VWPolicy(args)
    with pytest.raises(InvalidInput, match="32-bit floats"):
        policy.scores(context, actions)
    policy.close()


def test_products_of_interacted_features_are_bounded() -> None:
    # each value's square is finite; the 3-way product 1e13^3 = 1e39 is not
    policy = VWPolicy(CUBIC)
    with pytest.raises(InvalidInput, match="32-bit floats"):
        policy.scores({"x": 1e13}, [Action("a", {"y": 1e13})])
    assert np.isfinite(policy.scores({"x": 1e6}, [Action("a", {"y": 1e6})])).all()
    policy.close()


@pytest.mark.parametrize("args", [SCORES, PMF])
def test_large_but_safe_values_are_scored_and_learned(args: str) -> None:
    policy = VWPolicy(args)
    context, actions = {"x": 1e9}, [Action("a", {"y": 1e9}), Action("b", {"y": -1e9})]
    for i in range(20):
        policy.learn(context, actions, chosen=i % 2, reward=float(i % 2), probability=0.5)
    assert np.isfinite(policy.scores(context, actions)).all()
    assert np.isfinite(policy.scores({"x": 1.0}, ACTIONS)).all()  # the weights stayed finite
    policy.close()
