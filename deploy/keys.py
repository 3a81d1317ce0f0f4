"""API keys and roles: who may do what, on which loops (no SQL: `log.api_keys` stores them).

A key is `dsk_<key id>_<secret>`: a public id of 12 hex digits (48 random bits; it names the key
in lists and in the audit log) and a secret of 256 random bits (43 characters of URL-safe
base64). Only `hash_secret(key_id, secret)` is stored: HMAC-SHA256 keyed by a fixed
domain-separation key over the id and the secret. A password-hashing function (argon2, bcrypt,
scrypt) exists to slow down guessing of low-entropy passwords; a 256-bit random secret cannot be
guessed at any speed, so its slowness (tens of milliseconds per request) would buy nothing here
and cost the hot path (rank) its throughput. Comparison is constant-time (`hmac.compare_digest`).

Roles are fixed sets of permissions (`ROLES`); a key may be scoped to a list of loops (`None`:
every loop). `Principal.may(permission, loop)` is the whole check.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from explore.errors import InvalidInput

__all__ = [
    "MAX_KEY_LOOPS",
    "MAX_KEY_NAME",
    "PERMISSIONS",
    "ROLES",
    "NewKey",
    "Principal",
    "check_key_fields",
    "generate_key",
    "hash_secret",
    "parse_token",
    "secret_digest",
    "split_token",
    "stored_digest",
    "verify_secret",
]

# permission -> what it allows
PERMISSIONS: Mapping[str, str] = MappingProxyType(
    {
        "decide": "rank, reward, activate",
        "read": "read loops, models, verdicts, evaluations, the audit log, this worker's status",
        "evaluate": "create and cancel offline evaluations",
        "export": "export logged decisions",
        "gatekeep": "approve, reject, roll out, roll back, resume freshness updates",
        "configure": "create and change loops (PUT)",
        "keys": "create, list and revoke API keys",
    }
)
ROLES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "app": frozenset({"decide"}),
        "experimenter": frozenset({"read", "evaluate", "export"}),
        "gatekeeper": frozenset({"read", "gatekeep"}),
        "admin": frozenset(PERMISSIONS),
    }
)

KEY_PREFIX = "dsk_"
KEY_ID = re.compile(r"[0-9a-f]{12}")
SECRET_BYTES = 32  # 256 bits
_SECRET_CHARS = 43  # urlsafe base64 of 32 bytes, unpadded
_TOKEN = re.compile(r"dsk_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})")
TOKEN_LENGTH = len(KEY_PREFIX) + 12 + 1 + _SECRET_CHARS
HASH_SCHEME = "hmac-sha256"
_HASH_KEY = b"decision-service/api-key/v1"
# The same names as decision_service.rank_input.LOOP_NAME (a test holds them equal).
LOOP_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
MAX_KEY_NAME = 128
MAX_KEY_LOOPS = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


_HMAC = hmac.new(_HASH_KEY, digestmod="sha256")  # keyed once; each check copies its state


def secret_digest(key_id: str, secret: str) -> bytes:
    """HMAC-SHA256 (fixed domain-separation key) of the key's id and secret: 32 bytes. (A copy
    of the keyed state: the same value as `hmac.digest`, in about half its time.)"""
    mac = _HMAC.copy()
    mac.update(f"{key_id}:{secret}".encode())
    return mac.digest()


def hash_secret(key_id: str, secret: str) -> str:
    """The stored form of a key's secret: `hmac-sha256$<64 hex digits>`, bound to its id."""
    return f"{HASH_SCHEME}${secret_digest(key_id, secret).hex()}"


def stored_digest(stored_hash: str) -> bytes | None:
    """The digest inside a stored hash; None for a scheme this code does not know."""
    scheme, _, hexdigest = stored_hash.partition("$")
    if scheme != HASH_SCHEME or len(hexdigest) != 64:
        return None
    try:
        return bytes.fromhex(hexdigest)
    except ValueError:
        return None


def verify_secret(key_id: str, secret: str, stored_hash: str) -> bool:
    """Constant-time check of a presented secret against the stored hash."""
    digest = stored_digest(stored_hash)
    return digest is not None and hmac.compare_digest(secret_digest(key_id, secret), digest)


@dataclass(frozen=True)
class NewKey:
    """A key just generated: `token` is shown once; only `secret_hash` is stored."""

    key_id: str
    secret: str

    @property
    def token(self) -> str:
        return f"{KEY_PREFIX}{self.key_id}_{self.secret}"

    @property
    def secret_hash(self) -> str:
        return hash_secret(self.key_id, self.secret)

    def __repr__(self) -> str:  # never print the secret by accident
        return f"NewKey(key_id={self.key_id!r}, secret=<hidden>)"


def generate_key() -> NewKey:
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=").decode()
    return NewKey(secrets.token_hex(6), secret)


def split_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a presented key; None when it is not of the key's form. (The
    request path's version: no object built.)"""
    if len(token) != TOKEN_LENGTH:
        return None
    found = _TOKEN.fullmatch(token)
    return (found[1], found[2]) if found else None


def parse_token(token: str) -> NewKey | None:
    """The key a token holds; None when it is not of the key's form."""
    parts = split_token(token)
    return NewKey(*parts) if parts else None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key's id, name, role and loops (`None`: every loop)."""

    key_id: str
    name: str
    role: str
    loops: tuple[str, ...] | None

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"key:{self.key_id}:{self.name}"

    @property
    def permissions(self) -> frozenset[str]:
        return ROLES.get(self.role, frozenset())

    def sees(self, loop: str) -> bool:
        """Whether `loop` is within this key's scope."""
        return self.loops is None or loop in self.loops

    def may(self, permission: str, loop: str | None = None) -> bool:
        """The role grants `permission`, and `loop` (if the action is about one) is in scope."""
        return permission in ROLES.get(self.role, ()) and (loop is None or self.sees(loop))

    def covers(self, loops: tuple[str, ...] | None) -> bool:
        """Whether a key with these loops would be within this key's scope (keys it may make
        or revoke): an unscoped key covers everything, a scoped one only subsets of its loops."""
        if self.loops is None:
            return True
        return loops is not None and set(loops) <= set(self.loops)


def check_key_fields(
    name: str, role: str, loops: Iterable[str] | None
) -> tuple[str, str, tuple[str, ...] | None]:
    """A new key's name, role and loops, checked (InvalidInput `invalid_key`); loops are
    deduplicated and sorted."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_KEY_NAME or _CONTROL.search(name):
        raise InvalidInput(
            f"a key's name is 1-{MAX_KEY_NAME} characters without control characters",
            "invalid_key",
        )
    if role not in ROLES:
        raise InvalidInput(
            f"unknown role {role!r}: one of {', '.join(ROLES)}",
            "invalid_key",
        )
    if loops is None:
        return name, role, None
    scoped = tuple(sorted(set(loops)))
    if not 1 <= len(scoped) <= MAX_KEY_LOOPS:
        raise InvalidInput(
            f"a scoped key names 1-{MAX_KEY_LOOPS} loops (leave loops out for every loop)",
            "invalid_key",
        )
    for loop in scoped:
        if not isinstance(loop, str) or not LOOP_NAME.fullmatch(loop):
            raise InvalidInput(
                f"{loop!r} is not a loop name (1-128 characters of A-Z a-z 0-9 _ . -)",
                "invalid_key",
            )
    return name, role, scoped
