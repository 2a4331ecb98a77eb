"""The account records routes in cluster mode (issue 18, part A), on the real engines.

The ledger, the monthly statement, the export and the deletion request answer from
PostgreSQL through the records seam (``relay.cluster.pg_account_records``). The first
test builds an embedded database by driving a real relay, copies it into PostgreSQL with
``relay migrate``, then serves both at once and asks each the same questions: the answers
must be the same, byte for byte where nothing depends on the clock. The others run two
cluster instances in this process on one config: a deletion made through one is refused
by the other within 1 s, the audit chain verifies after each write, and a deletion whose
audit row cannot be written leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import re
import secrets
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from conftest import serve_relay
from support_cluster_records import cluster_config, embedded_config, two_instances, verified

from relay.cli.migrate import run_migration
from relay.cluster import pg_account_records
from relay.identity.server_secret import secret_path_for

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")


async def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def _account(client: httpx.AsyncClient, name: str, credits: list[str]) -> str:
    account_id: str = (await _ok(await client.post("/admin/accounts", json={"name": name}), 201))[
        "id"
    ]
    for n, amount in enumerate(credits):
        body = {"amount_usd": amount, "reference": f"{name}-{n}"}
        await _ok(await client.post(f"/admin/accounts/{account_id}/credits", json=body), 201)
    return account_id


async def _key(client: httpx.AsyncClient, account_id: str, name: str) -> tuple[str, str]:
    body = await _ok(
        await client.post(f"/admin/accounts/{account_id}/keys", json={"name": name}), 201
    )
    return str(body["id"]), str(body["secret"])


async def _chat(client: httpx.AsyncClient, secret: str, prompt: str) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions",
        json={"model": "mock-gpt", "messages": [{"role": "user", "content": prompt}]},
        headers={"authorization": f"Bearer {secret}"},
    )


async def _seed_embedded(tmp_path: Path) -> tuple[str, str]:
    """Two accounts' worth of credits, keys, requests and charges; (acme, other)."""
    async with serve_relay(embedded_config(tmp_path)) as relay:
        client = relay.client
        acme = await _account(client, "acme", ["5", "2"])
        other = await _account(client, "other", ["1"])
        _, first = await _key(client, acme, "first")
        _, second = await _key(client, acme, "second")
        _, theirs = await _key(client, other, "theirs")
        for n in range(3):
            assert (await _chat(client, first, f"hello number {n} " * (n + 1))).status_code == 200
        assert (await _chat(client, second, "a much longer question " * 9)).status_code == 200
        embedding = await client.post(
            "/v1/embeddings",
            json={"model": "mock-embedding", "input": "embed this text please"},
            headers={"authorization": f"Bearer {second}"},
        )
        assert embedding.status_code == 200, embedding.text
        assert (await _chat(client, theirs, "not acme's")).status_code == 200
    return acme, other


def _month() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m")


def _comparable(response: httpx.Response) -> tuple[int, str, Any]:
    """Status, content type and body, less what depends on the clock (generated_at)."""
    kind = response.headers.get("content-type", "").split(";")[0]
    if kind == "application/json":
        body = response.json()
        if isinstance(body, dict):
            body.pop("generated_at", None)
        return response.status_code, kind, body
    text = re.sub(r"Generated \S+ by relay", "Generated - by relay", response.text)
    return response.status_code, kind, text


def _unzipped(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _export_parts(data: bytes) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The export's files but its profile, and the profile less its clock fields."""
    files = _unzipped(data)
    profile = msgspec.json.decode(files.pop("profile.json"))
    profile.pop("exported_at_ms")
    request = profile.get("deletion_request")
    if request is not None:
        assert request["erase_after_ms"] - request["requested_at_ms"] == 30 * 86_400_000
        request.pop("erase_after_ms")
        request.pop("requested_at_ms")
    return files, profile


def _without_updates(export: tuple[dict[str, bytes], dict[str, Any]]) -> Any:
    """Every JSON part and the profile without ``updated_at_ms`` (the CSVs: their JSON twin)."""
    files, profile = export
    parts = {
        name: [
            {k: v for k, v in row.items() if k != "updated_at_ms"}
            for row in msgspec.json.decode(data)
        ]
        for name, data in files.items()
        if name.endswith(".json")
    }
    return parts, {k: v for k, v in profile.items() if k != "updated_at_ms"}


async def test_the_records_routes_answer_as_the_embedded_ones_for_the_same_records(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    acme, other = await _seed_embedded(tmp_path)
    database = tmp_path / "relay.db"
    report = await run_migration(database, pg_database, secret_path_for(database))
    assert report.ok, report
    cluster = cluster_config(tmp_path, pg_database, redis_server.port)
    async with (
        serve_relay(embedded_config(tmp_path)) as embedded,
        serve_relay(cluster) as clustered,
    ):
        assert clustered.state.cluster is not None and embedded.state.cluster is None
        rows = (await _ok(await embedded.client.get(f"/admin/accounts/{acme}/ledger")))["data"]
        assert len(rows) == 7  # two credits, five charges
        middle = rows[3]["id"]
        month = _month()
        paths = [
            f"/admin/accounts/{acme}/ledger",
            f"/admin/accounts/{acme}/ledger?limit=2",
            f"/admin/accounts/{acme}/ledger?limit=3&before_id={middle}",
            f"/admin/accounts/{acme}/ledger?limit=0&before_id=-5",
            f"/admin/accounts/{acme}/ledger?limit=many",
            f"/admin/accounts/{other}/ledger",
            "/admin/accounts/nobody/ledger",
            f"/admin/accounts/{acme}/statement?month={month}",
            f"/admin/accounts/{acme}/statement?month={month}&format=csv",
            f"/admin/accounts/{acme}/statement?month={month}&format=html",
            f"/admin/accounts/{other}/statement?month={month}",
            f"/admin/accounts/{acme}/statement?month=2020-01",
            f"/admin/accounts/{acme}/statement?month=January",
            f"/admin/accounts/{acme}/deletion",
        ]

        async def both_answer_alike() -> None:
            for path in paths:
                mine = _comparable(await clustered.client.get(path))
                theirs = _comparable(await embedded.client.get(path))
                assert mine == theirs, path

        await both_answer_alike()
        statement = (await embedded.client.get(paths[7])).json()
        assert statement["charges_micros"] > 0 and len(statement["lines"]) == 4
        assert statement["closing_balance_micros"] == 7_000_000 - statement["charges_micros"]

        async def exports() -> tuple[Any, Any]:
            mine = await clustered.client.get(f"/admin/accounts/{acme}/export")
            theirs = await embedded.client.get(f"/admin/accounts/{acme}/export")
            assert mine.status_code == theirs.status_code == 200
            assert mine.headers["content-disposition"] == theirs.headers["content-disposition"]
            return _export_parts(mine.content), _export_parts(theirs.content)

        mine, theirs = await exports()
        assert mine == theirs
        assert b"acme-0" in mine[0]["ledger.csv"] and b"other-0" not in mine[0]["ledger.csv"]

        # The same deletion through each: the same answer, then the same records.
        requested = [
            await clustered.client.post(f"/admin/accounts/{acme}/deletion"),
            await embedded.client.post(f"/admin/accounts/{acme}/deletion"),
        ]
        bodies = []
        for response in requested:
            body = await _ok(response, 202)
            assert body["erase_after_ms"] - body["requested_at_ms"] == 30 * 86_400_000
            bodies.append({k: v for k, v in body.items() if not k.endswith("_ms")})
        assert bodies[0] == bodies[1]
        paths.remove(f"/admin/accounts/{acme}/deletion")
        await both_answer_alike()  # the ledger and statements are kept as they were
        mine, theirs = await exports()
        # The suspension and revocations were made by each at its own instant.
        assert _without_updates(mine) == _without_updates(theirs)
        assert mine[1]["status"] == "suspended"
        assert mine[0]["ledger.csv"] == theirs[0]["ledger.csv"]
        account = await _ok(await clustered.client.get(f"/admin/accounts/{acme}"))
        assert account["status"] == "suspended"
        keys = await _ok(await clustered.client.get("/admin/keys"))
        assert {k["status"] for k in keys["data"] if k["account_id"] == acme} == {"revoked"}
        verify = await _ok(await clustered.client.get("/admin/audit/verify"))
        assert verify["ok"], verify


async def _money(conn: Any, account_id: str) -> tuple[int, int, int]:
    balance = await conn.fetchval("SELECT balance_micros FROM accounts WHERE id = $1", account_id)
    total, rows = await conn.fetchrow(
        "SELECT COALESCE(SUM(amount_micros), 0), count(*) FROM ledger WHERE account_id = $1",
        account_id,
    )
    return int(balance), int(total), int(rows)


async def test_a_deletion_through_one_instance_is_refused_by_the_other_within_a_second(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two, conn):
        account = await _account(one.client, "leaving", ["3"])
        _, secret = await _key(one.client, account, "k1")
        _, spare = await _key(one.client, account, "k2")
        await conn.execute(
            "INSERT INTO auto_topups (account_id, enabled, trigger_micros, amount_micros,"
            " monthly_cap_micros, consecutive_failures, updated_at_ms)"
            " VALUES ($1, 1, 1000000, 5000000, 0, 0, 0)",
            account,
        )
        assert (await _chat(two.client, secret, "before")).status_code == 200
        await two.state.admitter.committed()  # type: ignore[union-attr]
        money_before = await _money(conn, account)
        assert money_before[0] == money_before[1] and money_before[2] == 2

        deletion = await _ok(await one.client.post(f"/admin/accounts/{account}/deletion"), 202)
        started = time.monotonic()
        for key_secret in (secret, spare):
            while (await _chat(two.client, key_secret, "after")).status_code != 401:
                assert time.monotonic() - started < 1.0, "deletion not seen within 1 s"
                await asyncio.sleep(0.01)
        await verified(one, two)

        # Every instance answers the one request; a second one (through the other) is it.
        assert await _ok(await two.client.get(f"/admin/accounts/{account}/deletion")) == deletion
        again = await _ok(await two.client.post(f"/admin/accounts/{account}/deletion"), 202)
        assert again == deletion
        assert (await _ok(await two.client.get(f"/admin/accounts/{account}")))["status"] == (
            "suspended"
        )
        # Re-activating is refused on every instance (the request is read from PostgreSQL).
        reactivate = await two.client.patch(f"/admin/accounts/{account}", json={"status": "active"})
        assert reactivate.status_code == 409, reactivate.text
        audited = await conn.fetchval(
            "SELECT count(*) FROM audit WHERE action = 'account.deletion_requested'"
            " AND target = $1",
            account,
        )
        assert audited == 1
        assert (
            await conn.fetchval("SELECT enabled FROM auto_topups WHERE account_id = $1", account)
            == 0
        )
        # Money records are kept: the same rows, balance = ledger sum.
        assert await _money(conn, account) == money_before
        await verified(one, two)


async def test_two_deletions_at_once_on_two_instances_store_one_request(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two, conn):
        for round_ in range(3):
            account = await _account(one.client, f"racing-{round_}", ["1"])
            await _key(one.client, account, "k")
            answers = await asyncio.gather(
                one.client.post(f"/admin/accounts/{account}/deletion"),
                two.client.post(f"/admin/accounts/{account}/deletion"),
            )
            bodies = [await _ok(answer, 202) for answer in answers]
            assert bodies[0] == bodies[1]
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM audit WHERE action = 'account.deletion_requested'"
                    " AND target = $1",
                    account,
                )
                == 1
            )
        await verified(one, two)


async def test_a_deletion_whose_audit_row_fails_stores_nothing_and_can_be_retried(
    tmp_path: Path,
    pg_database: str,
    redis_server: Any,
    admin_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two, conn):
        account = await _account(one.client, "unlucky", ["1"])
        _, secret = await _key(one.client, account, "k")
        real_append = pg_account_records.pg_audit.append

        async def failing_append(*args: Any, **kwargs: Any) -> None:
            if kwargs.get("action") == "account.deletion_requested":
                raise RuntimeError("injected: the audit row cannot be written")
            await real_append(*args, **kwargs)

        monkeypatch.setattr(pg_account_records.pg_audit, "append", failing_append)
        failed = await one.client.post(f"/admin/accounts/{account}/deletion")
        assert failed.status_code == 500
        # Rolled back whole: no request row, no audit row, auto top-up untouched.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM deletion_requests WHERE account_id = $1", account
            )
            == 0
        )
        missing = await two.client.get(f"/admin/accounts/{account}/deletion")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "no_deletion_request"
        await verified(one, two)

        monkeypatch.setattr(pg_account_records.pg_audit, "append", real_append)
        retried = await _ok(await two.client.post(f"/admin/accounts/{account}/deletion"), 202)
        assert retried["account_id"] == account
        assert (await _chat(one.client, secret, "after")).status_code == 401
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM audit WHERE action = 'account.deletion_requested'"
                " AND target = $1",
                account,
            )
            == 1
        )
        await verified(one, two)


async def test_the_export_carries_the_accounts_archives_from_postgresql(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two, conn):
        account = await _account(one.client, "archived", ["1"])
        other = await _account(one.client, "someone", ["1"])
        payload = secrets.token_bytes(3000)
        for name, owner, chunks in (
            (f"usage-{account}-2026-01.jsonl.gz", account, [payload[:1000], payload[1000:]]),
            (f"usage-{other}-2026-01.jsonl.gz", other, [b"not theirs"]),
        ):
            size = sum(len(c) for c in chunks)
            await conn.execute(
                "INSERT INTO archives (name, kind, account_id, month, rows, bytes, sha256,"
                " created_at_ms, from_ms, until_ms, max_id)"
                " VALUES ($1, 'usage', $2, '2026-01', 1, $3, 'x', 0, 0, 1, 1)",
                name,
                owner,
                size,
            )
            for seq, chunk in enumerate(chunks):
                await conn.execute(
                    "INSERT INTO archive_chunks (name, seq, data) VALUES ($1, $2, $3)",
                    name,
                    seq,
                    chunk,
                )
        export = await two.client.get(f"/admin/accounts/{account}/export")
        assert export.status_code == 200, export.text
        files = _unzipped(export.content)
        archived = {name: data for name, data in files.items() if name.startswith("archives/")}
        assert archived == {f"archives/usage-{account}-2026-01.jsonl.gz": payload}
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM audit WHERE action = 'account.export' AND target = $1",
                account,
            )
            == 1
        )
        await verified(one, two)
