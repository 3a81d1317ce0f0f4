"""deploy.keys: key form, hashing, roles and scopes (no database)."""

from __future__ import annotations

import hmac
import re

import pytest

from decision_service.rank_input import LOOP_NAME
from deploy.keys import (
    LOOP_NAME as KEY_LOOP_NAME,
)
from deploy.keys import (
    PERMISSIONS,
    ROLES,
    Principal,
    check_key_fields,
    generate_key,
    hash_secret,
    parse_token,
    secret_digest,
    stored_digest,
    verify_secret,
)
from explore.errors import InvalidInput


def test_roles_are_the_documented_table() -> None:
    assert set(PERMISSIONS) == {
        "decide", "read", "evaluate", "export", "gatekeep", "configure", "keys",
    }  # fmt: skip
    assert dict(ROLES) == {
        "app": {"decide"},
        "experimenter": {"read", "evaluate", "export"},
        "gatekeeper": {"read", "gatekeep"},
        "admin": set(PERMISSIONS),
    }


def test_generated_keys_have_the_form_and_256_random_bits() -> None:
    keys = [generate_key() for _ in range(200)]
    for key in keys:
        assert re.fullmatch(r"dsk_[0-9a-f]{12}_[A-Za-z0-9_\-]{43}", key.token)
        assert parse_token(key.token) == key
        assert key.secret not in repr(key)
    assert len({k.secret for k in keys}) == len({k.key_id for k in keys}) == 200


@pytest.mark.parametrize(
    "token",
    [
        "",
        "dsk_",
        "dsk_0123456789ab",
        "dsk_0123456789AB_" + "a" * 43,  # upper-case id
        "dsk_0123456789ab_" + "a" * 42,  # short secret
        "dsk_0123456789ab_" + "a" * 44,
        "dsk_0123456789ab_" + "a" * 42 + "=",
        "xsk_0123456789ab_" + "a" * 43,
        "dsk_0123456789ab_" + "a" * 42 + "\n",
        "Bearer dsk_0123456789ab_" + "a" * 43,
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    assert parse_token(token) is None


def test_the_hash_is_bound_to_the_id_and_never_holds_the_secret() -> None:
    key = generate_key()
    stored = key.secret_hash
    assert stored.startswith("hmac-sha256$") and len(stored) == len("hmac-sha256$") + 64
    assert key.secret not in stored
    assert verify_secret(key.key_id, key.secret, stored)
    assert not verify_secret(key.key_id, key.secret[:-1] + "x", stored)
    assert not verify_secret("0" * 12, key.secret, stored)  # another id, same secret
    assert hash_secret(key.key_id, key.secret) == stored  # deterministic: one hash per check
    plain = hmac.digest(
        b"decision-service/api-key/v1", f"{key.key_id}:{key.secret}".encode(), "sha256"
    )
    assert secret_digest(key.key_id, key.secret) == plain  # HMAC-SHA256, exactly
    for broken in ("", "hmac-sha256$zz", "md5$" + "0" * 64, stored[:-1]):
        assert stored_digest(broken) is None
        assert not verify_secret(key.key_id, key.secret, broken)


def test_principal_permissions_and_scope() -> None:
    everywhere = Principal("a" * 12, "ops", "admin", None)
    scoped = Principal("b" * 12, "news-app", "app", ("news",))
    assert everywhere.may("keys") and everywhere.may("configure", "any-loop")
    assert scoped.may("decide", "news")
    assert not scoped.may("decide", "sports")  # outside its loops
    assert scoped.may("decide")  # not about one loop: the route filters by `sees`
    assert not scoped.may("read", "news")  # its role lacks it
    assert scoped.actor == f"key:{'b' * 12}:news-app"
    assert everywhere.covers(None) and everywhere.covers(("x",))
    assert not scoped.covers(None)  # a scoped key never makes or sees an unscoped one
    assert scoped.covers(("news",)) and not scoped.covers(("news", "sports"))
    assert not Principal("c" * 12, "x", "no-such-role", None).may("read")


def test_key_fields_are_checked() -> None:
    assert check_key_fields("ci", "app", ["b", "a", "b"]) == ("ci", "app", ("a", "b"))
    assert check_key_fields("ci", "admin", None) == ("ci", "admin", None)
    for name, role, loops in (
        ("", "app", None),
        ("x" * 129, "app", None),
        ("a\nb", "app", None),
        ("ci", "root", None),
        ("ci", "app", []),
        ("ci", "app", ["bad/loop"]),
        ("ci", "app", [f"l{i}" for i in range(65)]),
    ):
        with pytest.raises(InvalidInput) as err:
            check_key_fields(name, role, loops)
        assert err.value.code == "invalid_key"


def test_loop_names_match_the_service() -> None:
    assert KEY_LOOP_NAME.pattern == LOOP_NAME.pattern
