"""Key revocation, suspension, config reload and upstream key toggles, from one instance to
every other.

Each instance caches verified keys and account state in memory (as the embedded process
does). A change made through one instance is committed to PostgreSQL first, then announced
here: ``publish`` bumps a version counter and publishes the change on a channel in one Lua
script, so the counter and the message order agree. Every instance listens (``listen``)
and drops what the message names from its caches.

Pub/sub is at-most-once: a message is lost if an instance is reconnecting. So each
instance also compares the counter with the last version it applied (``check_version``,
from its heartbeat, a few times a second at most): a gap means it missed something, and
it drops everything (``Invalidation.kind == "all"``). A change thus reaches every live
instance within the heartbeat interval even when a message is lost, and within
milliseconds when none is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec

__all__ = ["Invalidation", "InvalidationBus"]

log = logging.getLogger(__name__)

InvalidationKind = Literal["key", "account", "config", "upstream", "all"]

_PUBLISH = """
local version = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], version .. ' ' .. ARGV[2])
return version
"""


class Invalidation(msgspec.Struct, frozen=True):
    """What changed: ``target`` is a key id or account id ("" for config and all)."""

    version: int
    kind: InvalidationKind
    target: str = ""
    origin: str = ""


class _Body(msgspec.Struct, frozen=True):
    kind: InvalidationKind
    target: str
    origin: str


Handler = Callable[[Invalidation], Awaitable[None]]


class InvalidationBus:
    """One instance's end of the channel; ``on_invalidate`` runs for each change seen."""

    def __init__(
        self,
        client: Any,
        instance_id: str,
        on_invalidate: Handler,
        *,
        prefix: str = "relay:",
    ) -> None:
        self._client = client
        self.instance_id = instance_id
        self._on_invalidate = on_invalidate
        self._channel = f"{prefix}invalidate"
        self._version_key = f"{prefix}invalidate:version"
        self._publish = client.register_script(_PUBLISH)
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(_Body)
        self._seen = 0
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def seen_version(self) -> int:
        return self._seen

    async def publish(self, kind: InvalidationKind, target: str = "") -> int:
        """Announce a committed change; returns its version."""
        body = self._encoder.encode(_Body(kind=kind, target=target, origin=self.instance_id))
        version = await self._publish(keys=[self._version_key], args=[self._channel, body])
        return int(version)

    async def start(self) -> None:
        """Subscribe, then take the current version as seen (changes before start are
        already in the database this instance loads from)."""
        if self._task is not None:
            raise RuntimeError("the invalidation listener is already running")
        self._seen = int(await self._client.get(self._version_key) or 0)
        self._task = asyncio.create_task(self._listen(), name="relay-invalidation")
        await self._ready.wait()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check_version(self) -> bool:
        """The backstop for lost messages: True (and everything dropped) on a gap."""
        current = int(await self._client.get(self._version_key) or 0)
        if current <= self._seen:
            return False
        self._seen = current
        await self._on_invalidate(Invalidation(version=current, kind="all"))
        return True

    async def _listen(self) -> None:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            self._ready.set()
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                await self._apply(message["data"])
        finally:
            self._ready.set()
            await pubsub.aclose()

    async def _apply(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        head, _, payload = raw.partition(b" ")
        try:
            version = int(head)
            body = self._decoder.decode(payload)
        except (ValueError, msgspec.DecodeError):
            # Named reason: a foreign publisher on our channel must not stop the listener;
            # the version check still catches up with whatever it meant.
            log.warning("invalidation: ignored a malformed message")
            return
        if version > self._seen + 1:
            # Messages between were lost: drop everything rather than trust partial news.
            self._seen = version
            await self._on_invalidate(Invalidation(version=version, kind="all"))
            return
        self._seen = max(self._seen, version)
        await self._on_invalidate(
            Invalidation(version=version, kind=body.kind, target=body.target, origin=body.origin)
        )
