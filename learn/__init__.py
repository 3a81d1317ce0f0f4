"""Training jobs: Vowpal Wabbit from joined events (online continuation and batch retrain),
and the scheduled learner that runs join -> learn."""

from learn.events import EventWindow, count_training_events, iter_training_events
from learn.examples import BadEvent, LineBuilder, SlotExample, TrainingEvent, slot_examples
from learn.parallel import WorkerError
from learn.registry import ModelInfo, Registry
from learn.scheduler import Stopped, learn_round, make_scheduler, run_learner
from learn.train import (
    LearnResult,
    Mode,
    Trained,
    TrainStats,
    learn_once,
    resume_after,
    train,
    train_version,
)

__all__ = [
    "BadEvent",
    "EventWindow",
    "LearnResult",
    "LineBuilder",
    "Mode",
    "ModelInfo",
    "Registry",
    "SlotExample",
    "Stopped",
    "TrainStats",
    "Trained",
    "TrainingEvent",
    "WorkerError",
    "count_training_events",
    "iter_training_events",
    "learn_once",
    "learn_round",
    "make_scheduler",
    "resume_after",
    "run_learner",
    "slot_examples",
    "train",
    "train_version",
]
