"""Which serving arm (live or canary) a request falls in: a stable keyed hash of its unit.

The unit of the split is the request's user id when it has one, else its event id. The unit is
hashed with the loop's secret sampling key (blake2b, keyed, personalised ``ds-arm``, so these
hashes are independent of the sampling draws made with the same key) together with the canary's
version, and mapped to a uniform ``u`` in [0, 1); the request is served by the canary when
``u < share`` (share = canary_percent / 100).

Properties (each held by a test):

* **Stable**: the same unit always lands in the same arm for a given canary version, in every
  worker and after restarts (nothing but the key, the version and the unit enters the hash).
* **Nested**: raising the share of the same canary keeps every unit already in it (``u < p``
  implies ``u < p'`` for ``p' > p``); lowering it only moves units back to live.
* **Fresh per canary**: the canary's version salts the hash, so each new canary draws its own
  users: the same few percent of users do not carry the risk of every candidate, and successive
  A/B comparisons are independent.
* **Not steerable**: without the key a client cannot tell which user ids or event ids land in
  the canary, so it cannot choose its arm (blake2b with a secret key is a pseudo-random
  function); seeing which ids landed where in one loop tells nothing about another loop's key.

**Retriever canaries** split by the same function, salted by :func:`retriever_salt` (the
retriever's version behind a ``retriever:`` tag, so a retriever's salt never equals a model
version's). A model canary and a retriever canary running at once therefore assign each unit by
two hashes of different salts: independent arms (a pseudo-random function of distinct inputs),
so each retriever arm sees the same mix of model arms and vice versa, and each A/B compares its
own two arms with the other split averaged out. Both arms are functions of the request, so the
logged pmf stays the exact propensity.

Why the logged pmf is then the right propensity: see :mod:`decision_service.decide`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from explore.sampling import check_sampling_key

__all__ = ["CANARY", "LIVE", "ArmSplit", "arm_uniform", "retriever_salt", "split_unit"]

LIVE = "live"
CANARY = "canary"
_PERSON = b"ds-arm"  # blake2b personalisation: these hashes serve the arm split only
_SCALE = 9007199254740992.0  # 2**53


def split_unit(user_id: str | None, event_id: str) -> bytes:
    """The unit a request is split by: its user id when given, else its event id (tagged, so a
    user id never hashes like an event id of the same text)."""
    if user_id is not None:
        return b"u\x00" + user_id.encode()
    return b"e\x00" + event_id.encode()


def retriever_salt(version: str) -> str:
    """The split salt of a retriever canary: its version tagged apart from model versions."""
    return "retriever:" + version


def arm_uniform(key: bytes, salt: str, unit: bytes) -> float:
    """A uniform in [0, 1) fixed by (key, salt, unit): the first 53 bits of
    ``blake2b(salt.encode() + b"\\x00" + unit, key=key, person=b"ds-arm", digest_size=8)``.
    `salt` (the canary's version) holds no NUL, so the input is unambiguous."""
    digest = hashlib.blake2b(
        salt.encode() + b"\x00" + unit, key=key, person=_PERSON, digest_size=8
    ).digest()
    return (int.from_bytes(digest, "big") >> 11) / _SCALE


@dataclass(frozen=True, slots=True)
class ArmSplit:
    """A canary split: `share` (in (0, 1)) of the units are served by the canary `salt`."""

    key: bytes
    salt: str
    share: float

    def __post_init__(self) -> None:
        check_sampling_key(self.key)
        if not self.salt or "\x00" in self.salt:
            raise ValueError("salt must be a non-empty string without NUL")
        share = self.share
        if isinstance(share, bool) or not isinstance(share, int | float):
            raise ValueError(f"share must be a number in (0, 1), got {share!r}")
        if not (math.isfinite(share) and 0.0 < share < 1.0):
            raise ValueError(f"share must be a number in (0, 1), got {share!r}")

    def arm(self, unit: bytes) -> tuple[str, float]:
        """(arm, probability of that arm): ("canary", share) or ("live", 1 - share)."""
        if arm_uniform(self.key, self.salt, unit) < self.share:
            return CANARY, self.share
        return LIVE, 1.0 - self.share
