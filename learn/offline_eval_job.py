"""The background job of an offline evaluation: run one stored `evaluations` row.

The service inserts the row `queued` and starts ``python -m decision_service.cli_evaluate --job
ID``, which calls :func:`run_job`: claim the row (`queued` -> `running`, once), record the
progress now and then, and end it `succeeded` with the result or `failed` with the error.
"""

from __future__ import annotations

import logging
import time

from learn.offline_eval import EvaluationError, ProgressFn, VersionRegistry, run_evaluation
from learn.offline_eval_spec import EvaluationSpec, SpecError
from log.evaluations import (
    EvaluationRecord,
    claim_evaluation,
    fail_evaluation,
    finish_evaluation,
    get_evaluation,
    set_progress,
)
from log.schema import Engine

__all__ = ["run_job"]

logger = logging.getLogger(__name__)


def run_job(
    engine: Engine,
    evaluation_id: str,
    *,
    registry: VersionRegistry,
    on_progress: ProgressFn | None = None,
    min_interval_s: float = 0.5,
) -> EvaluationRecord:
    """Run the queued row `evaluation_id`: claim it, record progress (at most every
    `min_interval_s`), store the result or the error; returns the ended row. LookupError when
    it is not queued (unknown, or claimed already)."""
    record = claim_evaluation(engine, evaluation_id)
    if record is None:
        raise LookupError(
            f"evaluation {evaluation_id!r} is not queued (unknown or already started)"
        )
    last = [time.monotonic()]

    def progress(done: int, total: int, phase: str) -> None:
        if on_progress is not None:
            on_progress(done, total, phase)
        now = time.monotonic()
        if now - last[0] >= min_interval_s:
            last[0] = now
            set_progress(engine, evaluation_id, 0.99 * done / max(total, 1))

    try:
        spec = EvaluationSpec.from_json(record.request)
        result = run_evaluation(engine, record.loop, spec, registry=registry, on_progress=progress)
    except (SpecError, LookupError, EvaluationError) as err:
        fail_evaluation(engine, evaluation_id, str(err))
    except BaseException as err:
        logger.exception("evaluation %s failed", evaluation_id)
        fail_evaluation(engine, evaluation_id, f"{type(err).__name__}: {err}")
        if not isinstance(err, Exception):
            raise
    else:
        finish_evaluation(engine, evaluation_id, result)
    ended = get_evaluation(engine, evaluation_id)
    assert ended is not None
    return ended
