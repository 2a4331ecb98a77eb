"""Admin handlers for accounts and their wallets."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from relay.admin.common import (
    ADMIN_ACTOR,
    account_records,
    account_view,
    admin_route,
    created,
    decode_body,
    parse_usd,
    wallet_view,
)
from relay.errors import InvalidRequest
from relay.http.responses import json_response
from relay.identity.accounts import Account, Conflict
from relay.money.budget import BudgetPeriod
from relay.money.invoices import build_statement, month_bounds, render_csv, render_html
from relay.money.ledger import ledger_page
from relay.money.pricing import parse_multiplier
from relay.money.wallet import DuplicateReference
from relay.payments.crediting import commit_credit, manual_credit_write
from relay.payments.receipts import SellerDetails
from relay.state import RelayState

__all__ = [
    "create_account",
    "credit_account",
    "list_accounts",
    "show_account",
    "show_ledger",
    "show_statement",
    "show_wallet",
    "update_account",
]

# Limits (rpm, tpm, concurrency) well inside SQLite's 64-bit integers.
Count = Annotated[int, Meta(ge=0, le=2**31 - 1)]
Name = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[^\s].*$")]


class NewAccount(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    mode: Literal["prepaid", "postpaid"] = "prepaid"
    credit_limit_usd: str = "0"
    rpm: Count = 0
    tpm: Count = 0
    concurrency: Count = 0
    price_multiplier: str = "1"
    # An account-wide spend budget beside the balance ("0" = none), lifetime or per period.
    budget_usd: str = "0"
    budget_period: BudgetPeriod | None = None


class AccountChanges(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | UnsetType = UNSET
    mode: Literal["prepaid", "postpaid"] | UnsetType = UNSET
    credit_limit_usd: str | UnsetType = UNSET
    status: Literal["active", "suspended"] | UnsetType = UNSET
    rpm: Count | UnsetType = UNSET
    tpm: Count | UnsetType = UNSET
    concurrency: Count | UnsetType = UNSET
    price_multiplier: str | UnsetType = UNSET
    budget_usd: str | UnsetType = UNSET
    budget_period: BudgetPeriod | None | UnsetType = UNSET


class Credit(msgspec.Struct, forbid_unknown_fields=True):
    amount_usd: str
    reference: Annotated[str, Meta(min_length=1, max_length=200)]
    note: str | None = None


def _check_multiplier(text: str) -> str:
    try:
        parse_multiplier(text)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="price_multiplier") from None
    return text


def _check_limit(mode: str, credit_limit_micros: int) -> None:
    if mode == "prepaid" and credit_limit_micros:
        raise InvalidRequest("a prepaid account has no credit limit: use mode postpaid")


@admin_route
async def create_account(request: Request, state: RelayState) -> Response:
    spec = await decode_body(request, NewAccount)
    limit = parse_usd(spec.credit_limit_usd, "credit_limit_usd")
    _check_limit(spec.mode, limit)
    account = Account(
        id="",
        name=spec.name,
        mode=spec.mode,
        credit_limit_micros=limit,
        rpm=spec.rpm,
        tpm=spec.tpm,
        concurrency=spec.concurrency,
        price_multiplier=_check_multiplier(spec.price_multiplier),
        budget_micros=parse_usd(spec.budget_usd, "budget_usd"),
        budget_period=spec.budget_period,
    )
    account = await state.store.create_account(account, actor=ADMIN_ACTOR)
    return created(account_view(state, account))


@admin_route
async def list_accounts(request: Request, state: RelayState) -> Response:
    accounts = sorted(state.store.accounts.values(), key=lambda a: a.created_at_ms)
    return json_response({"data": [account_view(state, a) for a in accounts]})


@admin_route
async def show_account(request: Request, state: RelayState) -> Response:
    account = state.store.account(request.path_params["account"])
    return json_response(account_view(state, account))


@admin_route
async def update_account(request: Request, state: RelayState) -> Response:
    account = state.store.account(request.path_params["account"])
    changes = await decode_body(request, AccountChanges)
    fields = {
        name: value
        for name, value in msgspec.structs.asdict(changes).items()
        if value is not UNSET and name not in ("credit_limit_usd", "budget_usd")
    }
    if isinstance(changes.budget_usd, str):
        fields["budget_micros"] = parse_usd(changes.budget_usd, "budget_usd")
    if isinstance(changes.credit_limit_usd, str):
        fields["credit_limit_micros"] = parse_usd(changes.credit_limit_usd, "credit_limit_usd")
    if isinstance(changes.price_multiplier, str):
        _check_multiplier(changes.price_multiplier)
    if fields.get("mode") == "prepaid" and "credit_limit_micros" not in fields:
        fields["credit_limit_micros"] = 0
    if fields.get("status") == "active" and account.status != "active":
        await _refuse_if_deletion_requested(state, account)
    updated = msgspec.structs.replace(account, **fields)
    _check_limit(updated.mode, updated.credit_limit_micros)
    updated = await state.store.update_account(updated, actor=ADMIN_ACTOR)
    state.gate.limiter.forget_account(updated.id)
    return json_response(account_view(state, updated))


async def _refuse_if_deletion_requested(state: RelayState, account: Account) -> None:
    """An account pending deletion (or erased) stays suspended: re-activating it must not
    silently undo the owner's request; the console offers an explicit cancel first."""
    deletion = await account_records(state).deletion_request(account.id)
    if deletion is not None:
        why = "its personal data was erased" if deletion.erased_at_ms else "its deletion is pending"
        raise Conflict(f"Account {account.name!r} cannot be re-activated: {why}")


@admin_route
async def credit_account(request: Request, state: RelayState) -> Response:
    """A top-up, idempotent on its reference; committed before the answer."""
    account = state.store.account(request.path_params["account"])
    credit = await decode_body(request, Credit)
    amount = parse_usd(credit.amount_usd, "amount_usd")
    if amount <= 0:
        raise InvalidRequest("amount_usd must be positive", param="amount_usd")
    try:
        entry = state.wallet.prepare(
            account.id, "credit", amount, reference=credit.reference, note=credit.note
        )
    except DuplicateReference:
        return json_response({"credited": False, "wallet": wallet_view(state, account.id)})
    detail = {"amount_micros": amount, "reference": credit.reference}
    # Ledger row, payment row, receipt and audit row commit together; then the wallet moves.
    write = manual_credit_write(
        entry,
        buyer_name=account.name,
        seller=SellerDetails.from_config(state.config.payments),
        audit_key=state.store.audit_key,
        actor=ADMIN_ACTOR,
        detail=detail,
    )
    receipt = await commit_credit(state.db, state.wallet, entry, write)
    return created(
        {
            "credited": True,
            "receipt_number": receipt.number,
            "entry": msgspec.structs.asdict(entry),
            "wallet": wallet_view(state, account.id),
        }
    )


@admin_route
async def show_wallet(request: Request, state: RelayState) -> Response:
    account = state.store.account(request.path_params["account"])
    return json_response(wallet_view(state, account.id))


@admin_route
async def show_ledger(request: Request, state: RelayState) -> Response:
    account = state.store.account(request.path_params["account"])
    try:
        limit = min(1000, max(1, int(request.query_params.get("limit", "100"))))
        # Clamped: SQLite integers are 64-bit, and no row id is beyond 2**62.
        before = max(0, min(int(request.query_params.get("before_id", str(2**62))), 2**62))
    except ValueError:
        raise InvalidRequest("limit and before_id must be integers") from None
    rows = await ledger_page(
        account_records(state).reader, account.id, before_id=before, limit=limit
    )
    return json_response({"data": rows})


@admin_route
async def show_statement(request: Request, state: RelayState) -> Response:
    """``?month=YYYY-MM&format=json|csv|html``: the account's monthly statement."""
    account = state.store.account(request.path_params["account"])
    month = request.query_params.get("month", "")
    try:
        month_bounds(month)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="month") from None
    statement = await build_statement(
        account_records(state).reader,
        account_id=account.id,
        account_name=account.name,
        mode=account.mode,
        credit_limit_micros=account.credit_limit_micros,
        month=month,
    )
    kind = request.query_params.get("format", "json")
    if kind == "csv":
        return Response(render_csv(statement), media_type="text/csv")
    if kind == "html":
        return Response(render_html(statement), media_type="text/html")
    return json_response(
        msgspec.structs.asdict(statement)
        | {"lines": [msgspec.structs.asdict(line) for line in statement.lines]}
    )
