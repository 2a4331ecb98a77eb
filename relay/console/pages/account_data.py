"""The owner's data rights: download everything relay holds on the account, or delete it.

Deleting suspends the account and revokes its keys at once (``relay.identity.data_rights``); its
personal data is erased 30 days later. The owner confirms by typing the account's name,
checked on the server. Afterwards the owner is signed out and shown the erasure date; an
operator (who may act on any account) stays signed in and goes back to its Billing page.
Both go through the console's ``records`` (SQLite's or, in cluster mode, PostgreSQL's); the
export is streamed as the admin API's (``relay.identity.export``).
"""

from __future__ import annotations

from starlette.responses import Response

from relay.console.auth.sessions import SESSION_COOKIE
from relay.console.web import Ctx, page
from relay.http.download import streamed_download
from relay.identity.data_rights import ERASE_AFTER_MS, request_deletion
from relay.identity.export import stream_export
from relay.identity.roles import Permission
from relay.payments.store import now_ms

__all__ = ["delete_account", "delete_form", "export_data"]


@page("account", Permission.MANAGE_ACCOUNT)
async def export_data(ctx: Ctx) -> Response:
    assert ctx.account is not None
    account, actor, store = ctx.account, ctx.actor, ctx.state.store

    async def record_export() -> None:
        await store.record_action(
            actor=actor, action="account.export", target=account.id, detail={}
        )

    pieces = stream_export(ctx.services.records, account, record_export=record_export)
    filename = f"relay-export-{account.id}.zip"
    return await streamed_download(pieces, filename=filename, media_type="application/zip")


@page("account", Permission.MANAGE_ACCOUNT)
async def delete_form(ctx: Ctx) -> Response:
    assert ctx.account is not None
    return await _render_form(ctx)


async def _render_form(ctx: Ctx, *, status: int = 200, error: str = "") -> Response:
    assert ctx.account is not None
    deletion = await ctx.services.records.deletion_request(ctx.account.id)
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

    deletion = await request_deletion(
        ctx.services.records, state.store, account.id, actor=ctx.actor, on_key_revoked=forget
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
