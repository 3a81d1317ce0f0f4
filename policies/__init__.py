"""Scorers: the Policy protocol and the Vowpal Wabbit policy."""

from policies.protocol import Policy
from policies.vw import VWPolicy, check_model_args, check_vw_args

__all__ = ["Policy", "VWPolicy", "check_model_args", "check_vw_args"]
