"""The console's URL map: ``console_pages()``, mounted at ``/console`` (relay.console.mount)."""

from __future__ import annotations

from pathlib import Path

from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from relay.console.pages import (
    account_data,
    archives,
    billing,
    keys,
    logs,
    members,
    models,
    operator,
    operator_credit,
    overview,
    payments,
    recovery,
    session,
    tickets,
)
from relay.console.web import Console, ConsoleError, Ctx, Page, page

__all__ = ["console_pages"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
_ACCOUNT = "/a/{account}"


@page("public")
async def _not_found(ctx: Ctx) -> Response:
    raise ConsoleError(404, "There is no such page.")


def console_pages() -> list[BaseRoute]:
    """The console's pages and static files, relative to ``/console``."""
    console = Console()

    def route(path: str, spec: Page, method: str = "GET") -> Route:
        methods = ["GET", "HEAD"] if method == "GET" else [method]
        return Route(path, console.endpoint(spec), methods=methods)

    pages = [
        route("/", session.home),
        route("/login", session.login_form),
        route("/login", session.login, "POST"),
        route("/logout", session.logout, "POST"),
        route("/password", session.password_form),
        route("/password", session.change_password, "POST"),
        route("/forgot", recovery.forgot_form),
        route("/forgot", recovery.request_reset, "POST"),
        route("/reset/{token}", recovery.reset_form),
        route("/reset/{token}", recovery.reset_password, "POST"),
        route("/invite/{token}", session.invite_form),
        route("/invite/{token}", session.accept_invite, "POST"),
        route(_ACCOUNT, overview.overview),
        route(_ACCOUNT + "/keys", keys.keys_page),
        route(_ACCOUNT + "/keys", keys.create_key, "POST"),
        route(_ACCOUNT + "/keys/{key_id}", keys.key_page),
        route(_ACCOUNT + "/keys/{key_id}", keys.edit_key, "POST"),
        route(_ACCOUNT + "/keys/{key_id}/revoke", keys.revoke_key, "POST"),
        route(_ACCOUNT + "/models", models.models_page),
        route(_ACCOUNT + "/logs", logs.logs_page),
        route(_ACCOUNT + "/logs.csv", logs.export_logs),
        route(_ACCOUNT + "/logs/{request_id}", logs.log_entry_page),
        route(_ACCOUNT + "/billing", billing.billing_page),
        route(_ACCOUNT + "/billing/statement", billing.statement),
        route(_ACCOUNT + "/billing/topup", payments.start_topup, "POST"),
        route(_ACCOUNT + "/billing/auto-topup", payments.save_auto_topup, "POST"),
        route(_ACCOUNT + "/notices/{notice_id:int}/dismiss", payments.dismiss, "POST"),
        route(_ACCOUNT + "/export", account_data.export_data, "POST"),
        route(_ACCOUNT + "/archives", archives.archives_page),
        route(_ACCOUNT + "/archives/{name}", archives.download_archive),
        route(_ACCOUNT + "/delete", account_data.delete_form),
        route(_ACCOUNT + "/delete", account_data.delete_account, "POST"),
        route("/billing", payments.billing_return),
        route("/receipts/{number}", payments.receipt),
        route(_ACCOUNT + "/tickets", tickets.tickets_page),
        route(_ACCOUNT + "/tickets", tickets.open_ticket, "POST"),
        route(_ACCOUNT + "/tickets/{ticket_id}", tickets.ticket_page),
        route(_ACCOUNT + "/tickets/{ticket_id}/reply", tickets.reply_ticket, "POST"),
        route(_ACCOUNT + "/tickets/{ticket_id}/close", tickets.close_ticket, "POST"),
        route(_ACCOUNT + "/members", members.members_page),
        route(_ACCOUNT + "/members/invite", members.invite_member, "POST"),
        route(_ACCOUNT + "/members/invites/revoke", members.revoke_invite, "POST"),
        route(_ACCOUNT + "/members/{user_id}/role", members.change_role, "POST"),
        route(_ACCOUNT + "/members/{user_id}/remove", members.remove_member, "POST"),
        route("/operator/accounts", operator.operator_accounts),
        route("/operator/accounts", operator.create_account, "POST"),
        route("/operator/accounts/{account}", operator.show_account),
        route("/operator/accounts/{account}", operator.save_account, "POST"),
        route("/operator/accounts/{account}/credit", operator_credit.credit_account, "POST"),
        route("/operator/accounts/{account}/status", operator.set_account_status, "POST"),
        route(
            "/operator/accounts/{account}/cancel-deletion",
            operator.cancel_account_deletion,
            "POST",
        ),
        route("/operator/tickets", tickets.operator_tickets),
        route("/operator/audit", operator.audit_page),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="console-static"),
        Route("/{path:path}", console.endpoint(_not_found), methods=["GET", "HEAD", "POST"]),
    ]
    return pages
