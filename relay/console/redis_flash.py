"""The console's one-time flashes in the cluster's Redis (``FlashRecords``).

Behind a load balancer the redirect after a change may land on another instance than the
one that made the flash, so the flash must be where every instance reads. A flash is one
Redis string whose key is a SHA-256 of the owner's session id and the token: only the
owning session can name it (another session's read finds nothing and deletes nothing, as
embedded). It is written with a TTL of ``TTL_MS`` and read with ``GETDEL``, so a secret in
it is gone from Redis once shown, or at the latest when the TTL ends, read or not.

A Redis failure raises ``StorageUnavailable``; ``Ctx.redirect_flash`` decides what the user
is told (a key's secret that could not be kept is never lost silently).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import msgspec

from relay.cluster.redis_errors import redis_answers
from relay.console.flash import TTL_MS

__all__ = ["RedisFlashStore"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, str]).decode


class RedisFlashStore:
    def __init__(self, client: Any, *, prefix: str = "relay:", ttl_ms: int = TTL_MS) -> None:
        self._client = client
        self._prefix = f"{prefix}flash:"
        self._ttl_ms = ttl_ms

    def _key(self, owner: str, token: str) -> str:
        digest = hashlib.sha256(f"{owner}\x00{token}".encode()).hexdigest()
        return self._prefix + digest

    async def put(self, owner: str, values: dict[str, str]) -> str:
        token = secrets.token_urlsafe(18)
        with redis_answers():
            await self._client.set(self._key(owner, token), _encode(values), px=self._ttl_ms)
        return token

    async def take(self, owner: str, token: str) -> dict[str, str] | None:
        with redis_answers():
            found = await self._client.getdel(self._key(owner, token))
        return None if found is None else _decode(found)
