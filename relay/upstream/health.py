"""Optional active health checks of each pool key (``health_check_interval_s``).

Every interval, each key of a provider that asks for checks gets one ``GET`` of
``health_check_path`` (``/models`` by default: cheap, and it needs a valid key). A 401/403
takes the key out of rotation like a rejected request would; a 429 cools it down; a 2xx
puts back a key the upstream had rejected (the owner fixed it upstream), so nobody has to
restart or run ``relay upstream enable``. A key the operator disabled stays disabled.
Network errors change nothing: a request would fail over anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from relay.upstream.client import UpstreamFailure
from relay.upstream.keypool import UpstreamKey
from relay.upstream.providers import Provider

__all__ = ["HealthChecker", "REJECTED_PREFIX"]

log = logging.getLogger(__name__)
REJECTED_PREFIX = "upstream answered"  # KeyPool.disable's reason; the operator's differs
_TICK_S = 1.0


class HealthChecker:
    def __init__(
        self,
        providers: Callable[[], dict[str, Provider]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._providers = providers  # read each round: a reload may replace them
        self._clock = clock
        self._due: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="relay-health")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self.check_due()
            await asyncio.sleep(_TICK_S)

    async def check_due(self) -> int:
        """Check every provider whose interval has passed; returns how many keys were checked."""
        now = self._clock()
        checked = 0
        for name, provider in self._providers().items():
            interval = provider.config.health_check_interval_s
            if interval is None or provider.kind == "mock":
                continue
            if now < self._due.get(name, 0.0):
                continue
            self._due[name] = now + interval
            for key in provider.pool.keys:
                await check_key(provider, key)
                checked += 1
        return checked


async def check_key(provider: Provider, key: UpstreamKey) -> int | None:
    """One probe of one key; its HTTP status (None when the upstream was unreachable)."""
    reason = key.disabled_reason
    if reason is not None and not reason.startswith(REJECTED_PREFIX):
        return None  # the operator's decision, not the upstream's
    url = provider.url(provider.config.health_check_path)
    try:
        response = await provider.client.send(
            "GET", url, headers=provider.headers(key), body=None, timeouts=provider.timeouts
        )
    except UpstreamFailure as exc:
        log.warning("health check of %s key #%d failed: %s", provider.name, key.index, exc)
        return None
    status = response.status
    await response.aclose()
    pool = provider.pool
    if status in (401, 403):
        pool.disable(key, status)
    elif status == 429:
        pool.cool_down(key, response.headers.get("retry-after"))
    elif 200 <= status < 300 and reason is not None:
        key.disabled_reason = None
        log.warning("provider %s key #%d answers again; back in rotation", provider.name, key.index)
    return status
