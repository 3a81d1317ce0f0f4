"""The Vowpal Wabbit policy: a contextual-bandit scorer over action-dependent features.

The workspace runs ``--cb_adf`` (the learner underneath ``cb_explore_adf``): it predicts a cost
per action and the score is its negation. Exploration (epsilon-greedy, softmax, SquareCB) happens
in `explore/` over these scores, after hard filters, so the service owns the exact pmf it samples
from. A loop whose strategy explores inside the model (RegCB-optimistic, cover, bagging; see
`log.explore_settings`) trains with ``--cb_explore_adf`` and the reduction appended to its
arguments: its `scores` are then VW's distribution (`outputs_pmf`), which the service normalises,
floors and samples from. Learning uses the logged probability as the label probability,
cost = -reward.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pylibvw  # VW's C++ bindings, shipped inside the vowpalwabbit wheel
import vowpalwabbit

from explore.errors import InvalidInput
from explore.types import Action
from policies.rank_cost import check_rank_cost, interaction_terms
from policies.vw_text import example_lines

BASE_ARGS = "--cb_adf --quiet"
_predict_multi = pylibvw.vw.predict_multi
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NS_CONTEXT, _NS_SLOT = ord("c"), ord("s")
_learn_multi = pylibvw.vw.learn_multi
_finish_multi = pylibvw.vw._finish_example_multi_ex
MAX_BITS = 22  # 2**22 weights (x4 floats with adaptive/normalized state): <= 64 MiB a model
MAX_ARITY = 3  # interactions of at most 3 namespaces (a 4-way one cost 11 ms per rank)
MAX_INTERACTIONS = 8  # interaction terms per configuration
_NAMESPACES = re.compile(r"[A-Za-z0-9]+")  # no ':' wildcard (it expands to every namespace)


def _number(lo: float, hi: float, *, low_open: bool = False, high_open: bool = False) -> Any:
    def check(name: str, value: str) -> None:
        try:
            x = float(value)
        except ValueError:
            x = math.nan
        ok = (
            math.isfinite(x)
            and (lo < x if low_open else lo <= x)
            and (x < hi if high_open else x <= hi)
        )
        if not ok:
            interval = f"{'(' if low_open else '['}{lo:g}, {hi:g}{')' if high_open else ']'}"
            raise ValueError(f"vw_args: {name} must be a number in {interval}, got {value!r}")

    return check


def _integer(lo: int, hi: int) -> Any:
    def check(name: str, value: str) -> None:
        if not value.isdigit() or not lo <= int(value) <= hi:
            raise ValueError(f"vw_args: {name} must be an integer in [{lo}, {hi}], got {value!r}")

    return check


def _choice(*choices: str) -> Any:
    def check(name: str, value: str) -> None:
        if value not in choices:
            raise ValueError(f"vw_args: {name} must be one of {', '.join(choices)}, got {value!r}")

    return check


def _interaction(lo: int, hi: int) -> Any:
    def check(name: str, value: str) -> None:
        if not _NAMESPACES.fullmatch(value) or not lo <= len(value) <= hi:
            arity = f"{lo}" if lo == hi else f"{lo} to {hi}"
            raise ValueError(
                f"vw_args: {name} takes {arity} namespace letters (no ':' wildcard; interactions "
                f"have at most {MAX_ARITY} namespaces), got {value!r}"
            )

    return check


def _namespaces(name: str, value: str) -> None:
    if not _NAMESPACES.fullmatch(value) or len(value) > 62:
        raise ValueError(f"vw_args: {name} takes namespace letters, got {value!r}")


# The learning options a loop (or a candidate policy) may set: an allowlist, each with a bounded
# value. Anything else is refused: VW has options that read or write files on the server
# (-f, -i, --readable_model...), start servers (--daemon) or grow the model and the cost of every
# rank without bound (--nn, --lrq, --ngram, wildcard or 4-way interactions...).
# name -> value check (None: a flag without value).
ALLOWED: dict[str, Any] = {
    "-q": _interaction(2, 2),
    "--quadratic": _interaction(2, 2),
    "--cubic": _interaction(3, 3),
    "--interactions": _interaction(2, MAX_ARITY),
    "--ignore": _namespaces,
    "--ignore_linear": _namespaces,
    "--keep": _namespaces,
    "--noconstant": None,
    "--cb_type": _choice("ips", "dr", "mtr", "dm"),
    "-l": _number(0, 10, low_open=True),
    "--learning_rate": _number(0, 10, low_open=True),
    "--power_t": _number(0, 1),
    "--initial_t": _number(0, 1e6),
    "--decay_learning_rate": _number(0, 1, low_open=True),
    "--l1": _number(0, 1),
    "--l2": _number(0, 1),
    "--initial_weight": _number(-100, 100),
    "-b": _integer(1, MAX_BITS),
    "--bit_precision": _integer(1, MAX_BITS),
    "--clip_p": _number(0, 1),  # 1: every importance weight 1 (an unweighted regression)
    "--loss_function": _choice("squared", "quantile"),
    "--quantile_tau": _number(0, 1, low_open=True, high_open=True),
    "--adaptive": None,
    "--normalized": None,
    "--invariant": None,
    "--sgd": None,
    "--hash": _choice("strings", "all"),
    "--hash_seed": _integer(0, 2**31 - 1),
    "--random_seed": _integer(0, 2**31 - 1),
}
_INTERACTION_OPTIONS = frozenset(("-q", "--quadratic", "--cubic", "--interactions"))


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
                f"vw_args may not set {name}: allowed are {', '.join(sorted(ALLOWED))}"
            )
        check = ALLOWED[name]
        if check is not None and value is None:
            if i >= len(tokens):
                raise ValueError(f"vw_args: {name} needs a value")
            value = tokens[i]
            i += 1
        elif check is None and value is not None:
            raise ValueError(f"vw_args: {name} takes no value")
        if check is not None:
            check(name, value)
        out.append((name, value))
    return out


def check_vw_args(args: str) -> str:
    """Validate a loop's VW arguments against the allowlist (`ALLOWED`, bounded values, at most
    `MAX_INTERACTIONS` interactions of arity <= `MAX_ARITY`, -b <= `MAX_BITS`); returns them
    normalised. Raises ValueError naming the option."""
    if not isinstance(args, str) or "\x00" in args:
        raise ValueError("vw_args must be a string without NUL characters")
    try:
        tokens = shlex.split(args)
    except ValueError as err:
        raise ValueError(f"vw_args could not be parsed: {err}") from None
    options = _options(tokens)
    n_interactions = sum(name in _INTERACTION_OPTIONS for name, _ in options)
    if n_interactions > MAX_INTERACTIONS:
        raise ValueError(
            f"vw_args has {n_interactions} interactions; at most {MAX_INTERACTIONS} are allowed"
        )
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


_COVER_CB_TYPES = ("dr", "ips", "mtr")


def _cb_type(tokens: list[str]) -> str:
    """The --cb_type of VW arguments (VW's default, mtr, when none is given)."""
    value = "mtr"
    for i, token in enumerate(tokens):
        if token == "--cb_type" and i + 1 < len(tokens):
            value = tokens[i + 1]
        elif token.startswith("--cb_type="):
            value = token.partition("=")[2]
    return value


def check_model_args(args: str) -> str:
    """`args` (a loop's checked `vw_args` with its exploration reduction appended) if Vowpal
    Wabbit accepts them together; ValueError otherwise."""
    tokens = shlex.split(args)
    if "--cover" in tokens and _cb_type(tokens) not in _COVER_CB_TYPES:
        raise ValueError(
            "exploration cover needs vw_args with --cb_type dr, ips or mtr: VW's cover reduction "
            f"refuses --cb_type {_cb_type(tokens)}; set vw_args too, for example "
            "'-q ca --cb_type mtr'"
        )
    try:
        ws = vowpalwabbit.Workspace(f"{BASE_ARGS} {args}")
    except Exception as err:
        raise ValueError(
            f"vw_args and the exploration strategy rejected together by Vowpal Wabbit: {err}"
        ) from None
    ws.finish()
    return args


def check_magnitudes(examples: Sequence[Any], terms: Sequence[str]) -> None:
    """Refuse feature values VW's 32-bit floats cannot hold, whatever the model outputs.

    VW keeps feature values, their squares (the normalised updates divide by them) and the
    products of interacted features in float32. A value past that range is inf in the model:
    its scores turn non-finite (or, for a model that outputs a distribution, the distribution
    silently ignores it), and one update on it makes weights NaN for good. Checked on the
    parsed examples before VW predicts: every example's sum of squared values must be finite
    (so each value is below about 1.8e19 in magnitude) and, for each interaction term, the
    product of its namespaces' largest root sum of squares must stay below float32's maximum
    (a bound on every product the term forms). Raises InvalidInput (422 on a rank)."""
    shared = examples[0]
    largest = {"c": shared.sum_feat_sq(_NS_CONTEXT), "s": shared.sum_feat_sq(_NS_SLOT), "a": 0.0}
    for example in examples:
        total = example.get_total_sum_feat_sq()
        if not math.isfinite(total):
            raise InvalidInput(_OVERFLOW)
        if example is not shared and total > largest["a"]:
            largest["a"] = total  # the action's namespace and its constant: an upper bound
    for term in terms:
        bound = 1.0
        for namespace in term:
            bound *= math.sqrt(largest.get(namespace, 0.0))
        if not bound < _FLOAT32_MAX:
            raise InvalidInput(_OVERFLOW)


_OVERFLOW = (
    "feature values overflow the model's 32-bit floats: keep numbers below 1.8e19 in magnitude "
    "and the products of interacted features below 3.4e38"
)


class VWPolicy:
    """One VW workspace; not thread-safe (serving calls it from the event loop thread only)."""

    def __init__(self, vw_args: str, *, model: bytes | None = None, version: str = "untrained"):
        self.vw_args = vw_args
        self.version = version
        self.interactions = interaction_terms(vw_args)
        self.outputs_pmf = "--cb_explore_adf" in shlex.split(vw_args)
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
        # The examples the model has learned (t of the exploration schedules), read before this
        # workspace predicts anything (VW counts predictions too).
        self.examples_seen = float(self._ws.get_weighted_examples())

    def scores(
        self,
        context: Mapping[str, Any],
        actions: Sequence[Action],
        slot: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        # VW's own bindings (parse -> predict_multi -> finish) without pyvw's Example wrappers:
        # the same scores as Workspace.predict at a third of the cost.
        ws = self._ws
        lines = example_lines(context, actions, slot=slot)
        check_rank_cost(self.interactions, lines)  # before VW spends the serving thread's time
        examples = ws._parse("\n".join(lines))
        try:
            check_magnitudes(examples, self.interactions)
            _predict_multi(ws, examples)
            costs = examples[0].get_action_scores()
        finally:
            _finish_multi(ws, examples)
        if self.outputs_pmf:  # cb_explore_adf: VW's distribution, in action order
            return np.asarray(costs, dtype=np.float64)
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
        self.examples_seen += 1.0

    def learn_text(self, text: str) -> None:
        """Learn one example given as its VW text (its lines joined by newlines)."""
        ws = self._ws
        examples = ws._parse(text)
        try:
            _learn_multi(ws, examples)
        finally:
            _finish_multi(ws, examples)
        self.examples_seen += 1.0

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
