"""Payments in cluster mode (issue 18): two instances, one PostgreSQL, one credit.

Two relays are served in this process on one cluster config (each its own pool, lease and
Redis client: two instances as far as PostgreSQL and Redis can tell) against the
throwaway engines of tests/support_cluster.py. The checks read PostgreSQL directly: the
ledger's rows, the balance its trigger maintains, payments, receipts, events, mail rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support_payments import (
    PAYMENTS_SECTION,
    FakeStripe,
    PaymentsRelay,
    checkout_completed,
    payments_config,
    run_payments_relay,
    signed_event,
)

from relay.cluster.job_runner import RUNNER_LOCK
from relay.config import Config

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")


def cluster_payments_config(tmp_path: Path, dsn: str, redis_port: int) -> Config:
    db = 1 + secrets.randbelow(15)
    section = (
        PAYMENTS_SECTION
        # The elected instance's jobs (auto top-up) run every second.
        + "\n[alerts_settings]\ncheck_interval_s = 1\n"
        + f'\n[storage]\nurl = "{dsn}"\n'
        + f'\n[cluster]\nredis_url = "redis://127.0.0.1:{redis_port}/{db}"\nlease_s = 3\n'
    )
    return payments_config(tmp_path, section)


@contextlib.asynccontextmanager
async def two_instances(
    tmp_path: Path, pg_database: str, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[PaymentsRelay, PaymentsRelay, FakeStripe]]:
    config = cluster_payments_config(tmp_path, pg_database, redis_server.port)
    stripe = FakeStripe()
    async with (
        run_payments_relay(config, monkeypatch, stripe) as one,
        run_payments_relay(config, monkeypatch, stripe) as two,
    ):
        yield one, two, stripe


async def _account(relay: PaymentsRelay, name: str) -> str:
    response = await relay.relay.client.post("/admin/accounts", json={"name": name})
    assert response.status_code == 201, response.text
    account_id: str = response.json()["id"]
    return account_id


async def _deliver_raw(relay: PaymentsRelay, payload: bytes, headers: dict[str, str]) -> Any:
    response = await relay.relay.client.post("/webhooks/stripe", content=payload, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def _money(conn: Any, account_id: str) -> tuple[int, int, int]:
    """(balance the trigger maintains, Σ ledger rows, credit rows)."""
    balance = await conn.fetchval("SELECT balance_micros FROM accounts WHERE id = $1", account_id)
    total = await conn.fetchval(
        "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE account_id = $1", account_id
    )
    credits = await conn.fetchval(
        "SELECT count(*) FROM ledger WHERE account_id = $1 AND kind = 'credit'", account_id
    )
    return int(balance), int(total), int(credits)


async def test_one_event_posted_to_two_instances_at_once_credits_once(
    tmp_path: Path, pg_database: str, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server, monkeypatch) as (one, two, _):
        account = await _account(one, "acme")
        conn = await asyncpg.connect(pg_database)
        try:
            for round_ in range(5):
                # Stripe's two events for one paid session (completed, then the async
                # success), each delivered to both instances at once: four deliveries past
                # the event-id check race to the ledger's credit-once index.
                completed = signed_event(
                    checkout_completed(f"evt_{round_}", f"cs_{round_}", account)
                )
                succeeded = signed_event(
                    checkout_completed(
                        f"evt_{round_}_async",
                        f"cs_{round_}",
                        account,
                        type_="checkout.session.async_payment_succeeded",
                    )
                )
                answers = await asyncio.gather(
                    *(
                        _deliver_raw(relay, *delivery)
                        for delivery in (completed, succeeded)
                        for relay in (one, two)
                    )
                )
                credited = [a for a in answers if a["credited"]]
                assert len(credited) == 1, answers
                assert {a["outcome"] for a in answers} <= {
                    "credited",
                    "already_credited",
                    "duplicate_event",
                }
            balance, total, credits = await _money(conn, account)
            assert (balance, total, credits) == (5 * 25_000_000, 5 * 25_000_000, 5)
            payments = await conn.fetch(
                "SELECT status, receipt_number FROM payments WHERE account_id = $1", account
            )
            assert len(payments) == 5
            assert all(p["status"] == "paid" and p["receipt_number"] for p in payments)
            numbers = sorted(
                await conn.fetchval(
                    "SELECT array_agg(number) FROM receipts WHERE account_id = $1", account
                )
            )
            assert numbers == sorted({p["receipt_number"] for p in payments})
            seqs = sorted(await conn.fetchval("SELECT array_agg(seq) FROM receipts"))
            assert seqs == list(range(1, 6)), "receipt numbers run without gaps across instances"
            mails = await conn.fetchval(
                "SELECT count(*) FROM billing_mail WHERE kind = 'receipt' AND account_id = $1",
                account,
            )
            assert mails == 5
            events = await conn.fetchval("SELECT count(*) FROM payment_events")
            assert events == 10
        finally:
            await conn.close()
        # Both instances answer the same wallet, payments and receipts from PostgreSQL.
        for relay in (one, two):
            client = relay.relay.client
            wallet = (await client.get(f"/admin/accounts/{account}/wallet")).json()
            assert wallet["balance_micros"] == 125_000_000
            listed = (await client.get(f"/admin/accounts/{account}/payments")).json()["data"]
            assert len(listed) == 5
            receipts = (await client.get(f"/admin/accounts/{account}/receipts")).json()["data"]
            assert len(receipts) == 5
            shown = await client.get(f"/admin/receipts/{receipts[0]['number']}?format=html")
            assert shown.status_code == 200 and receipts[0]["number"] in shown.text


async def test_a_replay_on_the_other_instance_is_a_duplicate_and_a_credit_failure_rolls_back(
    tmp_path: Path, pg_database: str, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server, monkeypatch) as (one, two, _):
        account = await _account(one, "acme")
        first = await one.deliver(checkout_completed("evt_a", "cs_a", account))
        assert first.json()["outcome"] == "credited"
        again = await two.deliver(checkout_completed("evt_a", "cs_a", account))
        assert again.json()["outcome"] == "duplicate_event"
        # A new event for the same paid session (Stripe's async success after completed).
        late = checkout_completed(
            "evt_b", "cs_a", account, type_="checkout.session.async_payment_succeeded"
        )
        assert (await two.deliver(late)).json()["outcome"] == "already_credited"

        # A credit whose transaction fails after the ledger row: nothing of it stays.
        broken = checkout_completed("evt_c", "cs_c", account)

        async def refuse(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("receipt numbering failed")

        with monkeypatch.context() as patch:
            patch.setattr("relay.payments.pg_backend.issue_receipt", refuse)
            response = await two.deliver(broken)
        assert response.status_code == 500, response.text
        conn = await asyncpg.connect(pg_database)
        try:
            assert await _money(conn, account) == (25_000_000, 25_000_000, 1)
            assert await conn.fetchval("SELECT count(*) FROM payments") == 1
            assert (
                await conn.fetchval("SELECT count(*) FROM payment_events WHERE event_id = 'evt_c'")
                == 0
            )
        finally:
            await conn.close()
        # Delivered again (Stripe retries a 500), it credits once.
        assert (await one.deliver(broken)).json()["outcome"] == "credited"
        wallet = (await one.relay.client.get(f"/admin/accounts/{account}/wallet")).json()
        assert wallet["balance_micros"] == 50_000_000


async def test_checkout_on_one_instance_is_paid_by_a_webhook_on_the_other(
    tmp_path: Path, pg_database: str, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server, monkeypatch) as (one, two, _):
        account = await _account(one, "acme")
        started = await one.relay.client.post(
            f"/admin/accounts/{account}/checkout", json={"amount_usd": "12.50"}
        )
        assert started.status_code == 201, started.text
        session = started.json()["payment"]["provider_payment_id"]
        listed = (await two.relay.client.get(f"/admin/accounts/{account}/payments")).json()
        assert [p["status"] for p in listed["data"]] == ["pending"]
        paid = checkout_completed("evt_paid", session, account, amount_minor=1250)
        assert (await two.deliver(paid)).json()["outcome"] == "credited"
        listed = (await one.relay.client.get(f"/admin/accounts/{account}/payments")).json()
        assert [(p["status"], p["amount_micros"]) for p in listed["data"]] == [("paid", 12_500_000)]
        # Auto top-up settings written through one instance are read through the other.
        settings = {
            "enabled": True,
            "trigger_usd": "5",
            "amount_usd": "20",
            "monthly_cap_usd": "100",
        }
        put = await one.relay.client.put(f"/admin/accounts/{account}/auto-topup", json=settings)
        assert put.status_code == 200, put.text
        shown = (await two.relay.client.get(f"/admin/accounts/{account}/auto-topup")).json()
        assert (shown["enabled"], shown["trigger_micros"]) == (True, 5_000_000)
        notices = await two.relay.client.get(f"/admin/accounts/{account}/notices")
        assert notices.status_code == 200 and notices.json()["data"] == []


async def test_a_manual_credit_sent_to_both_instances_at_once_credits_once_with_a_receipt(
    tmp_path: Path, pg_database: str, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server, monkeypatch) as (one, two, _):
        account = await _account(one, "acme")
        body = {"amount_usd": "7.25", "reference": "wire-1", "note": "bank wire"}
        answers = await asyncio.gather(
            *(
                relay.relay.client.post(f"/admin/accounts/{account}/credits", json=body)
                for relay in (one, two, one, two)
            )
        )
        assert sorted(a.status_code for a in answers) == [200, 200, 200, 201]
        created = next(a.json() for a in answers if a.status_code == 201)
        assert created["wallet"]["balance_micros"] == 7_250_000
        conn = await asyncpg.connect(pg_database)
        try:
            assert await _money(conn, account) == (7_250_000, 7_250_000, 1)
            row = await conn.fetchrow(
                "SELECT provider, kind, status, receipt_number FROM payments WHERE account_id = $1",
                account,
            )
            assert tuple(row) == ("manual", "manual", "paid", created["receipt_number"])
            note = await conn.fetchval("SELECT note FROM ledger WHERE account_id = $1", account)
            assert note == "bank wire"
        finally:
            await conn.close()


def _card_saved(account_id: str) -> dict[str, Any]:
    """The PaymentIntent of a checkout that saved a card (what auto top-up charges)."""
    intent = {
        "id": "pi_checkout",
        "amount": 2500,
        "currency": "usd",
        "customer": "cus_saved",
        "payment_method": "pm_saved",
        "metadata": {"relay_account_id": account_id},
    }
    return {"id": "evt_card", "type": "payment_intent.succeeded", "data": {"object": intent}}


async def _eventually(check: Any, timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def _only_the_runners_lock(conn: Any) -> bool:
    held = await conn.fetch(
        "SELECT (classid::bigint << 32) | objid::bigint AS key FROM pg_locks"
        " WHERE locktype = 'advisory' AND granted AND objsubid = 1"
    )
    return [row["key"] for row in held] == [RUNNER_LOCK]


async def test_auto_top_up_charges_once_across_instances_from_postgresql_balances(
    tmp_path: Path, pg_database: str, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server, monkeypatch) as (
        one,
        two,
        stripe,
    ):
        account = await _account(one, "acme")
        seed = {"amount_usd": "10", "reference": "seed"}
        assert (
            await one.relay.client.post(f"/admin/accounts/{account}/credits", json=seed)
        ).status_code == 201
        assert (await two.deliver(_card_saved(account))).json()["outcome"] == "ignored"
        settings = {
            "enabled": True,
            "trigger_usd": "20",
            "amount_usd": "25",
            "monthly_cap_usd": "100",
        }
        path = f"/admin/accounts/{account}/auto-topup"
        assert (await one.relay.client.put(path, json=settings)).status_code == 200
        conn = await asyncpg.connect(pg_database)
        try:

            async def credits(count: int) -> bool:
                return (await _money(conn, account))[2] == count

            # The elected instance sees the balance ($10 < $20) and refills once.
            await _eventually(lambda: credits(2))
            await asyncio.sleep(2.5)  # more rounds on whichever instance holds the lock
            assert len(stripe.of("/v1/payment_intents")) == 1
            assert await _money(conn, account) == (35_000_000, 35_000_000, 2)
            paid = await conn.fetch(
                "SELECT status FROM payments WHERE account_id = $1 AND kind = 'auto_topup'",
                account,
            )
            assert [row["status"] for row in paid] == ["paid"]
            # It was the one election's leader: the job runner's lock is the only advisory
            # lock held between rounds, by one of the two instances.
            await _eventually(lambda: _only_the_runners_lock(conn))

            # Both instances sweep at once (besides the elected one's round): one refill.
            settings["trigger_usd"] = "50"
            assert (await two.relay.client.put(path, json=settings)).status_code == 200
            runtimes = (one.runtime.auto_topup, two.runtime.auto_topup)
            await asyncio.gather(*(auto.sweep() for auto in runtimes))
            await asyncio.gather(*(auto.wait_idle() for auto in runtimes))
            await _eventually(lambda: credits(3))
            assert len(stripe.of("/v1/payment_intents")) == 2
            assert await _money(conn, account) == (60_000_000, 60_000_000, 3)
        finally:
            await conn.close()


async def test_three_declined_refills_switch_auto_top_up_off_once_across_instances(
    tmp_path: Path, pg_database: str, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server, monkeypatch) as (
        one,
        two,
        stripe,
    ):
        stripe.decline = "card_declined"
        account = await _account(one, "acme")
        assert (await two.deliver(_card_saved(account))).json()["outcome"] == "ignored"
        settings = {
            "enabled": True,
            "trigger_usd": "20",
            "amount_usd": "25",
            "monthly_cap_usd": "500",
        }
        path = f"/admin/accounts/{account}/auto-topup"
        assert (await one.relay.client.put(path, json=settings)).status_code == 200
        conn = await asyncpg.connect(pg_database)
        try:

            async def switched_off() -> bool:
                row = await conn.fetchrow(
                    "SELECT enabled, consecutive_failures FROM auto_topups WHERE account_id = $1",
                    account,
                )
                return tuple(row) == (0, 3)

            await _eventually(switched_off)
            await asyncio.sleep(2.5)  # more rounds: nothing more is charged
            assert len(stripe.of("/v1/payment_intents")) == 3
            statuses = await conn.fetch(
                "SELECT status FROM payments WHERE account_id = $1 AND kind = 'auto_topup'",
                account,
            )
            assert [row["status"] for row in statuses] == ["failed"] * 3
            assert await _money(conn, account) == (0, 0, 0)
        finally:
            await conn.close()
        notices = (await two.relay.client.get(f"/admin/accounts/{account}/notices")).json()
        messages = [n["message"] for n in notices["data"]]
        assert len(messages) == 3 and "Auto top-up is now off" in messages[0]
        shown = (await two.relay.client.get(path)).json()
        assert (shown["enabled"], shown["consecutive_failures"]) == (False, 3)
