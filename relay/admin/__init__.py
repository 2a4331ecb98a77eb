"""The admin API under ``/admin`` (see docs/admin-api.md); bearer admin token only."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from relay.admin import accounts, keys
from relay.admin.audit import audit_routes
from relay.admin.operations import operation_routes
from relay.admin.usage import usage_routes
from relay.admin.users import user_routes

__all__ = ["admin_routes"]


def admin_routes() -> list[BaseRoute]:
    return [
        Route("/admin/accounts", accounts.create_account, methods=["POST"]),
        Route("/admin/accounts", accounts.list_accounts, methods=["GET"]),
        Route("/admin/accounts/{account}", accounts.show_account, methods=["GET"]),
        Route("/admin/accounts/{account}", accounts.update_account, methods=["PATCH"]),
        Route("/admin/accounts/{account}/credits", accounts.credit_account, methods=["POST"]),
        Route("/admin/accounts/{account}/wallet", accounts.show_wallet, methods=["GET"]),
        Route("/admin/accounts/{account}/ledger", accounts.show_ledger, methods=["GET"]),
        Route("/admin/accounts/{account}/statement", accounts.show_statement, methods=["GET"]),
        Route("/admin/accounts/{account}/keys", keys.create_key, methods=["POST"]),
        Route("/admin/keys", keys.list_keys, methods=["GET"]),
        Route("/admin/keys/{key_id}", keys.show_key, methods=["GET"]),
        Route("/admin/keys/{key_id}", keys.update_key, methods=["PATCH"]),
        Route("/admin/keys/{key_id}/revoke", keys.revoke_key, methods=["POST"]),
        *operation_routes(),
        *usage_routes(),
        *audit_routes(),
        *user_routes(),
    ]
