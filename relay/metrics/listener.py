"""The optional second listener (``[metrics] listen``): ``GET /metrics`` without a token.

``StateTap`` wraps the main app and keeps a reference to its lifespan state, so
``MetricsOnlyApp`` (served by a second server on another port) reads the very same
``RelayState`` without running a lifespan of its own. Everything but ``GET /metrics``
answers 404 there: the port exposes nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.metrics.route import render_metrics

__all__ = ["MetricsOnlyApp", "StateTap"]


class StateTap:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] | None = None

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: the app's own awaitable, no frame of this one in the request's
        # await chain. (Never the outermost app: servers tell ASGI 3 by a coroutine.)
        if scope["type"] == "lifespan":
            self.state = scope.get("state")
        return self.app(scope, receive, send)


class MetricsOnlyApp:
    def __init__(self, tap: StateTap) -> None:
        self._tap = tap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        state = (self._tap.state or {}).get("relay")
        response: Response
        if state is None:
            response = PlainTextResponse("relay is starting", status_code=503)
        elif scope["path"] != "/metrics" or scope["method"] not in ("GET", "HEAD"):
            response = PlainTextResponse("not found", status_code=404)
        else:
            response = render_metrics(state)
        await response(scope, receive, send)


async def _answer_lifespan(receive: Receive, send: Send) -> None:
    """Nothing to open or close: the main app's lifespan owns every resource."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
