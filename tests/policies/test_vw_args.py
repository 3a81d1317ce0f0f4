"""`check_vw_args`: the allowlist of VW options a loop or a candidate may set, with bounds."""

from __future__ import annotations

import time

import numpy as np
import pytest

from explore import Action
from policies import VWPolicy, check_vw_args
from policies.vw import ALLOWED, MAX_ARITY, MAX_BITS, MAX_INTERACTIONS


@pytest.mark.parametrize(
    ("args", "normalised"),
    [
        ("-q ca --cb_type mtr", "-q ca --cb_type mtr"),
        ("-qca -l0.5 --l2=1e-6", "-q ca -l 0.5 --l2 1e-6"),
        ("--cubic cca --interactions cas", "--cubic cca --interactions cas"),
        ("--cb_type dm -l 0.05 --power_t 0", "--cb_type dm -l 0.05 --power_t 0"),
        (
            f"-b {MAX_BITS} --noconstant --ignore s --keep ca",
            f"-b {MAX_BITS} --noconstant --ignore s --keep ca",
        ),
        (" ".join(["-q ca"] * MAX_INTERACTIONS), " ".join(["-q ca"] * MAX_INTERACTIONS)),
        ("--l1 0 --l2 1 --clip_p 0.1 --loss_function quantile --quantile_tau 0.5", None),
        ("--cb_type mtr --clip_p 1", "--cb_type mtr --clip_p 1"),
        ("", ""),
    ],
)
def test_accepted(args: str, normalised: str | None) -> None:
    out = check_vw_args(args)
    if normalised is not None:
        assert out == normalised


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ("--nn 100000", r"may not set --nn"),
        ("--lrq ca50", r"may not set --lrq"),
        ("--ngram a5", r"may not set --ngram"),
        ("--daemon", r"may not set --daemon"),
        ("-f model.vw", r"may not set -f"),
        ("-fmodel.vw", r"may not set -f"),
        ("--initial_regressor=/etc/hostname", r"may not set --initial_regressor"),
        ("--readable_model /tmp/x", r"may not set --readable_model"),
        ("--cb_explore_adf", r"may not set --cb_explore_adf"),
        ("--epsilon 0.1", r"may not set --epsilon"),
        ("--permutations", r"may not set --permutations"),
        ("--interactions caca", r"--interactions takes 2 to 3 namespace letters"),
        ("--cubic ca", r"--cubic takes 3 namespace letters"),
        ("-q c", r"-q takes 2 namespace letters"),
        ("-q ::", r"no ':' wildcard"),
        ("-q c:", r"no ':' wildcard"),
        (" ".join(["-q ca"] * (MAX_INTERACTIONS + 1)), rf"at most {MAX_INTERACTIONS}"),
        (f"-b {MAX_BITS + 1}", rf"-b must be an integer in \[1, {MAX_BITS}\]"),
        ("--bit_precision 0", r"--bit_precision must be an integer"),
        ("-b x", r"-b must be an integer"),
        ("-l 0", r"-l must be a number in \(0, 10\]"),
        ("-l 11", r"-l must be a number in \(0, 10\]"),
        ("--learning_rate nan", r"--learning_rate must be a number"),
        ("--l2 5", r"--l2 must be a number in \[0, 1\]"),
        ("--l1 -1", r"--l1 must be a number in \[0, 1\]"),
        ("--power_t inf", r"--power_t must be a number in \[0, 1\]"),
        ("--clip_p 1.5", r"--clip_p must be a number in \[0, 1\]"),
        ("--cb_type bogus", r"--cb_type must be one of ips, dr, mtr, dm"),
        ("--loss_function logistic", r"--loss_function must be one of"),
        ("--noconstant=1", r"--noconstant takes no value"),
        ("-l", r"-l needs a value"),
        ("ca", r"unexpected argument 'ca'"),
        ('-q "ca', r"could not be parsed"),
        ("-q ca\x00", r"NUL"),
    ],
)
def test_refused_naming_the_option(args: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_vw_args(args)


def test_every_allowed_option_is_accepted_by_vw() -> None:
    """The allowlist holds no option this VW refuses (each with a value inside its bounds)."""
    values = {
        "-q": "ca", "--quadratic": "ca", "--cubic": "cca", "--interactions": "cas",
        "--ignore": "s", "--ignore_linear": "s", "--keep": "ca", "--cb_type": "dr", "-l": "0.1",
        "--learning_rate": "0.1", "--power_t": "0.5", "--initial_t": "1",
        "--decay_learning_rate": "1", "--l1": "1e-6", "--l2": "1e-6", "--initial_weight": "0",
        "-b": "18", "--bit_precision": "18", "--clip_p": "0.1", "--loss_function": "squared",
        "--quantile_tau": "0.5", "--hash": "all", "--hash_seed": "3", "--random_seed": "3",
    }  # fmt: skip
    needs = {"--quantile_tau": "--loss_function quantile"}
    for name, check in ALLOWED.items():
        args = name if check is None else f"{name} {values[name]}"
        args = f"{needs.get(name, '')} {args}".strip()
        assert name in check_vw_args(args).split(), args


def test_arity_bound_keeps_a_rank_cheap() -> None:
    """The most expensive accepted interactions (MAX_INTERACTIONS 3-way terms) still score a
    50-action rank quickly; the refused 4-way term is what once cost 11 ms per rank."""
    assert MAX_ARITY == 3
    args = check_vw_args(" ".join(["--interactions cca"] * MAX_INTERACTIONS))
    policy = VWPolicy(args)
    context = {f"c{i}": i * 0.1 for i in range(8)}
    actions = [Action(f"a{i}", {f"f{j}": j * 0.5 for j in range(4)}) for i in range(50)]
    policy.scores(context, actions)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        scores = policy.scores(context, actions)
        times.append(time.perf_counter() - t0)
    assert np.isfinite(scores).all()
    print(f"\n50 actions, {MAX_INTERACTIONS} x 3-way interactions: {np.median(times) * 1e3:.2f} ms")
    assert np.median(times) < 0.05
