"""`decision-service keys create|list|revoke|generate`: API keys, straight on the database.

This is the operator's path (whoever can reach the database may manage keys): every change is
audited with the actor `cli:<os user>`. `create` prints the key once (stdout, alone on its line:
`KEY=$(decision-service keys create ...)`); `list` prints one JSON line per key, never secrets
or hashes. Unlike the API, `revoke` may revoke the last admin key: the next start of the
service then makes a new one (DS_ADMIN_KEY or DS_ADMIN_KEY_FILE).
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
import typer

from decision_service.settings import get_settings
from deploy.keys import KEY_ID, check_key_fields, generate_key
from explore.errors import DomainError

if TYPE_CHECKING:
    from log.schema import Engine

keys = typer.Typer(no_args_is_help=True, help="Manage API keys (audited as cli:<os user>).")


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        user = "unknown"
    return f"cli:{user}"[:256]


def _engine() -> Engine:
    from log.schema import make_engine, migrate

    engine = make_engine(get_settings().database_url)
    migrate(engine)
    return engine


@keys.command("create")
def create(
    name: str = typer.Option(..., "--name", help="What the key is for (shown in lists, audit)."),
    role: str = typer.Option(..., "--role", help="app, experimenter, gatekeeper or admin."),
    loop: list[str] = typer.Option(
        None, "--loop", help="A loop the key may act on (repeatable; default: every loop)."
    ),
    reason: str = typer.Option(None, help="Why (kept in the audit log)."),
) -> None:
    """Make a key and print it once."""
    from deploy.key_issue import issue_key

    try:
        name, role, loops = check_key_fields(name, role, loop or None)
    except DomainError as err:
        raise typer.BadParameter(err.message) from None
    engine = _engine()
    try:
        stored, token = issue_key(
            engine, name=name, role=role, loops=loops, actor=_actor(), reason=reason
        )
    finally:
        engine.dispose()
    typer.echo(orjson.dumps(stored.to_json()).decode(), err=True)
    typer.echo(token)


@keys.command("list")
def list_(
    all_: bool = typer.Option(False, "--all", help="Revoked keys too."),
) -> None:
    """One JSON line per key (id, name, role, loops, who made and revoked it, when)."""
    from log.api_keys import list_keys

    engine = _engine()
    try:
        for key in list_keys(engine):
            if all_ or key.active:
                typer.echo(orjson.dumps(key.to_json()).decode())
    finally:
        engine.dispose()


@keys.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (12 hex digits after dsk_)."),
    reason: str = typer.Option(None, help="Why (kept in the audit log)."),
) -> None:
    """Revoke a key: every worker refuses it within DS_KEY_CACHE_S."""
    from log.api_keys import revoke_key

    if not KEY_ID.fullmatch(key_id):
        raise typer.BadParameter(f"{key_id!r} is not a key id (12 hex digits)")
    engine = _engine()
    try:
        stored, changed = revoke_key(
            engine,
            key_id,
            actor=_actor(),
            now=datetime.now(UTC),
            reason=reason,
            keep_one_admin=False,
        )
    except DomainError as err:
        raise typer.BadParameter(err.message) from None
    finally:
        engine.dispose()
    if not changed:
        typer.echo(f"key {key_id} was already revoked", err=True)
    typer.echo(orjson.dumps(stored.to_json()).decode())


@keys.command("generate")
def generate() -> None:
    """Print a fresh key without storing it (for DS_ADMIN_KEY)."""
    typer.echo(generate_key().token)
