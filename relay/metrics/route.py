"""``GET /metrics``: Prometheus text for the admin token or the metrics token.

A second, token-less listener (``[metrics] listen``) serves ``metrics_only_app``: an
ASGI app with just this route, sharing the main app's state.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from relay.errors import AuthError, NotFound, RelayError
from relay.http.responses import error_response
from relay.identity.auth import bearer_token
from relay.state import RelayState, relay_state

__all__ = ["metrics_routes", "open_metrics", "render_metrics"]


def render_metrics(state: RelayState) -> Response:
    body = generate_latest(state.metrics.registry)
    return Response(body, headers={"content-type": CONTENT_TYPE_LATEST})


def _check_token(request: Request, state: RelayState) -> None:
    if not state.config.metrics.enabled:
        raise NotFound("No route for GET /metrics")
    token = bearer_token(request.headers)
    if token is None:
        raise AuthError("Missing token: send 'Authorization: Bearer <admin or metrics token>'")
    if state.auth.is_admin_token(token):
        return
    if state.config.metrics.is_token(token):
        return
    raise AuthError("Invalid token for /metrics")


async def metrics(request: Request) -> Response:
    state = relay_state(request)
    try:
        _check_token(request, state)
    except RelayError as exc:
        return error_response(exc)
    return render_metrics(state)


async def open_metrics(request: Request) -> Response:
    """The second listener's route: no token (its bind address is the access control)."""
    return render_metrics(relay_state(request))


def metrics_routes() -> list[BaseRoute]:
    return [Route("/metrics", metrics, methods=["GET"])]
