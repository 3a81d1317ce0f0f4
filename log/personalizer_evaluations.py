"""The evaluations of the Personalizer API (table `personalizer_evaluations`, revision 0009).

Each is a name for a native evaluation run (`evaluations`, `log.evaluations`) with the
Personalizer contract it was created from. Deleting one deletes the name, not the run: the
native run stays listed under `/v1/loops/{loop}/evaluations` (runs are records of what was
measured).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from explore.errors import Conflict
from log.models import PersonalizerEvaluationRow
from log.schema import Engine

__all__ = [
    "PersonalizerEvaluation",
    "add_personalizer_evaluation",
    "delete_personalizer_evaluation",
    "get_personalizer_evaluation",
    "list_personalizer_evaluations",
]

_T = PersonalizerEvaluationRow


@dataclass(frozen=True)
class PersonalizerEvaluation:
    loop: str
    evaluation_id: str
    run_id: str
    contract: dict[str, Any]
    created_at: datetime


def _record(row: Any) -> PersonalizerEvaluation:
    return PersonalizerEvaluation(
        row.loop, row.evaluation_id, row.run_id, row.contract, row.created_at
    )


def add_personalizer_evaluation(engine: Engine, record: PersonalizerEvaluation) -> None:
    """Store it; Conflict (`evaluation_exists`) when the id is taken in this loop."""
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(_T).values(
                    loop=record.loop,
                    evaluation_id=record.evaluation_id,
                    run_id=record.run_id,
                    contract=record.contract,
                    created_at=record.created_at,
                )
            )
    except IntegrityError:
        raise Conflict(
            f"an evaluation {record.evaluation_id!r} exists already: delete it first",
            "evaluation_exists",
        ) from None


def get_personalizer_evaluation(
    engine: Engine, loop: str, evaluation_id: str
) -> PersonalizerEvaluation | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(_T).where(_T.loop == loop, _T.evaluation_id == evaluation_id)
        ).first()
    return None if row is None else _record(row)


def list_personalizer_evaluations(
    engine: Engine, loop: str, *, skip: int = 0, top: int = 100
) -> list[PersonalizerEvaluation]:
    """Newest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(_T)
            .where(_T.loop == loop)
            .order_by(_T.created_at.desc(), _T.evaluation_id)
            .offset(skip)
            .limit(top)
        ).all()
    return [_record(r) for r in rows]


def delete_personalizer_evaluation(engine: Engine, loop: str, evaluation_id: str) -> bool:
    with engine.begin() as conn:
        result = conn.execute(delete(_T).where(_T.loop == loop, _T.evaluation_id == evaluation_id))
    return bool(result.rowcount)
