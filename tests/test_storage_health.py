"""Fail closed (issue 13) and atomic credits (issue 14 item 4), through the real HTTP app.

An outside connection holds SQLite's write lock past the writer's patience: the answered
requests keep their rows (written once the lock goes), new billable requests and admin
writes get 503 ``storage_unavailable`` with ``retry-after``, ``/healthz`` says why, the
refusals become one aggregated row per key, and relay recovers by itself. A credit either
commits with its payment, receipt and audit row, or changes nothing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import make_config
from support_accounts import Relay, auth, chat_body, run_relay

from relay.storage.db import WriteQueueFull
from relay.usage.refusals import RefusalCounter, database_sink

STALL_S = 0.5


@pytest.fixture
async def relay(tmp_path: Path, admin_token: str) -> AsyncIterator[Relay]:
    config = make_config(tmp_path, server_extra=f"storage_stall_s = {STALL_S}")
    async with run_relay(config) as running:
        yield running


class OutsideLock:
    """Another process's connection holding BEGIN IMMEDIATE on the database file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._locked = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=10)
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._locked.set()
            self._release.wait(30)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    async def __aenter__(self) -> OutsideLock:
        self._thread.start()
        await asyncio.to_thread(self._locked.wait, 10)
        return self

    async def release(self) -> None:
        self._release.set()
        await asyncio.to_thread(self._thread.join)

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


async def balance_equals_ledger(relay: Relay, account_id: str) -> tuple[int, int]:
    wallet = (await relay.client.get(f"/admin/accounts/{account_id}/wallet")).json()
    return wallet["balance_micros"], await relay.ledger_sum(account_id)


async def test_outside_write_lock_fails_closed_and_recovers(relay: Relay, tmp_path: Path) -> None:
    account, key = await relay.funded_key("locked")
    headers = auth(key["secret"])
    async with OutsideLock(tmp_path / "relay.db") as lock:
        answered = await relay.client.post(
            "/v1/chat/completions", json=chat_body(), headers=headers
        )
        assert answered.status_code == 200  # admitted before the stall was known: recorded later
        await asyncio.sleep(STALL_S + 0.3)
        refused = [
            await relay.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
            for _ in range(5)
        ]
        assert {r.status_code for r in refused} == {503}
        assert refused[0].json()["error"]["code"] == "storage_unavailable"
        assert refused[0].headers["retry-after"] == "1"
        health = await relay.client.get("/healthz")
        assert health.status_code == 503 and "storage" in health.json()["reason"]
        credit = await relay.credit(account["id"], "5", "during-lock")
        assert credit.status_code == 503
        assert credit.json()["error"]["code"] == "storage_unavailable"
        await lock.release()
        released = time.monotonic()
        while (await relay.client.get("/healthz")).status_code != 200:
            await asyncio.sleep(0.02)
        recovered_in = time.monotonic() - released
        assert recovered_in < 1.5, recovered_in  # by itself, within a second of draining
    after = await relay.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert after.status_code == 200
    request_id = answered.headers["x-relay-request-id"]
    row = await relay.usage(request_id)
    assert row["status"] == 200 and row["cost_micros"] > 0
    balance, ledger = await balance_equals_ledger(relay, account["id"])
    assert balance == ledger
    # Nothing of the refused top-up exists anywhere.
    assert not await relay.rows("SELECT * FROM payments WHERE provider_payment_id = 'during-lock'")
    assert relay.state.refusals.refused == 5
    relay.state.refusals.flush()
    refusals = await relay.rows(
        "SELECT * FROM usage WHERE error_code = 'storage_unavailable' AND key_id = ?",
        (key["id"],),
    )
    assert [(r["status"], r["units"]) for r in refusals] == [(503, 5)]


async def test_top_up_sent_during_a_short_lock_commits_once_it_is_released(
    relay: Relay, tmp_path: Path
) -> None:
    account, _ = await relay.funded_key("short-lock", "1")
    async with OutsideLock(tmp_path / "relay.db") as lock:
        pending = asyncio.ensure_future(relay.credit(account["id"], "2", "short"))
        await asyncio.sleep(0.3)
        assert not pending.done()
        wallet = (await relay.client.get(f"/admin/accounts/{account['id']}/wallet")).json()
        assert wallet["balance_micros"] == 1_000_000  # not applied before the commit
        await lock.release()
        response = await pending
    assert response.status_code == 201, response.text
    assert await balance_equals_ledger(relay, account["id"]) == (3_000_000, 3_000_000)


async def test_reused_reference_on_another_account_is_its_own_complete_credit(
    relay: Relay,
) -> None:
    a = await relay.create_account("a")
    b = await relay.create_account("b")
    assert (await relay.credit(a["id"], "3", "INV-1")).status_code == 201
    reused = await relay.credit(b["id"], "4", "INV-1")
    assert reused.status_code == 201, reused.text
    assert reused.json()["receipt_number"]
    for account, micros in ((a, 3_000_000), (b, 4_000_000)):
        assert await balance_equals_ledger(relay, account["id"]) == (micros, micros)
        payments = await relay.rows(
            "SELECT status, amount_micros, receipt_number FROM payments WHERE account_id = ?",
            (account["id"],),
        )
        assert [(p["status"], p["amount_micros"]) for p in payments] == [("paid", micros)]
        assert payments[0]["receipt_number"]
    audited = [r["target"] for r in await relay.audit() if r["action"] == "wallet.credit"]
    assert audited == [a["id"], b["id"]]
    again = await relay.credit(b["id"], "4", "INV-1")
    assert again.status_code == 200 and again.json()["credited"] is False
    assert await balance_equals_ledger(relay, b["id"]) == (4_000_000, 4_000_000)


async def test_credit_whose_transaction_fails_changes_nothing(relay: Relay) -> None:
    account = await relay.create_account("fails")
    # Without its receipts table the credit's one transaction fails half-way through.
    state = relay.state
    audit_before = len(await relay.audit())

    def break_receipts(conn: sqlite3.Connection) -> None:
        conn.execute("DROP TABLE receipts")

    await state.db.write(break_receipts)
    response = await relay.credit(account["id"], "7", "broken")
    assert response.status_code == 500
    assert await balance_equals_ledger(relay, account["id"]) == (0, 0)
    assert await relay.rows("SELECT * FROM payments") == []
    assert len(await relay.audit()) == audit_before
    assert not state.wallet.snapshot(account["id"]).balance_micros


class _FullThenFree:
    """A writer queue that is full until ``free`` is set (``Database.enqueue``'s contract)."""

    def __init__(self) -> None:
        self.free = False
        self.queued: list[object] = []

    def enqueue(self, fn: object) -> None:
        if not self.free:
            raise WriteQueueFull("full")
        self.queued.append(fn)


def test_a_refusal_row_the_full_queue_cannot_take_keeps_its_count() -> None:
    queue = _FullThenFree()
    counter = RefusalCounter(database_sink(cast(Any, queue)))
    for _ in range(3):
        counter.count(account_id="a", key_id="k", endpoint="chat", model="m", status=503, code="x")
    assert counter.flush() == 0 and queue.queued == []
    queue.free = True
    assert counter.flush() == 1 and len(queue.queued) == 1
    row = cast(Any, queue.queued[0]).args[0]  # functools.partial(_insert, record)
    assert (row.key_id, row.units) == ("k", 3)
    assert counter.flush() == 0  # nothing left to write
