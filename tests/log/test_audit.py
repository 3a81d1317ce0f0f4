"""The audit log is append-only on both databases."""

from datetime import UTC, datetime

import pytest
import sqlalchemy
from sqlalchemy import text

from log.audit import AuditEntry, append_audit, read_audit
from log.schema import make_engine, migrate


def test_audit_is_append_only(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        s1 = append_audit(
            conn, AuditEntry(datetime.now(UTC), "me", "approve", loop="a", details={"x": 1})
        )
        s2 = append_audit(conn, AuditEntry(datetime.now(UTC), "me", "reject", loop="b"))
    assert s2 > s1
    assert [e.action for e in read_audit(engine)] == ["approve", "reject"]
    assert [e.action for e in read_audit(engine, loop="b")] == ["reject"]
    assert read_audit(engine, loops=("a",))[0].details == {"x": 1}
    for stmt in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"):
        with (
            pytest.raises(sqlalchemy.exc.DatabaseError, match="append-only"),
            engine.begin() as conn,
        ):
            conn.execute(text(stmt))
    assert len(read_audit(engine)) == 2
    engine.dispose()
