"""Billing: wallet, top-ups with their receipts, the Top up and auto top-up forms, monthly
statements, the ledger (newest first, paged by id), and the account's data rights."""

from __future__ import annotations

import datetime as dt

from starlette.responses import Response

from relay.console.payments import (
    AutoTopUpForm,
    card_topups_ready,
    payments_service,
    topup_limits,
)
from relay.console.topups import list_top_ups
from relay.console.web import CHECKOUT_ORIGIN, ConsoleError, Ctx, content_security_policy, page
from relay.identity.data_rights import deletion_request
from relay.identity.roles import Permission
from relay.money.invoices import build_statement, month_bounds, render_csv, render_html
from relay.payments.store import customer_of

__all__ = ["billing_page", "render_billing", "statement"]

LEDGER_ROWS = 50
_STATEMENT_MONTHS = 24
# The statement is a standalone print page with its own inline stylesheet.
_STATEMENT_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


def _months(created_at_ms: int, now: dt.datetime) -> list[str]:
    """``YYYY-MM`` from this month back to the account's first, at most two years."""
    created = dt.datetime.fromtimestamp(created_at_ms / 1000, tz=dt.UTC)
    months: list[str] = []
    year, month = now.year, now.month
    while len(months) < _STATEMENT_MONTHS and (year, month) >= (created.year, created.month):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return months


def _before(ctx: Ctx) -> int:
    text = ctx.request.query_params.get("before", "")
    if text and not text.isdigit():
        raise ConsoleError(400, "before must be a ledger row id")
    return min(int(text), 2**62) if text else 2**62  # SQLite integers are 64-bit


@page("account", Permission.VIEW_BILLING)
async def billing_page(ctx: Ctx) -> Response:
    return await render_billing(ctx)


async def render_billing(
    ctx: Ctx,
    *,
    status: int = 200,
    topup_error: str = "",
    topup_amount: str = "",
    auto_error: str = "",
    auto_form: AutoTopUpForm | None = None,
) -> Response:
    """The Billing page; a form that failed passes its error and what was typed."""
    assert ctx.account is not None
    account = ctx.account
    before = _before(ctx)
    rows = await ctx.state.db.fetchall(
        "SELECT id, kind, amount_micros, reference, key_id, request_id, note, created_at_ms "
        "FROM ledger INDEXED BY ledger_account_id WHERE account_id = ? AND id < ? "
        "ORDER BY id DESC LIMIT ?",
        (account.id, before, LEDGER_ROWS + 1),
    )
    next_url = ""
    if len(rows) > LEDGER_ROWS:
        rows = rows[:LEDGER_ROWS]
        next_url = ctx.account_url("billing", before=str(rows[-1]["id"]))
    service = payments_service(ctx)
    card_topups = card_topups_ready(service)
    now = dt.datetime.now(dt.UTC)
    response = ctx.render(
        "billing.html",
        status=status,
        wallet=ctx.state.wallet.snapshot(account.id),
        ledger=rows,
        next_url=next_url,
        top_ups=await list_top_ups(ctx.state.db, account.id, now_ms=int(now.timestamp() * 1000)),
        months=_months(account.created_at_ms, now),
        card_topups=card_topups,
        limits=topup_limits(service),
        topup_error=topup_error,
        topup_amount=topup_amount,
        auto=auto_form
        or AutoTopUpForm.of(service.auto_topups.get(account.id) if service else None),
        auto_error=auto_error,
        saved_card=await customer_of(ctx.state.db, account.id) is not None,
        deletion=await deletion_request(ctx.state.db, account.id),
    )
    if card_topups:
        policy = content_security_policy(f"'self' {CHECKOUT_ORIGIN}")
        response.headers["content-security-policy"] = policy
    return response


@page("account", Permission.VIEW_BILLING)
async def statement(ctx: Ctx) -> Response:
    assert ctx.account is not None
    account = ctx.account
    month = ctx.request.query_params.get("month", "")
    try:
        month_bounds(month)
    except ValueError as exc:
        raise ConsoleError(400, str(exc)) from None
    built = await build_statement(
        ctx.state.db,
        account_id=account.id,
        account_name=account.name,
        mode=account.mode,
        credit_limit_micros=account.credit_limit_micros,
        month=month,
    )
    if ctx.request.query_params.get("format") == "csv":
        disposition = f'attachment; filename="statement-{account.id}-{month}.csv"'
        return Response(
            render_csv(built),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": disposition},
        )
    return Response(
        render_html(built),
        media_type="text/html; charset=utf-8",
        headers={"content-security-policy": _STATEMENT_CSP},
    )
