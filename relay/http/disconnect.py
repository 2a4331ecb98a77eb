"""Cancel a request whose client left while relay was still waiting or streaming.

A non-stream request (or a stream before its first chunk) spends most of its life
awaiting the upstream; a client that hangs up meanwhile would otherwise go unnoticed
until relay writes the answer, and be billed for it. ``CancelOnDisconnect`` runs the
handler and, once the request body has been read, listens for ``http.disconnect``: if
the client leaves before the request is over, the request's task is cancelled (as
``asyncio.timeout`` does it, then ``uncancel``-ed). The cancellation unwinds through the
upstream call (its connection is dropped, so the upstream stops) and through the
handler's ticket, which releases the hold and the concurrency slot and records the
request (499); or, during a streamed answer (``relay.http.sse``), through the stream's
body, which closes the upstream and settles what was delivered.

The handler and its answer run inline in the server's task, so a request that never
waits (a 402, a 429) costs no extra scheduling, and a stream costs one task: the
listener's, started only when the body has been read. There is one reader of the
server's ``receive`` at a time: the handler while it reads its body, then the listener.
After a plain answer the listener ends on the ``http.disconnect`` the server sends once a
response is complete; it is cancelled only when no whole answer went out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.http.grace import REQUEST_TASK

__all__ = ["CancelOnDisconnect", "Endpoint"]

# A handler's answer is any ASGI app: a Response, or relay's EventStreamResponse.
Endpoint = Callable[[Request], Awaitable[ASGIApp]]
_DISCONNECT: Message = {"type": "http.disconnect"}


class _Listener:
    """The server's ``receive``, read by the handler until the body ends, then watched."""

    __slots__ = (
        "_receive",
        "_task",
        "_gone",
        "_closed",
        "_left",
        "_watcher",
        "_closing_soon",
        "handling",
        "cancelled_it",
        "answered",
    )

    def __init__(self, receive: Receive, task: asyncio.Task[object]) -> None:
        self._receive = receive
        self._task = task
        self._gone = False  # the client's ``http.disconnect`` was read
        self._closed = False
        # Made only when a reader must wait for the disconnect (rarely: Starlette's own
        # responses never read ``receive``), not for every request.
        self._left: asyncio.Future[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closing_soon = False
        # True until the request is over: only then does a disconnect cancel it.
        self.handling = True
        self.cancelled_it = False
        # A whole answer went out: the server's ``http.disconnect`` ends the watcher.
        self.answered = False

    async def receive(self) -> Message:
        if self._gone:
            return _DISCONNECT
        if self._watcher is not None:
            if self._left is None:
                self._left = asyncio.get_running_loop().create_future()
                if self._closed:  # as if made before ``close``, which cancels it
                    self._left.cancel()
            await asyncio.shield(self._left)
            return _DISCONNECT
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._leave()
        elif not message.get("more_body", False):
            # ``create_task``, not ``ensure_future``: that one first asks ``isfuture`` of the
            # coroutine, whose failed ``hasattr`` builds an AttributeError every request.
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return message

    async def _watch(self) -> None:
        try:
            while (await self._receive())["type"] != "http.disconnect":
                pass
        except asyncio.CancelledError:
            # Only ``close`` cancels the watcher, and nothing awaits it: ending quietly
            # keeps no CancelledError on the task, whose traceback would hold this frame,
            # so this listener, so the task again. That cycle, one per request, was left
            # to the cyclic GC, and under held load it piled up in the older generations.
            return
        self._leave()
        if self.handling:
            self.cancelled_it = True
            self._task.cancel()

    def _leave(self) -> None:
        self._gone = True
        if self._left is not None and not self._left.done():
            self._left.set_result(None)

    def close_soon(self) -> None:
        """After a streamed answer: stop watching on the loop's next turn, not now.

        The server queues ``http.disconnect`` as the answer's last message goes out (hypercorn
        and uvicorn both do), which has already scheduled the watcher to wake: run before
        ``close``, it reads that message and ends by itself, where cancelling it woken makes
        ``asyncio.Queue.get``'s clean-up raise a ValueError. Scheduling ``close`` instead of
        awaiting the watcher also spares the request's task a suspension. A watcher not
        woken (a server that sends nothing more) is cancelled then, as ``close`` always did.
        """
        self.handling = False
        self._closing_soon = True
        asyncio.get_running_loop().call_soon(self._close)

    def close(self) -> None:
        if not self._closing_soon:
            self._close()

    def _close(self) -> None:
        # Not awaited: the watcher only waits on ``receive``, and a cancelled task that
        # ends so is not an error anyone must retrieve. After a whole answer it is left
        # to end by itself: the server has queued (or soon queues) its disconnect.
        self._closed = True
        if self._watcher is not None and not self.answered:
            self._watcher.cancel()
        if self._left is not None and not self._left.done():
            self._left.cancel()


class CancelOnDisconnect:
    """An ASGI app running ``endpoint``, cancelled if its client leaves before it is over."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task: asyncio.Task[object] | None = scope.get(REQUEST_TASK)
        if task is None:  # served without GraceCut (the test transports)
            task = asyncio.current_task()
            assert task is not None
            scope[REQUEST_TASK] = task
        listener = _Listener(receive, task)
        try:
            response = await self._endpoint(Request(scope, listener.receive))
            if _never_receives(response):
                # Once a plain answer (it never reads ``receive``) is out, the server sends
                # ``http.disconnect``, as ASGI servers do when a response is complete
                # (hypercorn queues it as the last body goes, uvicorn wakes a waiting
                # ``receive``), and the watcher ends by itself with the handler done.
                # Cancelling it instead threw a CancelledError through the server's queue
                # (and, once the disconnect had woken it, made ``asyncio.Queue.get``'s
                # clean-up raise a ValueError); stopping it before the answer cost the
                # handler a turn of the loop.
                listener.handling = False
                await response(scope, listener.receive, send)
                listener.answered = True
            else:
                # A streamed answer runs inline, and the client leaving cancels it as it
                # would the handler: its body closes the upstream and settles.
                await response(scope, listener.receive, send)
                listener.close_soon()
        except asyncio.CancelledError:
            # Ours (the client left): the handler or the stream's body has released or
            # settled and recorded the request, and nobody is listening for the rest.
            # Anyone else's: keep cancelling.
            if not listener.cancelled_it or task.uncancel() > 0:
                raise
        finally:
            listener.close()


def _never_receives(response: ASGIApp) -> bool:
    """A plain Starlette ``Response`` sends its body and never reads ``receive``."""
    return isinstance(response, Response) and type(response).__call__ is Response.__call__
