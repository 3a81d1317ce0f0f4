"""The learner process: per loop, the freshness track (the live model continued online and
swapped in behind cheap safety checks), the candidate track (batch candidates of other VW
arguments registered for the gate) and the rollout of candidates (gate, shadow, canary, live,
automatic rollback). `decision-service learner` runs :func:`run_learner_process`."""

from deploy.learner.faults import FAULT_ENV, STEPS, Faults
from deploy.learner.process import Learner, LearnerOptions, run_learner_process

__all__ = ["FAULT_ENV", "STEPS", "Faults", "Learner", "LearnerOptions", "run_learner_process"]
