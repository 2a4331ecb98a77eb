"""``GET /v1/balance`` and ``GET /v1/key``: what the calling key may still spend."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from relay.errors import InvalidRequest, RelayError
from relay.http.responses import error_response, json_response
from relay.identity.auth import Principal
from relay.money.records import BalanceView, BudgetView, KeySpendView, balance_fields
from relay.state import RelayState, relay_state

__all__ = ["show_balance", "show_calling_key"]


async def _key_principal(request: Request, state: RelayState) -> Principal:
    principal = await state.auth.authenticate(request.headers)
    if principal.key is None or principal.account is None:
        raise InvalidRequest("This route needs a client key, not the admin token")
    return principal


# Where the money views come from: the in-memory wallet, or PostgreSQL in cluster mode
# (docs/scaling.md §2), where another instance may have moved the balance a moment ago.


async def _balance_view(state: RelayState, account_id: str) -> BalanceView:
    if state.cluster is None:
        return state.wallet.snapshot(account_id)
    return await state.cluster.store.snapshot(account_id)


async def _key_spend_view(state: RelayState, key_id: str) -> KeySpendView:
    if state.cluster is None:
        return state.wallet.key_snapshot(key_id)
    return await state.cluster.store.key_spend(key_id)


async def _budget_view(state: RelayState, account_id: str) -> BudgetView:
    if state.cluster is None:
        return state.wallet.account_budget(account_id)
    return await state.cluster.store.account_budget(account_id)


def _budget_fields(budget: BudgetView) -> dict[str, Any] | None:
    """The account's own budget beside the key's (null without one): a 402 may come from it."""
    if not budget.budget_micros:
        return None
    return {
        "budget_micros": budget.budget_micros,
        "budget_period": budget.budget_period,
        "spent_micros": budget.spent_micros,
        "remaining_micros": budget.remaining_micros,
        "resets_at_ms": budget.resets_at_ms,
    }


async def show_balance(request: Request) -> Response:
    state = relay_state(request)
    try:
        principal = await _key_principal(request, state)
        assert principal.account is not None
        view = await _balance_view(state, principal.account.id)
    except RelayError as exc:
        return error_response(exc)
    return json_response({"object": "balance", **balance_fields(principal.account.id, view)})


async def show_calling_key(request: Request) -> Response:
    state = relay_state(request)
    try:
        principal = await _key_principal(request, state)
        key, account = principal.key, principal.account
        assert key is not None and account is not None
        spend = await _key_spend_view(state, key.id)
        balance = await _balance_view(state, account.id)
        budget = await _budget_view(state, account.id)
    except RelayError as exc:
        return error_response(exc)
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
            "balance": {"object": "balance", **balance_fields(account.id, balance)},
            "account_budget": _budget_fields(budget),
        }
    )
