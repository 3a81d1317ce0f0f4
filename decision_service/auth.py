"""`authorize(request, permission, loop)`: the check every route makes first.

The key comes from `Authorization: Bearer <key>` or `Ocp-Apim-Subscription-Key: <key>` (the
header Azure Personalizer clients send). No key, a key not of the service's form, an unknown or
revoked key, a wrong secret: 401 `unauthorized` (with `WWW-Authenticate: Bearer`). A valid key
whose role lacks the permission, or whose loops do not include the route's loop: 403
`forbidden`.

Each worker keeps the keys it verified (`KeyCache`, on the `Service`) for `DS_KEY_CACHE_S`: a
request with a cached key costs a dict lookup and one HMAC-SHA256; the database is read once
per key and period (concurrent requests share that read). A revocation takes effect at once in
the worker that made it and within `DS_KEY_CACHE_S` in every other. While the database is
unreachable a worker keeps using the keys it had verified (nothing can be revoked meanwhile
through this database), and a key it never saw gets 503 `store_unavailable`; so does every
key before the worker's start-up (migration, first admin key) is done.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from deploy.keys import ROLES, Principal, secret_digest, split_token, stored_digest
from explore.errors import Forbidden, Unauthorized, Unavailable
from log.api_keys import StoredKey, get_key
from log.schema import Engine
from log.store import is_unreachable

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["KeyCache", "authorize", "presented_key"]

logger = logging.getLogger(__name__)

_AUTHORIZATION = b"authorization"
_SUBSCRIPTION_KEY = b"ocp-apim-subscription-key"
MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class _Entry:
    """What a worker knows about one key id: the principal and its secret's digest (None: no
    such key), whether it is revoked, until when to trust this."""

    principal: Principal | None
    digest: bytes | None
    revoked: bool
    expires: float


class KeyCache:
    """Per-worker cache of keys read from the database (bounded; see the module docstring)."""

    def __init__(self, engine: Engine, ttl_s: float, max_entries: int = MAX_CACHED_KEYS) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.entries: OrderedDict[str, _Entry] = OrderedDict()
        self._reads: dict[str, asyncio.Future[_Entry]] = {}
        self._generation = 0
        self.reads = 0  # database reads made (tests and benchmarks count them)
        # set once the worker's start-up (migration, first admin key) is done: before, a key
        # cannot be known (DS_ADMIN_KEY may not be registered yet) and is not looked up
        self.ready = False

    def _entry(self, stored: StoredKey | None, now: float) -> _Entry:
        expires = now + self.ttl_s
        if stored is None:
            return _Entry(None, None, False, expires)
        principal = Principal(stored.key_id, stored.name, stored.role, stored.loops)
        return _Entry(principal, stored_digest(stored.secret_hash), not stored.active, expires)

    def _store(self, key_id: str, entry: _Entry) -> None:
        # entries are kept in the order they were read, which is the order they expire in
        # (one TTL for all): when full, the oldest goes, in constant time
        self.entries.pop(key_id, None)
        while len(self.entries) >= self.max_entries:
            self.entries.popitem(last=False)
        self.entries[key_id] = entry

    async def _read(self, key_id: str) -> _Entry:
        generation = self._generation
        self.reads += 1
        try:
            stored = await run_in_threadpool(get_key, self.engine, key_id)
        except Exception as err:
            stale = self.entries.get(key_id)
            if stale is None or not is_unreachable(err):
                # like a loop that cannot be loaded (Service.runtime): the store is unreachable
                # or not migrated yet (a worker that started during an outage): retry later
                logger.warning("reading API key %s failed: %s", key_id, err)
                raise Unavailable("API keys cannot be read right now; retry") from None
            # the store is unreachable: keep what this worker verified, ask again later
            logger.warning("keys cannot be re-read (%s); using the cached key %s", err, key_id)
            entry = _Entry(
                stale.principal, stale.digest, stale.revoked, time.monotonic() + self.ttl_s
            )
        else:
            entry = self._entry(stored, time.monotonic())
        if generation == self._generation:  # no revocation in this worker meanwhile
            self._store(key_id, entry)
        return entry

    async def get(self, key_id: str) -> _Entry:
        entry = self.entries.get(key_id)
        if entry is not None and entry.expires > time.monotonic():
            return entry
        if not self.ready:
            raise Unavailable("the service is starting; retry shortly")
        pending = self._reads.get(key_id)
        if pending is None:
            pending = asyncio.ensure_future(self._read(key_id))
            self._reads[key_id] = pending
            pending.add_done_callback(lambda done: self._done(key_id, done))
        return await asyncio.shield(pending)

    def _done(self, key_id: str, done: asyncio.Future[_Entry]) -> None:
        self._reads.pop(key_id, None)
        if not done.cancelled():
            done.exception()  # retrieved: its awaiters (if any are left) raise it

    def forget(self, key_id: str) -> None:
        """Drop a key (this worker revoked it): the next request reads it again."""
        self._generation += 1
        self.entries.pop(key_id, None)


def presented_key(headers: list[tuple[bytes, bytes]]) -> str:
    """The key a request presents (Authorization: Bearer first, else
    Ocp-Apim-Subscription-Key). Unauthorized when there is none."""
    authorization = subscription = None
    for name, value in headers:
        if name == _AUTHORIZATION:
            authorization = value
        elif name == _SUBSCRIPTION_KEY:
            subscription = value
    if authorization is not None:
        if authorization[:7].lower() == b"bearer ":
            token = authorization[7:].strip()
            if token:
                return token.decode("latin-1")
        if subscription is None:
            raise Unauthorized("the Authorization header must be `Bearer <key>`", "unauthorized")
    if subscription is not None:
        return subscription.decode("latin-1").strip()
    raise Unauthorized("an API key is required: send `Authorization: Bearer <key>`", "unauthorized")


async def authorize(request: Request, permission: str, loop: str | None = None) -> Principal:
    """The caller's key, checked: 401 Unauthorized (no, malformed, unknown, revoked key or
    wrong secret), 403 Forbidden (the role lacks `permission`, or `loop` is outside the key's
    loops). `loop` None: the action is not about one loop (the route filters what it shows by
    `Principal.sees`)."""
    parts = split_token(presented_key(request.scope["headers"]))
    if parts is None:
        raise Unauthorized("the API key is not of the service's form (dsk_...)", "unauthorized")
    key_id, secret = parts
    cache: KeyCache = request.app.state.service.keys
    entry = await cache.get(key_id)
    if (
        entry.principal is None
        or entry.digest is None
        or not hmac.compare_digest(secret_digest(key_id, secret), entry.digest)
    ):
        raise Unauthorized("the API key is not valid", "unauthorized")
    if entry.revoked:
        raise Unauthorized(f"API key {key_id} was revoked", "unauthorized")
    principal = entry.principal
    if not principal.may(permission, loop):
        if permission not in ROLES.get(principal.role, ()):
            raise Forbidden(
                f"a key with role {principal.role!r} may not {permission!r}", "forbidden"
            )
        raise Forbidden(f"this key may not act on loop {loop!r}", "forbidden")
    return principal
