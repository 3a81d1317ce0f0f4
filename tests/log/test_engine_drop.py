"""A PostgreSQL engine dropped without `dispose()` closes its connections when it is collected
(`log.schema.make_engine`): nothing stays open on the server until the collector happens to run,
and psycopg never warns about a connection deleted while open (the suite turns that warning
into an error in whichever test the collector ran, far from the one that dropped the engine)."""

from __future__ import annotations

import gc
import warnings
import weakref

from sqlalchemy import text

from log.schema import make_engine


def test_a_dropped_engine_closes_its_connections(pg_url: str) -> None:
    engine = make_engine(pg_url)
    raws = []
    with engine.connect() as a, engine.connect() as b:  # two pooled connections
        for conn in (a, b):
            conn.execute(text("SELECT 1"))
            raws.append(conn.connection.driver_connection)
    engine.dispose()  # the pool is replaced: connections of the new one count too
    with engine.connect() as c:
        c.execute(text("SELECT 1"))
        raws.append(c.connection.driver_connection)
    assert raws[2] is not None and not raws[2].closed
    dropped = weakref.ref(engine)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del engine, a, b, c, conn
        gc.collect()
    assert dropped() is None  # the finalizer keeps neither the engine nor its pool alive
    assert all(raw is not None and raw.closed for raw in raws)
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_a_disposed_engine_is_unaffected(pg_url: str) -> None:
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    engine.dispose()
    with engine.connect() as conn:  # still usable after dispose, as any engine
        assert conn.execute(text("SELECT 2")).scalar_one() == 2
    engine.dispose()
