"""A streaming ASGI response that notices a client leaving even while it waits.

Starlette's ``StreamingResponse`` only learns of a disconnect on some servers when its
next write fails; a stream waiting on a slow upstream would then keep the upstream
busy. This response watches ``http.disconnect`` alongside the body and cancels the
body's generator at once, so its ``finally`` closes the upstream and settles. The body is
started before the response head is sent, so that ``finally`` is always armed: a generator
cancelled before its first step never runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from starlette.types import Receive, Scope, Send

__all__ = ["EventStreamResponse"]

_EVENT_STREAM = "text/event-stream; charset=utf-8"
_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class EventStreamResponse:
    """``on_close`` runs once the response is over, whatever ended it: the owner's last
    chance to end what the body would have (e.g. a body cancelled before it ever ran).
    ``media_type`` serves other streamed bodies the same way (speech audio)."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        headers: Mapping[str, str],
        *,
        on_close: Callable[[], Awaitable[None]] | None = None,
        media_type: str = _EVENT_STREAM,
    ):
        self._body = body
        self._headers = [(b"content-type", media_type.encode("latin-1")), *_HEADERS]
        self._headers += [(k.encode(), v.encode()) for k, v in headers.items()]
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()  # create_task: see relay.http.disconnect
        pump = loop.create_task(self._pump(send))
        watcher = loop.create_task(_wait_for_disconnect(receive))
        try:
            await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            try:
                for task in (watcher, pump):
                    if not task.done():
                        task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            finally:
                if self._on_close is not None:
                    await self._on_close()

    async def _pump(self, send: Send) -> None:
        try:
            # Start the body before anything can be awaited: cancelling a task before its
            # generator ever ran would skip the generator's ``finally`` (its cleanup and
            # settlement) altogether, since ``aclose`` on an unstarted generator is a no-op.
            first = await anext(self._body, None)
            await send({"type": "http.response.start", "status": 200, "headers": self._headers})
            if first is not None:
                await send({"type": "http.response.body", "body": first, "more_body": True})
                async for chunk in self._body:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self._close_body()

    async def _close_body(self) -> None:
        close = getattr(self._body, "aclose", None)
        if close is not None:
            await close()


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
