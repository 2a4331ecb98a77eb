"""A streaming ASGI response that starts its body before its head and always closes it.

The body runs inline, in the request's own task: no task of its own and no watcher beside
it. Noticing a client that leaves while the body waits on a slow upstream is the job of
``relay.http.disconnect.CancelOnDisconnect``, which every route returning this response
runs under: it cancels the request's task, so the ``CancelledError`` lands in the body's
pending await (or in a ``send``, after which the body is closed), and the body's
``finally`` closes the upstream and settles. Starlette's ``StreamingResponse`` would
instead spend a task group and a watcher task per stream on the same job.

The body is started before the response head is sent, so that ``finally`` is always
armed: a generator closed before its first step never runs it.
"""

from __future__ import annotations

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
        # One coroutine for the whole response: every time the request's task resumes
        # (twice a chunk), each coroutine between it and the body's await is stepped.
        body = self._body
        try:
            # The body's first step comes before anything else is awaited: closing a
            # generator that never ran skips its ``finally`` (its cleanup and settlement)
            # altogether, since ``aclose`` on an unstarted generator is a no-op.
            first = await anext(body, None)
            await send({"type": "http.response.start", "status": 200, "headers": self._headers})
            if first is not None:
                await send({"type": "http.response.body", "body": first, "more_body": True})
                async for chunk in body:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            try:
                close = getattr(body, "aclose", None)
                if close is not None:
                    await close()
            finally:
                if self._on_close is not None:
                    await self._on_close()
