"""Engines and schema migrations. Nothing here runs at import time."""

from __future__ import annotations

import fcntl
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    """An engine for the store. SQLite runs in WAL mode with a busy timeout."""
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    _close_connections_when_dropped(engine)
    return engine


def _close_connections_when_dropped(engine: Engine) -> None:
    """Close `engine`'s open connections when the engine is garbage-collected without
    `dispose()` (and at exit). A dropped engine otherwise leaves its pooled connections to the
    collector: each stays open on the server until then, and psycopg warns when one is deleted
    open. The finalizer holds the connections (never the engine or its pool, which would keep
    the engine alive); closed ones are let go at the next connect."""
    conns: list[Any] = []
    lock = threading.Lock()

    @event.listens_for(engine, "connect")
    def _remember(dbapi_conn: Any, _record: Any) -> None:
        with lock:
            conns[:] = [c for c in conns if not c.closed]
            conns.append(dbapi_conn)

    weakref.finalize(engine, _close_all, conns, lock)


def _close_all(conns: list[Any], lock: threading.Lock) -> None:
    with lock:
        for conn in conns:
            if not conn.closed:
                conn.close()
        conns.clear()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


MIGRATION_LOCK_KEY = 7_311_902_114  # pg_advisory_xact_lock key serialising migrations


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations of one SQLite file across processes (workers start together)."""
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    path = Path(database).with_name(Path(database).name + ".migrate.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the database to `revision` through Alembic (the only way the schema changes).

    Safe when several workers start at once: PostgreSQL takes a transaction-scoped advisory
    lock, SQLite a lock file beside the database, so one migrates and the others find it done.
    """
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    is_sqlite = engine.url.get_backend_name() == "sqlite"
    with _sqlite_file_lock(engine) if is_sqlite else nullcontext(), engine.begin() as conn:
        if not is_sqlite:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
