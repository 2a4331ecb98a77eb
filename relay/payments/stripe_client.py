"""A small client for the few Stripe REST calls relay makes.

Stripe takes form-encoded bodies with bracketed keys (``line_items[0][price_data][currency]``),
a bearer secret key, and an ``Idempotency-Key`` header that makes a retried POST return
the first answer instead of charging twice. The transport is injectable so tests answer
with a local fake of the API; production uses httpx's default transport (this is not
the hot path: a few calls per top-up). Error messages never include the secret key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec

__all__ = ["CheckoutSession", "PaymentIntent", "StripeClient", "StripeError", "form_encode"]

FormValue = str | int | bool | Mapping[str, Any] | list[Any]


class StripeError(Exception):
    """Stripe refused a call (``status`` is 0 when it could not be reached)."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        decline_code: str | None = None,
        payment_intent_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.decline_code = decline_code
        self.payment_intent_id = payment_intent_id

    @property
    def reason(self) -> str:
        """A short, secret-free reason for a payment row and a notice."""
        return self.decline_code or self.code or str(self)


class CheckoutSession(msgspec.Struct, frozen=True):
    id: str
    url: str | None = None
    customer: str | None = None


class PaymentIntent(msgspec.Struct, frozen=True):
    id: str
    status: str
    amount: int = 0
    currency: str = ""
    payment_method: str | None = None


class _PaymentMethod(msgspec.Struct):
    id: str


class _PaymentMethodList(msgspec.Struct):
    data: list[_PaymentMethod] = []


class _ErrorDetail(msgspec.Struct):
    message: str = "Stripe error"
    code: str | None = None
    decline_code: str | None = None
    payment_intent: dict[str, Any] | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


def form_encode(params: Mapping[str, FormValue], prefix: str = "") -> list[tuple[str, str]]:
    """Flatten nested params the way Stripe expects: ``a[b][0][c]=v``."""
    pairs: list[tuple[str, str]] = []
    for name, value in params.items():
        key = f"{prefix}[{name}]" if prefix else name
        pairs.extend(_encode_value(key, value))
    return pairs


def _encode_value(key: str, value: FormValue) -> list[tuple[str, str]]:
    if isinstance(value, Mapping):
        return form_encode(value, key)
    if isinstance(value, list):
        pairs: list[tuple[str, str]] = []
        for index, item in enumerate(value):
            pairs.extend(_encode_value(f"{key}[{index}]", item))
        return pairs
    if isinstance(value, bool):
        return [(key, "true" if value else "false")]
    return [(key, str(value))]


class StripeClient:
    """``await client.aclose()`` when done (the lifespan does)."""

    def __init__(
        self,
        secret_key: str,
        *,
        api_base: str = "https://api.stripe.com",
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=api_base.rstrip("/"),
            headers={"Authorization": f"Bearer {secret_key}"},
            timeout=timeout_s,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def create_checkout_session(
        self,
        *,
        account_id: str,
        amount_minor: int,
        currency: str,
        success_url: str,
        cancel_url: str,
        customer_id: str | None,
        idempotency_key: str,
        product_name: str = "relay API credit",
    ) -> CheckoutSession:
        metadata = {"relay_account_id": account_id}
        params: dict[str, FormValue] = {
            "mode": "payment",
            "client_reference_id": account_id,
            "success_url": success_url,
            "cancel_url": cancel_url,
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": currency,
                        "unit_amount": amount_minor,
                        "product_data": {"name": product_name},
                    },
                }
            ],
            "metadata": metadata,
            # Saves the card on the customer so auto top-up can charge it off-session.
            "payment_intent_data": {"setup_future_usage": "off_session", "metadata": metadata},
        }
        if customer_id:
            params["customer"] = customer_id
        else:
            params["customer_creation"] = "always"
        body = await self._post("/v1/checkout/sessions", params, idempotency_key)
        return msgspec.json.decode(body, type=CheckoutSession)

    async def create_off_session_payment(
        self,
        *,
        account_id: str,
        amount_minor: int,
        currency: str,
        customer_id: str,
        payment_method_id: str,
        idempotency_key: str,
    ) -> PaymentIntent:
        params: dict[str, FormValue] = {
            "amount": amount_minor,
            "currency": currency,
            "customer": customer_id,
            "payment_method": payment_method_id,
            "confirm": True,
            "off_session": True,
            "metadata": {"relay_account_id": account_id, "relay_auto_topup": "1"},
        }
        body = await self._post("/v1/payment_intents", params, idempotency_key)
        return msgspec.json.decode(body, type=PaymentIntent)

    async def first_card(self, customer_id: str) -> str | None:
        """The id of a card saved on ``customer_id``, if any."""
        response = await self._send(
            "GET",
            "/v1/payment_methods",
            params={"customer": customer_id, "type": "card", "limit": "1"},
        )
        cards = msgspec.json.decode(response.content, type=_PaymentMethodList).data
        return cards[0].id if cards else None

    async def _post(
        self, path: str, params: Mapping[str, FormValue], idempotency_key: str
    ) -> bytes:
        response = await self._send(
            "POST",
            path,
            data=form_encode(params),
            headers={"Idempotency-Key": idempotency_key},
        )
        return response.content

    async def _send(
        self,
        method: str,
        path: str,
        *,
        data: list[tuple[str, str]] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        content = None
        send_headers = dict(headers or {})
        if data is not None:
            content = urlencode(data).encode()
            send_headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            response = await self._client.request(
                method, path, content=content, params=params, headers=send_headers
            )
        except httpx.HTTPError as exc:
            raise StripeError(f"cannot reach Stripe: {type(exc).__name__}", status=0) from None
        if response.is_success:
            return response
        raise _error_from(response)


def _error_from(response: httpx.Response) -> StripeError:
    try:
        detail = msgspec.json.decode(response.content, type=_ErrorBody).error
    except msgspec.DecodeError:
        return StripeError(
            f"Stripe answered HTTP {response.status_code}", status=response.status_code
        )
    intent = detail.payment_intent or {}
    intent_id = intent.get("id")
    return StripeError(
        detail.message,
        status=response.status_code,
        code=detail.code,
        decline_code=detail.decline_code,
        payment_intent_id=intent_id if isinstance(intent_id, str) else None,
    )
