"""The first admin key: DS_ADMIN_KEY, or one written once to DS_ADMIN_KEY_FILE (mode 0600);
workers starting together make exactly one; a revocation survives restarts."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from decision_service import create_app
from decision_service.key_bootstrap import BootstrapError, ensure_admin_key
from deploy.keys import generate_key, parse_token
from log.api_keys import list_keys, revoke_key
from log.audit import read_audit
from log.schema import Engine, make_engine, migrate
from tests.conftest import admin_client, make_settings


@pytest.fixture
def engine(db_url: str) -> Engine:
    engine = make_engine(db_url)
    migrate(engine)
    yield engine  # type: ignore[misc]
    engine.dispose()


def active_admins(engine: Engine) -> list[str]:
    return [
        k.key_id for k in list_keys(engine) if k.active and k.role == "admin" and k.loops is None
    ]


def test_the_first_start_writes_one_key_to_a_private_file(db_url: str, tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "admin-key"
    settings = make_settings(db_url, tmp_path, admin_key=None, admin_key_file=str(key_file))
    with admin_client(create_app(settings)) as client:
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        token = key_file.read_text().strip()
        key = parse_token(token)
        assert key is not None
        headers = {"Authorization": f"Bearer {token}"}
        listed = client.get("/v1/keys", headers=headers).json()["keys"]
        assert [(k["key_id"], k["name"], k["role"], k["loops"]) for k in listed] == [
            (key.key_id, "bootstrap", "admin", None)
        ]
        assert client.get("/v1/keys").status_code == 401  # the test key was not registered
    written = key_file.read_bytes()
    with admin_client(create_app(settings)):  # a restart changes nothing
        pass
    assert key_file.read_bytes() == written
    engine = make_engine(settings.database_url)
    try:
        assert active_admins(engine) == [key.key_id]
        assert [e.action for e in read_audit(engine)] == ["key_create"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("configured", [False, True], ids=["file", "DS_ADMIN_KEY"])
def test_workers_starting_together_make_exactly_one_key(
    db_url: str, tmp_path: Path, configured: bool
) -> None:
    """Six starts at once (each with its own engine, like worker processes): one key, one
    audit row, one file write."""
    token = generate_key().token if configured else None
    key_file = tmp_path / "admin-key"
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def start() -> None:
        engine = make_engine(db_url)
        try:
            migrate(engine)
            barrier.wait()
            ensure_admin_key(engine, token, str(key_file))
        except BaseException as err:
            errors.append(err)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    engine = make_engine(db_url)
    try:
        keys = list_keys(engine)
        assert len(keys) == 1 and keys[0].role == "admin" and keys[0].name == "bootstrap"
        assert [e.action for e in read_audit(engine)] == ["key_create"]
    finally:
        engine.dispose()
    if configured:
        assert token is not None and keys[0].key_id == token.split("_")[1]
        assert not key_file.exists()
    else:
        found = parse_token(key_file.read_text().strip())
        assert found is not None and found.key_id == keys[0].key_id


def test_ds_admin_key_is_registered_and_a_revocation_survives_restarts(
    engine: Engine, tmp_path: Path
) -> None:
    token = generate_key().token
    key_id = token.split("_")[1]
    key_file = tmp_path / "admin-key"
    ensure_admin_key(engine, token, str(key_file))
    assert active_admins(engine) == [key_id] and not key_file.exists()
    ensure_admin_key(engine, token, str(key_file))  # idempotent
    assert len(list_keys(engine)) == 1
    revoke_key(engine, key_id, actor="test", now=list_keys(engine)[0].created_at,
               keep_one_admin=False)  # fmt: skip
    # restarting with the same DS_ADMIN_KEY does not bring it back; with no admin key left,
    # the file gets a new one
    ensure_admin_key(engine, token, str(key_file))
    stored = {k.key_id: k for k in list_keys(engine)}
    assert not stored[key_id].active
    new = parse_token(key_file.read_text().strip())
    assert new is not None and active_admins(engine) == [new.key_id]


def test_ds_admin_key_with_another_secret_for_a_stored_id_stops_the_start(
    engine: Engine, tmp_path: Path
) -> None:
    token = generate_key().token
    ensure_admin_key(engine, token, str(tmp_path / "k"))
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(BootstrapError, match="different secret"):
        ensure_admin_key(engine, forged, str(tmp_path / "k"))


def test_a_file_left_by_a_failed_start_is_registered(engine: Engine, tmp_path: Path) -> None:
    """The file is written before the commit: a key in the file and not in the database (the
    commit failed) is registered by the next start rather than replaced."""
    key_file = tmp_path / "admin-key"
    left = generate_key()
    key_file.write_text(left.token + "\n")
    key_file.chmod(0o600)
    ensure_admin_key(engine, None, str(key_file))
    assert active_admins(engine) == [left.key_id]
    assert key_file.read_text().strip() == left.token


def test_a_file_that_holds_no_key_or_a_revoked_one_stops_the_start(
    engine: Engine, tmp_path: Path
) -> None:
    key_file = tmp_path / "admin-key"
    key_file.write_text("hello\n")
    with pytest.raises(BootstrapError, match="holds no key"):
        ensure_admin_key(engine, None, str(key_file))
    key_file.unlink()
    ensure_admin_key(engine, None, str(key_file))
    (key_id,) = active_admins(engine)
    revoke_key(engine, key_id, actor="test", now=list_keys(engine)[0].created_at,
               keep_one_admin=False)  # fmt: skip
    with pytest.raises(BootstrapError, match="was revoked"):
        ensure_admin_key(engine, None, str(key_file))
    key_file.unlink()  # what the message says to do
    ensure_admin_key(engine, None, str(key_file))
    assert len(active_admins(engine)) == 1


def test_a_malformed_ds_admin_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    secret = "my-very-secret-password-1234567890"
    with pytest.raises(ValidationError) as err:
        make_settings("sqlite://", tmp_path, admin_key=secret)
    assert "DS_ADMIN_KEY must be a key" in str(err.value)
    assert secret not in str(err.value)


def test_the_key_is_never_logged(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "admin-key"
    settings = make_settings(db_url, tmp_path, admin_key=None, admin_key_file=str(key_file))
    with caplog.at_level("INFO"), admin_client(create_app(settings)):
        pass
    token = key_file.read_text().strip()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert str(key_file) in logged
    assert token not in logged and token.split("_", 2)[2] not in logged
