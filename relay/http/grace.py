"""End requests that outlive shutdown's grace period with an answer, not a dropped socket.

On SIGTERM the server stops accepting and waits ``shutdown_grace_s`` for requests in
flight. Whatever still runs then is cut here, a moment before the server itself would
cancel it: the request's task is cancelled (its handler releases or settles the hold and
queues its usage row, marked 503 ``server_shutdown``), and this middleware finishes the
HTTP exchange properly:

* no answer started yet: an OpenAI-shaped 503 ``server_shutdown`` JSON error;
* a stream under way: a final ``data: {"error": ...}`` event and ``data: [DONE]``;
* a plain body under way: its end (the client sees a short body, as with any cut).

Per request this costs one set insertion and a send wrapper; nothing else runs until
``cut()``. The wrapper's ``ResponseProgress`` is left in the scope (``RESPONSE_PROGRESS``)
for ``relay.http.front``, whose error guard needs to know whether an answer started and
would otherwise wrap every ``send`` a second time. The request's task is left there too
(``REQUEST_TASK``): ``asyncio.current_task`` is a Python function on 3.11 (~1,500
instructions), and the layers inside, which run in this same task, need it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.errors import error_body

__all__ = ["REQUEST_TASK", "RESPONSE_PROGRESS", "GraceCut", "ResponseProgress"]

_MESSAGE = "relay is shutting down and could not finish this request in time; retry it"
_BODY = error_body(_MESSAGE, "api_error", "server_shutdown")
_STREAM_END = b"data: " + _BODY + b"\n\ndata: [DONE]\n\n"
# The scope key under which a request's ``ResponseProgress`` is found.
RESPONSE_PROGRESS = "relay.response_progress"
# The scope key under which the request's task is found (absent without a GraceCut). Only
# for layers awaited inline in that task: none between spawns a task for the app.
REQUEST_TASK = "relay.request_task"


class ResponseProgress:
    """How far one request's answer went, as seen by the ``send`` from ``tracking``."""

    __slots__ = ("headers", "finished")

    def __init__(self) -> None:
        # The answer's headers once it started (None: not yet). Whether it is a stream
        # is read from them only at a cut, not on every request.
        self.headers: Iterable[tuple[bytes, bytes]] | None = None
        self.finished = False

    @property
    def started(self) -> bool:
        return self.headers is not None

    @property
    def streaming(self) -> bool:
        return any(
            name.lower() == b"content-type" and value.startswith(b"text/event-stream")
            for name, value in self.headers or ()
        )

    def tracking(self, send: Send) -> Send:
        """``send``, noting each message here first."""

        def tracked_send(message: Message) -> Awaitable[None]:
            # Not a coroutine: it hands back the server's own ``send`` awaitable, one
            # coroutine fewer per message (a stream sends one per chunk).
            kind = message["type"]
            if kind == "http.response.start":
                self.headers = message.get("headers", ())
            elif kind == "http.response.body" and not message.get("more_body"):
                self.finished = True
            return send(message)

        return tracked_send


class GraceCut:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._running: set[asyncio.Task[object]] = set()
        self._cut = False

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def cut(self) -> int:
        """Cancel every HTTP request still running; returns how many were cut."""
        self._cut = True
        for task in self._running:
            task.cancel()
        return len(self._running)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        progress = ResponseProgress()
        scope[RESPONSE_PROGRESS] = progress
        scope[REQUEST_TASK] = task

        self._running.add(task)
        try:
            await self.app(scope, receive, progress.tracking(send))
        except asyncio.CancelledError:
            if not self._cut or progress.finished:
                raise
            task.uncancel()  # our own cut: answer properly instead of dropping the socket
            await _finish(progress, send)
        finally:
            self._running.discard(task)


async def _finish(progress: ResponseProgress, send: Send) -> None:
    if not progress.started:
        headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": _BODY, "more_body": False})
        return
    body = _STREAM_END if progress.streaming else b""
    await send({"type": "http.response.body", "body": body, "more_body": False})
