"""Build the ASGI app: routes, error handlers and the lifespan that owns resources.

``create_app`` does no I/O; the lifespan (``relay.lifespan``) opens the database and
upstream clients and closes them (draining queued writes) on shutdown. The app is plain
ASGI, so any server can run it; ``relay serve`` runs it under hypercorn or uvicorn
(``relay.server``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from relay.admin import admin_routes
from relay.admin.cluster import ClusterRouteGuard, cluster_routes
from relay.admin.payments import payment_routes
from relay.api import data_plane_routes
from relay.config import Config
from relay.console import console_routes
from relay.errors import InvalidRequest, NotFound, RelayError
from relay.http.admin_throttle import AdminTokenThrottle
from relay.http.framing import RefuseAmbiguousFraming
from relay.http.front import ExceptionHandler, Front, FrontedStarlette, hot_routes
from relay.http.responses import error_response, unexpected_error_response
from relay.identity.keys import SecretHasher
from relay.lifespan import LifespanSeams, relay_lifespan
from relay.metrics.route import metrics_routes
from relay.upstream.providers import ClientFactory, default_client_factory

__all__ = ["create_app"]


def _handle_relay_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RelayError)
    return error_response(exc)


def _handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound(f"No route for {request.method} {request.url.path}"))
    if exc.status_code == 405:
        error = InvalidRequest(f"Method {request.method} is not allowed here")
        error.status = 405
        return error_response(error)
    return error_response(InvalidRequest(str(exc.detail)))


def _handle_unexpected(request: Request, exc: Exception) -> Response:
    return unexpected_error_response(exc)


def create_app(
    config: Config,
    *,
    client_factory: ClientFactory | None = None,
    hasher: SecretHasher | None = None,
    stopping: Callable[[], bool] = lambda: False,
    stripe_transport: httpx.AsyncBaseTransport | None = None,
    wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
) -> Starlette:
    """The relay ASGI app; ``client_factory``, ``hasher`` and ``stripe_transport`` are
    seams for tests (upstreams, argon2 cost, a fake Stripe).

    ``stopping`` tells whether the server is shutting down (streams it cuts are then
    recorded as ``server_shutdown``, not as the client's leaving).

    ``wall_clock_ms`` is the wallet's clock (ledger times, budget periods): tests inject one
    to cross a period boundary.
    """
    seams = LifespanSeams(
        client_factory=client_factory or default_client_factory,
        hasher=hasher,
        stopping=stopping,
        stripe_transport=stripe_transport,
        wall_clock_ms=wall_clock_ms,
    )

    data_plane = data_plane_routes()
    handlers: dict[type[Exception], ExceptionHandler] = {
        RelayError: _handle_relay_error,
        HTTPException: _handle_http_exception,
        Exception: _handle_unexpected,
    }

    def middleware(app: ASGIApp) -> ASGIApp:
        """The request middleware, outermost first, on every route (relay.http.front)."""
        if config.cluster_mode:
            app = ClusterRouteGuard(app)
        return RefuseAmbiguousFraming(AdminTokenThrottle(app))

    def front(stack: ASGIApp) -> ASGIApp:
        return Front(stack, hot_routes(data_plane), middleware, handlers)

    return FrontedStarlette(
        front=front,
        routes=(cluster_routes() if config.cluster_mode else [])
        + data_plane
        + metrics_routes()
        + admin_routes()
        + payment_routes()
        + console_routes(),
        lifespan=lambda app: relay_lifespan(config, seams),
        exception_handlers=dict(handlers),
    )
