"""Action features stored once: content-addressed bodies and the references decisions keep.

A decision keeps its candidates exactly as they were at decision time, and most of a decision
row was those candidates' features, the same catalog items copied into every decision that
offered them. Since revision 0012 a decision stores each action as a reference
``[id, digest]``: `digest` is the BLAKE2b-128 (hex) of the action's body, the JSON text
(orjson) of the action without its id (``{"features": {...}}``), and `action_features` keeps
each (loop, digest) body once. Reading a decision puts the bodies back, so the record is the
same value as the one written: ``{"id": id, **body}``.

Rows written before 0012 keep their actions inline (``[{"id": ..., "features": ...}]``); every
read takes both forms.

Writing: :func:`stored_actions` turns a group of records into their references and the bodies
to insert; :func:`write_bodies` inserts those bodies (insert-if-absent, in key order, so two
writers inserting overlapping bodies wait for each other instead of deadlocking) in the same
transaction as the decisions, so a committed decision's bodies are committed with it.
:class:`KnownBodies` lets a long-lived writer skip bodies it has itself committed: keys are
staged during a transaction and become known only once it committed.

Reading: :class:`BodyReader` (one per read and loop) fetches the bodies of the references it
has not seen, one query per batch, and :meth:`BodyReader.expand` rebuilds the actions. The
training read hands each chunk's rows a :class:`ChunkBodies`, which looks bodies up only when
the example builder meets a reference whose line it has not memoised.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, bindparam, select

from log.models import ActionFeaturesRow
from log.records import DecisionRecord

__all__ = [
    "POLICY",
    "BodyReader",
    "ChunkBodies",
    "KnownBodies",
    "MissingActionBody",
    "ReferencePolicy",
    "action_ids",
    "action_reference",
    "stored_actions",
    "stored_form",
    "write_bodies",
]

_DIGEST_SIZE = 16  # bytes: 32 hex digits
# A digest in the JSON text of an array of references: the second string of each [id, digest]
# pair is the only string followed by `]` (an id is followed by `,`), and a quote inside an id
# is escaped, so no part of an id matches.
_DIGEST = re.compile(r'"([0-9a-f]{32})"\]')
_FETCH_CHUNK = 500  # digests per lookup statement
_TABLE = ActionFeaturesRow.__tablename__
_PG_INSERT = (
    f"INSERT INTO {_TABLE} (loop, digest, body) "
    "SELECT * FROM unnest(CAST(%s AS text[]), CAST(%s AS text[]), CAST(%s AS text[])) "
    "ON CONFLICT (loop, digest) DO NOTHING"
)
_LITE_INSERT = (
    f"INSERT INTO {_TABLE} (loop, digest, body) VALUES (?, ?, ?) "
    "ON CONFLICT (loop, digest) DO NOTHING"
)


class MissingActionBody(RuntimeError):
    """A decision refers to an action body that is not stored (the store was altered by hand:
    nothing the service does deletes a body)."""


def action_reference(action: Mapping[str, Any]) -> tuple[str, str, bytes]:
    """(id, digest, body) of one logged action: the body is the JSON text of the action
    without its id."""
    body = _body(action)
    return str(action["id"]), _DIGESTS.data.get(body) or _DIGESTS.digest(body), body


def _body(action: Mapping[str, Any]) -> bytes:
    if len(action) == 2 and "features" in action:  # the record's form: {"id", "features"}
        return b'{"features":' + orjson.dumps(action["features"]) + b"}"
    return orjson.dumps({k: v for k, v in action.items() if k != "id"})


class _DigestMemo:
    """body -> digest (catalogs offer the same items again and again), bounded in bytes: a
    client sending ever new, large features cannot make it grow past `max_bytes`."""

    __slots__ = ("data", "max_bytes", "nbytes")

    def __init__(self, max_bytes: int) -> None:
        self.data: dict[bytes, str] = {}
        self.max_bytes = max_bytes
        self.nbytes = 0

    def digest(self, body: bytes) -> str:
        digest = hashlib.blake2b(body, digest_size=_DIGEST_SIZE).hexdigest()
        self._put(body, digest)
        return digest

    def remember(self, body: bytes) -> None:
        """Note a body as seen, not hashed yet ("": hashed when first referred to)."""
        self._put(body, "")

    def _put(self, body: bytes, digest: str) -> None:
        size = len(body) + _DIGEST_SIZE * 2
        if size * 64 > self.max_bytes:  # a huge body is hashed, not kept
            return
        if body in self.data:
            self.data[body] = digest
            return
        if self.nbytes + size > self.max_bytes:
            self.data = {}
            self.nbytes = 0
        self.data[body] = digest
        self.nbytes += size


_DIGESTS = _DigestMemo(16 * 1024 * 1024)


def action_ids(stored: Sequence[Any]) -> list[str]:
    """The action ids of a stored actions array, either form, without reading any body."""
    return [str(a[0]) if isinstance(a, list) else str(a["id"]) for a in stored]


BodyKey = tuple[str, str]  # (loop, digest)


@dataclass(frozen=True, slots=True)
class ReferencePolicy:
    """When a decision's actions are stored by reference rather than inline (one form per
    decision). References pay only when bodies repeat and are large: a reference costs about
    50 bytes (id, digest) and a new body a row of its own in `action_features`, while
    PostgreSQL compresses an inline array of small features well. Measured on PostgreSQL,
    5,000 decisions of 20 actions with 4 small features each (the rank benchmark's): inline
    1,402 bytes a decision; all by reference 1,886 over a catalog of 200 items and 6,873 when
    every body was new.

    `seen`: every body must have been seen before by this process (a bounded memo), so
    features that change with each request stay inline; `gain`: the inline array must be at
    least this many times the size of its references."""

    seen: bool = True
    gain: float = 3.0


POLICY = ReferencePolicy()


def stored_actions(
    records: Iterable[DecisionRecord], policy: ReferencePolicy | None = None
) -> tuple[list[list[Any]], dict[BodyKey, bytes]]:
    """Each record's actions as stored (references, or the actions inline: see
    :class:`ReferencePolicy`) and every body the references refer to."""
    policy = policy or POLICY
    bodies: dict[BodyKey, bytes] = {}
    return [stored_form(rec.loop, rec.actions, policy, bodies) for rec in records], bodies


def stored_form(
    loop: str,
    actions: Sequence[Mapping[str, Any]],
    policy: ReferencePolicy,
    bodies: dict[BodyKey, bytes],
) -> list[Any]:
    """The stored form of one decision's actions; the bodies its references need are added
    to `bodies`. Small features cost one encoding per action and nothing else: the sizes decide
    before any body is looked up or hashed."""
    dumps = orjson.dumps
    # action_reference's work, inlined: this runs for every action the service logs
    row: list[tuple[str, bytes]] = []
    inline_size = refs_size = 0
    for action in actions:
        if len(action) == 2 and "features" in action:
            body = b'{"features":' + dumps(action["features"]) + b"}"
        else:
            body = _body(action)
        action_id = str(action["id"])
        row.append((action_id, body))
        inline_size += len(body) + len(action_id) + 8
        refs_size += len(action_id) + 40
    if inline_size < policy.gain * refs_size:
        return list(actions)
    memo = _DIGESTS.data
    seen = all(body in memo for _, body in row)
    for _, body in row:
        if body not in memo:
            _DIGESTS.remember(body)  # seen now: the next decision offering it may refer
    if not (seen or not policy.seen):
        return list(actions)
    refs = []
    for action_id, body in row:
        digest = _DIGESTS.data.get(body) or _DIGESTS.digest(body)
        bodies[(loop, digest)] = body
        refs.append([action_id, digest])
    return refs


class KnownBodies:
    """The bodies one writer has committed (bounded, least recently used evicted), so that it
    does not insert them again. A key becomes known only after its transaction committed:
    :meth:`stage` during the transaction, then :meth:`commit` or :meth:`discard`."""

    def __init__(self, max_keys: int = 200_000) -> None:
        self.max_keys = max_keys
        self._known: OrderedDict[BodyKey, None] = OrderedDict()
        self._staged: list[BodyKey] = []

    def unknown(self, keys: Iterable[BodyKey]) -> list[BodyKey]:
        out = []
        for key in keys:
            if key in self._known:
                self._known.move_to_end(key)
            else:
                out.append(key)
        return out

    def stage(self, keys: Iterable[BodyKey]) -> None:
        self._staged.extend(keys)

    def commit(self) -> None:
        for key in self._staged:
            self._known[key] = None
        self._staged.clear()
        while len(self._known) > self.max_keys:
            self._known.popitem(last=False)

    def discard(self) -> None:
        self._staged.clear()

    def forget(self) -> None:
        """Forget everything (after a reconnect: the store may not be the one it knew)."""
        self._known.clear()
        self._staged.clear()


def write_bodies(
    conn: Connection, bodies: Mapping[BodyKey, bytes], known: KnownBodies | None = None
) -> int:
    """Insert the bodies not already stored, inside the caller's transaction; returns how many
    were sent (those `known` holds are skipped)."""
    keys = sorted(bodies if known is None else known.unknown(bodies))
    if not keys:
        return 0
    # straight to the driver: SQLAlchemy's per-row work for an executemany cost about 5 µs a
    # body, 100 µs for a decision of 20 new actions (every body new: features that change
    # with each request)
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if conn.dialect.name == "postgresql":
            cur.execute(
                _PG_INSERT,
                (
                    [k[0] for k in keys],
                    [k[1] for k in keys],
                    [bodies[k].decode() for k in keys],
                ),
            )
        else:
            cur.executemany(_LITE_INSERT, [(k[0], k[1], bodies[k].decode()) for k in keys])
    finally:
        cur.close()
    if known is not None:
        known.stage(keys)
    return len(keys)


class BodyReader:
    """The bodies of one loop's actions, fetched on first sight and kept for the read.

    Reads through `conn` (the caller's connection, used in the caller's thread) or, given an
    `engine`, through a connection taken for each lookup (a training read's rows may be built
    in another thread than the one that read them, or after its connection closed). A body is
    committed no later than the first decision that refers to it and never changes, so any
    connection sees the body of every decision it can see."""

    def __init__(
        self,
        conn: Connection | None,
        loop: str,
        *,
        engine: Engine | None = None,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if (conn is None) == (engine is None):
            raise ValueError("give a connection or an engine")
        self.conn = conn
        self.engine = engine
        self.loop = loop
        self.max_bytes = max_bytes
        # digest -> body JSON text; a new mapping, holding only the batch being fetched, once
        # its bodies would outgrow `max_bytes`
        self.texts: dict[str, str] = {}
        self._nbytes = 0

    def fetch(self, stored: Iterable[Sequence[Any]]) -> None:
        """Fetch the bodies that the stored actions arrays refer to and are not yet here."""
        self._fetch({a[1] for actions in stored for a in actions if isinstance(a, list)})

    def fetch_json(self, stored: Iterable[str]) -> dict[str, str]:
        """:meth:`fetch` for stored actions arrays as their JSON text (the digests found by
        :data:`_DIGEST`, not by parsing); returns the mapping that holds their bodies."""
        self._fetch(set(_DIGEST.findall("".join(t for t in stored if t.startswith("[[")))))
        return self.texts

    def chunk(self, stored: list[str]) -> ChunkBodies:
        """The bodies of one chunk of training rows (their actions' JSON texts), fetched only
        if a row asks for one this reader does not hold (see :class:`ChunkBodies`)."""
        return ChunkBodies(self, stored)

    def _fetch(self, everything: set[str]) -> None:
        texts = self.texts
        wanted = everything.difference(texts)
        if not wanted:
            return
        if self._nbytes > self.max_bytes:  # bounded: start a new mapping with this batch
            self.texts = texts = {}
            self._nbytes = 0
            wanted = everything
        if self.conn is not None:
            self._nbytes += self._lookup(self.conn, sorted(wanted), texts)
        else:
            assert self.engine is not None
            with self.engine.connect() as conn:
                self._nbytes += self._lookup(conn, sorted(wanted), texts)
        missing = wanted.difference(texts)
        if missing:
            raise MissingActionBody(
                f"loop {self.loop!r}: {len(missing)} action bodies referred to by decisions "
                f"are not stored (for example {min(missing)})"
            )

    def _lookup(self, conn: Connection, digests: list[str], texts: dict[str, str]) -> int:
        """Put the bodies of `digests` into `texts`; returns their characters."""
        size = 0
        table = ActionFeaturesRow.__table__
        stmt = select(table.c.digest, table.c.body).where(
            table.c.loop == self.loop, table.c.digest.in_(bindparam("digests", expanding=True))
        )
        for lo in range(0, len(digests), _FETCH_CHUNK):
            part = digests[lo : lo + _FETCH_CHUNK]
            for digest, body in conn.execute(stmt, {"digests": part}):
                texts[digest] = body
                size += len(body)
        return size

    def expand(self, stored: Sequence[Any]) -> list[dict[str, Any]]:
        """The actions of a stored array (either form) as the record holds them; the bodies
        must have been fetched (:meth:`fetch`)."""
        out = []
        for a in stored:
            if not isinstance(a, list):
                out.append(a)
                continue
            action_id, digest = a
            text = self.texts.get(digest)
            if text is None:
                raise MissingActionBody(f"loop {self.loop!r}: action body {digest} is not stored")
            # parsed per action, as the inline arrays were: no two records share a value
            out.append({"id": action_id, **orjson.loads(text)})
        return out


class ChunkBodies:
    """The body mapping of one chunk of training rows. The builder asks it only for a body
    whose line it has not memoised; the first such miss fetches, in one lookup, every body the
    chunk refers to that the reader does not hold (found by scanning the chunk's texts). In the
    steady state of a catalog nothing is scanned or fetched."""

    __slots__ = ("_reader", "_scanned", "_stored")

    def __init__(self, reader: BodyReader, stored: list[str]) -> None:
        self._reader = reader
        self._stored = stored
        self._scanned = False

    def get(self, digest: str, default: str | None = None) -> str | None:
        text = self._reader.texts.get(digest)
        if text is None and not self._scanned:
            self._scanned = True
            text = self._reader.fetch_json(self._stored).get(digest)
        return default if text is None else text
