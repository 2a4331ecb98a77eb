"""One-time messages carried across a POST-redirect-GET, kept on the server.

A page that changes something answers with a redirect (so a reload never repeats the
change); what the next page must show once — a new key's secret, a notice naming the
amount credited — waits here under a random token that only the redirect's URL holds.
The secret never travels in a URL, a cookie or a log line. A flash is bound to the
session that made it, read at most once, and forgotten after ``TTL_MS``; the store is
bounded, so abandoned flashes cannot grow it.

Pages reach the store through ``FlashRecords``: ``FlashStore`` (this process) embedded, and
in cluster mode ``relay.console.redis_flash.RedisFlashStore``, so a redirect that lands on
another instance still finds its flash.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

__all__ = ["FLASH_PARAM", "FlashRecords", "FlashStore", "TTL_MS"]

FLASH_PARAM = "flash"
TTL_MS = 10 * 60_000
_MAX_ITEMS = 10_000
Clock = Callable[[], int]


class FlashRecords(Protocol):
    async def put(self, owner: str, values: dict[str, str]) -> str:
        """Keep ``values`` for ``owner`` (a session id); returns the token for the URL."""
        ...

    async def take(self, owner: str, token: str) -> dict[str, str] | None:
        """The values once, to their owner only; None if gone, expired or someone else's."""
        ...


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


class FlashStore:
    """Per app (the console's lifetime); never module state."""

    def __init__(self, *, clock: Clock = _now_ms, max_items: int = _MAX_ITEMS) -> None:
        self._clock = clock
        self._max_items = max_items
        self._items: OrderedDict[str, tuple[str, int, dict[str, str]]] = OrderedDict()

    async def put(self, owner: str, values: dict[str, str]) -> str:
        """Keep ``values`` for ``owner`` (a session id); returns the token for the URL."""
        self._expire()
        while len(self._items) >= self._max_items:
            self._items.popitem(last=False)
        token = secrets.token_urlsafe(18)
        self._items[token] = (owner, self._clock() + TTL_MS, dict(values))
        return token

    async def take(self, owner: str, token: str) -> dict[str, str] | None:
        """The values once, to their owner only; None if gone, expired or someone else's."""
        self._expire()
        found = self._items.get(token)
        if found is None or not secrets.compare_digest(found[0], owner):
            return None
        del self._items[token]
        return found[2]

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self) -> None:
        now = self._clock()
        while self._items:
            token, (_, expires_at, _) = next(iter(self._items.items()))
            if expires_at > now:
                return
            del self._items[token]
