"""Shared fixtures: every database test runs on SQLite and on a real PostgreSQL, isolated.

PostgreSQL is the server at DS_TEST_DATABASE_URL (default 127.0.0.1:5432, database `test`);
where none answers, a throwaway server is started from the machine's binaries
(pytest-postgresql). Only where neither works are the PostgreSQL tests skipped, and with
CI=true that is a failure.
"""

from __future__ import annotations

import glob
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from pytest_postgresql import factories

from decision_service import Settings, create_app

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
# The admin key every test app registers at start-up (DS_ADMIN_KEY), and the headers sending it.
TEST_ADMIN_KEY = "dsk_7e57ad000001_" + "T" * 43
ADMIN_HEADERS = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


def _pg_ctl() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return found[-1] if found else "pg_ctl"


postgresql_throwaway = factories.postgresql_proc(executable=_pg_ctl(), port=None)


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_base_url(request: pytest.FixtureRequest) -> str:
    url = os.environ.get("DS_TEST_DATABASE_URL", DEFAULT_PG)
    if _answers(url):
        return url
    try:
        proc = request.getfixturevalue("postgresql_throwaway")
        url = f"postgresql://{proc.user}@{proc.host}:{proc.port}/postgres"
        if _answers(url):
            return url
        reason = f"throwaway PostgreSQL at {url} did not answer"
    except Exception as err:  # no binaries, no permissions...
        reason = f"no PostgreSQL at {url} and none could be started: {err}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def pg_url(pg_base_url: str) -> Iterator[str]:
    """A fresh schema per test; the URL pins search_path to it."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_base_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in pg_base_url else "?"
    yield f"{pg_base_url}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(pg_base_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def make_settings(db_url: str, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": db_url,
        "spool_dir": str(tmp_path / "spool"),
        "join_interval_s": 3600,
        "loop_refresh_s": 3600,
        "group_commit_ms": 1.0,
        "gc_tuning": False,
        "admin_key": TEST_ADMIN_KEY,
        "admin_key_file": str(tmp_path / "admin-key"),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return make_settings(db_url, tmp_path)


def admin_client(app: Any, **kwargs: Any) -> TestClient:
    """A TestClient of `app` that sends the test admin key (use it as a context manager)."""
    return TestClient(app, headers={**ADMIN_HEADERS, **kwargs.pop("headers", {})}, **kwargs)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with admin_client(create_app(settings)) as c:
        yield c
