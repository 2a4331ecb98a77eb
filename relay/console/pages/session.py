"""Signing in and out, the landing redirect, changing one's password, accepting invites."""

from __future__ import annotations

from starlette.responses import RedirectResponse, Response

from relay.console.auth.sessions import SESSION_COOKIE, SESSION_LIFETIME_MS
from relay.console.auth.signing import sign
from relay.console.web import ConsoleError, Ctx, page, set_cookie
from relay.errors import RelayError, StorageUnavailable
from relay.http.client_ip import client_ip
from relay.identity.users import User

__all__ = [
    "accept_invite",
    "change_password",
    "home",
    "invite_form",
    "login",
    "login_form",
    "logout",
    "password_form",
    "start_session",
]


def _safe_next(target: str) -> str:
    # Only console paths: an open redirect would make the sign-in page a phishing aid.
    if target.startswith("/console/") and not target.startswith("//"):
        return target
    return "/console/"


async def start_session(ctx: Ctx, user: User, target: str) -> Response:
    session = await ctx.services.sessions.create(user)
    response = RedirectResponse(_safe_next(target), status_code=303)
    value = sign(ctx.services.keys.session, session.id)
    set_cookie(ctx, response, SESSION_COOKIE, value, max_age=SESSION_LIFETIME_MS // 1000)
    return response


@page("user")
async def home(ctx: Ctx) -> Response:
    if ctx.accounts:
        return ctx.redirect(f"/console/a/{ctx.accounts[0][0].id}")
    if ctx.user is not None and ctx.user.operator:
        return ctx.redirect("/console/operator/accounts")
    return ctx.render("no_account.html")


@page("public")
async def login_form(ctx: Ctx) -> Response:
    if ctx.user is not None:
        return ctx.redirect("/console/")
    return ctx.render(
        "login.html", error="", email="", next=ctx.request.query_params.get("next", "")
    )


@page("public")
async def login(ctx: Ctx) -> Response:
    email = ctx.form.get("email", "").strip().lower()
    target = ctx.form.get("next", "")
    ip = client_ip(ctx.request.scope, ctx.state.config.server.trusted_proxies)
    try:
        user = await _check_password(ctx, ip, email)
    except StorageUnavailable:
        # Fail closed: a throttle that cannot count guesses (the cluster's Redis) would let
        # them run unlimited, so nobody signs in until it answers.
        message = "Sign-in is unavailable for a moment. Please try again shortly."
        return ctx.render("login.html", status=503, error=message, email=email, next=target)
    except _Refused as refused:
        return ctx.render(
            "login.html", status=refused.status, error=refused.message, email=email, next=target
        )
    return await start_session(ctx, user, target)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _check_password(ctx: Ctx, ip: str, email: str) -> User:
    """The user whose password this is, counted by the sign-in throttle; ``_Refused`` when
    throttled or wrong."""
    throttle = ctx.services.throttle
    attempt = await throttle.begin(ip, email)
    if attempt.wait_s > 0:
        minutes = int(attempt.wait_s) // 60 + 1
        raise _Refused(429, f"Too many failed sign-ins. Try again in {minutes} minutes.")
    try:
        user = await ctx.services.users.authenticate(email, ctx.form.get("password", ""))
    except BaseException:
        await throttle.abandoned(ip, email, attempt)
        raise
    if user is None:
        raise _Refused(401, "That email and password do not match an active user.")
    await throttle.succeeded(ip, email, attempt)
    return user


@page("public")
async def logout(ctx: Ctx) -> Response:
    if ctx.session is not None:
        await ctx.services.sessions.delete(ctx.session.id)
    response = ctx.redirect("/console/login", notice="signed-out")
    response.delete_cookie(SESSION_COOKIE, path="/console")
    return response


@page("user")
async def password_form(ctx: Ctx) -> Response:
    return ctx.render("password.html", error="")


@page("user")
async def change_password(ctx: Ctx) -> Response:
    assert ctx.user is not None
    users = ctx.services.users
    new, again = ctx.form.get("new_password", ""), ctx.form.get("new_password_again", "")
    error = ""
    if await users.authenticate(ctx.user.email, ctx.form.get("current_password", "")) is None:
        error = "The current password is not right."
    elif new != again:
        error = "The two new passwords differ."
    if error:
        return ctx.render("password.html", status=400, error=error)
    try:
        user = await users.change_password(ctx.user, new, actor=ctx.actor)
    except RelayError as exc:
        return ctx.render("password.html", status=400, error=exc.message)
    # Every session ended with the new version; this browser gets a fresh one.
    return await start_session(ctx, user, "/console/?notice=password-changed")


@page("public")
async def invite_form(ctx: Ctx) -> Response:
    token = ctx.request.path_params["token"]
    invite = await ctx.services.invites.peek(token)
    if invite is None:
        raise ConsoleError(404, "This invite link is not valid: it was used, or it expired.")
    account = ctx.state.store.accounts.get(invite.account_id)
    return ctx.render("invite.html", invite=invite, account=account, token=token, error="")


@page("public")
async def accept_invite(ctx: Ctx) -> Response:
    token = ctx.request.path_params["token"]
    invites = ctx.services.invites
    invite = await invites.peek(token)
    if invite is None:
        raise ConsoleError(404, "This invite link is not valid: it was used, or it expired.")
    user = ctx.user
    if user is None:
        try:
            user = await ctx.services.users.create_user(
                ctx.form.get("email", ""),
                ctx.form.get("display_name", ""),
                ctx.form.get("password", ""),
                operator=False,
                actor="invite",
            )
        except RelayError as exc:
            account = ctx.state.store.accounts.get(invite.account_id)
            return ctx.render(
                "invite.html",
                status=400,
                invite=invite,
                account=account,
                token=token,
                error=exc.message,
            )
    if await invites.accept(token, user) is None:
        raise ConsoleError(409, "This invite link was just used by someone else.")
    target = f"/console/a/{invite.account_id}?notice=joined"
    if ctx.user is None:
        return await start_session(ctx, user, target)
    return ctx.redirect(target)
