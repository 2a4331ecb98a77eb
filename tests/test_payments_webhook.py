"""Stripe top-ups end to end: checkout creation against a fake Stripe, signed webhooks
(valid, forged, stale, re-serialised), replays and duplicates credit once, manual credits."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from support_payments import (
    WEBHOOK_SECRET,
    PaymentsRelay,
    checkout_completed,
    payments_config,
    run_payments_relay,
    signed_event,
)

from relay.config import parse_config
from relay.errors import ConfigError
from relay.payments.store import micros_to_minor, minor_to_micros
from relay.payments.webhook import SignatureError, sign_payload, verify_signature


async def _account(p: PaymentsRelay, name: str = "acme") -> str:
    account = await p.relay.create_account(name)
    return str(account["id"])


async def _credits(p: PaymentsRelay, account_id: str) -> list[dict[str, Any]]:
    return await p.relay.rows(
        "SELECT * FROM ledger WHERE account_id = ? AND kind = 'credit'", (account_id,)
    )


async def test_signed_checkout_completed_credits_once_and_replay_credits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as p:
        account_id = await _account(p)
        event = checkout_completed("evt_1", "cs_live_1", account_id, amount_minor=2550)
        first = await p.deliver(event)
        assert first.status_code == 200, first.text
        assert first.json()["outcome"] == "credited"
        assert first.json()["receipt_number"].startswith("R-")
        replay = await p.deliver(event)
        assert replay.status_code == 200
        assert replay.json()["outcome"] == "duplicate_event"

        credits = await _credits(p, account_id)
        assert [(c["amount_micros"], c["reference"]) for c in credits] == [
            (25_500_000, "cs_live_1")
        ]
        assert p.relay.state.wallet.snapshot(account_id).balance_micros == 25_500_000
        payments = (await p.relay.client.get(f"/admin/accounts/{account_id}/payments")).json()
        [payment] = payments["data"]
        assert payment["status"] == "paid" and payment["kind"] == "topup"
        assert payment["amount_minor"] == 2550 and payment["receipt_number"]
        # The receipt's mail row committed with the credit, once despite the replay.
        mail = await p.relay.rows("SELECT kind, account_id, ref FROM billing_mail")
        assert mail == [
            {"kind": "receipt", "account_id": account_id, "ref": payment["receipt_number"]}
        ]
        assert await p.audit_ok()
        actions = [row["action"] for row in await p.relay.audit()]
        assert actions.count("payment.credit") == 1


@pytest.mark.parametrize(
    "tamper",
    ["wrong-secret", "missing", "stale", "reserialised", "garbage"],
)
async def test_unverifiable_deliveries_get_400_and_credit_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tamper: str
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as p:
        account_id = await _account(p)
        event = checkout_completed("evt_bad", "cs_bad", account_id)
        payload, headers = signed_event(event)
        if tamper == "wrong-secret":
            payload, headers = signed_event(event, secret="whsec_someone_else")
        elif tamper == "missing":
            headers.pop("stripe-signature")
        elif tamper == "stale":
            payload, headers = signed_event(event, at=int(time.time()) - 301)
        elif tamper == "reserialised":
            # The same JSON with different bytes: the signature no longer covers it.
            payload = json.dumps(json.loads(payload), indent=2).encode()
        else:
            headers["stripe-signature"] = "t=abc,v1="
        response = await p.relay.client.post("/webhooks/stripe", content=payload, headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert await _credits(p, account_id) == []
        assert p.relay.state.wallet.snapshot(account_id).balance_micros == 0
        # Not remembered either: the genuine delivery still credits afterwards.
        assert (await p.deliver(event)).json()["outcome"] == "credited"


async def test_a_new_event_id_for_the_same_payment_credits_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as p:
        account_id = await _account(p)
        completed = checkout_completed("evt_a", "cs_same", account_id)
        again = checkout_completed(
            "evt_b", "cs_same", account_id, type_="checkout.session.async_payment_succeeded"
        )
        assert (await p.deliver(completed)).json()["outcome"] == "credited"
        second = await p.deliver(again)
        assert second.status_code == 200
        assert second.json()["outcome"] == "already_credited"
        assert len(await _credits(p, account_id)) == 1
        events = await p.relay.rows("SELECT event_id, outcome FROM payment_events ORDER BY 1")
        assert events == [
            {"event_id": "evt_a", "outcome": "credited"},
            {"event_id": "evt_b", "outcome": "already_credited"},
        ]


async def test_unpaid_then_async_success_credits_only_on_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as p:
        account_id = await _account(p)
        unpaid = checkout_completed("evt_u", "cs_sepa", account_id, payment_status="unpaid")
        answer = await p.deliver(unpaid)
        assert answer.json()["outcome"] == "awaiting_payment"
        assert await _credits(p, account_id) == []
        succeeded = checkout_completed(
            "evt_s", "cs_sepa", account_id, type_="checkout.session.async_payment_succeeded"
        )
        assert (await p.deliver(succeeded)).json()["outcome"] == "credited"
        assert [c["amount_micros"] for c in await _credits(p, account_id)] == [25_000_000]


async def test_unknown_events_are_acknowledged_and_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as p:
        account_id = await _account(p)
        event = {"id": "evt_x", "type": "customer.created", "data": {"object": {"id": "cus_1"}}}
        response = await p.deliver(event)
        assert response.status_code == 200 and response.json()["outcome"] == "ignored"
        wrong_currency = checkout_completed("evt_eur", "cs_eur", account_id)
        wrong_currency["data"]["object"]["currency"] = "eur"
        assert (await p.deliver(wrong_currency)).json()["outcome"] == "refused"
        stranger = checkout_completed("evt_who", "cs_who", "acct_nobody")
        assert (await p.deliver(stranger)).json()["outcome"] == "unknown_account"
        assert await _credits(p, account_id) == []


async def test_checkout_through_the_admin_api_then_webhook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as p:
        account_id = await _account(p)
        path = f"/admin/accounts/{account_id}/checkout"
        response = await p.relay.client.post(path, json={"amount_usd": "25"})
        assert response.status_code == 201, response.text
        assert response.json()["url"] == "https://checkout.test/1"
        [call] = p.stripe.of("/v1/checkout/sessions")
        assert call.headers["authorization"] == "Bearer sk_test_fake_secret"
        assert call.headers["idempotency-key"].startswith("relay-checkout-pay_")
        assert call.form["mode"] == "payment"
        assert call.form["client_reference_id"] == account_id
        assert call.form["metadata[relay_account_id]"] == account_id
        assert call.form["line_items[0][price_data][unit_amount]"] == "2500"
        assert call.form["line_items[0][price_data][currency]"] == "usd"
        assert call.form["payment_intent_data[setup_future_usage]"] == "off_session"
        assert call.form["customer_creation"] == "always"
        assert call.form["success_url"] == "https://relay.test/console/billing?paid=1"

        pending = (await p.relay.client.get(f"/admin/accounts/{account_id}/payments")).json()
        assert [row["status"] for row in pending["data"]] == ["pending"]
        await p.deliver(checkout_completed("evt_c", "cs_test_1", account_id))
        paid = (await p.relay.client.get(f"/admin/accounts/{account_id}/payments")).json()
        assert [row["status"] for row in paid["data"]] == ["paid"]

        for amount in ("4.99", "500.01", "10.001"):
            refused = await p.relay.client.post(path, json={"amount_usd": amount})
            assert refused.status_code == 400, amount
        assert await p.audit_ok()


async def test_manual_credit_records_a_payment_and_a_receipt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as p:
        account_id = await _account(p)
        response = await p.relay.credit(account_id, "12.5", "wire-2026-01")
        assert response.status_code == 201
        assert response.json()["receipt_number"].startswith("R-")
        [payment] = await p.relay.rows("SELECT * FROM payments")
        assert payment["provider"] == "manual" and payment["kind"] == "manual"
        assert payment["provider_payment_id"] == "wire-2026-01"
        assert payment["amount_micros"] == 12_500_000 and payment["status"] == "paid"
        again = await p.relay.credit(account_id, "12.5", "wire-2026-01")
        assert again.json()["credited"] is False
        assert len(await p.relay.rows("SELECT * FROM payments")) == 1
        assert await p.audit_ok()


def test_verify_signature_accepts_any_matching_v1_and_checks_time() -> None:
    payload = b'{"id":"evt_1"}'
    good = sign_payload(payload, WEBHOOK_SECRET, 1_000_000)
    other = sign_payload(payload, "whsec_rotated", 1_000_000).split(",")[1]
    verify_signature(payload, f"{good},{other}", WEBHOOK_SECRET, now_s=1_000_300)
    verify_signature(payload, f"t=1000000,{other},{good.split(',')[1]}", WEBHOOK_SECRET, now_s=1e6)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_signature(payload, good, WEBHOOK_SECRET, now_s=1_000_301)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_signature(payload, good, WEBHOOK_SECRET, now_s=999_699)
    with pytest.raises(SignatureError, match="no signature"):
        verify_signature(payload + b" ", good, WEBHOOK_SECRET, now_s=1_000_000)
    v0_only = good.replace("v1=", "v0=")
    with pytest.raises(SignatureError, match="malformed"):
        verify_signature(payload, v0_only, WEBHOOK_SECRET, now_s=1_000_000)


def test_minor_units_convert_exactly() -> None:
    assert minor_to_micros(2550, "usd") == 25_500_000
    assert minor_to_micros(1, "EUR") == 10_000
    assert micros_to_minor(25_500_000, "gbp") == 2550
    with pytest.raises(ValueError):
        minor_to_micros(100, "jpy")
    with pytest.raises(ValueError):
        micros_to_minor(1, "usd")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('[payments]\ncurrency = "jpy"', "payments.currency"),
        ('[payments]\nmin_topup_usd = "50"\nmax_topup_usd = "10"', "min_topup_usd"),
        ('[payments]\napi_base = "stripe.test"', "api_base"),
        ('[payments]\nsecret_key = "sk_live_x"', "secret_key"),
        ('[payments]\nprovider = "paypal"', "payments.provider"),
    ],
)
def test_payments_config_errors_name_the_key(section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(section)


def test_payments_config_is_optional_and_manual_is_allowed() -> None:
    assert parse_config("").payments is None
    manual = parse_config('[payments]\nprovider = "manual"').payments
    assert manual is not None and manual.provider == "manual"
