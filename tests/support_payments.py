"""Helpers for the payments tests: a fake of Stripe's API and relay served with payments.

``FakeStripe`` is an ``httpx.MockTransport`` handler that answers the few Stripe calls
relay makes (Checkout Sessions, PaymentIntents, a customer's cards) and records them.
``run_payments_relay`` serves relay like ``support_accounts.run_relay`` with the payment
routes and the payments runtime added exactly as the lead wires them into relay/app.py.
``signed_event`` builds a webhook delivery signed the way Stripe signs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from conftest import config_text
from support_accounts import Relay, run_relay

from relay.config import Config, parse_config
from relay.payments.runtime import PaymentsRuntime
from relay.payments.webhook import sign_payload

__all__ = [
    "SECRET_KEY",
    "WEBHOOK_SECRET",
    "FakeStripe",
    "PaymentsRelay",
    "checkout_completed",
    "payments_config",
    "run_payments_relay",
    "signed_event",
]

SECRET_KEY = "sk_test_fake_secret"
WEBHOOK_SECRET = "whsec_test_fake_secret"
PAYMENTS_SECTION = """
[payments]
provider = "stripe"
api_base = "https://stripe.test"
currency = "usd"
min_topup_usd = "5"
max_topup_usd = "500"
success_url = "https://relay.test/console/billing?paid=1"
cancel_url = "https://relay.test/console/billing"
seller_name = "Relay <Test> Ltd"
seller_address = "1 Main Street\\nSpringfield"
seller_tax_id = "GB123"
"""


def payments_config(tmp_path: Path, section: str = PAYMENTS_SECTION) -> Config:
    text = config_text(tmp_path / "relay.db", extra=section)
    return parse_config(text, base_dir=str(tmp_path))


@dataclass
class StripeCall:
    method: str
    path: str
    form: dict[str, str]
    headers: dict[str, str]


@dataclass
class FakeStripe:
    """Answers like Stripe; ``decline`` makes off-session PaymentIntents fail with 402."""

    calls: list[StripeCall] = field(default_factory=list)
    decline: str | None = None
    delay_s: float = 0.0
    cards: list[str] = field(default_factory=lambda: ["pm_card_1"])
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def of(self, path: str) -> list[StripeCall]:
        return [call for call in self.calls if call.path == path]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # keeps a refill in flight during a burst
        form = dict(parse_qsl(request.content.decode())) if request.content else {}
        path = request.url.path
        self.calls.append(StripeCall(request.method, path, form, dict(request.headers)))
        if request.headers.get("authorization") != f"Bearer {SECRET_KEY}":
            return httpx.Response(401, json={"error": {"message": "bad key"}})
        if path == "/v1/checkout/sessions":
            number = next(self._ids)
            return httpx.Response(
                200,
                json={"id": f"cs_test_{number}", "url": f"https://checkout.test/{number}"},
            )
        if path == "/v1/payment_intents":
            return self._payment_intent(form)
        if path == "/v1/payment_methods":
            return httpx.Response(200, json={"data": [{"id": card} for card in self.cards]})
        return httpx.Response(404, json={"error": {"message": f"no route {path}"}})

    def _payment_intent(self, form: dict[str, str]) -> httpx.Response:
        intent_id = f"pi_test_{next(self._ids)}"
        if self.decline:
            error = {
                "message": "Your card was declined.",
                "code": "card_declined",
                "decline_code": self.decline,
                "payment_intent": {"id": intent_id, "status": "requires_payment_method"},
            }
            return httpx.Response(402, json={"error": error})
        body = {
            "id": intent_id,
            "status": "succeeded",
            "amount": int(form["amount"]),
            "currency": form["currency"],
            "payment_method": form.get("payment_method"),
        }
        return httpx.Response(200, json=body)


def signed_event(
    event: dict[str, Any], *, secret: str = WEBHOOK_SECRET, at: int | None = None
) -> tuple[bytes, dict[str, str]]:
    payload = json.dumps(event, separators=(",", ":")).encode()
    header = sign_payload(payload, secret, int(time.time()) if at is None else at)
    return payload, {"stripe-signature": header, "content-type": "application/json"}


def checkout_completed(
    event_id: str,
    session_id: str,
    account_id: str,
    *,
    amount_minor: int = 2500,
    payment_status: str = "paid",
    type_: str = "checkout.session.completed",
) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "type": type_,
        "data": {
            "object": {
                "id": session_id,
                "object": "checkout.session",
                "amount_total": amount_minor,
                "currency": "usd",
                "client_reference_id": account_id,
                "customer": "cus_test_1",
                "payment_status": payment_status,
                "payment_intent": "pi_for_" + session_id,
                "metadata": {"relay_account_id": account_id},
            }
        },
    }


@dataclass
class PaymentsRelay:
    relay: Relay
    stripe: FakeStripe

    @property
    def runtime(self) -> PaymentsRuntime:
        runtime: PaymentsRuntime = self.relay._capture.state["payments"]
        return runtime

    async def deliver(self, event: dict[str, Any], **sign: Any) -> httpx.Response:
        payload, headers = signed_event(event, **sign)
        return await self.relay.client.post("/webhooks/stripe", content=payload, headers=headers)

    async def audit_ok(self) -> bool:
        report = (await self.relay.client.get("/admin/audit/verify")).json()
        return bool(report["ok"])


@contextlib.asynccontextmanager
async def run_payments_relay(
    config: Config, monkeypatch: pytest.MonkeyPatch, stripe: FakeStripe | None = None
) -> AsyncIterator[PaymentsRelay]:
    monkeypatch.setenv("RELAY_ADMIN_TOKEN", "test-admin-token")
    monkeypatch.setenv("STRIPE_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    fake = stripe or FakeStripe()
    async with run_relay(config, stripe_transport=fake.transport()) as served:
        yield PaymentsRelay(served, fake)
