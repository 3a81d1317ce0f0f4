"""The `api_keys` table: keys with a role and an optional list of loops; only hashes stored.

Every change (create, revoke) writes its audit row (`log.audit`) in the same transaction. The
changes that must see "the other active admin keys" (bootstrap, revoking an admin key) are
serialised across processes: PostgreSQL takes a transaction-scoped advisory lock, SQLite starts
the transaction as a writer (the database's write lock).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, exc, func, insert, null, select, text, update

from explore.errors import Conflict, NotFound
from log.audit import AuditEntry, append_audit
from log.models import ApiKeyRow

__all__ = [
    "KeyExists",
    "LastAdminKey",
    "StoredKey",
    "bootstrap_admin",
    "create_key",
    "get_key",
    "has_active_admin",
    "list_keys",
    "revoke_key",
]

_KEYS_LOCK = 730_502  # pg_advisory_xact_lock key serialising admin-key changes


class KeyExists(Conflict):
    """A key with this id is already stored (nothing was written)."""

    default_code = "key_exists"


class LastAdminKey(Conflict):
    """Revoking this key would leave no active unscoped admin key."""

    default_code = "last_admin_key"


@dataclass(frozen=True)
class StoredKey:
    key_id: str
    name: str
    role: str
    loops: tuple[str, ...] | None
    secret_hash: str
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None
    revoked_by: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_json(self) -> dict[str, Any]:
        """The public form: never the secret's hash."""
        return {
            "key_id": self.key_id,
            "name": self.name,
            "role": self.role,
            "loops": list(self.loops) if self.loops is not None else None,
            "active": self.active,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "revoked_by": self.revoked_by,
        }


def _stored(row: Any) -> StoredKey:
    return StoredKey(
        key_id=row.key_id,
        name=row.name,
        role=row.role,
        loops=tuple(row.loops) if row.loops is not None else None,
        secret_hash=row.secret_hash,
        created_at=row.created_at,
        created_by=row.created_by,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
    )


_COLUMNS = tuple(ApiKeyRow.__table__.c)


def _lock(conn: Connection) -> None:
    """Serialise admin-key changes until this transaction ends (taken before any read)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _KEYS_LOCK})
    elif conn.dialect.name == "sqlite":
        conn.execute(text("UPDATE api_keys SET role = role WHERE 0 = 1"))


def _get(conn: Connection, key_id: str) -> StoredKey | None:
    row = conn.execute(select(*_COLUMNS).where(ApiKeyRow.key_id == key_id)).first()
    return _stored(row) if row is not None else None


def _active_admins(conn: Connection) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(ApiKeyRow)
            .where(
                ApiKeyRow.role == "admin",
                ApiKeyRow.loops.is_(None),
                ApiKeyRow.revoked_at.is_(None),
            )
        ).scalar_one()
    )


def _insert(
    conn: Connection,
    *,
    key_id: str,
    name: str,
    role: str,
    loops: tuple[str, ...] | None,
    secret_hash: str,
    actor: str,
    actor_role: str | None,
    now: datetime,
    reason: str | None,
) -> None:
    conn.execute(
        insert(ApiKeyRow).values(
            key_id=key_id,
            name=name,
            role=role,
            # an unscoped key stores SQL NULL (a bare None would be stored as JSON null), so
            # that `loops IS NULL` finds it
            loops=list(loops) if loops is not None else null(),
            secret_hash=secret_hash,
            created_at=now,
            created_by=actor,
        )
    )
    append_audit(
        conn,
        AuditEntry(
            at=now,
            actor=actor,
            role=actor_role,
            action="key_create",
            target=key_id,
            reason=reason,
            details={"name": name, "role": role, "loops": list(loops) if loops else None},
        ),
    )


def create_key(
    engine: Engine,
    *,
    key_id: str,
    name: str,
    role: str,
    loops: tuple[str, ...] | None,
    secret_hash: str,
    actor: str,
    now: datetime,
    actor_role: str | None = None,
    reason: str | None = None,
) -> StoredKey:
    """Store a key and its audit row in one transaction. KeyExists (409) when the id is taken
    (then nothing is written)."""
    try:
        with engine.begin() as conn:
            _insert(
                conn,
                key_id=key_id,
                name=name,
                role=role,
                loops=loops,
                secret_hash=secret_hash,
                actor=actor,
                actor_role=actor_role,
                now=now,
                reason=reason,
            )
            stored = _get(conn, key_id)
    except exc.IntegrityError:
        raise KeyExists(f"a key with id {key_id!r} already exists") from None
    assert stored is not None
    return stored


def get_key(engine: Engine, key_id: str) -> StoredKey | None:
    with engine.connect() as conn:
        return _get(conn, key_id)


def list_keys(engine: Engine) -> list[StoredKey]:
    """Every key, revoked ones included, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(*_COLUMNS).order_by(ApiKeyRow.created_at, ApiKeyRow.key_id))
        return [_stored(r) for r in rows]


def has_active_admin(engine: Engine) -> bool:
    """Whether some unscoped admin key is not revoked."""
    with engine.connect() as conn:
        return _active_admins(conn) > 0


def revoke_key(
    engine: Engine,
    key_id: str,
    *,
    actor: str,
    now: datetime,
    actor_role: str | None = None,
    reason: str | None = None,
    keep_one_admin: bool = True,
    allowed: Callable[[StoredKey], bool] | None = None,
) -> tuple[StoredKey, bool]:
    """Revoke a key (sets revoked_at/revoked_by, writes the audit row); returns (key, changed).
    A key already revoked is returned unchanged (changed False, nothing written). NotFound
    `key_not_found` for an unknown id, and for one `allowed` (the caller's scope) refuses.
    With `keep_one_admin`, LastAdminKey when it is the last active unscoped admin key (the
    check and the revocation are one serialised transaction: two concurrent revocations of
    the last two admin keys cannot both succeed)."""
    with engine.begin() as conn:
        _lock(conn)
        found = _get(conn, key_id)
        if found is None or (allowed is not None and not allowed(found)):
            raise NotFound(f"no key {key_id!r}", "key_not_found")
        if not found.active:
            return found, False
        if (
            keep_one_admin
            and found.role == "admin"
            and found.loops is None
            and _active_admins(conn) <= 1
        ):
            raise LastAdminKey(
                f"key {key_id!r} is the last active admin key for every loop: create another "
                "admin key first (or revoke it with the command line)"
            )
        conn.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.key_id == key_id)
            .values(revoked_at=now, revoked_by=actor)
        )
        append_audit(
            conn,
            AuditEntry(
                at=now,
                actor=actor,
                role=actor_role,
                action="key_revoke",
                target=key_id,
                reason=reason,
                details={
                    "name": found.name,
                    "role": found.role,
                    "loops": list(found.loops) if found.loops else None,
                },
            ),
        )
        stored = _get(conn, key_id)
    assert stored is not None
    return stored, True


def bootstrap_admin(
    engine: Engine,
    make: Callable[[], tuple[str, str]],
    *,
    name: str,
    actor: str,
    now: datetime,
) -> StoredKey | None:
    """When no active unscoped admin key exists, call `make()` -> (key id, secret hash) and
    store that admin key, with its audit row; None when one exists. Serialised across
    processes: of several starting at once, exactly one creates the key (and calls `make`).
    An id that is already stored (revoked, or `make` returned a stored one) is KeyExists."""
    try:
        with engine.begin() as conn:
            _lock(conn)
            if _active_admins(conn) > 0:
                return None
            key_id, secret_hash = make()
            _insert(
                conn,
                key_id=key_id,
                name=name,
                role="admin",
                loops=None,
                secret_hash=secret_hash,
                actor=actor,
                actor_role=None,
                now=now,
                reason="no active admin key existed",
            )
            stored = _get(conn, key_id)
    except exc.IntegrityError:
        raise KeyExists("the bootstrap admin key's id is already stored (revoked?)") from None
    return stored
