"""Issuing a key: a fresh id and secret, stored hashed with its audit row (what the HTTP route
and the CLI both do)."""

from __future__ import annotations

from datetime import UTC, datetime

from deploy.keys import generate_key
from log.api_keys import KeyExists, StoredKey, create_key
from log.schema import Engine

__all__ = ["issue_key"]

_ATTEMPTS = 3  # a 48-bit key id collides rarely: try a fresh one


def issue_key(
    engine: Engine,
    *,
    name: str,
    role: str,
    loops: tuple[str, ...] | None,
    actor: str,
    actor_role: str | None = None,
    reason: str | None = None,
) -> tuple[StoredKey, str]:
    """Store a new key (fields already checked by `deploy.keys.check_key_fields`); returns the
    stored key and its token, which is shown once and never stored."""
    for _ in range(_ATTEMPTS):
        new = generate_key()
        try:
            stored = create_key(
                engine,
                key_id=new.key_id,
                name=name,
                role=role,
                loops=loops,
                secret_hash=new.secret_hash,
                actor=actor,
                actor_role=actor_role,
                now=datetime.now(UTC),
                reason=reason,
            )
        except KeyExists:
            continue
        return stored, new.token
    raise RuntimeError(f"no free key id after {_ATTEMPTS} attempts")  # pragma: no cover
