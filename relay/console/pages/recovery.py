"""Forgotten passwords: a one-time reset link sent by email (needs ``[email]`` and
``[server] public_url``: links are never built from a request's Host header).

The request form answers the same whether or not the address has a user, so it does not
tell strangers who is registered; the mail is sent only for an active user.
"""

from __future__ import annotations

import logging

from starlette.responses import Response

from relay.console.pages.session import start_session
from relay.console.web import ConsoleError, Ctx, page
from relay.errors import RelayError
from relay.identity.users import check_password
from relay.mail.smtp import MailError, send_mail

__all__ = ["forgot_form", "request_reset", "reset_form", "reset_password"]

log = logging.getLogger("relay.console")
_SENT = "If that address belongs to a user, a reset link is on its way. It works once, for an hour."


def _mail_ready(ctx: Ctx) -> bool:
    config = ctx.state.config
    return config.email is not None and config.server.public_url is not None


@page("public")
async def forgot_form(ctx: Ctx) -> Response:
    return ctx.render("forgot.html", available=_mail_ready(ctx), sent="", error="")


@page("public")
async def request_reset(ctx: Ctx) -> Response:
    config = ctx.state.config
    if config.email is None or config.server.public_url is None:
        raise ConsoleError(404, "Password reset by email is not set up on this relay.")
    user = await ctx.services.users.by_email(ctx.form.get("email", "").strip().lower())
    if user is not None and user.status == "active":
        token = await ctx.services.resets.create(user.id, user.email)
        link = f"{config.server.public_url.rstrip('/')}/console/reset/{token}"
        text = (
            f"Someone asked to reset the relay console password of {user.email}.\n\n"
            f"Choose a new password here (the link works once, for an hour):\n{link}\n\n"
            "If it was not you, ignore this message: your password stays as it is."
        )
        try:
            await send_mail(config.email, [user.email], "Reset your relay password", text)
        except MailError as exc:
            log.error("password reset mail not sent: %s", exc)
    return ctx.render("forgot.html", available=True, sent=_SENT, error="")


@page("public")
async def reset_form(ctx: Ctx) -> Response:
    token = ctx.request.path_params["token"]
    if await ctx.services.resets.peek(token) is None:
        raise ConsoleError(404, "This reset link is not valid: it was used, or it expired.")
    return ctx.render("reset.html", token=token, error="")


@page("public")
async def reset_password(ctx: Ctx) -> Response:
    token = ctx.request.path_params["token"]
    resets, users = ctx.services.resets, ctx.services.users
    user_id = await resets.peek(token)
    user = None if user_id is None else await users.get(user_id)
    if user is None:
        raise ConsoleError(404, "This reset link is not valid: it was used, or it expired.")
    new, again = ctx.form.get("new_password", ""), ctx.form.get("new_password_again", "")
    if new != again:
        return ctx.render("reset.html", status=400, token=token, error="The passwords differ.")
    try:
        check_password(new)
    except RelayError as exc:
        return ctx.render("reset.html", status=400, token=token, error=exc.message)
    if await resets.consume(token) != user.id:
        raise ConsoleError(409, "This reset link was just used.")
    user = await users.change_password(user, new, actor=user.email)
    # Every other session ended with the new version; this browser gets a fresh one.
    return await start_session(ctx, user, "/console/?notice=password-changed")
