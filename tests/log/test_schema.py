"""Migrations: concurrent starts of several workers migrate once and all succeed."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from datetime import timedelta

from sqlalchemy import inspect, select

from log.models import DecisionRow, JoinClock, ModelRow, OutcomeRow
from log.schema import make_engine, migrate
from tests.log.helpers import T0, decision_rec

SCRIPT = (
    "import sys; from log.schema import make_engine, migrate; migrate(make_engine(sys.argv[1]))"
)


def test_concurrent_migrations(db_url: str) -> None:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = list(
            pool.map(
                lambda _: subprocess.run(
                    [sys.executable, "-c", SCRIPT, db_url], capture_output=True, timeout=120
                ),
                range(4),
            )
        )
    assert all(r.returncode == 0 for r in runs), [r.stderr.decode()[-500:] for r in runs]
    engine = make_engine(db_url)
    migrate(engine)  # idempotent
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"loops", "decisions", "rewards", "outcomes", "models", "alembic_version"} <= tables


def _row_0004(event_id: str) -> dict[str, object]:
    """A decisions row as revision 0004 had it (later revisions added columns)."""
    row = decision_rec(event_id).row()
    for later in ("arm_probability", "shadow", "retrieval"):  # revisions 0006, 0007
        del row[later]
    return row


def test_upgrade_numbers_earlier_joins_and_checkpoints(db_url: str) -> None:
    """Revision 0005 gives windows joined before it a join_seq (one per join run, in order),
    continues the clock after them, and turns a model's checkpoint into a checkpoint_seq, so an
    online continuation registered before the upgrade resumes where it stopped."""
    engine = make_engine(db_url)
    migrate(engine, "0004")
    runs = [T0 + timedelta(minutes=m) for m in (10, 20, 30)]
    with engine.begin() as conn:
        for i in range(6):
            row = _row_0004(f"e{i}")
            row["joined_at"] = runs[i // 2]
            conn.execute(DecisionRow.__table__.insert().values(**row))
            conn.execute(
                OutcomeRow.__table__.insert().values(
                    loop="default",
                    event_id=f"e{i}",
                    slot=0,
                    reward=0.0,
                    default_applied=True,
                    n_rewards=0,
                    decided_at=T0,
                    joined_at=runs[i // 2],
                )
            )
        conn.execute(DecisionRow.__table__.insert().values(**_row_0004("open")))
        conn.execute(
            ModelRow.__table__.insert().values(
                version="v1",
                loop="default",
                kind="online",
                vw_args="",
                artifact=b"x",
                sha256="0" * 64,
                n_events=4,
                checkpoint=runs[1],
                status="live",
                created_at=T0,
                updated_at=T0,
            )
        )
    migrate(engine)
    with engine.connect() as conn:
        seqs = dict(conn.execute(select(DecisionRow.event_id, DecisionRow.join_seq)).all())
        outcome_seqs = dict(conn.execute(select(OutcomeRow.event_id, OutcomeRow.join_seq)).all())
        clock = conn.execute(select(JoinClock.seq)).scalar_one()
        checkpoint = conn.execute(select(ModelRow.checkpoint_seq)).scalar_one()
    engine.dispose()
    expected = {"e0": 1, "e1": 1, "e2": 2, "e3": 2, "e4": 3, "e5": 3, "open": None}
    assert seqs == expected and outcome_seqs == {k: v for k, v in expected.items() if v}
    assert clock == 3 and checkpoint == 2
