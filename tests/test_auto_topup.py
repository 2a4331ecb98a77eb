"""Auto top-up: one refill under a burst of settlements, the monthly cap, and switching
itself off after three failed charges (with audit rows and console notices)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support_payments import FakeStripe, PaymentsRelay, payments_config, run_payments_relay

SETTLEMENT_MICROS = 200_000


def _intent_event(event_id: str, account_id: str, **extra: Any) -> dict[str, Any]:
    intent = {
        "id": extra.pop("intent_id", "pi_checkout"),
        "object": "payment_intent",
        "amount": 2500,
        "amount_received": 2500,
        "currency": "usd",
        "customer": "cus_saved",
        "payment_method": "pm_saved",
        "metadata": {"relay_account_id": account_id, **extra.pop("metadata", {})},
    }
    return {"id": event_id, "type": "payment_intent.succeeded", "data": {"object": intent}}


async def _funded_with_card(p: PaymentsRelay, *, cap_usd: str = "100") -> str:
    account = await p.relay.create_account("acme")
    account_id = str(account["id"])
    assert (await p.relay.credit(account_id, "10", "seed")).status_code == 201
    # A checkout's PaymentIntent saved the card: that is what auto top-up charges.
    saved = await p.deliver(_intent_event("evt_card", account_id))
    assert saved.json()["outcome"] == "ignored"
    settings = {"enabled": True, "trigger_usd": "5", "amount_usd": "20", "monthly_cap_usd": cap_usd}
    response = await p.relay.client.put(f"/admin/accounts/{account_id}/auto-topup", json=settings)
    assert response.status_code == 200, response.text
    return account_id


async def _settle_burst(p: PaymentsRelay, account_id: str, count: int) -> int:
    """``count`` concurrent settlements, each followed by the post-settlement check."""
    wallet, auto = p.relay.state.wallet, p.runtime.auto_topup

    async def one(index: int) -> bool:
        hold = wallet.hold(
            account_id, None, estimate_micros=SETTLEMENT_MICROS, worst_case_micros=SETTLEMENT_MICROS
        )
        await asyncio.sleep(0)
        wallet.settle(hold, SETTLEMENT_MICROS, reference=f"req-{account_id}-{index}")
        return auto.check(account_id)

    scheduled = await asyncio.gather(*(one(i) for i in range(count)))
    return sum(scheduled)


async def test_a_burst_of_50_settlements_triggers_exactly_one_refill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stripe = FakeStripe(delay_s=0.05)
    async with run_payments_relay(payments_config(tmp_path), monkeypatch, stripe) as p:
        account_id = await _funded_with_card(p)
        assert await _settle_burst(p, account_id, 50) == 1
        assert p.runtime.auto_topup.in_flight(account_id)
        await p.runtime.auto_topup.wait_idle()
        assert await _settle_burst(p, account_id, 5) == 0  # back above the trigger

        [call] = stripe.of("/v1/payment_intents")
        assert call.form["amount"] == "2000" and call.form["currency"] == "usd"
        assert call.form["customer"] == "cus_saved"
        assert call.form["payment_method"] == "pm_saved"
        assert call.form["off_session"] == "true" and call.form["confirm"] == "true"
        assert call.form["metadata[relay_auto_topup]"] == "1"
        assert call.headers["idempotency-key"].startswith("relay-auto-pay_")

        balance = p.relay.state.wallet.snapshot(account_id).balance_micros
        assert balance == 10_000_000 - 55 * SETTLEMENT_MICROS + 20_000_000
        [payment] = await p.relay.rows("SELECT * FROM payments WHERE kind = 'auto_topup'")
        assert payment["status"] == "paid" and payment["receipt_number"]
        assert payment["provider_payment_id"] == "pi_test_1"
        mail = await p.relay.rows(
            "SELECT ref FROM billing_mail WHERE account_id = ?", (account_id,)
        )
        assert payment["receipt_number"] in [row["ref"] for row in mail]  # its receipt mail

        # Stripe's webhook for the same PaymentIntent arrives later: nothing more credited.
        late = _intent_event(
            "evt_auto", account_id, intent_id="pi_test_1", metadata={"relay_auto_topup": "1"}
        )
        late["data"]["object"]["amount"] = late["data"]["object"]["amount_received"] = 2000
        assert (await p.deliver(late)).json()["outcome"] == "already_credited"
        credits = await p.relay.rows("SELECT * FROM ledger WHERE reference = 'pi_test_1'")
        assert len(credits) == 1
        assert await p.audit_ok()


async def test_three_failures_in_a_row_turn_auto_topup_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stripe = FakeStripe(decline="insufficient_funds")
    async with run_payments_relay(payments_config(tmp_path), monkeypatch, stripe) as p:
        account_id = await _funded_with_card(p)
        for attempt in range(3):
            scheduled = await _settle_burst(p, account_id, 30 if attempt == 0 else 1)
            assert scheduled == 1
            await p.runtime.auto_topup.wait_idle()
        assert await _settle_burst(p, account_id, 1) == 0
        assert len(stripe.of("/v1/payment_intents")) == 3

        settings = (await p.relay.client.get(f"/admin/accounts/{account_id}/auto-topup")).json()
        assert settings["enabled"] is False and settings["consecutive_failures"] == 3
        payments = await p.relay.rows("SELECT * FROM payments WHERE kind = 'auto_topup'")
        assert [row["status"] for row in payments] == ["failed"] * 3
        assert {row["failure_reason"] for row in payments} == {"insufficient_funds"}
        notices = (await p.relay.client.get(f"/admin/accounts/{account_id}/notices")).json()
        messages = [notice["message"] for notice in notices["data"]]
        assert len(messages) == 3 and "now off" in messages[0]
        actions = [row["action"] for row in await p.relay.audit()]
        assert actions.count("payment.failed") == 3 and actions.count("auto_topup.disabled") == 1

        notice_id = notices["data"][0]["id"]
        path = f"/admin/accounts/{account_id}/notices/{notice_id}/dismiss"
        assert (await p.relay.client.post(path)).json() == {"dismissed": True}
        left = (await p.relay.client.get(f"/admin/accounts/{account_id}/notices")).json()
        assert len(left["data"]) == 2
        assert await p.audit_ok()


async def test_the_monthly_cap_stops_refills_with_one_notice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stripe = FakeStripe()
    async with run_payments_relay(payments_config(tmp_path), monkeypatch, stripe) as p:
        account_id = await _funded_with_card(p, cap_usd="20")
        assert await _settle_burst(p, account_id, 30) == 1
        await p.runtime.auto_topup.wait_idle()
        for count in (100, 5):  # below the trigger again, twice: the cap is used up
            await _settle_burst(p, account_id, count)
            await p.runtime.auto_topup.wait_idle()
        assert len(stripe.of("/v1/payment_intents")) == 1
        notices = await p.relay.rows("SELECT kind FROM notices WHERE account_id = ?", (account_id,))
        assert notices == [{"kind": "auto_topup_cap"}]


async def test_settings_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as p:
        account = await p.relay.create_account("acme")
        path = f"/admin/accounts/{account['id']}/auto-topup"
        assert (await p.relay.client.get(path)).json() == {"enabled": False}
        base = {"enabled": True, "trigger_usd": "5", "amount_usd": "20", "monthly_cap_usd": "10"}
        assert (await p.relay.client.put(path, json=base)).status_code == 400  # cap < amount
        too_big = {**base, "amount_usd": "600", "monthly_cap_usd": "1000"}
        assert (await p.relay.client.put(path, json=too_big)).status_code == 400
        assert not p.runtime.auto_topup.check(account["id"])  # nothing configured
