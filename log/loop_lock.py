"""The per-loop lock of model changes (transitions, gate verdicts), taken inside a transaction.

PostgreSQL: a transaction-scoped advisory lock keyed by the loop, taken before anything is read,
released at commit or rollback. SQLite: one writer at a time; `take_write_lock` makes the
transaction the writer before it reads, so that what it reads is what it writes over.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

__all__ = ["lock_loop", "take_write_lock"]

# pg_advisory_xact_lock(namespace, hashtext(loop)): the namespace keeps these locks apart
# from other advisory locks (log.schema's migration lock is a single bigint key).
_PROMOTION_LOCK_NAMESPACE = 730_501


def take_write_lock(conn: Connection) -> None:
    """SQLite: start the transaction as a writer, so that what it reads next is what it
    writes over (the statement takes the database's write lock, waiting its busy timeout)."""
    if conn.dialect.name == "sqlite":
        conn.execute(text("UPDATE models SET status = status WHERE 0 = 1"))


def lock_loop(conn: Connection, loop: str) -> None:
    """PostgreSQL: serialise the model changes of `loop` until this transaction ends."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:ns, hashtext(:loop))"),
            {"ns": _PROMOTION_LOCK_NAMESPACE, "loop": loop},
        )
