"""The first admin key: made at start-up when no active admin key (for every loop) exists.

Why a key written to a file, and no "auth off" development mode: a mode that turns checks off
is one setting away from production, and the README's two commands must work without it; a key
written once to a file the operator's user alone can read (`DS_ADMIN_KEY_FILE`, default
`./decision_service.admin-key`, created with O_EXCL and mode 0600) keeps every route checked
from the first start and costs one `cat`. The key is never logged (only the file's path and the
key's id). Operators and tests that want to choose the key set `DS_ADMIN_KEY` instead: it is
registered as the admin key named "bootstrap" when its id is not stored yet (a revoked one stays
revoked: restarting never undoes a revocation).

Several workers starting at once create exactly one key: the check and the insert are one
transaction serialised across processes (`log.api_keys.bootstrap_admin`), and the file is
written inside it, before the commit. If the commit fails after the file was written, the next
start registers the key found in the file (so the file and the database never disagree for
long); a file holding a revoked key stops the start with a message saying what to do.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from deploy.keys import generate_key, parse_token, verify_secret
from log.api_keys import KeyExists, bootstrap_admin, create_key, get_key, has_active_admin
from log.schema import Engine

__all__ = ["BOOTSTRAP_NAME", "BootstrapError", "ensure_admin_key", "write_key_file"]

logger = logging.getLogger(__name__)
BOOTSTRAP_NAME = "bootstrap"


class BootstrapError(RuntimeError):
    """The admin key cannot be set up as configured; the message says what to change."""


def _actor() -> str:
    return f"service:{socket.gethostname()}:{os.getpid()}"[:256]


def write_key_file(path: Path, token: str) -> bool:
    """Write `token` to a new file at `path` (O_EXCL, mode 0600, fsynced with its directory).
    False when the file already exists (nothing is written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    try:
        os.write(fd, f"{token}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


def _register_configured(engine: Engine, token: str) -> None:
    key = parse_token(token)
    if key is None:  # the setting's validator refuses it first
        raise BootstrapError("DS_ADMIN_KEY is not a key of the service's form")
    stored = get_key(engine, key.key_id)
    if stored is None:
        try:
            stored = create_key(
                engine,
                key_id=key.key_id,
                name=BOOTSTRAP_NAME,
                role="admin",
                loops=None,
                secret_hash=key.secret_hash,
                actor=_actor(),
                now=datetime.now(UTC),
                reason="DS_ADMIN_KEY",
            )
            logger.info("registered DS_ADMIN_KEY as admin key %s", key.key_id)
        except KeyExists:  # another worker starting at the same time registered it
            stored = get_key(engine, key.key_id)
    if stored is None or not verify_secret(key.key_id, key.secret, stored.secret_hash):
        raise BootstrapError(
            f"DS_ADMIN_KEY's key id {key.key_id} is stored with a different secret: "
            "choose another key"
        )
    if not stored.active:
        logger.warning("DS_ADMIN_KEY (key %s) was revoked; it stays revoked", key.key_id)


def _file_key(path: Path) -> tuple[str, str]:
    """(key id, secret hash) of a new key written to `path`, or of the key a previous start
    wrote there but did not register."""
    new = generate_key()
    if write_key_file(path, new.token):
        return new.key_id, new.secret_hash
    existing = parse_token(path.read_text(errors="replace").strip())
    if existing is None:
        raise BootstrapError(
            f"{path} (DS_ADMIN_KEY_FILE) exists and holds no key: move it away, then start again"
        )
    if path.stat().st_mode & 0o077:
        logger.warning("%s can be read by other users than its owner (chmod 600 it)", path)
    return existing.key_id, existing.secret_hash


def ensure_admin_key(engine: Engine, admin_key: str | None, admin_key_file: str) -> None:
    """Register `admin_key` (DS_ADMIN_KEY) if set and new; then, if no active admin key for
    every loop exists, create one and write it to `admin_key_file` (see the module)."""
    if admin_key is not None:
        _register_configured(engine, admin_key)
    if has_active_admin(engine):
        return
    path = Path(admin_key_file).absolute()
    try:
        stored = bootstrap_admin(
            engine,
            lambda: _file_key(path),
            name=BOOTSTRAP_NAME,
            actor=_actor(),
            now=datetime.now(UTC),
        )
    except KeyExists:
        raise BootstrapError(
            f"no active admin key exists and the key in {path} (DS_ADMIN_KEY_FILE) was "
            "revoked: move that file away to get a new key, or set DS_ADMIN_KEY, or run "
            "`decision-service keys create --name NAME --role admin`"
        ) from None
    if stored is not None:
        logger.warning(
            "no admin key existed: created admin key %s; the key is in %s (readable by this "
            "user only; it is shown nowhere else)",
            stored.key_id,
            path,
        )
