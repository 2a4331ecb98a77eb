"""``GET /v1/models`` and ``GET /v1/models/{id}`` (with prices and context window), and
``GET /healthz``.

A model reads as both SDKs expect: OpenAI's ``id``/``object``/``created``/``owned_by`` and
Anthropic's ``type``/``display_name``/``created_at`` (RFC 3339), and the list carries
Anthropic's paging fields (``has_more``, ``first_id``, ``last_id``) beside OpenAI's ``object``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from relay.errors import NotFound, RelayError
from relay.http.responses import error_response, json_response
from relay.money.pricing import pricing_view
from relay.state import relay_state
from relay.upstream.routing import Model

__all__ = ["healthz", "list_models", "show_model"]

# /v1/models is a fixed list per process; "created" is when relay started serving it.


def _model_view(model: Model, created: int) -> dict[str, Any]:
    first = model.routes[0].provider.name
    return {
        "id": model.name,
        "object": "model",
        "created": created,
        "type": "model",
        "display_name": model.name,
        "created_at": datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z"),
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
        await state.auth.authenticate(request.headers, allow_x_api_key=True)
    except RelayError as exc:
        return error_response(exc)
    data = [_model_view(model, state.started_at) for model in state.router.models.values()]
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return json_response(
        {"object": "list", "data": data, "has_more": False, "first_id": first, "last_id": last}
    )


async def show_model(request: Request) -> Response:
    state = relay_state(request)
    try:
        await state.auth.authenticate(request.headers, allow_x_api_key=True)
        name = request.path_params["model_id"]
        model = state.router.models.get(name)
        if model is None:
            raise NotFound(f"The model {name!r} does not exist", code="model_not_found")
    except RelayError as exc:
        return error_response(exc)
    return json_response(_model_view(model, state.started_at))


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
