"""The console's request plumbing: who is asking, may they, and how pages answer.

``Console`` holds what lives as long as the app (templates, and the services built on the
lifespan's state: stores, the sign-in throttle, the one-time flashes). ``page(...)``
declares a handler's access level; ``Console.endpoint`` wraps it so that, before the
handler runs, the session cookie is checked, every unsafe request passes the CSRF and
Origin checks, and the account in the URL is resolved to the caller's role in it (a
non-member gets 404, so account ids cannot be probed). Handlers get a ``Ctx`` and return a response.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from relay.console.auth.csrf import CSRF_FIELD, csrf_token, origin_allowed, valid_csrf_token
from relay.console.auth.sessions import PRE_SESSION_COOKIE, SESSION_COOKIE, Session
from relay.console.auth.signing import sign, unsign
from relay.console.flash import FLASH_PARAM
from relay.console.services import Services, open_services
from relay.console.templating import build_templates
from relay.errors import NotFound, RelayError, StorageUnavailable
from relay.http.responses import read_body
from relay.identity.accounts import Account
from relay.identity.roles import Permission, Role, allows
from relay.identity.users import User
from relay.payments.runtime import payments_runtime
from relay.payments.store import Notice
from relay.state import RelayState, relay_state

__all__ = [
    "CHECKOUT_ORIGIN",
    "NOTICES",
    "Console",
    "ConsoleError",
    "Ctx",
    "Page",
    "content_security_policy",
    "page",
    "set_cookie",
]

log = logging.getLogger(__name__)

Access = Literal["public", "user", "account", "operator"]
Handler = Callable[["Ctx"], Awaitable[Response]]
_MAX_FORM_BYTES = 64 * 1024
_SAFE_METHODS = ("GET", "HEAD")
# Stripe Checkout's pages: the Top up form's answer redirects there, and browsers hold a
# form's redirects to the page's form-action.
CHECKOUT_ORIGIN = "https://checkout.stripe.com"


def _fallback_hosts(listen_host: str) -> set[str]:
    """Host names whose requests may name relay's address when public_url is unset."""
    hosts = {"localhost", "127.0.0.1", "::1"}
    if listen_host not in ("0.0.0.0", "::", ""):
        hosts.add(listen_host)
    return hosts


def content_security_policy(form_action: str = "'self'") -> str:
    return (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        f"frame-ancestors 'none'; form-action {form_action}; base-uri 'none'; object-src 'none'"
    )


_SECURITY_HEADERS = {
    "content-security-policy": content_security_policy(),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
NOTICES = {
    "signed-out": "You are signed out.",
    "key-updated": "The key was updated.",
    "key-revoked": "The key was revoked. Requests with it are refused from now on.",
    "password-changed": "Password changed. Other sessions were signed out.",
    "ticket-opened": "Ticket opened. We will answer here.",
    "reply-sent": "Reply sent.",
    "ticket-closed": "Ticket closed.",
    "role-changed": "Role changed.",
    "member-removed": "Member removed.",
    "credited": "Credit added.",
    "already-credited": "That reference was already credited; nothing changed.",
    "status-changed": "Account status changed.",
    "joined": "You joined the account.",
    "topup-paid": "Thank you. The credit appears here as soon as Stripe confirms the payment.",
    "topup-cancelled": "Top-up cancelled: nothing was charged.",
    "auto-topup-saved": "Auto top-up settings saved.",
    "notice-dismissed": "Notice dismissed.",
    "deletion-requested": "Deletion requested: the account is suspended and its keys revoked.",
}


class ConsoleError(Exception):
    """Ends a request with an error page; the message is shown to the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Page:
    handler: Handler
    access: Access
    permission: Permission | None


def page(access: Access, permission: Permission | None = None) -> Callable[[Handler], Page]:
    def declare(handler: Handler) -> Page:
        return Page(handler, access, permission)

    return declare


@dataclass
class Ctx:
    request: Request
    console: Console
    services: Services
    form: dict[str, str] = field(default_factory=dict)
    form_pairs: list[tuple[str, str]] = field(default_factory=list)
    session: Session | None = None
    user: User | None = None
    account: Account | None = None
    role: Role | None = None
    accounts: list[tuple[Account, Role]] = field(default_factory=list)
    pre_session: str | None = None
    new_pre_session: bool = False
    banners: list[Notice] = field(default_factory=list)  # the account's undismissed notices
    _flash: dict[str, str] | None = None

    @property
    def state(self) -> RelayState:
        return self.services.state

    @property
    def actor(self) -> str:
        assert self.user is not None
        return self.user.email

    @property
    def csrf(self) -> str:
        return csrf_token(self.services.keys.csrf, self._csrf_binding() or "")

    def _csrf_binding(self) -> str | None:
        if self.session is not None:
            return "s:" + self.session.id
        if self.pre_session is None:
            self.pre_session = secrets.token_urlsafe(24)
            self.new_pre_session = True
        return "p:" + self.pre_session

    def form_values(self, name: str) -> list[str]:
        """Every value sent for a repeated field (checkboxes)."""
        return [value for key, value in self.form_pairs if key == name]

    def can(self, permission: Permission) -> bool:
        return allows(self.role, permission)

    def require(self, permission: Permission) -> None:
        if not self.can(permission):
            raise ConsoleError(403, "Your role in this account does not allow that.")

    def public_origin(self) -> str:
        """Where links relay hands out (invites, payment returns) should point.

        ``[server] public_url`` when set. Otherwise the request's own origin, but only when
        its Host is the listen address or a loopback name: a Host header is the client's
        to choose, and a link built from a forged one would send the invitee elsewhere.
        """
        server = self.state.config.server
        if server.public_origin is not None:
            return server.public_origin
        url = self.request.url
        if url.hostname is None or url.hostname not in _fallback_hosts(server.host):
            raise ConsoleError(
                400,
                "relay cannot tell its public address: set [server] public_url in the config.",
            )
        return f"{url.scheme}://{url.netloc}"

    def account_url(self, suffix: str = "", **query: str) -> str:
        assert self.account is not None
        url = f"/console/a/{self.account.id}/{suffix}".rstrip("/")
        return url + ("?" + urlencode(query) if query else "")

    @property
    def flash(self) -> dict[str, str]:
        """What the redirect that led here left for this page (taken once, then gone)."""
        return self._flash or {}

    async def take_flash(self) -> None:
        """Take this page's flash (``?flash=``) from the store, once, before the handler.

        A store that does not answer (the cluster's Redis) leaves the flash where it is,
        until its TTL: the error page asks for a reload, which takes it then.
        """
        token = self.request.query_params.get(FLASH_PARAM, "")
        if token and self.session is not None and self._flash is None:
            try:
                self._flash = await self.services.flashes.take(self.session.id, token)
            except StorageUnavailable:
                raise ConsoleError(
                    503, "This page's one-time message could not be read just now: reload it."
                ) from None

    def render(self, template: str, *, status: int = 200, **values: Any) -> Response:
        notice = self.flash.get("notice") or NOTICES.get(
            self.request.query_params.get("notice", ""), ""
        )
        body = self.console.templates.get_template(template).render(
            ctx=self, notice=notice, **values
        )
        return HTMLResponse(body, status_code=status)

    def redirect(self, url: str, notice: str = "", *, flash_token: str = "") -> Response:
        """303 to ``url``, with a notice's name and a flash's token in its query."""
        query: dict[str, str] = {}
        if notice:
            query["notice"] = notice
        if flash_token:
            query[FLASH_PARAM] = flash_token
        if query:
            url += ("&" if "?" in url else "?") + urlencode(query)
        return RedirectResponse(url, status_code=303)

    async def redirect_flash(
        self, url: str, flash: dict[str, str], notice: str = "", *, if_lost: str = ""
    ) -> Response:
        """303 to ``url``; ``flash`` (a notice naming an amount, a new key's secret) waits
        server-side for that page.

        The change is made by now. If the store does not answer, a flash that only confirms
        is dropped (the redirect still shows ``notice``); one that carries what cannot be
        shown again names it in ``if_lost``, and the user gets an error page saying the
        change was made and what to do, never a page silently missing the secret.
        """
        if self.session is None:
            return self.redirect(url, notice)
        try:
            token = await self.services.flashes.put(self.session.id, flash)
        except StorageUnavailable:
            if if_lost:
                done = flash.get("notice", "The change was made.")
                raise ConsoleError(503, f"{done} {if_lost}") from None
            log.warning("console: a confirmation flash was dropped (its store did not answer)")
            return self.redirect(url, notice)
        return self.redirect(url, notice, flash_token=token)


class Console:
    """One per app: built by ``console_routes()``; stores open on first request."""

    def __init__(self) -> None:
        self.templates = build_templates()
        self._services: Services | None = None

    def services(self, state: RelayState) -> Services:
        if self._services is None or self._services.state is not state:
            self._services = open_services(state)
        return self._services

    def endpoint(self, spec: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            ctx = Ctx(request, self, self.services(relay_state(request)))
            try:
                response = await self._run(ctx, spec)
            except ConsoleError as exc:
                response = ctx.render("error.html", status=exc.status, message=exc.message)
            except RelayError as exc:
                response = ctx.render("error.html", status=exc.status, message=exc.message)
            return self._finish(ctx, response)

        endpoint.__name__ = spec.handler.__name__
        return endpoint

    async def _run(self, ctx: Ctx, spec: Page) -> Response:
        await self._load_session(ctx)
        await ctx.take_flash()
        if ctx.request.method not in _SAFE_METHODS:
            await self._check_form(ctx)
        if spec.access != "public" and ctx.user is None:
            if ctx.request.method in _SAFE_METHODS:
                target = urlencode({"next": ctx.request.url.path})
                return RedirectResponse(f"/console/login?{target}", status_code=303)
            raise ConsoleError(401, "Please sign in again.")
        if ctx.user is not None and spec.access != "public":
            await self._load_accounts(ctx)
        if spec.access == "operator" and not (ctx.user and ctx.user.operator):
            raise ConsoleError(404, "There is no such page.")
        if spec.access == "account":
            self._resolve_account(ctx)
            await self._load_banners(ctx)
        if spec.permission is not None:
            ctx.require(spec.permission)
        return await spec.handler(ctx)

    async def _load_session(self, ctx: Ctx) -> None:
        keys = ctx.services.keys
        ctx.pre_session = unsign(keys.session, ctx.request.cookies.get(PRE_SESSION_COOKIE))
        session_id = unsign(keys.session, ctx.request.cookies.get(SESSION_COOKIE))
        if session_id is None:
            return
        found = await ctx.services.sessions.load(session_id)
        if found is not None:
            ctx.session, ctx.user = found

    async def _check_form(self, ctx: Ctx) -> None:
        request = ctx.request
        public = ctx.state.config.server.public_origin
        if not origin_allowed(request.headers, request.headers.get("host", ""), public):
            raise ConsoleError(403, "This form was sent from another site and was refused.")
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        body = await read_body(request, _MAX_FORM_BYTES)
        if content_type == "application/x-www-form-urlencoded":
            ctx.form_pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
            ctx.form = dict(ctx.form_pairs)
        binding = None
        if ctx.session is not None:
            binding = "s:" + ctx.session.id
        elif ctx.pre_session is not None:
            binding = "p:" + ctx.pre_session
        if not valid_csrf_token(ctx.services.keys.csrf, binding, ctx.form.get(CSRF_FIELD)):
            raise ConsoleError(
                403, "The form had expired or did not come from this console. Please try again."
            )

    async def _load_accounts(self, ctx: Ctx) -> None:
        assert ctx.user is not None
        store = ctx.state.store
        for membership in await ctx.services.users.memberships(ctx.user.id):
            account = store.accounts.get(membership.account_id)
            if account is not None:
                ctx.accounts.append((account, membership.role))

    def _resolve_account(self, ctx: Ctx) -> None:
        assert ctx.user is not None
        account_id = ctx.request.path_params.get("account", "")
        roles = {account.id: role for account, role in ctx.accounts}
        try:
            account = ctx.state.store.account(account_id)
        except NotFound:
            account = None
        # Operators act as owners everywhere; anyone else needs a membership.
        role = Role.OWNER if ctx.user.operator else roles.get(account_id)
        if account is None or role is None or account.id != account_id:
            raise ConsoleError(404, "There is no such account, or you are not a member of it.")
        ctx.account, ctx.role = account, role

    async def _load_banners(self, ctx: Ctx) -> None:
        # Notices are about paying (e.g. a failed auto top-up): for those who can act on them.
        if ctx.account is not None and ctx.can(Permission.PAY):
            # Through the payments' records: SQLite's, or PostgreSQL's in cluster mode.
            records = payments_runtime(ctx.request).service.records
            ctx.banners = await records.list_notices(ctx.account.id, include_dismissed=False)

    def _finish(self, ctx: Ctx, response: Response) -> Response:
        for name, value in _SECURITY_HEADERS.items():
            if name not in response.headers:  # a page may set a stricter or special one
                response.headers[name] = value
        if ctx.new_pre_session and ctx.pre_session is not None:
            set_cookie(
                ctx, response, PRE_SESSION_COOKIE, sign(ctx.services.keys.session, ctx.pre_session)
            )
        return response


def set_cookie(
    ctx: Ctx, response: Response, name: str, value: str, max_age: int | None = None
) -> None:
    # Behind a TLS-terminating proxy relay itself sees http: public_url says it is https.
    public = ctx.state.config.server.public_origin or ""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/console",
        httponly=True,
        samesite="lax",
        secure=ctx.request.url.scheme == "https" or public.startswith("https://"),
    )
