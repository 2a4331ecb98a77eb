"""Operator pages: every account, creating one, its settings (mode, credit limit, limits,
price multiplier), suspending and activating it, and the audit trail with its
hash-chain status. The admin API's powers, in the browser, with guardrails: suspending
asks first, and an account pending deletion cannot be re-activated until the deletion
is explicitly cancelled (its pages would otherwise contradict each other).
"""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from relay.console.forms import FieldErrors, checked, parse_count, parse_usd
from relay.console.web import ConsoleError, Ctx, page
from relay.errors import NotFound, RelayError
from relay.identity.accounts import Account
from relay.identity.audit import verify_stored_chain
from relay.identity.data_rights import DeletionRequest, cancel_deletion, deletion_request
from relay.money.pricing import micros_to_usd, parse_multiplier

__all__ = [
    "account_page",
    "audit_page",
    "cancel_account_deletion",
    "create_account",
    "operator_account",
    "operator_accounts",
    "render_account",
    "save_account",
    "set_account_status",
    "show_account",
]

AUDIT_ROWS = 100
ACCOUNTS_URL = "/console/operator/accounts"


def operator_account(ctx: Ctx) -> Account:
    """The account named in the URL (operators reach every account)."""
    try:
        return ctx.state.store.account(ctx.request.path_params["account"])
    except NotFound:
        raise ConsoleError(404, "There is no such account.") from None


def account_page(account: Account) -> str:
    return f"{ACCOUNTS_URL}/{account.id}"


async def _pending_deletions(ctx: Ctx) -> dict[str, DeletionRequest]:
    rows = await ctx.services.reader.fetchall(
        "SELECT account_id, requested_at_ms, requested_by, erase_after_ms, erased_at_ms, "
        "pseudonym FROM deletion_requests"
    )
    return {row[0]: DeletionRequest(*tuple(row)) for row in rows}


def _settings_from_form(ctx: Ctx, base: Account) -> tuple[Account, FieldErrors]:
    """An account's settings as the form gives them, and every mistake in words."""
    form, errors = ctx.form, FieldErrors()
    name = " ".join(form.get("name", base.name).split())
    if not 1 <= len(name) <= 100:
        errors.add("name", "Name: give the account a name of 1 to 100 characters.")
    mode = form.get("mode", base.mode)
    if mode not in ("prepaid", "postpaid"):
        errors.add("mode", "Billing mode must be prepaid or postpaid.")
        mode = base.mode
    limit = checked(
        errors,
        "credit_limit_usd",
        lambda: parse_usd(form.get("credit_limit_usd", ""), "Credit limit"),
        0,
    )
    if mode == "prepaid" and limit:
        errors.add("credit_limit_usd", "A prepaid account has no credit limit: choose postpaid.")
    counts: dict[str, int] = {}
    for field, label in (
        ("rpm", "Requests per minute"),
        ("tpm", "Tokens per minute"),
        ("concurrency", "Requests at once"),
    ):
        try:
            counts[field] = parse_count(form.get(field, ""), label, default=0)
        except ValueError as exc:
            errors.add(field, str(exc))
            counts[field] = 0
    multiplier = form.get("price_multiplier", "").strip() or "1"
    try:
        parse_multiplier(multiplier)
    except ValueError:
        errors.add("price_multiplier", "Price multiplier must be a number such as 1 or 0.8.")
        multiplier = base.price_multiplier
    changed = msgspec.structs.replace(
        base,
        name=name or base.name,
        mode=mode,
        credit_limit_micros=limit,
        price_multiplier=multiplier,
        **counts,
    )
    return changed, errors


def _settings_form(account: Account) -> dict[str, str]:
    return {
        "name": account.name,
        "mode": account.mode,
        "credit_limit_usd": micros_to_usd(account.credit_limit_micros)
        if account.credit_limit_micros
        else "",
        "rpm": str(account.rpm),
        "tpm": str(account.tpm),
        "concurrency": str(account.concurrency),
        "price_multiplier": account.price_multiplier,
    }


async def _render_accounts(
    ctx: Ctx, *, status: int = 200, errors: FieldErrors | None = None
) -> Response:
    accounts = sorted(ctx.state.store.accounts.values(), key=lambda a: a.name.lower())
    money = ctx.services.money
    return ctx.render(
        "operator_accounts.html",
        status=status,
        accounts=accounts,
        wallets={a.id: await money.balance(a.id) for a in accounts},
        deletions=await _pending_deletions(ctx),
        errors=errors or FieldErrors(),
        form=dict(ctx.form) if errors else {"mode": "prepaid", "price_multiplier": "1"},
    )


@page("operator")
async def operator_accounts(ctx: Ctx) -> Response:
    return await _render_accounts(ctx)


@page("operator")
async def create_account(ctx: Ctx) -> Response:
    blank = Account(id="", name="")
    spec, errors = _settings_from_form(ctx, blank)
    if errors:
        return await _render_accounts(ctx, status=400, errors=errors)
    try:
        account = await ctx.state.store.create_account(spec, actor=ctx.actor)
    except RelayError as exc:
        errors.add("name", exc.message)
        return await _render_accounts(ctx, status=400, errors=errors)
    notice = f"Account “{account.name}” created ({account.mode}). Credit it below."
    return await ctx.redirect_flash(account_page(account), {"notice": notice})


async def render_account(
    ctx: Ctx,
    account: Account,
    *,
    status: int = 200,
    errors: FieldErrors | None = None,
    credit_errors: FieldErrors | None = None,
    credit_form: dict[str, str] | None = None,
) -> Response:
    """One account's operator page; a failed form passes its errors and what was typed."""
    return ctx.render(
        "operator_account.html",
        status=status,
        target=account,
        wallet=await ctx.services.money.balance(account.id),
        deletion=await deletion_request(ctx.services.reader, account.id),
        errors=errors or FieldErrors(),
        form=dict(ctx.form) if errors else _settings_form(account),
        credit_errors=credit_errors or FieldErrors(),
        credit_form=credit_form or {},
    )


@page("operator")
async def show_account(ctx: Ctx) -> Response:
    return await render_account(ctx, operator_account(ctx))


@page("operator")
async def save_account(ctx: Ctx) -> Response:
    account = operator_account(ctx)
    changed, errors = _settings_from_form(ctx, account)
    if not errors:
        try:
            changed = await ctx.state.store.update_account(changed, actor=ctx.actor)
        except RelayError as exc:
            errors.add("name", exc.message)
    if errors:
        return await render_account(ctx, account, status=400, errors=errors)
    ctx.state.gate.limiter.forget_account(changed.id)
    notice = f"Settings of “{changed.name}” saved."
    return await ctx.redirect_flash(account_page(changed), {"notice": notice})


def _confirm_status(ctx: Ctx, account: Account) -> Response:
    return ctx.render(
        "confirm.html",
        title=f"Suspend {account.name}?",
        message=(
            f"Every request with {account.name}'s keys is refused from the next one on, "
            "until an operator activates the account again. Its balance is kept."
        ),
        action=f"{account_page(account)}/status",
        fields={"status": "suspended"},
        confirm_label=f"Suspend {account.name}",
        danger=True,
        back=ctx.form.get("back") or account_page(account),
    )


@page("operator")
async def set_account_status(ctx: Ctx) -> Response:
    account = operator_account(ctx)
    status = ctx.form.get("status", "")
    if status not in ("active", "suspended"):
        raise ConsoleError(400, "Status must be active or suspended.")
    if status == "suspended" and account.status != "suspended" and ctx.form.get("confirm") != "yes":
        return _confirm_status(ctx, account)
    deletion = await deletion_request(ctx.services.reader, account.id)
    if status == "active" and deletion is not None:
        why = (
            "its personal data was erased"
            if deletion.erased_at_ms is not None
            else "its deletion is pending: cancel the deletion first"
        )
        return await render_account(
            ctx, account, status=409, errors=FieldErrors(status=f"Not activated: {why}.")
        )
    if status != account.status:
        changed = msgspec.structs.replace(account, status=status)
        await ctx.state.store.update_account(changed, actor=ctx.actor)
        ctx.state.gate.limiter.forget_account(account.id)
    notice = (
        f"“{account.name}” is suspended: its requests are refused from now on."
        if status == "suspended"
        else f"“{account.name}” is active again."
    )
    return await ctx.redirect_flash(account_page(account), {"notice": notice})


@page("operator")
async def cancel_account_deletion(ctx: Ctx) -> Response:
    account = operator_account(ctx)
    records = ctx.services.records
    if not await cancel_deletion(records, ctx.state.store, account.id, actor=ctx.actor):
        raise ConsoleError(409, "There is no pending deletion to cancel for this account.")
    if ctx.state.cluster is not None:
        # As the request's writes are: every instance re-reads the account from PostgreSQL.
        await ctx.state.cluster.publish("account", account.id)
    notice = (
        f"Deletion of “{account.name}” cancelled. It stays suspended and its keys stay "
        "revoked until you activate it and its people create new keys."
    )
    return await ctx.redirect_flash(account_page(account), {"notice": notice})


@page("operator")
async def audit_page(ctx: Ctx) -> Response:
    text = ctx.request.query_params.get("before", "")
    if text and (not text.isdigit() or len(text) > 18):
        raise ConsoleError(400, "before must be an audit row id")
    before = min(int(text), 2**62) if text else 2**62  # SQLite integers are 64-bit
    rows = await ctx.services.reader.fetchall(
        "SELECT id, ts_ms, actor, action, target, detail FROM audit WHERE id < ? "
        "ORDER BY id DESC LIMIT ?",
        (before, AUDIT_ROWS + 1),
    )
    next_url = ""
    if len(rows) > AUDIT_ROWS:
        rows = rows[:AUDIT_ROWS]
        next_url = f"/console/operator/audit?before={rows[-1]['id']}"
    chain = await verify_stored_chain(ctx.services.reader, ctx.services.keys.audit)
    return ctx.render("operator_audit.html", rows=rows, chain=chain, next_url=next_url)
