"""Billing: wallet, top-ups with their receipts, the Top up and auto top-up forms, monthly
statements, the ledger (per day with a running balance, or one kind's rows), and the
account's data rights."""

from __future__ import annotations

import datetime as dt

from starlette.responses import Response

from relay.console.ledger_days import KINDS, ledger_days, ledger_rows_of_kind
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


def _cursor(ctx: Ctx, name: str, default: int) -> int:
    """A paging cursor from the query string; a mangled one just starts from the top."""
    text = ctx.request.query_params.get(name, "")
    return int(text) if text.isdigit() and len(text) <= 18 else default


async def _ledger(ctx: Ctx, now_ms: int) -> dict[str, object]:
    """The ledger section: per day with a running balance, or the rows of one kind."""
    assert ctx.account is not None
    db, account_id = ctx.services.reader, ctx.account.id
    kind = ctx.request.query_params.get("kind", "")
    if kind not in KINDS:
        kind = ""
    if kind:
        rows, next_id = await ledger_rows_of_kind(
            db, account_id, kind, before_id=_cursor(ctx, "before", 2**62), limit=LEDGER_ROWS
        )
        next_url = ctx.account_url("billing", kind=kind, before=str(next_id)) if next_id else ""
        return {"ledger_kind": kind, "ledger": rows, "ledger_days": [], "next_url": next_url}
    before_day = _cursor(ctx, "before_day", 0) or None
    days, older = await ledger_days(db, account_id, now_ms=now_ms, before_day=before_day)
    next_url = ctx.account_url("billing", before_day=str(older)) if older else ""
    return {"ledger_kind": "", "ledger": [], "ledger_days": days, "next_url": next_url}


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
    service = payments_service(ctx)
    card_topups = card_topups_ready(service)
    now = dt.datetime.now(dt.UTC)
    now_ms = int(now.timestamp() * 1000)
    response = ctx.render(
        "billing.html",
        status=status,
        wallet=await ctx.services.money.balance(account.id),
        ledger_kinds=KINDS,
        key_labels={key.id: key.label for key in ctx.state.store.keys_of(account.id)},
        **await _ledger(ctx, now_ms),
        top_ups=await list_top_ups(ctx.services.reader, account.id, now_ms=now_ms),
        months=_months(account.created_at_ms, now),
        card_topups=card_topups,
        limits=topup_limits(service),
        topup_error=topup_error,
        topup_amount=topup_amount,
        auto=auto_form
        or AutoTopUpForm.of(service.auto_topups.get(account.id) if service else None),
        auto_error=auto_error,
        saved_card=await customer_of(ctx.services.reader, account.id) is not None,
        deletion=await deletion_request(ctx.services.reader, account.id),
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
        ctx.services.reader,
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
