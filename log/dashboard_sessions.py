"""Dashboard sessions, stored server-side: the cookie carries a random token; only its sha256
is stored, with the key id it logged in with, its CSRF token and its expiry."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, select

from log.models import DashboardSessionRow

__all__ = ["Session", "create_session", "end_session", "find_session"]


@dataclass(frozen=True)
class Session:
    key_id: str
    csrf: str
    expires_at: datetime


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_session(
    engine: Engine, key_id: str, *, now: datetime, ttl_s: float
) -> tuple[str, Session]:
    """A new session of `key_id`: (cookie token, session). Expired sessions are removed."""
    token = secrets.token_urlsafe(32)
    session = Session(key_id, secrets.token_urlsafe(32), now + timedelta(seconds=ttl_s))
    with engine.begin() as conn:
        conn.execute(delete(DashboardSessionRow).where(DashboardSessionRow.expires_at < now))
        conn.execute(
            insert(DashboardSessionRow).values(
                token_hash=_hash(token),
                key_id=key_id,
                csrf=session.csrf,
                created_at=now,
                expires_at=session.expires_at,
            )
        )
    return token, session


def find_session(engine: Engine, token: str, *, now: datetime) -> Session | None:
    """The live session of a cookie token (None: unknown or expired)."""
    if not token or len(token) > 128:
        return None
    t = DashboardSessionRow
    with engine.connect() as conn:
        row = conn.execute(
            select(t.key_id, t.csrf, t.expires_at).where(t.token_hash == _hash(token))
        ).first()
    if row is None or row.expires_at <= now:
        return None
    return Session(row.key_id, row.csrf, row.expires_at)


def end_session(engine: Engine, token: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            delete(DashboardSessionRow).where(DashboardSessionRow.token_hash == _hash(token))
        )
