"""Off-policy evaluation: estimators (pure numpy), confidence intervals and sequences,
diagnostics, paired differences and slate estimators. numpy/scipy only."""

from evaluation.diagnostics import Diagnostics, diagnostics
from evaluation.estimators import (
    ESTIMATORS,
    EventStats,
    clipped_ips,
    dm,
    dr,
    effective_sample_size,
    importance_weight,
    ips,
    self_normalize,
    sndr,
    snips,
    switch_dr,
    terms_from_stats,
)
from evaluation.intervals import (
    INTERVALS,
    bernstein_interval,
    bootstrap_interval,
    confidence_interval,
    confidence_sequence,
    cs_interval,
    normal_interval,
)
from evaluation.ope import estimate, estimate_many, evaluate, evaluate_many
from evaluation.paired import PairedEstimate, evaluate_paired, paired_difference
from evaluation.reward_model import RidgeRewardModel, cross_fit_q_hat
from evaluation.slates import (
    SLATE_ESTIMATORS,
    evaluate_slate,
    slate_cascade_dr,
    slate_independent_ips,
    slate_pseudo_inverse,
    slate_q_hat,
    slate_rips,
    slate_sn_independent_ips,
    slate_sn_pseudo_inverse,
    slate_sn_rips,
    slate_sn_standard_ips,
    slate_standard_ips,
)
from evaluation.types import Estimate, Estimator, LoggedBandit
from evaluation.validation import validate_bandit_inputs

__all__: list[str] = []

# --- off-policy evaluation core: estimators, intervals, diagnostics, paired, slates ---
__all__ += [
    "ESTIMATORS",
    "INTERVALS",
    "SLATE_ESTIMATORS",
    "Diagnostics",
    "Estimate",
    "Estimator",
    "EventStats",
    "LoggedBandit",
    "PairedEstimate",
    "RidgeRewardModel",
    "bernstein_interval",
    "bootstrap_interval",
    "clipped_ips",
    "confidence_interval",
    "confidence_sequence",
    "cross_fit_q_hat",
    "cs_interval",
    "diagnostics",
    "dm",
    "dr",
    "effective_sample_size",
    "estimate",
    "estimate_many",
    "evaluate",
    "evaluate_many",
    "evaluate_paired",
    "evaluate_slate",
    "importance_weight",
    "ips",
    "normal_interval",
    "paired_difference",
    "self_normalize",
    "slate_cascade_dr",
    "slate_independent_ips",
    "slate_pseudo_inverse",
    "slate_q_hat",
    "slate_rips",
    "slate_sn_independent_ips",
    "slate_sn_pseudo_inverse",
    "slate_sn_rips",
    "slate_sn_standard_ips",
    "slate_standard_ips",
    "sndr",
    "snips",
    "switch_dr",
    "terms_from_stats",
    "validate_bandit_inputs",
]
# --- end off-policy evaluation core ---

# --- simulator -------------------------------------------------------------------------------
from evaluation.simulator import Simulator  # noqa: E402
from evaluation.simulator_types import (  # noqa: E402
    PolicyFn,
    SimBatch,
    SimContext,
    SimItem,
    SimReward,
    SimulatorConfig,
    SlatePolicyFn,
    uniform_policy,
)

__all__ += [
    "PolicyFn",
    "SimBatch",
    "SimContext",
    "SimItem",
    "SimReward",
    "Simulator",
    "SimulatorConfig",
    "SlatePolicyFn",
    "uniform_policy",
]
