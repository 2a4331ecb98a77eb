"""The routes that run in cluster mode, and a 501 for every one that does not yet.

In cluster mode the records the admin API and the balance routes answer from live in
PostgreSQL (money: ``PgMoneyStore``; accounts and keys: ``ClusterAccountStore``), not in the
instance's local SQLite, which is a scratch file holding nothing shared. So:

- ``ClusterRouteGuard`` answers 501 ``not_available_in_cluster_mode`` for every route not
  in ``CLUSTER_ROUTES`` (never a wrong answer from an empty local database);
- ``cluster_routes`` overrides the few whose money comes from the wallet: credits, the
  wallet view, the reload and the upstream key toggles (announced to every instance), and
  the account/key views (their money fields read from PostgreSQL). ``/v1/balance`` and
  ``/v1/key`` pick their store themselves (``relay.api.account``).

docs/scaling.md lists both.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.admin import accounts, keys
from relay.admin.cluster_archives import archive_routes
from relay.admin.common import ADMIN_ACTOR, admin_route, created, decode_body, iso, parse_usd
from relay.admin.operations import disable_upstream, enable_upstream, reload_config
from relay.cluster.runtime import ClusterRuntime
from relay.errors import InvalidRequest, NotAvailableInCluster
from relay.http.responses import error_response, json_response
from relay.money.records import balance_fields
from relay.payments.runtime import payments_runtime
from relay.state import RelayState, relay_state

__all__ = ["CLUSTER_ROUTES", "ClusterRouteGuard", "cluster_routes"]

# (method, path pattern) of everything that answers in cluster mode.
CLUSTER_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", r"/v1/chat/completions"),
    ("POST", r"/v1/embeddings"),
    ("POST", r"/v1/messages"),
    ("POST", r"/v1/messages/count_tokens"),
    ("POST", r"/v1/images/generations"),
    ("GET", r"/v1/models"),
    ("GET", r"/v1/models/.+"),
    ("GET", r"/v1/balance"),
    ("GET", r"/v1/key"),
    ("GET", r"/healthz"),
    ("GET", r"/metrics"),
    ("POST", r"/admin/accounts"),
    ("GET", r"/admin/accounts"),
    ("GET", r"/admin/accounts/[^/]+"),
    ("PATCH", r"/admin/accounts/[^/]+"),
    ("POST", r"/admin/accounts/[^/]+/credits"),
    ("GET", r"/admin/accounts/[^/]+/wallet"),
    ("POST", r"/admin/accounts/[^/]+/keys"),
    ("GET", r"/admin/keys"),
    ("GET", r"/admin/keys/[^/]+"),
    ("PATCH", r"/admin/keys/[^/]+"),
    ("POST", r"/admin/keys/[^/]+/revoke"),
    ("POST", r"/admin/reload"),
    ("GET", r"/admin/upstreams"),
    # Video jobs (task E): rows and holds in PostgreSQL, polled by the elected job runner
    # (relay.cluster.pg_videos, relay.cluster.job_runner).
    ("POST", r"/v1/videos"),
    ("GET", r"/v1/videos/[^/]+"),
    ("GET", r"/v1/videos/[^/]+/content"),
    # Retention archives (task E): records and bytes in PostgreSQL (relay.cluster.pg_retention).
    ("GET", r"/admin/archives"),
    ("GET", r"/admin/archives/[^/]+"),
    # Task C (issue 18): the rest of the data plane, through the cluster admitter.
    ("POST", r"/v1/completions"),
    ("POST", r"/v1/moderations"),
    ("POST", r"/v1/responses"),
    ("GET", r"/v1/responses/[^/]+"),
    ("DELETE", r"/v1/responses/[^/]+"),
    ("POST", r"/v1/audio/transcriptions"),
    ("POST", r"/v1/audio/translations"),
    ("POST", r"/v1/audio/speech"),
    ("POST", r"/v1/images/edits"),
    # Task C (issue 18): the audit chain and the usage reads, from PostgreSQL.
    ("GET", r"/admin/audit"),
    ("GET", r"/admin/audit/verify"),
    ("GET", r"/admin/usage/summary"),
    ("GET", r"/admin/usage/export"),
    # Payments (issue 18, part F): their records are PostgreSQL's (relay.payments.pg_backend).
    ("POST", r"/webhooks/stripe"),
    ("POST", r"/admin/accounts/[^/]+/checkout"),
    ("GET", r"/admin/accounts/[^/]+/payments"),
    ("GET", r"/admin/accounts/[^/]+/receipts"),
    ("GET", r"/admin/receipts/[^/]+"),
    ("GET", r"/admin/accounts/[^/]+/auto-topup"),
    ("PUT", r"/admin/accounts/[^/]+/auto-topup"),
    ("GET", r"/admin/accounts/[^/]+/notices"),
    ("POST", r"/admin/accounts/[^/]+/notices/[0-9]+/dismiss"),
    # Account records (issue 18, part A): from PostgreSQL through the records seam
    # (relay.identity.account_records, relay.cluster.pg_account_records).
    ("GET", r"/admin/accounts/[^/]+/ledger"),
    ("GET", r"/admin/accounts/[^/]+/statement"),
    ("GET", r"/admin/accounts/[^/]+/export"),
    ("POST", r"/admin/accounts/[^/]+/deletion"),
    ("GET", r"/admin/accounts/[^/]+/deletion"),
    # Upstream key toggles, replayed on every instance (relay.cluster.pg_upstream_toggles).
    ("POST", r"/admin/upstreams/[^/]+/keys/[^/]+/enable"),
    ("POST", r"/admin/upstreams/[^/]+/keys/[^/]+/disable"),
    # People (issue 18, part D): console users, sessions, invites, resets and tickets are
    # PostgreSQL's rows (relay.cluster.pg_users, relay.console.pg_console and pg_tickets).
    ("POST", r"/admin/users"),
    ("GET", r"/admin/users"),
    ("GET", r"/console"),
    ("GET", r"/console/"),
    ("GET", r"/console/static/.+"),
    ("GET", r"/console/login"),
    ("POST", r"/console/login"),
    ("POST", r"/console/logout"),
    ("GET", r"/console/password"),
    ("POST", r"/console/password"),
    ("GET", r"/console/forgot"),
    ("POST", r"/console/forgot"),
    ("GET", r"/console/reset/[^/]+"),
    ("POST", r"/console/reset/[^/]+"),
    ("GET", r"/console/invite/[^/]+"),
    ("POST", r"/console/invite/[^/]+"),
    ("GET", r"/console/a/[^/]+/members"),
    ("POST", r"/console/a/[^/]+/members/invite"),
    ("POST", r"/console/a/[^/]+/members/invites/revoke"),
    ("POST", r"/console/a/[^/]+/members/[^/]+/(role|remove)"),
    ("GET", r"/console/a/[^/]+/tickets"),
    ("POST", r"/console/a/[^/]+/tickets"),
    ("GET", r"/console/a/[^/]+/tickets/[0-9]+"),
    ("POST", r"/console/a/[^/]+/tickets/[0-9]+/(reply|close)"),
    ("GET", r"/console/operator/tickets"),
    # The console's pages (part D): money from PgMoneyStore and PostgreSQL's ledger and
    # payments, logs from its usage rows (relay.console.services: reader, money, charts).
    ("GET", r"/console/a/[^/]+"),
    ("GET", r"/console/a/[^/]+/keys"),
    ("POST", r"/console/a/[^/]+/keys"),
    ("GET", r"/console/a/[^/]+/keys/[^/]+"),
    ("POST", r"/console/a/[^/]+/keys/[^/]+"),
    ("POST", r"/console/a/[^/]+/keys/[^/]+/revoke"),
    ("GET", r"/console/a/[^/]+/models"),
    ("GET", r"/console/a/[^/]+/logs"),
    ("GET", r"/console/a/[^/]+/logs\.csv"),
    ("GET", r"/console/a/[^/]+/logs/[^/]+"),
    ("GET", r"/console/a/[^/]+/billing"),
    ("GET", r"/console/a/[^/]+/billing/statement"),
    ("POST", r"/console/a/[^/]+/billing/(topup|auto-topup)"),
    ("POST", r"/console/a/[^/]+/notices/[0-9]+/dismiss"),
    ("GET", r"/console/billing"),
    ("GET", r"/console/receipts/[^/]+"),
    ("GET", r"/console/operator/accounts"),
    ("POST", r"/console/operator/accounts"),
    ("GET", r"/console/operator/accounts/[^/]+"),
    ("POST", r"/console/operator/accounts/[^/]+"),
    ("POST", r"/console/operator/accounts/[^/]+/(credit|status)"),
    ("GET", r"/console/operator/audit"),
    # The console's data rights and archives (issue 18, part A): through the account
    # records' seam (relay.cluster.pg_account_records), the export streamed.
    ("POST", r"/console/a/[^/]+/export"),
    ("GET", r"/console/a/[^/]+/delete"),
    ("POST", r"/console/a/[^/]+/delete"),
    ("GET", r"/console/a/[^/]+/archives"),
    ("GET", r"/console/a/[^/]+/archives/[^/]+"),
    ("POST", r"/console/operator/accounts/[^/]+/cancel-deletion"),
)
_ALLOWED = [(method, re.compile(pattern + r"/?")) for method, pattern in CLUSTER_ROUTES]


class ClusterRouteGuard:
    """501 for a route that does not run in cluster mode yet (HEAD counts as GET)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = "GET" if scope["method"] == "HEAD" else scope["method"]
            path = scope["path"]
            if not any(m == method and p.fullmatch(path) for m, p in _ALLOWED):
                error = NotAvailableInCluster(
                    f"{scope['method']} {path} does not run in cluster mode yet (docs/scaling.md)"
                )
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _runtime(state: RelayState) -> ClusterRuntime:
    assert state.cluster is not None
    return state.cluster


async def _wallet(state: RelayState, account_id: str) -> dict[str, Any]:
    return balance_fields(account_id, await _runtime(state).store.snapshot(account_id))


@admin_route
async def credit_account(request: Request, state: RelayState) -> Response:
    """A top-up into the PostgreSQL ledger, idempotent per (account, reference): its
    payment row and receipt in the same transaction, as embedded (``PgPayments.credit``)."""
    account = state.store.account(request.path_params["account"])
    credit = await decode_body(request, accounts.Credit)
    amount = parse_usd(credit.amount_usd, "amount_usd")
    if amount <= 0:
        raise InvalidRequest("amount_usd must be positive", param="amount_usd")
    receipt = await payments_runtime(request).service.credit_manually(
        account.id, amount, credit.reference, note=credit.note, actor=ADMIN_ACTOR
    )
    wallet = await _wallet(state, account.id)
    if receipt is None:
        return json_response({"credited": False, "wallet": wallet})
    return created(
        {
            "credited": True,
            "amount_micros": amount,
            "receipt_number": receipt.number,
            "wallet": wallet,
        }
    )


@admin_route
async def show_wallet(request: Request, state: RelayState) -> Response:
    account = state.store.account(request.path_params["account"])
    return json_response(await _wallet(state, account.id))


@admin_route
async def reload_everywhere(request: Request, state: RelayState) -> Response:
    """Reload here, then announce it: every other instance re-reads its own file."""
    response = await reload_config(request)
    if response.status_code < 300:
        await _runtime(state).publish("config")
    return response


def _announced(
    endpoint: Callable[[Request], Awaitable[Response]], kind: str
) -> Callable[[Request], Awaitable[Response]]:
    """The embedded route, then (when it succeeded) ``kind`` announced to every instance."""

    async def wrapped(request: Request) -> Response:
        response = await endpoint(request)
        if response.status_code < 300:
            await _runtime(relay_state(request)).publish(kind)
        return response

    wrapped.__name__ = getattr(endpoint, "__name__", "announced")
    return wrapped


async def _patch_money(state: RelayState, view: dict[str, Any]) -> None:
    """Replace a view's money fields (computed from the local wallet) with PostgreSQL's."""
    store = _runtime(state).store
    if "masked" in view:  # a key
        spend = await store.key_spend(view["id"])
        view.update(
            spent_micros=spend.spent_micros,
            remaining_micros=spend.remaining_micros,
            budget_period=spend.budget_period,
            period_spent_micros=spend.period_spent_micros,
            budget_resets_at=iso(spend.resets_at_ms),
        )
    elif "balance_micros" in view and "id" in view:  # an account
        balance = await store.snapshot(view["id"])
        budget = await store.account_budget(view["id"])
        view.update(
            balance_micros=balance.balance_micros,
            held_micros=balance.held_micros,
            available_micros=balance.available_micros,
            budget_micros=budget.budget_micros,
            budget_period=budget.budget_period,
            budget_spent_micros=budget.spent_micros,
            budget_remaining_micros=budget.remaining_micros,
            budget_resets_at=iso(budget.resets_at_ms),
        )


def _with_pg_money(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def wrapped(request: Request) -> Response:
        response = await endpoint(request)
        if response.status_code >= 300:
            return response
        body = msgspec.json.decode(bytes(response.body))
        state = relay_state(request)
        views = body["data"] if isinstance(body.get("data"), list) else [body]
        for view in views:
            await _patch_money(state, view)
        headers = {k: v for k, v in response.headers.items() if k != "content-length"}
        patched = json_response(body, headers=headers)
        patched.status_code = response.status_code
        return patched

    wrapped.__name__ = getattr(endpoint, "__name__", "cluster_view")
    return wrapped


_UPSTREAM_KEY = "/admin/upstreams/{provider}/keys/{position}"


def cluster_routes() -> list[BaseRoute]:
    """Placed before the embedded routes: the first match wins."""
    return archive_routes() + [
        Route("/admin/accounts/{account}/credits", credit_account, methods=["POST"]),
        Route("/admin/accounts/{account}/wallet", show_wallet, methods=["GET"]),
        Route("/admin/reload", reload_everywhere, methods=["POST"]),
        Route(f"{_UPSTREAM_KEY}/enable", _announced(enable_upstream, "upstream"), methods=["POST"]),
        Route(
            f"{_UPSTREAM_KEY}/disable", _announced(disable_upstream, "upstream"), methods=["POST"]
        ),
        Route("/admin/accounts", _with_pg_money(accounts.create_account), methods=["POST"]),
        Route("/admin/accounts", _with_pg_money(accounts.list_accounts), methods=["GET"]),
        Route("/admin/accounts/{account}", _with_pg_money(accounts.show_account), methods=["GET"]),
        Route(
            "/admin/accounts/{account}", _with_pg_money(accounts.update_account), methods=["PATCH"]
        ),
        Route("/admin/accounts/{account}/keys", _with_pg_money(keys.create_key), methods=["POST"]),
        Route("/admin/keys", _with_pg_money(keys.list_keys), methods=["GET"]),
        Route("/admin/keys/{key_id}", _with_pg_money(keys.show_key), methods=["GET"]),
        Route("/admin/keys/{key_id}", _with_pg_money(keys.update_key), methods=["PATCH"]),
        Route("/admin/keys/{key_id}/revoke", _with_pg_money(keys.revoke_key), methods=["POST"]),
    ]
