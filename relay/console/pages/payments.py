"""Paying from the console: a card top-up through Stripe Checkout, auto top-up settings,
dismissing the account's notices, and receipts.

A receipt is reached by its number alone (``/console/receipts/R-2025-000042``), so the
check is per object: the receipt's account must be one where the user may see billing,
or the user is an operator; anyone else gets the same 404 as for a number that does not
exist, so receipt numbers cannot be probed.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.responses import RedirectResponse, Response

from relay.console.pages.billing import render_billing
from relay.console.payments import (
    AutoTopUpForm,
    FormError,
    card_topups_ready,
    parse_amount,
    payments_service,
)
from relay.console.web import ConsoleError, Ctx, page
from relay.errors import InvalidRequest
from relay.identity.roles import Permission, allows
from relay.payments.receipts import SellerDetails, render_receipt_html
from relay.payments.runtime import payments_runtime
from relay.payments.service import PaymentsService, PaymentsUnavailable
from relay.payments.store import now_ms

__all__ = ["billing_return", "dismiss", "receipt", "save_auto_topup", "start_topup"]

# The receipt is a standalone print page with its own inline stylesheet.
_RECEIPT_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


def _public_origin(ctx: Ctx, service: PaymentsService) -> str:
    """Where Stripe sends the buyer back: the configured return URL's site if there is one,
    else relay's public address (``[server] public_url``, or a checked Host)."""
    configured = service.config.success_url if service.config else None
    if configured:
        parts = urlsplit(configured)
        return f"{parts.scheme}://{parts.netloc}"
    return ctx.public_origin()


@page("account", Permission.PAY)
async def start_topup(ctx: Ctx) -> Response:
    assert ctx.account is not None
    service = payments_service(ctx)
    if service is None or not card_topups_ready(service):
        raise ConsoleError(404, "Card top-ups are not offered on this server.")
    typed = ctx.form.get("amount_usd", "").strip()
    origin = _public_origin(ctx, service)
    try:
        amount = parse_amount(typed, "The amount", positive=True)
        _, url = await service.start_checkout(
            ctx.account.id,
            amount,
            success_url=origin + ctx.account_url("billing", notice="topup-paid"),
            cancel_url=origin + ctx.account_url("billing", notice="topup-cancelled"),
            actor=ctx.actor,
        )
    except FormError as exc:
        return await render_billing(ctx, status=400, topup_error=str(exc), topup_amount=typed)
    except InvalidRequest as exc:
        message = "The amount " + exc.message.removeprefix("amount_usd ") + " USD."
        return await render_billing(ctx, status=400, topup_error=message, topup_amount=typed)
    except PaymentsUnavailable as exc:
        return await render_billing(ctx, status=503, topup_error=exc.message, topup_amount=typed)
    return RedirectResponse(url, status_code=303)


@page("account", Permission.PAY)
async def save_auto_topup(ctx: Ctx) -> Response:
    assert ctx.account is not None
    service = payments_service(ctx)
    if service is None or not card_topups_ready(service):
        raise ConsoleError(404, "Auto top-up needs card payments, which this server does not take.")
    form = AutoTopUpForm.from_form(ctx.form)
    try:
        settings = form.settings(ctx.account.id, service)
    except FormError as exc:
        return await render_billing(ctx, status=400, auto_error=str(exc), auto_form=form)
    await service.set_auto_topup(settings, actor=ctx.actor)
    return ctx.redirect(ctx.account_url("billing", notice="auto-topup-saved") + "#auto-topup")


@page("account", Permission.PAY)
async def dismiss(ctx: Ctx) -> Response:
    assert ctx.account is not None
    account_id = ctx.account.id
    notice_id: int = ctx.request.path_params["notice_id"]
    found = await ctx.services.reader.fetchone(
        "SELECT 1 FROM notices WHERE id = ? AND account_id = ?", (notice_id, account_id)
    )
    if found is None:
        raise ConsoleError(404, "There is no such notice.")
    # Through the payments' records: SQLite's writer, or PostgreSQL in cluster mode.
    records = payments_runtime(ctx.request).service.records
    await records.dismiss_notice(account_id, notice_id, now_ms())
    back = ctx.form.get("next", "")
    # Back to the page it was dismissed on, if that is one of this account's pages.
    if not (back == ctx.account_url() or back.startswith(ctx.account_url() + "/")):
        back = ctx.account_url()
    return ctx.redirect(back, notice="notice-dismissed")


@page("user")
async def receipt(ctx: Ctx) -> Response:
    assert ctx.user is not None
    records = payments_runtime(ctx.request).service.records
    found = await records.get_receipt(ctx.request.path_params["number"])
    roles = {account.id: role for account, role in ctx.accounts}
    allowed = found is not None and (
        ctx.user.operator or allows(roles.get(found.account_id), Permission.VIEW_BILLING)
    )
    if found is None or not allowed:
        raise ConsoleError(404, "There is no such receipt.")
    headers = {"content-security-policy": _RECEIPT_CSP}
    if ctx.request.query_params.get("download"):
        headers["content-disposition"] = f'attachment; filename="{found.number}.html"'
    return Response(
        render_receipt_html(found, SellerDetails.from_config(ctx.state.config.payments)),
        media_type="text/html; charset=utf-8",
        headers=headers,
    )


@page("user")
async def billing_return(ctx: Ctx) -> Response:
    """``/console/billing`` (the config's default return URL): the user's Billing page."""
    billing = [account for account, role in ctx.accounts if allows(role, Permission.VIEW_BILLING)]
    if len(billing) != 1:
        return ctx.redirect("/console/")
    paid = ctx.request.query_params.get("paid") == "1"
    notice = "topup-paid" if paid else ""
    return ctx.redirect(f"/console/a/{billing[0].id}/billing", notice=notice)
