"""Erasure of a deleted account on PostgreSQL (issue 18, part A), on the real engines.

Two instances in this process on one config. A deletion requested through one is erased
30 days later by the cluster's job (``relay.cluster.pg_erasure``, run here directly with
an injected clock, as the embedded job's test does): the personal data the embedded job
erases is erased in PostgreSQL, the money records are kept (the same ledger rows, balance
= ledger sum), the other instance's memory follows within 1 s, the chain verifies, and
two runners at once erase once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import serve_relay
from support_cluster_records import cluster_config, two_instances, verified

from relay.cluster.pg_erasure import PgErasure
from relay.identity.data_rights import pseudonym_for

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")


async def _account(relay: Any, name: str) -> str:
    created = await relay.client.post("/admin/accounts", json={"name": name})
    assert created.status_code == 201, created.text
    account_id: str = created.json()["id"]
    credit = {"amount_usd": "2", "reference": f"seed-{name}"}
    credited = await relay.client.post(f"/admin/accounts/{account_id}/credits", json=credit)
    assert credited.status_code == 201, credited.text
    return account_id


async def _console_records(conn: Any, account: str, other: str) -> None:
    """Ada belongs to the account only, Bob to another one too; a session, an invite, a
    ticket with a message, a saved card."""
    users = [("usr_ada", "ada@example.com", "Ada Lovelace"), ("usr_bob", "bob@ex.com", "Bob")]
    for user_id, email, name in users:
        await conn.execute(
            "INSERT INTO console_users (id, email, display_name, password_hash,"
            " created_at_ms, updated_at_ms) VALUES ($1, $2, $3, 'argon2-hash', 1, 1)",
            user_id,
            email,
            name,
        )
    for account_id, user_id in ((account, "usr_ada"), (account, "usr_bob"), (other, "usr_bob")):
        await conn.execute(
            "INSERT INTO console_memberships (account_id, user_id, role, created_at_ms)"
            " VALUES ($1, $2, 'owner', 1)",
            account_id,
            user_id,
        )
    await conn.execute(
        "INSERT INTO console_sessions (id_hash, user_id, session_version, created_at_ms,"
        " expires_at_ms) VALUES ('s1', 'usr_ada', 1, 1, 99)"
    )
    await conn.execute(
        "INSERT INTO console_invites (id_hash, account_id, role, created_by, created_at_ms,"
        " expires_at_ms) VALUES ('i1', $1, 'member', 'usr_ada', 1, 99)",
        account,
    )
    ticket = await conn.fetchval(
        "INSERT INTO console_tickets (account_id, opened_by, subject, created_at_ms,"
        " updated_at_ms) VALUES ($1, 'usr_ada', 'My invoice, +44 20 7946 0000', 1, 1)"
        " RETURNING id",
        account,
    )
    await conn.execute(
        "INSERT INTO console_ticket_messages (ticket_id, author_id, body, created_at_ms)"
        " VALUES ($1, 'usr_ada', 'Ada here', 1)",
        ticket,
    )
    await conn.execute(
        "INSERT INTO payment_customers (account_id, provider, customer_id, payment_method_id,"
        " updated_at_ms) VALUES ($1, 'stripe', 'cus_1', 'pm_1', 1)",
        account,
    )


async def _ledger(conn: Any, account: str) -> list[tuple[Any, ...]]:
    rows = await conn.fetch("SELECT * FROM ledger WHERE account_id = $1 ORDER BY id", account)
    return [tuple(row) for row in rows]


def _erasure(relay: Any, now_ms: int) -> PgErasure:
    runtime = relay.state.cluster
    return PgErasure(runtime.pool, relay.state.store.audit_key, runtime.publish, lambda: now_ms)


async def test_a_due_deletion_is_erased_once_and_the_money_records_kept(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two, conn):
        account = await _account(one, "ada-ltd")
        other = await _account(one, "other-co")
        key = await one.client.post(f"/admin/accounts/{account}/keys", json={"name": "ada's"})
        assert key.status_code == 201, key.text
        secret = key.json()["secret"]
        chat = await two.client.post(
            "/v1/chat/completions",
            json={"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {secret}"},
        )
        assert chat.status_code == 200, chat.text
        await two.state.admitter.committed()  # type: ignore[union-attr]
        await _console_records(conn, account, other)
        ledger_before = await _ledger(conn, account)
        assert len(ledger_before) == 2  # the credit and the charge

        requested = await one.client.post(f"/admin/accounts/{account}/deletion")
        assert requested.status_code == 202, requested.text
        erase_after = requested.json()["erase_after_ms"]
        assert await _erasure(one, erase_after - 1).run_once() == []
        assert await _erasure(two, erase_after).run_once() == [account]
        assert await _erasure(one, erase_after + 1).run_once() == []  # erased once

        pseudonym = pseudonym_for(account)
        assert await conn.fetchval("SELECT name FROM accounts WHERE id = $1", account) == (
            pseudonym
        )
        store = one.state.store

        def followed() -> bool:
            labels = {k.label for k in store.keys_of(account)}
            return store.account(account).name == pseudonym and labels == {"[erased]"}

        started = time.monotonic()
        while not followed():  # the account's announcement, then its key's
            assert time.monotonic() - started < 1.0, "the erasure not seen within 1 s"
            await asyncio.sleep(0.01)
        assert store.account(pseudonym).id == account
        assert await conn.fetchval("SELECT label FROM api_keys WHERE account_id = $1", account) == (
            "[erased]"
        )
        users = {
            row["id"]: row
            for row in await conn.fetch("SELECT id, email, display_name, status FROM console_users")
        }
        assert users["usr_ada"]["email"].endswith("@invalid")
        assert (users["usr_ada"]["display_name"], users["usr_ada"]["status"]) == (
            "deleted user",
            "disabled",
        )
        assert users["usr_bob"]["email"] == "bob@ex.com"  # still a member of other-co
        assert await conn.fetchval("SELECT count(*) FROM console_sessions") == 0
        assert await conn.fetchval("SELECT count(*) FROM console_invites") == 0
        assert await conn.fetchval("SELECT subject FROM console_tickets") == "[erased]"
        assert await conn.fetchval("SELECT body FROM console_ticket_messages") == "[erased]"
        assert await conn.fetchval("SELECT count(*) FROM payment_customers") == 0
        receipts = await conn.fetch(
            "SELECT buyer_name FROM receipts WHERE account_id = $1", account
        )
        assert [r["buyer_name"] for r in receipts] == [pseudonym]
        shown = await two.client.get(f"/admin/accounts/{account}/deletion")
        assert shown.json()["pseudonym"] == pseudonym
        assert shown.json()["erased_at_ms"] == erase_after

        # Money records kept: the same rows, balance = ledger sum.
        assert await _ledger(conn, account) == ledger_before
        balance = await conn.fetchval("SELECT balance_micros FROM accounts WHERE id = $1", account)
        assert balance == sum(row[3] for row in ledger_before)
        audit = await conn.fetch(
            "SELECT detail FROM audit WHERE action = 'account.erase' AND target = $1", account
        )
        assert [msgspec.json.decode(row["detail"]) for row in audit] == [
            {
                "pseudonym": pseudonym,
                "key_labels": 1,
                "users": 1,
                "tickets": 1,
                "ticket_messages": 1,
            }
        ]
        await verified(one, two)


async def test_two_runners_at_once_erase_once(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two, conn):
        accounts = [await _account(one, f"leaving-{n}") for n in range(4)]
        due = 0
        for account in accounts:
            requested = await two.client.post(f"/admin/accounts/{account}/deletion")
            assert requested.status_code == 202, requested.text
            due = max(due, requested.json()["erase_after_ms"])
        first, second = await asyncio.gather(
            _erasure(one, due).run_once(), _erasure(two, due).run_once()
        )
        assert sorted(first + second) == sorted(accounts)
        erased = await conn.fetchval("SELECT count(*) FROM audit WHERE action = 'account.erase'")
        assert erased == len(accounts)
        await verified(one, two)


async def test_the_elected_runner_erases_a_due_request_when_it_takes_the_lead(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    config = cluster_config(tmp_path, pg_database, redis_server.port)
    async with serve_relay(config) as first:
        account = await _account(first, "overdue")
        requested = await first.client.post(f"/admin/accounts/{account}/deletion")
        assert requested.status_code == 202, requested.text
    conn = await asyncpg.connect(pg_database)
    try:
        # Due since long ago (relay was down when it came due).
        await conn.execute(
            "UPDATE deletion_requests SET erase_after_ms = 1 WHERE account_id = $1", account
        )
        async with serve_relay(config) as second:
            started = time.monotonic()
            while second.state.store.account(account).name != pseudonym_for(account):
                assert time.monotonic() - started < 10.0, "the runner did not erase it"
                await asyncio.sleep(0.05)
        assert await conn.fetchval(
            "SELECT erased_at_ms FROM deletion_requests WHERE account_id = $1", account
        )
    finally:
        await conn.close()
