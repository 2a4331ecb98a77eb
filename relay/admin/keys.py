"""Admin handlers for API keys."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from relay.admin.common import (
    ADMIN_ACTOR,
    admin_route,
    created,
    decode_body,
    key_view,
    parse_expiry,
    parse_usd,
)
from relay.errors import InvalidRequest
from relay.http.responses import json_response
from relay.identity.accounts import ENDPOINT_KINDS, ApiKey
from relay.money.pricing import parse_multiplier
from relay.state import RelayState

__all__ = ["create_key", "list_keys", "revoke_key", "show_key", "update_key"]

# Limits (rpm, tpm, concurrency) well inside SQLite's 64-bit integers.
Count = Annotated[int, Meta(ge=0, le=2**31 - 1)]
Label = Annotated[str, Meta(min_length=1, max_length=100)]


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Label
    models: list[str] = []
    endpoints: list[str] = []
    spend_cap_usd: str = "0"
    rpm: Count = 0
    tpm: Count = 0
    concurrency: Annotated[int, Meta(ge=1, le=2**31 - 1)] = 100
    expires: str | None = None
    price_multiplier: str = "1"


class KeyChanges(msgspec.Struct, forbid_unknown_fields=True):
    name: Label | UnsetType = UNSET
    models: list[str] | UnsetType = UNSET
    endpoints: list[str] | UnsetType = UNSET
    spend_cap_usd: str | UnsetType = UNSET
    rpm: Count | UnsetType = UNSET
    tpm: Count | UnsetType = UNSET
    concurrency: Annotated[int, Meta(ge=1, le=2**31 - 1)] | UnsetType = UNSET
    expires: str | None | UnsetType = UNSET
    status: Literal["active", "suspended"] | UnsetType = UNSET
    price_multiplier: str | UnsetType = UNSET


def _check_scopes(state: RelayState, models: list[str], endpoints: list[str]) -> None:
    unknown_models = [m for m in models if m not in state.router.models]
    if unknown_models:
        raise InvalidRequest(f"unknown models: {', '.join(unknown_models)}", param="models")
    unknown_kinds = [e for e in endpoints if e not in ENDPOINT_KINDS]
    if unknown_kinds:
        raise InvalidRequest(
            f"unknown endpoint kinds: {', '.join(unknown_kinds)} "
            f"(known: {', '.join(ENDPOINT_KINDS)})",
            param="endpoints",
        )


def _check_multiplier(text: str) -> str:
    try:
        parse_multiplier(text)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="price_multiplier") from None
    return text


@admin_route
async def create_key(request: Request, state: RelayState) -> Response:
    account = state.store.account(request.path_params["account"])
    spec = await decode_body(request, NewKey)
    _check_scopes(state, spec.models, spec.endpoints)
    key = ApiKey(
        id="",
        account_id=account.id,
        label=spec.name,
        last4="",
        models=tuple(spec.models),
        endpoints=tuple(spec.endpoints),
        spend_cap_micros=parse_usd(spec.spend_cap_usd, "spend_cap_usd"),
        rpm=spec.rpm,
        tpm=spec.tpm,
        concurrency=spec.concurrency,
        expires_at_ms=parse_expiry(spec.expires),
        price_multiplier=_check_multiplier(spec.price_multiplier),
    )
    key, secret = await state.store.create_key(key, actor=ADMIN_ACTOR)
    return created({**key_view(state, key), "secret": secret})


@admin_route
async def list_keys(request: Request, state: RelayState) -> Response:
    account_ref = request.query_params.get("account")
    account_id = state.store.account(account_ref).id if account_ref else None
    keys = sorted(state.store.keys_of(account_id), key=lambda k: k.created_at_ms)
    views = [key_view(state, k, state.store.used_keys.get(k.id)) for k in keys]
    return json_response({"data": views})


@admin_route
async def show_key(request: Request, state: RelayState) -> Response:
    key = state.store.key(request.path_params["key_id"])
    return json_response(key_view(state, key, await state.store.last_used(key.id)))


@admin_route
async def update_key(request: Request, state: RelayState) -> Response:
    key = state.store.key(request.path_params["key_id"])
    if key.status == "revoked":
        raise InvalidRequest("a revoked key cannot be changed")
    changes = await decode_body(request, KeyChanges)
    fields: dict[str, object] = {}
    if isinstance(changes.name, str):
        fields["label"] = changes.name
    if isinstance(changes.models, list) or isinstance(changes.endpoints, list):
        models = changes.models if isinstance(changes.models, list) else list(key.models)
        kinds = changes.endpoints if isinstance(changes.endpoints, list) else list(key.endpoints)
        _check_scopes(state, models, kinds)
        fields["models"], fields["endpoints"] = tuple(models), tuple(kinds)
    if isinstance(changes.spend_cap_usd, str):
        fields["spend_cap_micros"] = parse_usd(changes.spend_cap_usd, "spend_cap_usd")
    for name in ("rpm", "tpm", "concurrency", "status"):
        value = getattr(changes, name)
        if value is not UNSET:
            fields[name] = value
    if isinstance(changes.price_multiplier, str):
        fields["price_multiplier"] = _check_multiplier(changes.price_multiplier)
    if changes.expires is not UNSET:
        fields["expires_at_ms"] = parse_expiry(changes.expires)
    updated = await state.store.update_key(
        msgspec.structs.replace(key, **fields), actor=ADMIN_ACTOR
    )
    state.gate.limiter.forget(updated.id)
    return json_response(key_view(state, updated))


@admin_route
async def revoke_key(request: Request, state: RelayState) -> Response:
    key = state.store.key(request.path_params["key_id"])
    if key.status != "revoked":
        revoked = msgspec.structs.replace(key, status="revoked")
        key = await state.store.update_key(revoked, actor=ADMIN_ACTOR, action="key.revoke")
        state.auth.forget_key(key.id)
        state.gate.limiter.forget(key.id)
    return json_response(key_view(state, key))
