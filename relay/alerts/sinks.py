"""Delivering one alert to one ``[[alerts]]`` sink: webhook, Slack-compatible, or email.

A generic webhook receives the alert as JSON, signed with HMAC-SHA256 over the exact body
(``x-relay-signature: sha256=<hex>``, key from ``secret_env``) so the receiver can check
it came from relay. A Slack-compatible webhook receives ``{"text": ...}``. Email goes
through ``[email]``. Any failure raises ``DeliveryError``; the outbox retries.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

import httpx
import msgspec

from relay.config import AlertConfig, EmailConfig
from relay.mail.smtp import MailError, send_mail

__all__ = ["DeliveryError", "deliver", "sign"]

_ENCODER = msgspec.json.Encoder()


class DeliveryError(RuntimeError):
    pass


def sign(body: bytes, key: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def _text(alert: dict[str, Any]) -> str:
    return f"[relay] {alert['message']}"


async def deliver(
    sink: AlertConfig,
    alert: dict[str, Any],
    http: httpx.AsyncClient,
    email: EmailConfig | None,
) -> None:
    if sink.sink == "email":
        if email is None:
            raise DeliveryError("no [email] section")
        lines = [alert["message"], ""]
        lines += [f"{name}: {value}" for name, value in sorted(alert["detail"].items())]
        lines += ["", f"event: {alert['event']}", f"at: {alert['created_at']}"]
        try:
            await send_mail(email, sink.to, _text(alert), "\n".join(lines))
        except MailError as exc:
            raise DeliveryError(str(exc)) from None
        return
    assert sink.url is not None
    body = _ENCODER.encode(alert if sink.sink == "webhook" else {"text": _text(alert)})
    headers = {"content-type": "application/json", "user-agent": "relay-alerts"}
    if sink.sink == "webhook" and sink.secret_env:
        key = os.environ.get(sink.secret_env, "")
        if key:
            headers["x-relay-signature"] = sign(body, key.encode())
    try:
        response = await http.post(sink.url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
    if response.status_code >= 300:
        raise DeliveryError(f"the sink answered HTTP {response.status_code}")
