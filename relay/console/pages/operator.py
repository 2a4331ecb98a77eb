"""Operator pages: every account (credit with a reference and a receipt, suspend,
activate) and the audit trail with its hash-chain status. The admin API's powers, in the
browser."""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from relay.console.web import ConsoleError, Ctx, page
from relay.errors import NotFound
from relay.identity.audit import verify_stored_chain
from relay.money.pricing import usd_to_micros
from relay.money.wallet import DuplicateReference
from relay.payments.crediting import commit_credit, manual_credit_write
from relay.payments.receipts import SellerDetails

__all__ = ["audit_page", "credit_account", "operator_accounts", "set_account_status"]

AUDIT_ROWS = 100


def _account(ctx: Ctx) -> str:
    try:
        return ctx.state.store.account(ctx.request.path_params["account"]).id
    except NotFound:
        raise ConsoleError(404, "There is no such account.") from None


@page("operator")
async def operator_accounts(ctx: Ctx) -> Response:
    accounts = sorted(ctx.state.store.accounts.values(), key=lambda a: a.name.lower())
    wallet = ctx.state.wallet
    return ctx.render(
        "operator_accounts.html",
        accounts=accounts,
        wallets={a.id: wallet.snapshot(a.id) for a in accounts},
    )


@page("operator")
async def credit_account(ctx: Ctx) -> Response:
    account_id = _account(ctx)
    reference = ctx.form.get("reference", "").strip()
    try:
        amount = usd_to_micros(ctx.form.get("amount_usd", ""))
    except ValueError as exc:
        raise ConsoleError(400, str(exc)) from None
    if amount <= 0 or not reference or len(reference) > 200:
        raise ConsoleError(400, "Give a positive amount and a reference (up to 200 characters).")
    note = ctx.form.get("note", "").strip() or None
    state = ctx.state
    try:
        entry = state.wallet.prepare(account_id, "credit", amount, reference=reference, note=note)
    except DuplicateReference:
        return ctx.redirect("/console/operator/accounts", notice="already-credited")
    # Ledger row, payment row, receipt and audit row commit together; then the wallet
    # moves, as the admin API's credit does.
    write = manual_credit_write(
        entry,
        buyer_name=state.store.account(account_id).name,
        seller=SellerDetails.from_config(state.config.payments),
        audit_key=state.store.audit_key,
        actor=ctx.actor,
        detail={"amount_micros": amount, "reference": reference},
    )
    await commit_credit(state.db, state.wallet, entry, write)
    return ctx.redirect("/console/operator/accounts", notice="credited")


@page("operator")
async def set_account_status(ctx: Ctx) -> Response:
    account = ctx.state.store.account(_account(ctx))
    status = ctx.form.get("status", "")
    if status not in ("active", "suspended"):
        raise ConsoleError(400, "status must be active or suspended")
    if status != account.status:
        changed = msgspec.structs.replace(account, status=status)
        await ctx.state.store.update_account(changed, actor=ctx.actor)
        ctx.state.gate.limiter.forget_account(account.id)
    return ctx.redirect("/console/operator/accounts", notice="status-changed")


@page("operator")
async def audit_page(ctx: Ctx) -> Response:
    text = ctx.request.query_params.get("before", "")
    if text and not text.isdigit():
        raise ConsoleError(400, "before must be an audit row id")
    before = min(int(text), 2**62) if text else 2**62  # SQLite integers are 64-bit
    rows = await ctx.state.db.fetchall(
        "SELECT id, ts_ms, actor, action, target, detail FROM audit WHERE id < ? "
        "ORDER BY id DESC LIMIT ?",
        (before, AUDIT_ROWS + 1),
    )
    next_url = ""
    if len(rows) > AUDIT_ROWS:
        rows = rows[:AUDIT_ROWS]
        next_url = f"/console/operator/audit?before={rows[-1]['id']}"
    chain = await verify_stored_chain(ctx.state.db, ctx.services.keys.audit)
    return ctx.render("operator_audit.html", rows=rows, chain=chain, next_url=next_url)
