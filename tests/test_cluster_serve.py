"""Cluster mode end to end: `relay serve` processes sharing PostgreSQL and Redis.

Two real `relay serve` subprocesses run on ONE config file (ports on 127.0.0.1) against the
throwaway PostgreSQL and Redis of tests/support_cluster.py and the mock upstream
(tests/support_cluster_serve.py starts them; tests/test_cluster_nginx.py runs three behind
nginx). The checks read PostgreSQL directly: balances against the ledger's own rows, open
holds, abandoned holds and usage rows (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import mock_upstream
from support_cluster_serve import (
    ADMIN,
    LEASE_S,
    account,
    chat,
    cluster_site,
    credit,
    key,
    money,
    settled,
    stream,
    wallet,
)

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


async def test_two_instances_share_accounts_keys_and_balances(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    """200 concurrent streams over two instances on a $0.002 balance: never overdrawn, the
    same balance on both and in the ledger, nothing held, every 200 recorded and billed;
    then a key revoked through one instance is refused by the other within 1 s."""
    options = mock_upstream.MockOptions(latency_ms=20, stream_chunks=8, chunk_delay_ms=10)
    async with cluster_site(tmp_path, pg_database, redis_server, options) as (cluster, _):
        a, b = await cluster.start(), await cluster.start()
        conn = await asyncpg.connect(pg_database)
        async with a.client() as ca, b.client() as cb:
            account_id = await account(ca, "shared")
            credited = await credit(cb, account_id, "0.002", "seed-1")  # through the other
            assert credited.status_code == 201, credited.text
            replay = await credit(ca, account_id, "0.002", "seed-1")
            assert replay.status_code == 200 and replay.json()["credited"] is False
            # Room for all 200 at once (the default is 100 per key): money alone refuses here.
            key_id, secret = await key(ca, account_id, concurrency=200)
            balance_b = await cb.get("/v1/balance", headers={"authorization": f"Bearer {secret}"})
            assert balance_b.status_code == 200, balance_b.text
            assert balance_b.json()["balance_micros"] == 2000

            results = await asyncio.gather(
                *(stream(ca if i % 2 else cb, secret) for i in range(200))
            )
            statuses = [status for status, _ in results]
            ok = [complete for status, complete in results if status == 200]
            assert all(ok) and len(ok) >= 10, statuses
            assert set(statuses) <= {200, 402}, statuses
            assert statuses.count(402) > 0  # $0.002 cannot pay for 200 streams

            await settled(conn, account_id)
            balance, ledger_sum, worst = await money(conn, account_id)
            assert balance == ledger_sum and balance >= 0 and worst == 0
            wallet_a, wallet_b = await wallet(ca, account_id), await wallet(cb, account_id)
            assert wallet_a == wallet_b
            assert wallet_a["balance_micros"] == balance and wallet_a["held_micros"] == 0
            # Every 200 has its usage row and its charge; the charges are what was billed.
            usage_ok = await conn.fetchval(
                "SELECT count(*) FROM usage WHERE key_id = $1 AND status = 200", key_id
            )
            assert usage_ok == len(ok)
            charged = await conn.fetchval(
                "SELECT COALESCE(-SUM(amount_micros), 0) FROM ledger"
                " WHERE account_id = $1 AND kind = 'charge'",
                account_id,
            )
            billed = await conn.fetchval(
                "SELECT SUM(cost_micros) FROM usage WHERE key_id = $1", key_id
            )
            assert charged == billed == 2000 - balance
            key_view = await cb.get("/v1/key", headers={"authorization": f"Bearer {secret}"})
            assert key_view.json()["spent_micros"] == charged

            # Revoke through A; B refuses within 1 s (pub/sub, milliseconds in practice).
            revoked = await ca.post(f"/admin/keys/{key_id}/revoke", headers=ADMIN)
            assert revoked.status_code == 200, revoked.text
            started = time.monotonic()
            while True:
                response = await cb.post(
                    "/v1/chat/completions",
                    json=chat(False),
                    headers={"authorization": f"Bearer {secret}"},
                )
                if response.status_code == 401:
                    break
                assert time.monotonic() - started < 1.0, "revocation not seen within 1 s"
                await asyncio.sleep(0.01)
            # A route the cluster does not list says so instead of answering wrong.
            archives = await ca.get(f"/console/a/{account_id}/nowhere", headers=ADMIN)
            assert archives.status_code == 501
            assert archives.json()["error"]["code"] == "not_available_in_cluster_mode"
        await conn.close()


async def test_key_concurrency_5_holds_across_instances(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    options = mock_upstream.MockOptions(latency_ms=150)
    async with cluster_site(tmp_path, pg_database, redis_server, options) as (cluster, upstream):
        a, b = await cluster.start(), await cluster.start()
        async with a.client() as ca, b.client() as cb:
            account_id = await account(ca, "narrow")
            assert (await credit(ca, account_id, "5", "seed")).status_code == 201
            _, secret = await key(ca, account_id, concurrency=5)
            headers = {"authorization": f"Bearer {secret}"}
            upstream.stats.in_flight_peak = 0

            async def one(i: int) -> int:
                client = ca if i % 2 else cb
                response = await client.post(
                    "/v1/chat/completions", json=chat(False), headers=headers
                )
                return response.status_code

            statuses = await asyncio.gather(*(one(i) for i in range(40)))
            assert set(statuses) <= {200, 429}, statuses
            assert statuses.count(200) >= 5 and statuses.count(429) > 0
            assert 1 <= upstream.stats.in_flight_peak <= 5


async def test_kill_9_releases_the_dead_instances_holds_after_its_lease(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    options = mock_upstream.MockOptions(latency_ms=10, stream_chunks=40, chunk_delay_ms=50)
    async with cluster_site(tmp_path, pg_database, redis_server, options) as (cluster, _):
        a, b = await cluster.start(), await cluster.start()
        conn = await asyncpg.connect(pg_database)
        async with a.client() as ca, b.client() as cb:
            account_id = await account(ca, "crash")
            assert (await credit(ca, account_id, "1", "seed")).status_code == 201
            _, secret = await key(ca, account_id)
            load = [asyncio.create_task(stream(ca if i % 2 else cb, secret)) for i in range(40)]
            # Wait until B holds money in flight, then kill it without warning.
            deadline = time.monotonic() + 10
            b_id = await conn.fetchval("SELECT id FROM instances ORDER BY started_at DESC LIMIT 1")
            while (
                await conn.fetchval("SELECT count(*) FROM holds WHERE instance_id = $1", b_id) < 3
            ):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            b.process.send_signal(signal.SIGKILL)
            b.process.wait()
            results = await asyncio.gather(*load)
            assert any(status == 200 for status, _ in results)
            # A's heartbeat sweeps B's holds once B's lease has run out.
            await settled(conn, account_id, timeout_s=LEASE_S + 10)
            balance, ledger_sum, worst = await money(conn, account_id)
            assert balance == ledger_sum and worst == 0 and balance >= 0
            abandoned = await conn.fetchval(
                "SELECT count(*) FROM abandoned_holds WHERE instance_id = $1", b_id
            )
            assert abandoned >= 1
            assert (await wallet(ca, account_id))["balance_micros"] == balance
        await conn.close()


async def test_a_new_instance_sees_accounts_and_keys_made_before_it_started(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    async with cluster_site(tmp_path, pg_database, redis_server, None) as (cluster, _):
        a = await cluster.start()
        async with a.client() as ca:
            account_id = await account(ca, f"early-{secrets.token_hex(2)}")
            assert (await credit(ca, account_id, "1", "seed")).status_code == 201
            _, secret = await key(ca, account_id)
        b = await cluster.start()
        async with b.client() as cb:
            headers = {"authorization": f"Bearer {secret}"}
            response = await cb.post("/v1/chat/completions", json=chat(False), headers=headers)
            assert response.status_code == 200, response.text
            # A key spend cap set through B binds on A: 10 micros < one request's worst case.
            capped_id, capped = await key(cb, account_id, spend_cap_usd="0.00001")
            async with a.client() as ca:
                over = await ca.post(
                    "/v1/chat/completions",
                    json=chat(False),
                    headers={"authorization": f"Bearer {capped}"},
                )
            assert over.status_code == 402 and "spend cap" in over.text, over.text
            key_view = (await cb.get(f"/admin/keys/{capped_id}", headers=ADMIN)).json()
            assert (key_view["spend_cap_micros"], key_view["spent_micros"]) == (10, 0)
            suspended = await cb.patch(
                f"/admin/accounts/{account_id}", json={"status": "suspended"}, headers=ADMIN
            )
            assert suspended.status_code == 200, suspended.text
            # The view's money comes from PostgreSQL (a charge was made), not the local file.
            balance = suspended.json()["balance_micros"]
            assert 0 < balance < 1_000_000
            assert balance == (await wallet(cb, account_id))["balance_micros"]
        async with a.client() as ca:
            deadline = time.monotonic() + 1.0
            while True:
                refused = await ca.post("/v1/chat/completions", json=chat(False), headers=headers)
                if refused.status_code == 403:
                    break
                assert time.monotonic() < deadline, refused.text
                await asyncio.sleep(0.01)


async def test_a_reload_through_one_instance_reaches_the_other(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    async with cluster_site(tmp_path, pg_database, redis_server, None) as (cluster, _):
        a, b = await cluster.start(), await cluster.start()
        config = tmp_path / "relay.toml"
        config.write_text(
            config.read_text()
            + '\n[[models]]\nname = "fake-gpt-2"\nroutes = ["fake:gpt-4o"]\n'
            + 'input_usd_per_mtok = "2.50"\noutput_usd_per_mtok = "10"\n'
        )
        async with a.client() as ca, b.client() as cb:
            reloaded = await ca.post("/admin/reload", headers=ADMIN)
            assert reloaded.status_code == 200, reloaded.text
            deadline = time.monotonic() + 1.0
            while True:
                models = (await cb.get("/v1/models", headers=ADMIN)).json()["data"]
                if "fake-gpt-2" in {model["id"] for model in models}:
                    break
                assert time.monotonic() < deadline, "reload not seen within 1 s"
                await asyncio.sleep(0.02)


async def test_an_instance_paused_past_its_lease_rejoins_and_bills_nothing_twice(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    """SIGSTOP an instance with streams in flight for longer than its lease: the other
    instance's sweep releases its holds (abandoned). On SIGCONT its streams end and their
    settlements find their holds gone (fenced: nothing charged, the usage rows say 0); it
    registers a new lease under a new id and answers 200 again."""
    options = mock_upstream.MockOptions(latency_ms=10, stream_chunks=20, chunk_delay_ms=50)
    async with cluster_site(tmp_path, pg_database, redis_server, options) as (cluster, _):
        a, b = await cluster.start(), await cluster.start()
        conn = await asyncpg.connect(pg_database)
        async with a.client() as ca, b.client() as cb:
            account_id = await account(ca, "paused")
            assert (await credit(ca, account_id, "1", "seed")).status_code == 201
            key_id, secret = await key(ca, account_id)
            headers = {"authorization": f"Bearer {secret}"}
            b_id = await conn.fetchval("SELECT id FROM instances ORDER BY started_at DESC LIMIT 1")
            load = [asyncio.create_task(stream(cb, secret)) for _ in range(6)]
            deadline = time.monotonic() + 10
            while (
                await conn.fetchval("SELECT count(*) FROM holds WHERE instance_id = $1", b_id) < 3
            ):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            b.process.send_signal(signal.SIGSTOP)
            try:
                # A sweeps B's holds once B's lease has run out (B cannot renew it).
                deadline = time.monotonic() + LEASE_S + 10
                while await conn.fetchval("SELECT count(*) FROM instances WHERE id = $1", b_id):
                    assert time.monotonic() < deadline, "B's lease was never swept"
                    await asyncio.sleep(0.1)
            finally:
                b.process.send_signal(signal.SIGCONT)
            await asyncio.gather(*load)
            # B admits again, under a new lease.
            deadline = time.monotonic() + 5
            while True:
                response = await cb.post("/v1/chat/completions", json=chat(False), headers=headers)
                if response.status_code == 200:
                    break
                assert response.status_code == 503, response.text
                assert time.monotonic() < deadline, "B did not rejoin"
                await asyncio.sleep(0.1)
            instances = {r["id"] for r in await conn.fetch("SELECT id FROM instances")}
            assert b_id not in instances and len(instances) == 2
            await settled(conn, account_id)
            balance, ledger_sum, worst = await money(conn, account_id)
            assert balance == ledger_sum and worst == 0
            abandoned = await conn.fetchval(
                "SELECT count(*) FROM abandoned_holds WHERE instance_id = $1", b_id
            )
            assert abandoned >= 3
            charged = await conn.fetchval(
                "SELECT COALESCE(-SUM(amount_micros), 0) FROM ledger"
                " WHERE account_id = $1 AND kind = 'charge'",
                account_id,
            )
            billed = await conn.fetchval(
                "SELECT COALESCE(SUM(cost_micros), 0) FROM usage WHERE key_id = $1", key_id
            )
            assert charged == billed == 1_000_000 - balance > 0
            assert "rejoined as" in b.log.read_text()
        await conn.close()


async def test_admin_writes_through_two_instances_at_once_make_one_unbroken_chain(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    """40 account and key creations racing through two instances: PostgreSQL's audit
    chain has every one, ids 1..N without a gap, each row linked to the one before it;
    both instances' verify routes and the embedded verifier (the key from the secret file
    beside the configured database) agree."""
    from relay.identity.audit import AUDIT_COLUMNS, verify_chain
    from relay.identity.server_secret import ServerSecret

    async with cluster_site(tmp_path, pg_database, redis_server, None) as (cluster, _):
        a, b = await cluster.start(), await cluster.start()
        conn = await asyncpg.connect(pg_database)
        async with a.client() as ca, b.client() as cb:

            async def write(i: int) -> None:
                client = ca if i % 2 else cb
                account_id = await account(client, f"chain-{i}")
                await key(client, account_id)

            await asyncio.gather(*(write(i) for i in range(20)))
            rows = [
                tuple(r) for r in await conn.fetch(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id")
            ]
            assert [row[0] for row in rows] == list(range(1, 41))
            assert sorted(row[3] for row in rows) == ["account.create"] * 20 + ["key.create"] * 20
            audit_key = ServerSecret.load_or_create(tmp_path / "relay.db.secret").subkey("audit")
            report = verify_chain(rows, audit_key)
            assert report.ok and report.rows == 40, report
            for client in (ca, cb):
                verified = (await client.get("/admin/audit/verify", headers=ADMIN)).json()
                assert (verified["ok"], verified["rows"], verified["last_id"]) == (True, 40, 40)
            # A row edited in PostgreSQL is caught by the instances' verify route.
            await conn.execute("UPDATE audit SET actor = 'mallory' WHERE id = 17")
            broken = (await ca.get("/admin/audit/verify", headers=ADMIN)).json()
            assert (broken["ok"], broken["broken_at"]) == (False, 17)
        await conn.close()
