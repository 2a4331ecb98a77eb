"""``GET /v1/balance`` and ``GET /v1/key``: what the calling key may still spend."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from relay.errors import InvalidRequest, RelayError
from relay.http.responses import error_response, json_response
from relay.identity.auth import Principal
from relay.money.pricing import micros_to_usd
from relay.state import RelayState, relay_state

__all__ = ["show_balance", "show_calling_key"]


async def _key_principal(request: Request, state: RelayState) -> Principal:
    principal = await state.auth.authenticate(request.headers)
    if principal.key is None:
        raise InvalidRequest("This route needs a client key, not the admin token")
    return principal


def _balance(state: RelayState, account_id: str) -> dict[str, Any]:
    view = state.wallet.snapshot(account_id)
    return {
        "object": "balance",
        "account_id": account_id,
        "balance_micros": view.balance_micros,
        "held_micros": view.held_micros,
        "available_micros": view.available_micros,
        "credit_limit_micros": view.credit_limit_micros,
        "mode": view.mode,
        "balance_usd": micros_to_usd(view.balance_micros),
        "available_usd": micros_to_usd(view.available_micros),
    }


async def show_balance(request: Request) -> Response:
    state = relay_state(request)
    try:
        principal = await _key_principal(request, state)
    except RelayError as exc:
        return error_response(exc)
    assert principal.account is not None
    return json_response(_balance(state, principal.account.id))


async def show_calling_key(request: Request) -> Response:
    state = relay_state(request)
    try:
        principal = await _key_principal(request, state)
    except RelayError as exc:
        return error_response(exc)
    key, account = principal.key, principal.account
    assert key is not None and account is not None
    spend = state.wallet.key_snapshot(key.id)
    return json_response(
        {
            "object": "key",
            "id": key.id,
            "name": key.label,
            "account_id": account.id,
            "masked": key.masked,
            "models": list(key.models),
            "endpoints": list(key.endpoints),
            "limits": {
                "rpm": key.rpm,
                "tpm": key.tpm,
                "concurrency": key.concurrency,
                "spend_cap_micros": key.spend_cap_micros,
                "budget_period": spend.budget_period,
                "expires_at_ms": key.expires_at_ms,
            },
            "spent_micros": spend.spent_micros,
            "held_micros": spend.held_micros,
            "remaining_micros": spend.remaining_micros,
            # What the cap is measured against: this period's spend (or lifetime without one).
            "period_spent_micros": spend.period_spent_micros,
            "resets_at_ms": spend.resets_at_ms,
            "balance": _balance(state, account.id),
            "account_budget": _account_budget(state, account.id),
        }
    )


def _account_budget(state: RelayState, account_id: str) -> dict[str, Any] | None:
    """The account's own budget beside the key's (null without one): a 402 may come from it."""
    budget = state.wallet.account_budget(account_id)
    if not budget.budget_micros:
        return None
    return {
        "budget_micros": budget.budget_micros,
        "budget_period": budget.budget_period,
        "spent_micros": budget.spent_micros,
        "remaining_micros": budget.remaining_micros,
        "resets_at_ms": budget.resets_at_ms,
    }
