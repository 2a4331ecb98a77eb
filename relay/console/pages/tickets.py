"""Support tickets: an account's list and threads; operators answer every account's."""

from __future__ import annotations

from starlette.responses import Response

from relay.console.tickets import TICKET_STATUSES, Ticket
from relay.console.web import ConsoleError, Ctx, page
from relay.errors import RelayError
from relay.identity.roles import Permission

__all__ = [
    "close_ticket",
    "open_ticket",
    "operator_tickets",
    "reply_ticket",
    "ticket_page",
    "tickets_page",
]


async def _ticket_of_account(ctx: Ctx) -> Ticket:
    assert ctx.account is not None
    text = ctx.request.path_params["ticket_id"]
    ticket = await ctx.services.tickets.get(int(text)) if text.isdigit() else None
    if ticket is None or ticket.account_id != ctx.account.id:
        raise ConsoleError(404, "There is no such ticket in this account.")
    return ticket


async def _render_list(ctx: Ctx, *, status: int = 200, error: str = "") -> Response:
    assert ctx.account is not None
    return ctx.render(
        "tickets.html",
        status=status,
        tickets=await ctx.services.tickets.of_account(ctx.account.id),
        error=error,
        form=ctx.form,
        request_id=ctx.request.query_params.get("request_id", ""),
    )


@page("account", Permission.VIEW)
async def tickets_page(ctx: Ctx) -> Response:
    return await _render_list(ctx)


@page("account", Permission.WRITE_TICKETS)
async def open_ticket(ctx: Ctx) -> Response:
    assert ctx.account is not None and ctx.user is not None
    try:
        ticket_id = await ctx.services.tickets.open(
            ctx.account.id,
            ctx.user,
            subject=ctx.form.get("subject", ""),
            body=ctx.form.get("body", ""),
            request_id=ctx.form.get("request_id", ""),
            payment_reference=ctx.form.get("payment_reference", ""),
        )
    except RelayError as exc:
        return await _render_list(ctx, status=400, error=exc.message)
    return ctx.redirect(ctx.account_url(f"tickets/{ticket_id}"), notice="ticket-opened")


@page("account", Permission.VIEW)
async def ticket_page(ctx: Ctx) -> Response:
    ticket = await _ticket_of_account(ctx)
    messages = await ctx.services.tickets.messages(ticket.id)
    return ctx.render("ticket.html", ticket=ticket, messages=messages, error="")


@page("account", Permission.WRITE_TICKETS)
async def reply_ticket(ctx: Ctx) -> Response:
    assert ctx.user is not None
    ticket = await _ticket_of_account(ctx)
    try:
        await ctx.services.tickets.reply(
            ticket, ctx.user, ctx.form.get("body", ""), from_operator=ctx.user.operator
        )
    except RelayError as exc:
        raise ConsoleError(400, exc.message) from None
    return ctx.redirect(ctx.account_url(f"tickets/{ticket.id}"), notice="reply-sent")


@page("account", Permission.WRITE_TICKETS)
async def close_ticket(ctx: Ctx) -> Response:
    ticket = await _ticket_of_account(ctx)
    await ctx.services.tickets.close(ticket)
    return ctx.redirect(ctx.account_url(f"tickets/{ticket.id}"), notice="ticket-closed")


@page("operator")
async def operator_tickets(ctx: Ctx) -> Response:
    wanted = ctx.request.query_params.get("status", "open")
    matching = [status for status in TICKET_STATUSES if status == wanted]
    if not matching:
        raise ConsoleError(400, "status must be open, answered or closed")
    return ctx.render(
        "operator_tickets.html",
        tickets=await ctx.services.tickets.with_status(matching[0]),
        current=wanted,
        statuses=TICKET_STATUSES,
        accounts=ctx.state.store.accounts,
    )
