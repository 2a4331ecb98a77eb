"""The owner's data rights: download everything relay holds on the account, or delete it.

Deleting suspends the account and revokes its keys at once (``relay.identity.data_rights``); its
personal data is erased 30 days later. The owner confirms by typing the account's name,
checked on the server. Afterwards the owner is signed out and shown the erasure date; an
operator (who may act on any account) stays signed in and goes back to its Billing page.
"""

from __future__ import annotations

from starlette.responses import Response

from relay.console.auth.sessions import SESSION_COOKIE
from relay.console.web import Ctx, page
from relay.identity.account_records import SqliteAccountRecords
from relay.identity.data_rights import (
    ERASE_AFTER_MS,
    build_export,
    deletion_request,
    request_deletion,
)
from relay.identity.roles import Permission
from relay.payments.store import now_ms
from relay.usage.retention import archive_dir_for

__all__ = ["delete_account", "delete_form", "export_data"]


@page("account", Permission.MANAGE_ACCOUNT)
async def export_data(ctx: Ctx) -> Response:
    assert ctx.account is not None
    account_id = ctx.account.id
    records = SqliteAccountRecords(
        ctx.state.db,
        ctx.state.store.audit_key,
        archive_dir_for(ctx.state.config.database_path),
    )
    archive = await build_export(records, ctx.state.store, account_id)
    await ctx.state.store.record_action(
        actor=ctx.actor, action="account.export", target=account_id, detail={}
    )
    disposition = f'attachment; filename="relay-export-{account_id}.zip"'
    return Response(
        archive, media_type="application/zip", headers={"content-disposition": disposition}
    )


@page("account", Permission.MANAGE_ACCOUNT)
async def delete_form(ctx: Ctx) -> Response:
    assert ctx.account is not None
    return await _render_form(ctx)


async def _render_form(ctx: Ctx, *, status: int = 200, error: str = "") -> Response:
    assert ctx.account is not None
    deletion = await deletion_request(ctx.state.db, ctx.account.id)
    erase_on_ms = now_ms() + ERASE_AFTER_MS
    return ctx.render(
        "delete.html", status=status, deletion=deletion, error=error, erase_on_ms=erase_on_ms
    )


@page("account", Permission.MANAGE_ACCOUNT)
async def delete_account(ctx: Ctx) -> Response:
    assert ctx.account is not None and ctx.user is not None
    account = ctx.account
    if ctx.form.get("confirm_name", "").strip() != account.name:
        error = f"Type the account's name, {account.name}, exactly to confirm."
        return await _render_form(ctx, status=400, error=error)
    state = ctx.state

    def forget(key_id: str) -> None:
        # Revoked keys must stop working now, not when their cache entry ages out.
        state.auth.forget_key(key_id)
        state.gate.limiter.forget(key_id)

    records = SqliteAccountRecords(state.db, state.store.audit_key)
    deletion = await request_deletion(
        records, state.store, account.id, actor=ctx.actor, on_key_revoked=forget
    )
    state.gate.limiter.forget_account(account.id)
    if ctx.user.operator:
        return ctx.redirect(ctx.account_url("billing"), notice="deletion-requested")
    if ctx.session is not None:
        await ctx.services.sessions.delete(ctx.session.id)
    name = account.name
    ctx.session, ctx.user, ctx.account, ctx.accounts = None, None, None, []
    response = ctx.render("deleted.html", account_name=name, deletion=deletion)
    response.delete_cookie(SESSION_COOKIE, path="/console")
    return response
