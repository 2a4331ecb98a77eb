"""Payments over HTTP: the Stripe webhook, and the admin API for payments and data rights.

``POST /webhooks/stripe`` is authenticated by its signature, not the admin token. Every
other route here is under ``/admin`` with the bearer admin token. The long-lived pieces
(``PaymentsRuntime``: service, webhook, auto top-up, erasure job) are opened in the
lifespan with ``open_payments`` and reach handlers as ``request.state.payments``.
"""

from __future__ import annotations

import logging
from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from relay.admin.common import (
    ADMIN_ACTOR,
    account_records,
    admin_route,
    created,
    decode_body,
    parse_usd,
)
from relay.errors import InvalidRequest, NotFound
from relay.http.download import streamed_download
from relay.http.responses import error_response, json_response, read_body
from relay.identity.data_rights import request_deletion
from relay.identity.export import stream_export
from relay.payments.auto_settings import AutoTopUpSettings
from relay.payments.receipts import SellerDetails, receipt_view, render_receipt_html
from relay.payments.runtime import payments_runtime
from relay.payments.service import PaymentsUnavailable
from relay.payments.store import payment_view
from relay.payments.webhook import SignatureError
from relay.state import RelayState

__all__ = ["payment_routes"]

log = logging.getLogger("relay.payments")
_MAX_WEBHOOK_BODY = 1024 * 1024
Url = Annotated[str, Meta(pattern=r"^https?://", max_length=2000)]


# -- webhook (signature-authenticated) ------------------------------------------------------


async def stripe_webhook(request: Request) -> Response:
    try:
        webhook = payments_runtime(request).webhook
        if webhook is None:
            raise PaymentsUnavailable("Stripe webhooks are not configured")
        signature = request.headers.get("stripe-signature", "")
        try:
            # The header first: without a plausible signature the body is never read.
            webhook.check_header(signature)
            payload = await read_body(request, _MAX_WEBHOOK_BODY)
            outcome = await webhook.handle(payload, signature)
        except SignatureError as exc:
            raise InvalidRequest(f"Invalid Stripe signature: {exc}") from None
        except msgspec.DecodeError:
            raise InvalidRequest("The event is not a Stripe event object") from None
    except (InvalidRequest, PaymentsUnavailable) as exc:
        return error_response(exc)
    return json_response({"received": True, **msgspec.structs.asdict(outcome)})


# -- payments and receipts ------------------------------------------------------------------


class CheckoutRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount_usd: str
    success_url: Url | None = None
    cancel_url: Url | None = None


@admin_route
async def start_checkout(request: Request, state: RelayState) -> Response:
    account = state.store.account(request.path_params["account"])
    body = await decode_body(request, CheckoutRequest)
    amount = parse_usd(body.amount_usd, "amount_usd")
    payment, url = await payments_runtime(request).service.start_checkout(
        account.id,
        amount,
        success_url=body.success_url,
        cancel_url=body.cancel_url,
        actor=ADMIN_ACTOR,
    )
    return created({"url": url, "payment": payment_view(payment)})


@admin_route
async def show_payments(request: Request, state: RelayState) -> Response:
    account = state.store.account(request.path_params["account"])
    payments = await payments_runtime(request).service.records.list_payments(account.id)
    return json_response({"data": [payment_view(p) for p in payments]})


@admin_route
async def show_receipts(request: Request, state: RelayState) -> Response:
    account = state.store.account(request.path_params["account"])
    receipts = await payments_runtime(request).service.records.list_receipts(account.id)
    return json_response({"data": [receipt_view(r) for r in receipts]})


@admin_route
async def show_receipt(request: Request, state: RelayState) -> Response:
    """``?format=json`` (default) or ``html``; ``&download=1`` asks to save the page."""
    number = request.path_params["number"]
    receipt = await payments_runtime(request).service.records.get_receipt(number)
    if receipt is None:
        raise NotFound(f"No receipt {number!r}", code="receipt_not_found")
    if request.query_params.get("format") != "html":
        return json_response(receipt_view(receipt))
    headers = {}
    if request.query_params.get("download"):
        headers["content-disposition"] = f'attachment; filename="{receipt.number}.html"'
    return Response(
        render_receipt_html(receipt, SellerDetails.from_config(state.config.payments)),
        media_type="text/html",
        headers=headers,
    )


# -- auto top-up and notices ----------------------------------------------------------------


class AutoTopUpRequest(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool
    trigger_usd: str
    amount_usd: str
    monthly_cap_usd: str


def _settings_view(settings: AutoTopUpSettings | None) -> dict[str, object]:
    if settings is None:
        return {"enabled": False}
    return msgspec.structs.asdict(settings)


@admin_route
async def show_auto_topup(request: Request, state: RelayState) -> Response:
    account = state.store.account(request.path_params["account"])
    # From the records, not this instance's cache: another instance may have changed it.
    found = await payments_runtime(request).service.records.auto_topups(account.id)
    settings = found.get(account.id)
    return json_response(_settings_view(settings))


@admin_route
async def update_auto_topup(request: Request, state: RelayState) -> Response:
    account = state.store.account(request.path_params["account"])
    body = await decode_body(request, AutoTopUpRequest)
    service = payments_runtime(request).service
    amount = parse_usd(body.amount_usd, "amount_usd")
    cap = parse_usd(body.monthly_cap_usd, "monthly_cap_usd")
    if body.enabled:
        service.check_amount(amount)  # also refuses when card payments are not configured
    if amount <= 0 or cap < amount:
        raise InvalidRequest("amount_usd must be positive and monthly_cap_usd at least that much")
    settings = AutoTopUpSettings(
        account_id=account.id,
        enabled=body.enabled,
        trigger_micros=parse_usd(body.trigger_usd, "trigger_usd"),
        amount_micros=amount,
        monthly_cap_micros=cap,
    )
    await service.set_auto_topup(settings, actor=ADMIN_ACTOR)
    return json_response(_settings_view(service.auto_topups[account.id]))


@admin_route
async def show_notices(request: Request, state: RelayState) -> Response:
    account = state.store.account(request.path_params["account"])
    every = request.query_params.get("all") == "1"
    records = payments_runtime(request).service.records
    notices = await records.list_notices(account.id, include_dismissed=every)
    return json_response({"data": [msgspec.structs.asdict(n) for n in notices]})


@admin_route
async def dismiss(request: Request, state: RelayState) -> Response:
    account = state.store.account(request.path_params["account"])
    notice_id = request.path_params["notice_id"]
    service = payments_runtime(request).service
    done = await service.records.dismiss_notice(account.id, notice_id, service.clock())
    return json_response({"dismissed": done})


# -- data rights ----------------------------------------------------------------------------


@admin_route
async def export_account(request: Request, state: RelayState) -> Response:
    """The account's zip, streamed (``relay.identity.export``); audited once it is complete."""
    account = state.store.account(request.path_params["account"])

    async def record_export() -> None:
        await state.store.record_action(
            actor=ADMIN_ACTOR, action="account.export", target=account.id, detail={}
        )

    pieces = stream_export(account_records(state), account, record_export=record_export)
    filename = f"relay-export-{account.id}.zip"
    return await streamed_download(pieces, filename=filename, media_type="application/zip")


@admin_route
async def delete_account(request: Request, state: RelayState) -> Response:
    account = state.store.account(request.path_params["account"])

    def forget(key_id: str) -> None:
        state.auth.forget_key(key_id)
        state.gate.limiter.forget(key_id)

    deletion = await request_deletion(
        account_records(state), state.store, account.id, actor=ADMIN_ACTOR, on_key_revoked=forget
    )
    state.gate.limiter.forget_account(account.id)
    return json_response(msgspec.structs.asdict(deletion), status=202)


@admin_route
async def show_deletion(request: Request, state: RelayState) -> Response:
    account = state.store.account(request.path_params["account"])
    deletion = await account_records(state).deletion_request(account.id)
    if deletion is None:
        raise NotFound("No deletion was requested for this account", code="no_deletion_request")
    return json_response(msgspec.structs.asdict(deletion))


def payment_routes() -> list[BaseRoute]:
    account = "/admin/accounts/{account}"
    return [
        Route("/webhooks/stripe", stripe_webhook, methods=["POST"]),
        Route(f"{account}/checkout", start_checkout, methods=["POST"]),
        Route(f"{account}/payments", show_payments, methods=["GET"]),
        Route(f"{account}/receipts", show_receipts, methods=["GET"]),
        Route("/admin/receipts/{number}", show_receipt, methods=["GET"]),
        Route(f"{account}/auto-topup", show_auto_topup, methods=["GET"]),
        Route(f"{account}/auto-topup", update_auto_topup, methods=["PUT"]),
        Route(f"{account}/notices", show_notices, methods=["GET"]),
        Route(f"{account}/notices/{{notice_id:int}}/dismiss", dismiss, methods=["POST"]),
        Route(f"{account}/export", export_account, methods=["GET"]),
        Route(f"{account}/deletion", delete_account, methods=["POST"]),
        Route(f"{account}/deletion", show_deletion, methods=["GET"]),
    ]
