"""Cancel a handler whose client left while relay was still waiting for the upstream.

A non-stream request (or a stream before its first chunk) spends most of its life
awaiting the upstream; a client that hangs up meanwhile would otherwise go unnoticed
until relay writes the answer, and be billed for it. ``CancelOnDisconnect`` runs the
handler as a task and, once the request body has been read, listens for
``http.disconnect``: if the client leaves before the handler returned its response,
the task is cancelled. The cancellation unwinds through the upstream call (its
connection is dropped, so the upstream stops) and through the handler's ticket, which
releases the hold and the concurrency slot and records the request (499).

There is one reader of the server's ``receive`` at a time: the handler while it reads
its body, then the watcher. After the body, the handler (and its response, e.g. an
``EventStreamResponse`` watching for the client leaving) sees the same disconnect
through ``receive``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CancelOnDisconnect", "Endpoint"]

# A handler's answer is any ASGI app: a Response, or relay's EventStreamResponse.
Endpoint = Callable[[Request], Awaitable[ASGIApp]]
_DISCONNECT: Message = {"type": "http.disconnect"}


class _Channel:
    """The server's ``receive``, read by the handler until the body ends, then watched."""

    __slots__ = ("_receive", "_body_done", "_left", "_watcher")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._body_done = asyncio.Event()
        self._left: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watcher: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        if self._body_done.is_set():
            await asyncio.shield(self._left)
            return _DISCONNECT
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._mark_left()
            self._body_done.set()
        elif not message.get("more_body", False):
            self._body_done.set()
        return message

    async def client_left(self) -> None:
        """Returns once the client disconnected after sending its whole body."""
        await self._body_done.wait()
        if self._watcher is None and not self._left.done():
            self._watcher = asyncio.ensure_future(self._watch())
        await asyncio.shield(self._left)

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._mark_left()
                return

    def _mark_left(self) -> None:
        if not self._left.done():
            self._left.set_result(None)

    async def close(self) -> None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if not self._left.done():
            self._left.cancel()


class CancelOnDisconnect:
    """An ASGI app running ``endpoint``, cancelled if its client leaves before the answer."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        channel = _Channel(receive)
        handler = asyncio.ensure_future(self._endpoint(Request(scope, channel.receive)))
        watcher = asyncio.ensure_future(channel.client_left())
        try:
            try:
                await asyncio.wait((handler, watcher), return_when=asyncio.FIRST_COMPLETED)
            finally:
                watcher.cancel()
                if not handler.done():
                    # The client left (or relay is shutting down): the handler's own
                    # ``except BaseException`` releases and records the request.
                    handler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await handler
            if handler.cancelled():
                return  # nobody is listening for an answer
            response = handler.result()
            await response(scope, channel.receive, send)
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await channel.close()
