"""Migrations: concurrent starts of several workers migrate once and all succeed."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys

from sqlalchemy import inspect

from log.schema import make_engine, migrate

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
