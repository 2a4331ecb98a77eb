"""``GET /v1/models`` (with prices and context window) and ``GET /healthz``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from relay.errors import RelayError
from relay.http.responses import error_response, json_response
from relay.money.pricing import pricing_view
from relay.state import relay_state
from relay.upstream.routing import Model

__all__ = ["healthz", "list_models"]

# /v1/models is a fixed list per process; "created" is when relay started serving it.


def _model_view(model: Model, created: int) -> dict[str, Any]:
    first = model.routes[0].provider.name
    return {
        "id": model.name,
        "object": "model",
        "created": created,
        "owned_by": model.config.owned_by or first,
        "kind": model.config.kind,
        "context_window": model.config.context_window,
        "max_output_tokens": model.config.max_output_tokens,
        "pricing": pricing_view(model.price),
        "available": model.available,
    }


async def list_models(request: Request) -> Response:
    state = relay_state(request)
    try:
        await state.auth.authenticate(request.headers)
    except RelayError as exc:
        return error_response(exc)
    data = [_model_view(model, state.started_at) for model in state.router.models.values()]
    return json_response({"object": "list", "data": data})


async def healthz(request: Request) -> Response:
    """Liveness for anyone (503 with the reason while storage cannot commit); upstream key
    health only for the operator."""
    state = relay_state(request)
    problem = state.storage.problem()
    if problem is not None:  # fail closed: a load balancer sends the traffic elsewhere
        body = {"status": "unavailable", "reason": f"storage: {problem}"}
        return json_response(body, status=503, headers={"retry-after": "1"})
    try:
        principal = await state.auth.authenticate(request.headers)
    except RelayError:
        principal = None
    if principal is None or principal.kind != "admin":
        return json_response({"status": "ok"})
    providers = {
        name: {"enabled": provider.enabled, "keys": provider.pool.health()}
        for name, provider in state.providers.items()
    }
    return json_response({"status": "ok", "providers": providers})
