"""What other packages may ask about a database handle without using SQLAlchemy themselves.

Only `log` talks to the database (DESIGN §2). Other packages hold an engine (made by
:func:`log.schema.make_engine`, typed `log.schema.Engine`) and pass it back to `log`
functions; these helpers answer the questions they have about it.
"""

from __future__ import annotations

from sqlalchemy import Engine

__all__ = ["check_shareable", "database_url"]


def database_url(engine: Engine) -> str:
    """The URL another process opens the same database with (password included)."""
    return engine.url.render_as_string(hide_password=False)


def check_shareable(engine: Engine) -> None:
    """Raise ValueError when another process cannot open this database (in-memory SQLite)."""
    if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
        raise ValueError("another process cannot open an in-memory SQLite database")
