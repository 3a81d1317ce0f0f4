"""The Vowpal Wabbit policy: a contextual-bandit scorer over action-dependent features.

The workspace runs ``--cb_adf`` (the learner underneath ``cb_explore_adf``): it predicts a cost
per action and the score is its negation. Exploration (epsilon-greedy, softmax) happens in
`explore/` over these scores, after hard filters, so the service owns the exact pmf it samples
from. Learning uses the logged probability as the label probability, cost = -reward.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pylibvw  # VW's C++ bindings, shipped inside the vowpalwabbit wheel
import vowpalwabbit

from explore.types import Action
from policies.vw_text import example_lines

BASE_ARGS = "--cb_adf --quiet"
_predict_multi = pylibvw.vw.predict_multi
_learn_multi = pylibvw.vw.learn_multi
_finish_multi = pylibvw.vw._finish_example_multi_ex
# Arguments the service controls itself; a loop's configuration may not set them.
FORBIDDEN = {
    "--cb_explore_adf",
    "--cb_adf",
    "--cb_explore",
    "--cb",
    "--ccb_explore_adf",
    "--slates",
    "--epsilon",
    "--softmax",
    "--first",
    "--bag",
    "--cover",
    "--squarecb",
    "-i",
    "--initial_regressor",
    "-f",
    "--final_regressor",
    "-d",
    "--data",
    "--dsjson",
    "--json",
    "-c",
    "--cache",
    "--daemon",
    "--port",
    "-p",
    "--predictions",
    "--quiet",
    "--save_resume",
    "--preserve_performance_counters",
}


def check_vw_args(args: str) -> str:
    """Validate a loop's VW arguments; returns them normalised. Raises ValueError."""
    try:
        tokens = shlex.split(args)
    except ValueError as err:
        raise ValueError(f"vw_args could not be parsed: {err}") from None
    bad = sorted({t.split("=")[0] for t in tokens} & FORBIDDEN)
    if bad:
        raise ValueError(f"vw_args must not set {', '.join(bad)}: the service sets them itself")
    normalised = " ".join(shlex.quote(t) for t in tokens)
    try:
        ws = vowpalwabbit.Workspace(f"{BASE_ARGS} {normalised}")
    except Exception as err:
        raise ValueError(f"vw_args rejected by Vowpal Wabbit: {err}") from None
    ws.finish()
    return normalised


class VWPolicy:
    """One VW workspace; not thread-safe (serving calls it from the event loop thread only)."""

    def __init__(self, vw_args: str, *, model: bytes | None = None, version: str = "untrained"):
        self.vw_args = vw_args
        self.version = version
        extra = " --save_resume --preserve_performance_counters"
        if model is None:
            self._ws = vowpalwabbit.Workspace(f"{BASE_ARGS} {vw_args}{extra}")
        else:
            with tempfile.NamedTemporaryFile(suffix=".vw", delete=False) as fh:
                fh.write(model)
                path = fh.name
            try:
                self._ws = vowpalwabbit.Workspace(f"--quiet -i {path}{extra}")
            finally:
                os.unlink(path)

    def scores(
        self,
        context: Mapping[str, Any],
        actions: Sequence[Action],
        slot: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        # VW's own bindings (parse -> predict_multi -> finish) without pyvw's Example wrappers:
        # the same scores as Workspace.predict at a third of the cost.
        ws = self._ws
        examples = ws._parse("\n".join(example_lines(context, actions, slot=slot)))
        try:
            _predict_multi(ws, examples)
            costs = examples[0].get_action_scores()
        finally:
            _finish_multi(ws, examples)
        return -np.asarray(costs, dtype=np.float64)

    def learn(
        self,
        context: Mapping[str, Any],
        actions: Sequence[Action],
        *,
        chosen: int,
        reward: float,
        probability: float,
        slot: Mapping[str, Any] | None = None,
    ) -> None:
        self.learn_lines(
            example_lines(context, actions, label=(chosen, -reward, probability), slot=slot)
        )

    def learn_lines(self, lines: list[str]) -> None:
        ws = self._ws
        examples = ws._parse("\n".join(lines))
        try:
            _learn_multi(ws, examples)
        finally:
            _finish_multi(ws, examples)

    def save(self) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.vw")
            self._ws.save(path)
            with open(path, "rb") as fh:
                return fh.read()

    def close(self) -> None:
        self._ws.finish()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
