"""What every admin handler shares: the operator check, body decoding, JSON views."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from relay.cluster.pg_account_records import PgAccountRecords
from relay.cluster.pg_identity import ClusterAccountStore
from relay.errors import AuthError, Forbidden, InvalidRequest, NotFound, RelayError
from relay.http.responses import decode_or_400, error_response, json_response, read_body
from relay.identity.account_records import AccountRecords, SqliteAccountRecords
from relay.identity.accounts import Account, ApiKey
from relay.money.pricing import usd_to_micros
from relay.money.records import balance_fields
from relay.state import RelayState, relay_state
from relay.usage.retention import archive_dir_for

__all__ = [
    "ADMIN_ACTOR",
    "account_records",
    "account_view",
    "admin_route",
    "budget_view",
    "decode_body",
    "iso",
    "key_view",
    "parse_expiry",
    "parse_usd",
    "wallet_view",
]

T = TypeVar("T")
ADMIN_ACTOR = "admin-token"
Handler = Callable[[Request, RelayState], Awaitable[Response]]
_MAX_ADMIN_BODY = 64 * 1024
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def admin_route(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler with the admin-token check and the error shape."""

    async def endpoint(request: Request) -> Response:
        state = relay_state(request)
        try:
            _require_admin(request, state)
            if request.method not in _READ_METHODS:
                state.storage.check()  # fail closed: a change must be committed to count
            try:
                return await handler(request, state)
            except NotFound as exc:
                if not await _found_elsewhere(request, state, exc):
                    raise
                return await handler(request, state)
        except RelayError as exc:
            return error_response(exc)

    endpoint.__name__ = handler.__name__
    return endpoint


async def _found_elsewhere(request: Request, state: RelayState, missing: NotFound) -> bool:
    """Cluster mode: the account or key the path names may have been created through another
    instance a moment ago, its announcement not yet here; read it from PostgreSQL. Lookups
    come before writes in every handler, so the one retry never repeats a write."""
    if state.cluster is None or missing.code not in ("account_not_found", "key_not_found"):
        return False
    store = state.store
    assert isinstance(store, ClusterAccountStore)
    params = request.path_params
    return await store.find_missing(params.get("account"), params.get("key_id"))


def _require_admin(request: Request, state: RelayState) -> None:
    if not state.auth.admin_enabled:
        env = state.config.server.admin_token_env
        raise Forbidden(f"The admin API is disabled: set {env} and restart", code="admin_disabled")
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthError("Missing admin token: send 'Authorization: Bearer <admin token>'")
    if not state.auth.is_admin_token(token.strip()):
        raise AuthError("Invalid admin token")


async def decode_body(request: Request, type_: type[T]) -> T:
    body = await read_body(request, _MAX_ADMIN_BODY)
    decoder = msgspec.json.Decoder(type_)
    return decode_or_400(decoder.decode, body)


def parse_usd(value: str, field: str) -> int:
    try:
        micros = usd_to_micros(value)
    except ValueError as exc:
        raise InvalidRequest(f"{field}: {exc}", param=field) from None
    if micros < 0:
        raise InvalidRequest(f"{field} must not be negative", param=field)
    return micros


def parse_expiry(value: str | None) -> int | None:
    """``YYYY-MM-DD`` (the end of that day, UTC) or an ISO timestamp → unix ms."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            moment = dt.datetime.combine(day, dt.time.max, tzinfo=dt.UTC)
        else:
            moment = dt.datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
    except ValueError:
        raise InvalidRequest("expires must be YYYY-MM-DD or an ISO timestamp") from None
    return int(moment.timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def wallet_view(state: RelayState, account_id: str) -> dict[str, Any]:
    return balance_fields(account_id, state.wallet.snapshot(account_id))


def account_view(state: RelayState, account: Account) -> dict[str, Any]:
    wallet = state.wallet.snapshot(account.id)
    return {
        "id": account.id,
        "name": account.name,
        "mode": account.mode,
        "status": account.status,
        "credit_limit_micros": account.credit_limit_micros,
        "rpm": account.rpm,
        "tpm": account.tpm,
        "concurrency": account.concurrency,
        "price_multiplier": account.price_multiplier,
        "created_at": iso(account.created_at_ms),
        "balance_micros": wallet.balance_micros,
        "held_micros": wallet.held_micros,
        "available_micros": wallet.available_micros,
        **budget_view(state, account),
    }


def budget_view(state: RelayState, account: Account) -> dict[str, Any]:
    """The account's own spend budget (``budget_micros`` 0 = none)."""
    budget = state.wallet.account_budget(account.id)
    return {
        "budget_micros": budget.budget_micros,
        "budget_period": budget.budget_period,
        "budget_spent_micros": budget.spent_micros,
        "budget_remaining_micros": budget.remaining_micros,
        "budget_resets_at": iso(budget.resets_at_ms),
    }


def key_view(state: RelayState, key: ApiKey, last_used_ms: int | None = None) -> dict[str, Any]:
    spend = state.wallet.key_snapshot(key.id)
    return {
        "id": key.id,
        "account_id": key.account_id,
        "name": key.label,
        "masked": key.masked,
        "models": list(key.models),
        "endpoints": list(key.endpoints),
        "spend_cap_micros": key.spend_cap_micros,
        "spent_micros": spend.spent_micros,
        "remaining_micros": spend.remaining_micros,
        "budget_period": spend.budget_period,
        "period_spent_micros": spend.period_spent_micros,
        "budget_resets_at": iso(spend.resets_at_ms),
        "rpm": key.rpm,
        "tpm": key.tpm,
        "concurrency": key.concurrency,
        "price_multiplier": key.price_multiplier,
        "expires_at": iso(key.expires_at_ms),
        "status": key.status,
        "created_at": iso(key.created_at_ms),
        "last_used_at": iso(last_used_ms),
    }


def created(body: dict[str, Any]) -> Response:
    return json_response(body, status=201)


def account_records(state: RelayState) -> AccountRecords:
    """PostgreSQL's records in cluster mode (shared by every instance), else SQLite's."""
    if state.cluster is not None:
        return PgAccountRecords(state.cluster.pool, state.store.audit_key)
    return SqliteAccountRecords(
        state.db, state.store.audit_key, archive_dir_for(state.config.database_path)
    )
