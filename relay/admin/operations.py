"""Admin handlers for live operations: ``POST /admin/reload`` and the upstream key pools.

Pool keys are named by provider and position (``#1`` is the first of ``api_keys``),
never by value; a toggle's audit row also names the key by its fingerprint
(``relay.upstream.fingerprint``), which cluster instances replay by. Enabling a key clears
a rejection or a cool-down; disabling one takes it out of rotation until it is enabled
again, across reloads that keep the key (matched by value; a key removed from
``api_keys`` takes its state with it).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from relay.admin.common import ADMIN_ACTOR, admin_route
from relay.admin.reload import ConfigReloader, ReloadRefused
from relay.errors import InvalidRequest, NotFound
from relay.http.responses import json_response
from relay.state import RelayState
from relay.upstream.keypool import UpstreamKey, operator_action

__all__ = ["disable_upstream", "enable_upstream", "operation_routes", "reload_config"]


def _reloader(request: Request) -> ConfigReloader:
    reloader: ConfigReloader = request.scope["state"]["reloader"]
    return reloader


@admin_route
async def reload_config(request: Request, state: RelayState) -> Response:
    try:
        outcome = await _reloader(request).reload()
    except ReloadRefused as exc:
        raise InvalidRequest(f"reload refused, the running config stays: {exc}") from None
    await state.store.record_action(
        actor=ADMIN_ACTOR, action="config.reload", target=None, detail=outcome
    )
    return json_response(outcome)


def _upstream_views(state: RelayState) -> list[dict[str, Any]]:
    return [
        {"provider": name, "position": key.index, **view}
        for name, provider in state.providers.items()
        for key, view in zip(provider.pool.keys, provider.pool.health(), strict=True)
    ]


@admin_route
async def list_upstreams(request: Request, state: RelayState) -> Response:
    return json_response({"data": _upstream_views(state)})


def _pool_key(request: Request, state: RelayState) -> UpstreamKey:
    name = request.path_params["provider"]
    provider = state.providers.get(name)
    if provider is None:
        raise NotFound(f"No provider {name!r}", code="provider_not_found")
    position = request.path_params["position"]
    keys = provider.pool.keys
    if not position.isdigit() or not 1 <= int(position) <= len(keys):
        raise NotFound(
            f"provider {name!r} has keys #1..#{len(keys)}, not #{position}", code="key_not_found"
        )
    return keys[int(position) - 1]


async def _set_key(request: Request, state: RelayState, *, enable: bool) -> Response:
    key = _pool_key(request, state)
    provider = request.path_params["provider"]
    # Recorded first: a change whose audit row failed is not made (in cluster mode the
    # row is also what every other instance replays).
    await state.store.record_action(
        actor=ADMIN_ACTOR,
        action=operator_action(enable=enable),
        target=f"{provider}#{key.index}",
        # The fingerprint is what cluster instances replay by (a reload may reorder the
        # keys); the position is for the humans reading the chain.
        detail={
            "provider": provider,
            "position": key.index,
            "fingerprint": state.upstream_fingerprints.of(key.secret),
        },
    )
    key.set_by_operator(enable=enable)
    view = next(
        v
        for v in _upstream_views(state)
        if v["provider"] == provider and v["position"] == key.index
    )
    return json_response(view)


@admin_route
async def enable_upstream(request: Request, state: RelayState) -> Response:
    return await _set_key(request, state, enable=True)


@admin_route
async def disable_upstream(request: Request, state: RelayState) -> Response:
    return await _set_key(request, state, enable=False)


def operation_routes() -> list[BaseRoute]:
    keys = "/admin/upstreams/{provider}/keys/{position}"
    return [
        Route("/admin/reload", reload_config, methods=["POST"]),
        Route("/admin/upstreams", list_upstreams, methods=["GET"]),
        Route(f"{keys}/enable", enable_upstream, methods=["POST"]),
        Route(f"{keys}/disable", disable_upstream, methods=["POST"]),
    ]
