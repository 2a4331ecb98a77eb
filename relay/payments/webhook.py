"""Stripe webhooks: check the signature on the raw bytes, then credit what was paid.

``Stripe-Signature: t=<unix time>,v1=<hex>[,v1=<hex>...]``: each ``v1`` is
HMAC-SHA256(webhook secret, ``<t>.`` + raw body). The check runs on the bytes exactly as
received, before any parsing (the same JSON serialised differently is a different
message), compares in constant time, and refuses a timestamp more than 300 s away from
now so that a captured delivery cannot be replayed later.

Events that move money: ``checkout.session.completed`` with ``payment_status == "paid"``,
``checkout.session.async_payment_succeeded``, and ``payment_intent.succeeded`` carrying
``metadata.relay_auto_topup``. A payment is credited once whatever the deliveries: the
event id is remembered, and the credit's reference is the payment id (see
``relay.payments.service``). Every other event is acknowledged and ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

import msgspec
from msgspec import Meta

from relay.errors import NotFound
from relay.payments.crediting import EventRecord
from relay.payments.service import PaymentsService
from relay.payments.store import PaidPayment

__all__ = [
    "SignatureError",
    "StripeWebhook",
    "WebhookOutcome",
    "check_signature_header",
    "sign_payload",
    "verify_signature",
]

log = logging.getLogger("relay.payments.webhook")
TOLERANCE_S = 300
# Stripe's own ceiling for one charge is 99,999,999 minor units; anything above it (or
# negative) is not a Stripe amount and must not reach the wallet.
MinorUnits = Annotated[int, Meta(ge=0, le=99_999_999)]
ACTOR = "stripe-webhook"


class SignatureError(ValueError):
    """The payload is not signed by the webhook secret, or is too old."""


class WebhookOutcome(msgspec.Struct, frozen=True):
    event_id: str
    type: str
    outcome: str
    credited: bool = False
    receipt_number: str | None = None


class _Event(msgspec.Struct):
    id: str
    type: str
    data: _EventData


class _EventData(msgspec.Struct):
    object: msgspec.Raw


class _CheckoutSession(msgspec.Struct):
    id: str
    payment_status: str = ""
    amount_total: MinorUnits | None = None
    currency: str = ""
    client_reference_id: str | None = None
    customer: str | None = None
    metadata: dict[str, str] = {}


class _PaymentError(msgspec.Struct):
    code: str | None = None
    decline_code: str | None = None
    message: str | None = None


class _PaymentIntent(msgspec.Struct):
    id: str
    amount: MinorUnits = 0
    amount_received: MinorUnits | None = None
    currency: str = ""
    customer: str | None = None
    payment_method: str | None = None
    metadata: dict[str, str] = {}
    last_payment_error: _PaymentError | None = None


def sign_payload(payload: bytes, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header Stripe would send (tests and local tooling)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def _parse_header(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(",")[:16]:  # Stripe sends a handful; ignore a flood
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif name == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureError("malformed Stripe-Signature header")
    return timestamp, signatures


def check_signature_header(header: str, *, now_s: float, tolerance_s: int = TOLERANCE_S) -> None:
    """What can be judged before reading the body: the header's form and its timestamp.

    Run before the body is read, so a client without a plausible signature cannot make
    relay read (and hold) a body at all.
    """
    timestamp, _ = _parse_header(header)
    if abs(now_s - timestamp) > tolerance_s:
        raise SignatureError("signature timestamp outside the tolerance")


def verify_signature(
    payload: bytes, header: str, secret: str, *, now_s: float, tolerance_s: int = TOLERANCE_S
) -> None:
    """Raise ``SignatureError`` unless one ``v1`` signature matches and ``t`` is recent."""
    timestamp, signatures = _parse_header(header)
    if abs(now_s - timestamp) > tolerance_s:
        raise SignatureError("signature timestamp outside the tolerance")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    wanted = expected.hexdigest()
    # Compare against every candidate (no early exit), each in constant time.
    matches = [hmac.compare_digest(wanted, candidate) for candidate in signatures]
    if not any(matches):
        raise SignatureError("no signature matches the payload")


class StripeWebhook:
    def __init__(
        self,
        service: PaymentsService,
        secret: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._service = service
        self._secret = secret
        self._clock = clock

    def check_header(self, signature_header: str) -> None:
        """``SignatureError`` for a header that cannot be right, before any body is read."""
        check_signature_header(signature_header, now_s=self._clock())

    async def handle(self, payload: bytes, signature_header: str) -> WebhookOutcome:
        """Verify, then act once. ``SignatureError`` or ``msgspec.DecodeError`` mean 400."""
        verify_signature(payload, signature_header, self._secret, now_s=self._clock())
        event = msgspec.json.decode(payload, type=_Event)
        record = EventRecord(event.id, "stripe", event.type)
        if await self._service.records.event_seen(event.id):
            return WebhookOutcome(event.id, event.type, "duplicate_event")
        handler = self._handlers().get(event.type)
        if handler is None:
            return WebhookOutcome(event.id, event.type, "ignored")
        return await handler(record, event.data.object)

    def _handlers(
        self,
    ) -> dict[str, Callable[[EventRecord, msgspec.Raw], Awaitable[WebhookOutcome]]]:
        return {
            "checkout.session.completed": self._checkout_completed,
            "checkout.session.async_payment_succeeded": self._checkout_paid,
            "checkout.session.async_payment_failed": self._checkout_failed,
            "payment_intent.succeeded": self._intent_succeeded,
            "payment_intent.payment_failed": self._intent_failed,
        }

    async def _checkout_completed(self, record: EventRecord, raw: msgspec.Raw) -> WebhookOutcome:
        session = msgspec.json.decode(raw, type=_CheckoutSession)
        if session.payment_status != "paid":
            # e.g. a bank debit still clearing: async_payment_succeeded will follow.
            await self._save_customer(session)
            await self._service.remember(record, f"awaiting_payment:{session.payment_status}")
            return WebhookOutcome(record.event_id, record.type, "awaiting_payment")
        return await self._credit_session(record, session)

    async def _checkout_paid(self, record: EventRecord, raw: msgspec.Raw) -> WebhookOutcome:
        return await self._credit_session(record, msgspec.json.decode(raw, type=_CheckoutSession))

    async def _checkout_failed(self, record: EventRecord, raw: msgspec.Raw) -> WebhookOutcome:
        session = msgspec.json.decode(raw, type=_CheckoutSession)
        await self._service.record_failure(
            "stripe", session.id, "async payment failed", actor=ACTOR, event=record
        )
        return WebhookOutcome(record.event_id, record.type, "failed")

    async def _credit_session(
        self, record: EventRecord, session: _CheckoutSession
    ) -> WebhookOutcome:
        account_id = session.client_reference_id or session.metadata.get("relay_account_id")
        await self._save_customer(session)
        return await self._credit(
            record, account_id, session.id, "topup", session.currency, session.amount_total
        )

    async def _intent_succeeded(self, record: EventRecord, raw: msgspec.Raw) -> WebhookOutcome:
        intent = msgspec.json.decode(raw, type=_PaymentIntent)
        account_id = intent.metadata.get("relay_account_id")
        if account_id and intent.customer and account_id in self._service.accounts.accounts:
            # The card a checkout saved: what auto top-up will charge later.
            await self._service.save_customer(account_id, intent.customer, intent.payment_method)
        if not intent.metadata.get("relay_auto_topup"):
            await self._service.remember(record, "ignored")
            return WebhookOutcome(record.event_id, record.type, "ignored")
        amount = intent.amount_received if intent.amount_received is not None else intent.amount
        return await self._credit(
            record, account_id, intent.id, "auto_topup", intent.currency, amount
        )

    async def _intent_failed(self, record: EventRecord, raw: msgspec.Raw) -> WebhookOutcome:
        intent = msgspec.json.decode(raw, type=_PaymentIntent)
        if not intent.metadata.get("relay_auto_topup"):
            return WebhookOutcome(record.event_id, record.type, "ignored")
        error = intent.last_payment_error or _PaymentError()
        reason = error.decline_code or error.code or error.message or "payment failed"
        await self._service.record_failure("stripe", intent.id, reason, actor=ACTOR, event=record)
        return WebhookOutcome(record.event_id, record.type, "failed")

    async def _credit(
        self,
        record: EventRecord,
        account_id: str | None,
        payment_id: str,
        kind: str,
        currency: str,
        amount_minor: int | None,
    ) -> WebhookOutcome:
        service = self._service
        if not account_id or account_id not in service.accounts.accounts:
            log.warning("Stripe payment %s names no known relay account", payment_id)
            await service.remember(record, "unknown_account")
            return WebhookOutcome(record.event_id, record.type, "unknown_account")
        if currency.lower() != service.currency or amount_minor is None or amount_minor <= 0:
            reason = f"unexpected amount or currency {currency!r} (relay takes {service.currency})"
            await service.record_failure("stripe", payment_id, reason, actor=ACTOR, event=record)
            return WebhookOutcome(record.event_id, record.type, "refused")
        paid = PaidPayment.in_minor_units(
            account_id,
            payment_id,
            "auto_topup" if kind == "auto_topup" else "topup",
            currency=currency,
            amount_minor=amount_minor,
        )
        try:
            result = await service.credit(paid, actor=ACTOR, event=record)
        except NotFound:
            await service.remember(record, "unknown_account")
            return WebhookOutcome(record.event_id, record.type, "unknown_account")
        outcome = "credited" if result.credited else "already_credited"
        return WebhookOutcome(
            record.event_id, record.type, outcome, result.credited, result.receipt_number
        )

    async def _save_customer(self, session: _CheckoutSession) -> None:
        account_id = session.client_reference_id
        if session.customer and account_id and account_id in self._service.accounts.accounts:
            await self._service.save_customer(account_id, session.customer, None)
