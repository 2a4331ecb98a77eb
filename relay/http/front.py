"""relay's ASGI entry: the billable data-plane routes reach their handler directly.

Starlette's stack costs every request a 500 guard, the user middleware, an exception
guard and the router, each wrapping ``send`` again (issue 19 measured 35 to 50 µs per
request). ``Front`` does the same jobs once, as plain ASGI:

    Front (one error guard: relay's handlers, the JSON 500)
      → the request middleware (RefuseAmbiguousFraming, AdminTokenThrottle, in cluster
        mode ClusterRouteGuard), composed by ``relay.app``
        → POST to a billable route's exact path: its endpoint (``CancelOnDisconnect``)
        → anything else: Starlette's own stack, unchanged (routing, 404/405, HEAD)

The middleware therefore run once per request whichever way it goes, in the order they
always had; every other route, and every other method on a hot path (a GET answers 405),
is Starlette's as before. The error guard answers as Starlette did: a handled exception
type gets its handler's response, anything else relay's JSON 500, which is then
re-raised for the server to log; once a response has started nothing more is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.http.disconnect import CancelOnDisconnect

__all__ = ["ExceptionHandler", "Front", "FrontedStarlette", "hot_routes"]

ExceptionHandler = Callable[[Request, Exception], Response]


def hot_routes(routes: Iterable[BaseRoute]) -> dict[str, ASGIApp]:
    """Path → endpoint of the POST-only billable routes without path parameters.

    Only ``CancelOnDisconnect`` endpoints: they are complete ASGI apps that need nothing
    Starlette's router or exception middleware put in the scope.
    """
    return {
        route.path: route.app
        for route in routes
        if isinstance(route, Route)
        and route.methods == {"POST"}
        and "{" not in route.path
        and isinstance(route.app, CancelOnDisconnect)
    }


class Front:
    """The error guard, the request middleware, then the hot endpoint or Starlette."""

    def __init__(
        self,
        starlette: ASGIApp,
        hot: Mapping[str, ASGIApp],
        middleware: Callable[[ASGIApp], ASGIApp],
        handlers: Mapping[type[Exception], ExceptionHandler],
    ) -> None:
        self._starlette = starlette
        self._hot = dict(hot)
        self._chain = middleware(self._dispatch)
        self._handlers = dict(handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the lifespan (and anything else) is Starlette's
            await self._starlette(scope, receive, send)
            return
        started = False

        def sending(message: Message) -> Awaitable[None]:
            # Not a coroutine: it hands back the server's own ``send`` awaitable, one
            # coroutine fewer per message (a stream sends one per chunk).
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            return send(message)

        try:
            await self._chain(scope, receive, sending)
        except Exception as exc:
            handler, handled = self._handler_for(exc)
            if started or handler is None:
                raise
            await handler(Request(scope), exc)(scope, receive, send)
            if not handled:  # relay's 500, and the server logs what caused it
                raise

    def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: it hands back the chosen app's own, so that no frame of its
        # own sits in the request's await chain (stepped on every resume of the task).
        endpoint = (
            self._hot.get(scope["path"])
            if scope["method"] == "POST" and not scope.get("root_path")
            else None
        )
        if endpoint is None:
            return self._starlette(scope, receive, send)
        return endpoint(scope, receive, send)

    def _handler_for(self, exc: Exception) -> tuple[ExceptionHandler | None, bool]:
        """The handler Starlette would pick, and whether it handles (not the catch-all)."""
        for cls in type(exc).__mro__:
            if cls is Exception:
                break
            handler = self._handlers.get(cls)
            if handler is not None:
                return handler, True
        return self._handlers.get(Exception), False


class FrontedStarlette(Starlette):
    """Starlette whose middleware stack sits behind ``front(stack)`` (built lazily, once)."""

    def __init__(self, *, front: Callable[[ASGIApp], ASGIApp], **kwargs: object) -> None:
        self._front = front
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def build_middleware_stack(self) -> ASGIApp:
        return self._front(super().build_middleware_stack())
