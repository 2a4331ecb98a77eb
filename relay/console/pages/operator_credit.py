"""An operator credits an account (a bank transfer arrived): with a reference, a receipt,
and a second look before a large amount.

Amounts are typed by people, so they are read strictly ("1e9" is a typo, not a
billion) and any credit above ``CONFIRM_ABOVE_MICROS`` asks for confirmation on a page
that names the amount and the account; a credit above ``MAX_CREDIT_MICROS`` is refused
outright. The notice afterwards names both again.
"""

from __future__ import annotations

from starlette.responses import Response

from relay.console.forms import FieldErrors, checked, parse_usd
from relay.console.pages.operator import account_page, operator_account, render_account
from relay.console.web import Ctx, page
from relay.identity.accounts import Account
from relay.money.display import format_usd
from relay.money.wallet import DuplicateReference
from relay.payments.crediting import commit_credit, manual_credit_write
from relay.payments.receipts import SellerDetails
from relay.payments.runtime import payments_runtime

__all__ = ["CONFIRM_ABOVE_MICROS", "MAX_CREDIT_MICROS", "credit_account"]

CONFIRM_ABOVE_MICROS = 1_000 * 1_000_000  # $1,000
MAX_CREDIT_MICROS = 1_000_000 * 1_000_000  # $1,000,000 in one credit


@page("operator")
async def credit_account(ctx: Ctx) -> Response:
    account = operator_account(ctx)
    form, errors = ctx.form, FieldErrors()
    amount = checked(
        errors,
        "amount_usd",
        lambda: parse_usd(form.get("amount_usd", ""), "Amount", allow_zero=False),
        0,
    )
    if amount > MAX_CREDIT_MICROS:
        errors.add(
            "amount_usd",
            f"Amount: {format_usd(amount)} is more than one credit may add "
            f"({format_usd(MAX_CREDIT_MICROS)}).",
        )
    reference = form.get("reference", "").strip()
    if not 1 <= len(reference) <= 200:
        errors.add("reference", "Reference: give the transfer's reference (up to 200 characters).")
    note = form.get("note", "").strip() or None
    typed = {"amount_usd": form.get("amount_usd", ""), "reference": reference, "note": note or ""}
    if errors:
        return await render_account(
            ctx, account, status=400, credit_errors=errors, credit_form=typed
        )
    if amount > CONFIRM_ABOVE_MICROS and form.get("confirm") != "yes":
        return ctx.render(
            "confirm.html",
            title=f"Credit {format_usd(amount)} to {account.name}?",
            message=(
                f"This adds {format_usd(amount)} to {account.name}'s balance "
                f"(reference {reference}) and issues a receipt. It is more than "
                f"{format_usd(CONFIRM_ABOVE_MICROS)}: check the amount against the transfer."
            ),
            action=f"{account_page(account)}/credit",
            fields=typed,
            confirm_label=f"Credit {format_usd(amount)}",
            danger=False,
            back=account_page(account),
        )
    state = ctx.state
    if state.cluster is not None:
        # PostgreSQL's ledger, through the admin API's own manual credit (one transaction).
        service = payments_runtime(ctx.request).service
        receipt = await service.credit_manually(
            account.id, amount, reference, note=note, actor=ctx.actor
        )
        if receipt is None:
            return await _already_credited(ctx, account, reference)
        return await _credited(ctx, account, amount, reference)
    try:
        entry = state.wallet.prepare(account.id, "credit", amount, reference=reference, note=note)
    except DuplicateReference:
        return await _already_credited(ctx, account, reference)
    # Ledger row, payment row, receipt and audit row commit together; then the wallet
    # moves, as the admin API's credit does.
    write = manual_credit_write(
        entry,
        buyer_name=account.name,
        seller=SellerDetails.from_config(state.config.payments),
        audit_key=state.store.audit_key,
        actor=ctx.actor,
        detail={"amount_micros": amount, "reference": reference},
    )
    await commit_credit(state.db, state.wallet, entry, write)
    return await _credited(ctx, account, amount, reference)


async def _credited(ctx: Ctx, account: Account, amount: int, reference: str) -> Response:
    notice = f"Credited {format_usd(amount)} to “{account.name}” (reference {reference})."
    return await ctx.redirect_flash(account_page(account), {"notice": notice}, "credited")


async def _already_credited(ctx: Ctx, account: Account, reference: str) -> Response:
    notice = f"Reference {reference} was already credited to “{account.name}”: nothing changed."
    flash = {"notice": notice}
    return await ctx.redirect_flash(account_page(account), flash, "already-credited")
