"""`decision-service keys create|list|revoke|generate`, audited as cli:<os user>."""

from __future__ import annotations

import getpass
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from decision_service import create_app
from decision_service.cli import app as cli
from decision_service.settings import get_settings
from deploy.keys import parse_token
from log.audit import read_audit
from log.schema import make_engine
from tests.conftest import admin_client, make_settings

runner = CliRunner()


@pytest.fixture
def store(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("DS_DATABASE_URL", db_url)
    get_settings.cache_clear()
    yield db_url
    get_settings.cache_clear()


def keys(*args: str) -> list[str]:
    result = runner.invoke(cli, ["keys", *args])
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()


def test_create_list_revoke(store: str, tmp_path: Path) -> None:
    (token,) = keys("create", "--name", "news app", "--role", "app", "--loop", "news")
    key = parse_token(token)
    assert key is not None
    (line,) = keys("list")
    listed = orjson.loads(line)
    assert listed["key_id"] == key.key_id and listed["loops"] == ["news"]
    assert listed["created_by"] == f"cli:{getpass.getuser()}"
    assert key.secret not in line and "hmac" not in line
    # the key works against the service, within its loop and role
    settings = make_settings(store, tmp_path, key_cache_s=0.2)
    with admin_client(create_app(settings)) as client:
        assert client.put("/v1/loops/news", json={}).status_code == 201
        headers = {"Authorization": f"Bearer {token}"}
        body = {"actions": [{"id": "a"}]}
        assert client.post("/v1/loops/news/rank", json=body, headers=headers).status_code == 201
        assert client.post("/v1/loops/default/rank", json=body, headers=headers).status_code == 403
        (revoked,) = keys("revoke", key.key_id, "--reason", "rotated")
        assert orjson.loads(revoked)["revoked_by"] == f"cli:{getpass.getuser()}"
        # another process revoked it: the worker refuses it within DS_KEY_CACHE_S (polled)
        deadline = time.monotonic() + 30
        while client.post("/v1/loops/news/rank", json=body, headers=headers).status_code != 401:
            assert time.monotonic() < deadline, "the revocation never took effect"
            time.sleep(0.05)
    assert [k for k in keys("list") if key.key_id in k] == []  # active keys only
    assert any(key.key_id in k for k in keys("list", "--all"))
    engine = make_engine(store)
    try:
        audit = [(e.action, e.target, e.actor, e.reason) for e in read_audit(engine)]
    finally:
        engine.dispose()
    actor = f"cli:{getpass.getuser()}"
    assert ("key_create", key.key_id, actor, None) in audit
    assert ("key_revoke", key.key_id, actor, "rotated") in audit


def test_the_cli_refuses_bad_input(store: str) -> None:
    for args in (
        ["create", "--name", "x", "--role", "root"],
        ["create", "--name", "x", "--role", "app", "--loop", "a/b"],
        ["revoke", "nothex"],
        ["revoke", "0123456789ab"],  # unknown
    ):
        result = runner.invoke(cli, ["keys", *args])
        assert result.exit_code != 0, args


def test_generate_prints_a_key_and_stores_nothing(store: str) -> None:
    (token,) = keys("generate")
    assert parse_token(token) is not None
    assert keys("list", "--all") == []
