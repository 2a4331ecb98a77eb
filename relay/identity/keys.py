"""Client API keys: their format, hashing at rest, and the verified-key cache.

A key looks like ``rk_<key_id>_<secret><checksum>``::

    rk_7x2m9q4kd0ab_4bVq...(43 base62 chars)...Zp3kQ1

- ``key_id``: 12 lowercase Crockford base32 characters. It is the key's public id (listings,
  ``relay key revoke``), not a secret.
- ``secret``: 256 random bits from ``secrets``, base62-encoded to exactly 43 characters, so
  the whole key is one alphanumeric "word" that double-click selects and scanners match.
- ``checksum``: CRC32 of ``rk_<key_id>_<secret>`` as 6 base62 characters, so a mistyped or
  truncated key is rejected by ``parse_key`` without touching storage (like GitHub tokens).

Secret scanners can match keys with ``KEY_PATTERN``::

    \\brk_[0-9a-hjkmnp-tv-z]{12}_[0-9A-Za-z]{49}\\b

Keys are stored only as argon2id hashes (``KeyHasher``). Verifying one is deliberately slow
CPU work, so it runs once per key per process: ``VerifiedKeyCache`` remembers a keyed digest
of each key that passed, and later requests compare digests in O(1). Nothing here touches
the database or HTTP; callers pass in what is needed.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import string
import zlib
from dataclasses import dataclass, field
from typing import Protocol

from argon2 import PasswordHasher, Type
from argon2.exceptions import VerificationError

from relay.errors import AuthError

__all__ = [
    "KEY_ID_LENGTH",
    "KEY_LENGTH",
    "KEY_PATTERN",
    "KEY_PREFIX",
    "CacheLookup",
    "KeyHasher",
    "NewKey",
    "ParsedKey",
    "SecretHasher",
    "VerifiedKeyCache",
    "generate_key",
    "hash_secret",
    "mask_key",
    "parse_key",
]

KEY_PREFIX = "rk_"
KEY_ID_LENGTH = 12
_SECRET_BYTES = 32
_SECRET_LENGTH = 43  # 62**43 > 2**256: every 32-byte value fits, zero-padded to a fixed width
_CHECKSUM_LENGTH = 6  # 62**6 > 2**32: any CRC32 fits
_ID_END = len(KEY_PREFIX) + KEY_ID_LENGTH
_TAIL_START = _ID_END + 1
KEY_LENGTH = _TAIL_START + _SECRET_LENGTH + _CHECKSUM_LENGTH

# Crockford's base32 in lowercase: no i, l, o, u, so an id read aloud or off a screen is
# unambiguous.
_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_ID_CHARS = frozenset(_ID_ALPHABET)
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase

_KEY_SHAPE = (
    r"rk_[0-9a-hjkmnp-tv-z]{"
    + str(KEY_ID_LENGTH)
    + r"}_[0-9A-Za-z]{"
    + str(_SECRET_LENGTH + _CHECKSUM_LENGTH)
    + "}"
)
KEY_PATTERN = r"\b" + _KEY_SHAPE + r"\b"
_KEY_FULLMATCH = re.compile(_KEY_SHAPE)

_LAST_CHARS_SHOWN = 4


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly generated key. ``secret`` is the full key, shown to its owner exactly once."""

    key_id: str
    secret: str = field(repr=False)
    last4: str


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A well-formed key with a valid checksum; not yet proven to exist or to match a hash."""

    key_id: str
    full_key: str = field(repr=False)


def _base62(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        digits.append(_BASE62[digit])
    if value:
        raise ValueError("value does not fit the requested base62 width")
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), _CHECKSUM_LENGTH)


_BASE62_VALUE = {char: value for value, char in enumerate(_BASE62)}


def _checksum_matches(body: str, presented: str) -> bool:
    """``_checksum(body) == presented``, by reading ``presented`` as a number instead of
    writing the CRC out (every request's key is checked: twice as fast). ``presented``
    is base62 already (the key's pattern says so); a CRC-32 has one 6-digit spelling."""
    value = 0
    for char in presented:
        value = value * 62 + _BASE62_VALUE[char]
    return value == zlib.crc32(body.encode("ascii"))


def _new_key_id() -> str:
    bits = secrets.randbits(5 * KEY_ID_LENGTH)
    return "".join(_ID_ALPHABET[(bits >> (5 * i)) & 31] for i in range(KEY_ID_LENGTH))


def generate_key() -> NewKey:
    """Make a new key. The caller stores ``hash_secret(new.secret)`` and ``key_id``.

    Ids are 60 random bits; storage must still enforce uniqueness and the caller retry on a
    (vanishingly unlikely) clash.
    """
    key_id = _new_key_id()
    secret = _base62(int.from_bytes(secrets.token_bytes(_SECRET_BYTES), "big"), _SECRET_LENGTH)
    body = f"{KEY_PREFIX}{key_id}_{secret}"
    full_key = body + _checksum(body)
    return NewKey(key_id=key_id, secret=full_key, last4=full_key[-_LAST_CHARS_SHOWN:])


def _malformed_reason(raw: str) -> str:
    """Say what is wrong with a key that failed the pattern; never quote the key."""
    if not raw.startswith(KEY_PREFIX):
        return "malformed API key: it does not start with the rk_ prefix"
    if len(raw) != KEY_LENGTH:
        return f"malformed API key: expected {KEY_LENGTH} characters, got {len(raw)}"
    if raw[_ID_END] != "_":
        return "malformed API key: missing the underscore after the key id"
    if not _ID_CHARS.issuperset(raw[len(KEY_PREFIX) : _ID_END]):
        return "malformed API key: the key id has characters outside lowercase base32"
    return "malformed API key: the secret has characters other than ASCII letters and digits"


def parse_key(raw: str) -> ParsedKey:
    """Check a presented key's shape and checksum, without any lookup.

    Raises ``AuthError`` whose message says whether the key is malformed (and how) or has a
    bad checksum; the message never contains the key or any part of it.
    """
    if _KEY_FULLMATCH.fullmatch(raw) is None:
        raise AuthError(_malformed_reason(raw))
    body_end = KEY_LENGTH - _CHECKSUM_LENGTH
    if not _checksum_matches(raw[:body_end], raw[body_end:]):
        raise AuthError("invalid API key: bad checksum (the key was mistyped or altered)")
    return ParsedKey(key_id=raw[len(KEY_PREFIX) : _ID_END], full_key=raw)


def mask_key(key_id: str, last4: str) -> str:
    """The form shown in listings: enough to recognise a key, useless to use it."""
    return f"{KEY_PREFIX}{key_id}_\u2026{last4}"


class SecretHasher(Protocol):
    """What key hashing needs; ``KeyHasher`` in production, a cheap fake in tests."""

    def hash(self, full_key: str) -> str: ...

    def verify(self, stored_hash: str, full_key: str) -> bool: ...


class KeyHasher:
    """argon2id hashing of full keys.

    The defaults are OWASP's argon2id minimum (19 MiB, 2 passes, 1 lane): about 20-25 ms per
    verify on a small VPS core. ``verify`` is blocking CPU work: run it off the event loop
    (``await asyncio.to_thread(hasher.verify, stored_hash, key.full_key)``) and only on a
    ``VerifiedKeyCache`` miss, i.e. once per key per process.
    """

    __slots__ = ("_hasher",)

    def __init__(
        self, *, time_cost: int = 2, memory_cost_kib: int = 19_456, parallelism: int = 1
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )

    def hash(self, full_key: str) -> str:
        return self._hasher.hash(full_key)

    def verify(self, stored_hash: str, full_key: str) -> bool:
        """True if ``full_key`` matches; a corrupt ``stored_hash`` raises (a storage bug)."""
        try:
            return self._hasher.verify(stored_hash, full_key)
        except VerificationError:
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """True if the hash was made with other parameters than this hasher's."""
        return self._hasher.check_needs_rehash(stored_hash)


def hash_secret(full_key: str, hasher: SecretHasher | None = None) -> str:
    """The argon2id hash to store for a new key (PHC string with salt and parameters)."""
    return (hasher if hasher is not None else KeyHasher()).hash(full_key)


class CacheLookup(enum.Enum):
    """What the cache knows about a presented key."""

    VERIFIED = "verified"  # this exact key passed argon2 earlier: accept
    MISMATCH = "mismatch"  # the key id is known with another secret: reject, no argon2 needed
    UNKNOWN = "unknown"  # never verified in this process: verify argon2 once, then remember


class VerifiedKeyCache:
    """Keys that already passed argon2 verification in this process.

    Holds ``key_id -> HMAC-SHA256(server_secret, full_key)``; raw keys are never kept. Each
    key id has exactly one valid key, so a presented key whose digest differs from the
    stored one is wrong without running argon2; this keeps guessed secrets for a known key
    id from costing argon2 CPU time. Flow per request::

        key = parse_key(raw)
        match cache.lookup(key):
            case CacheLookup.VERIFIED: ...accept
            case CacheLookup.MISMATCH: ...reject 401
            case CacheLookup.UNKNOWN:
                ok = await asyncio.to_thread(hasher.verify, record.key_hash, key.full_key)
                if ok: cache.remember(key)

    Call ``forget(key_id)`` when a key is revoked or edited, so the next request re-checks
    its record. One entry per key, so no size bound is needed.
    """

    __slots__ = ("_digests", "_inner", "_outer", "_server_secret")

    def __init__(self, server_secret: bytes | None = None) -> None:
        # The digests never leave the process, so a fresh random secret per process is enough.
        if server_secret is None:
            server_secret = secrets.token_bytes(32)
        if len(server_secret) < 16:
            raise ValueError("server_secret must be at least 16 bytes")
        self._server_secret = server_secret
        self._digests: dict[str, bytes] = {}
        # HMAC-SHA256 with its keyed inner and outer states computed once: each digest
        # then copies them instead of re-deriving the pads (0.6 µs instead of 1.6 µs).
        block = hashlib.sha256().block_size
        padded = (
            hashlib.sha256(server_secret).digest() if len(server_secret) > block else server_secret
        ).ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

    def _digest(self, full_key: str) -> bytes:
        inner = self._inner.copy()
        inner.update(full_key.encode("ascii"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def lookup(self, key: ParsedKey) -> CacheLookup:
        stored = self._digests.get(key.key_id)
        if stored is None:
            return CacheLookup.UNKNOWN
        # Constant-time: timing must not reveal how much of a guessed key matched.
        if hmac.compare_digest(stored, self._digest(key.full_key)):
            return CacheLookup.VERIFIED
        return CacheLookup.MISMATCH

    def remember(self, key: ParsedKey) -> None:
        """Record a key that just passed ``KeyHasher.verify``."""
        self._digests[key.key_id] = self._digest(key.full_key)

    def forget(self, key_id: str) -> None:
        self._digests.pop(key_id, None)

    def __len__(self) -> int:
        return len(self._digests)
