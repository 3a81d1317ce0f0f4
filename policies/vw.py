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
# The learning options a loop may set (an allowlist: VW has options that read or write files
# on the server, which a configuration must never reach). name -> takes a value.
ALLOWED: dict[str, bool] = {
    "-q": True, "--quadratic": True, "--cubic": True, "--interactions": True,
    "--ignore": True, "--ignore_linear": True, "--keep": True, "--noconstant": False,
    "--permutations": False, "--leave_duplicate_interactions": False,
    "-l": True, "--learning_rate": True, "--power_t": True, "--initial_t": True,
    "--decay_learning_rate": True, "--l1": True, "--l2": True, "--initial_weight": True,
    "-b": True, "--bit_precision": True, "--cb_type": True, "--clip_p": True,
    "--hash": True, "--hash_seed": True, "--random_seed": True, "--loss_function": True,
    "--quantile_tau": True, "--adaptive": False, "--normalized": False, "--invariant": False,
    "--sgd": False, "--coin": False, "--ftrl": False, "--ftrl_alpha": True, "--ftrl_beta": True,
    "--pistol": False, "--ngram": True, "--skips": True, "--affix": True, "--spelling": True,
    "--lrq": True, "--lrqdropout": False, "--nn": True, "--inpass": False, "--dropout": False,
}  # fmt: skip
MAX_BITS = 24  # 2**24 weights per model: bounds the memory a configuration can ask for


def _options(tokens: list[str]) -> list[tuple[str, str | None]]:
    """(option, value) pairs; attached forms (-qca, -l0.5, --l2=1e-6) are split."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("-") or token == "-":
            raise ValueError(f"vw_args: unexpected argument {token!r}")
        if token.startswith("--"):
            name, eq, attached = token.partition("=")
            value: str | None = attached if eq else None
        else:
            name, value = token[:2], (token[2:] or None)
        if name not in ALLOWED:
            raise ValueError(
                f"vw_args may not set {name}: allowed are learning options such as -q, "
                "--interactions, -l, --power_t, --l1, --l2, -b, --cb_type"
            )
        if ALLOWED[name] and value is None:
            if i >= len(tokens):
                raise ValueError(f"vw_args: {name} needs a value")
            value = tokens[i]
            i += 1
        elif not ALLOWED[name] and value is not None:
            raise ValueError(f"vw_args: {name} takes no value")
        out.append((name, value))
    return out


def check_vw_args(args: str) -> str:
    """Validate a loop's VW arguments; returns them normalised. Raises ValueError."""
    try:
        tokens = shlex.split(args)
    except ValueError as err:
        raise ValueError(f"vw_args could not be parsed: {err}") from None
    options = _options(tokens)
    for name, value in options:
        bits = name in ("-b", "--bit_precision")
        if bits and (value is None or not value.isdigit() or not 1 <= int(value) <= MAX_BITS):
            raise ValueError(f"vw_args: {name} must be an integer in [1, {MAX_BITS}]")
    normalised = " ".join(
        shlex.quote(name) if value is None else f"{shlex.quote(name)} {shlex.quote(value)}"
        for name, value in options
    )
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
