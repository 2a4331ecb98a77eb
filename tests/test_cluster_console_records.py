"""The console's data-rights and archives pages in cluster mode (issue 18, part A), on the
real engines: export (streamed), deletion (request and the operator's cancellation) and
the owner's usage archives answer from PostgreSQL through the account records' seam.

The first test builds an embedded database by driving a real relay (as
tests/test_cluster_account_records.py does), archives old usage rows, copies it all with
``relay migrate``, then serves the embedded and a cluster relay at once and walks the
same pages on each: the same HTML, files and redirects. The others run two cluster
instances in this process on one config: a deletion cancelled through one instance lets
the account's keys work again through the other within 1 s; two cancellations at once
cancel once; a cancellation whose audit row cannot be written leaves the request pending.
The audit chain verifies after each write.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RelayServer, serve_relay
from export_reference import reference_export
from support_cluster_records import cluster_config, embedded_config, two_instances, verified
from support_console import PASSWORD, Browser
from test_cluster_account_records import _account, _chat, _export_parts, _key, _seed_embedded

from relay.cli.migrate import run_migration
from relay.cluster import pg_account_records
from relay.identity import export
from relay.identity.server_secret import secret_path_for
from relay.usage.log import UsageRecord, insert_usage
from relay.usage.queries import DAY_MS
from relay.usage.retention import archive_dir_for, run_retention

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")

_CSRF = re.compile(r'name="csrf_token" value="[^"]+"')


def _page(response: httpx.Response) -> tuple[int, str, str]:
    """Status, where it redirects and the HTML less its per-session CSRF token."""
    location = response.headers.get("location", "")
    return response.status_code, location, _CSRF.sub('name="csrf_token" value="-"', response.text)


async def _user(relay: RelayServer, email: str, account: str | None = None, **extra: Any) -> None:
    body: dict[str, Any] = {"email": email, "password": PASSWORD, **extra}
    if account is not None:
        body |= {"account": account, "role": "owner"}
    response = await relay.client.post("/admin/users", json=body)
    assert response.status_code == 201, response.text


async def _seed_archive_and_people(tmp_path: Path, acme: str) -> str:
    """Old usage rows of acme moved to a monthly archive, an owner and an operator; the
    archive's name."""
    async with serve_relay(embedded_config(tmp_path)) as relay:
        now = int(time.time() * 1000)

        def seed(conn: Any) -> None:
            for i in range(3):
                record = UsageRecord(f"req_old_{i}", now - 200 * DAY_MS + i, "chat", 200, acme)
                insert_usage(conn, record)

        await relay.state.db.write(seed)
        folder = archive_dir_for(relay.state.config.database_path)
        report = await run_retention(relay.state.db, folder, now_ms=now)
        await _user(relay, "owner@acme.test", acme)
        await _user(relay, "ops@relay.test", operator=True)
    [name] = [n for n in report.archives_written if n.startswith(f"usage-{acme}")]
    return name


async def _audited(conn: Any, action: str, target: str) -> int:
    count = await conn.fetchval(
        "SELECT count(*) FROM audit WHERE action = $1 AND target = $2", action, target
    )
    return int(count)


async def test_the_console_data_pages_answer_as_the_embedded_ones_for_the_same_records(
    tmp_path: Path,
    pg_database: str,
    redis_server: Any,
    admin_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    acme, _ = await _seed_embedded(tmp_path)
    archive = await _seed_archive_and_people(tmp_path, acme)
    database = tmp_path / "relay.db"
    report = await run_migration(database, pg_database, secret_path_for(database))
    assert report.ok, report
    cluster = cluster_config(tmp_path, pg_database, redis_server.port)
    base = f"/console/a/{acme}"
    ops_page = f"/console/operator/accounts/{acme}"
    async with (
        serve_relay(embedded_config(tmp_path)) as embedded,
        serve_relay(cluster) as clustered,
        Browser(embedded) as owner_e,
        Browser(clustered) as owner_c,
        Browser(embedded) as ops_e,
        Browser(clustered) as ops_c,
    ):
        conn = await asyncpg.connect(pg_database)
        try:
            assert clustered.state.cluster is not None and embedded.state.cluster is None
            for browser in (owner_e, owner_c):
                assert (await browser.login("owner@acme.test")).status_code == 303
            for browser in (ops_e, ops_c):
                assert (await browser.login("ops@relay.test")).status_code == 303

            async def same(path: str, *, owner: bool = True) -> httpx.Response:
                mine = await (owner_c if owner else ops_c).get(path)
                theirs = await (owner_e if owner else ops_e).get(path)
                assert _page(mine) == _page(theirs), path
                return mine

            # Archives: the list, the file (bytes and checks), a name that is not acme's.
            listing = await same(f"{base}/archives")
            assert listing.status_code == 200 and archive in listing.text
            files = [
                await browser.get(f"{base}/archives/{archive}") for browser in (owner_c, owner_e)
            ]
            assert files[0].status_code == files[1].status_code == 200
            assert files[0].content == files[1].content
            for header in ("x-relay-sha256", "x-relay-rows", "content-type"):
                assert files[0].headers[header] == files[1].headers[header], header
            assert len(gzip.decompress(files[0].content).splitlines()) == 3
            assert (await same(f"{base}/archives/usage-nobody-2020-01.jsonl.gz")).status_code == 404
            assert await _audited(conn, "archive.download", acme) == 1
            await verified(clustered)

            # The export: the same files (the profile's clock aside), audited once, and the
            # bytes of the whole builder over PostgreSQL's records.
            exports = [
                await browser.submit(f"{base}/billing", f"{base}/export")
                for browser in (owner_c, owner_e)
            ]
            assert exports[0].status_code == exports[1].status_code == 200
            assert (
                exports[0].headers["content-disposition"]
                == (exports[1].headers["content-disposition"])
            )
            mine, theirs = _export_parts(exports[0].content), _export_parts(exports[1].content)
            assert mine == theirs and f"archives/{archive}" in mine[0]
            assert await _audited(conn, "account.export", acme) == 1
            records = pg_account_records.PgAccountRecords(
                clustered.state.cluster.pool, clustered.state.store.audit_key
            )
            store = clustered.state.store
            old = await reference_export(
                records, store, acme, now_ms=1_780_000_000_000, monkeypatch=monkeypatch
            )
            pieces = export.stream_export(
                records,
                store.account(acme),
                record_export=_nothing,
                now_ms=1_780_000_000_000,
                page_rows=2,
            )
            assert b"".join([piece async for piece in pieces]) == old
            await verified(clustered)

            # Deletion: the form, a wrong name, then the request through the operator.
            await same(f"{base}/delete")
            wrong = [
                await browser.submit(f"{base}/delete", f"{base}/delete", {"confirm_name": "x"})
                for browser in (owner_c, owner_e)
            ]
            assert wrong[0].status_code == 400 and _page(wrong[0]) == _page(wrong[1])
            deleted = [
                await browser.submit(f"{base}/delete", f"{base}/delete", {"confirm_name": "acme"})
                for browser in (ops_c, ops_e)
            ]
            assert deleted[0].status_code == 303 and _page(deleted[0]) == _page(deleted[1])
            assert await _audited(conn, "account.deletion_requested", acme) == 1
            await verified(clustered)
            pending = await same(f"{base}/delete")
            assert "acme" in pending.text
            assert (
                "deletion pending" in (await same("/console/operator/accounts", owner=False)).text
            )
            await same(ops_page, owner=False)

            # The operator cancels it on each: the same redirect and notice, then 409.
            cancelled = [
                await browser.submit(ops_page, f"{ops_page}/cancel-deletion")
                for browser in (ops_c, ops_e)
            ]
            assert [c.status_code for c in cancelled] == [303, 303]
            notices = [
                (await browser.get(c.headers["location"])).text
                for browser, c in zip((ops_c, ops_e), cancelled, strict=True)
            ]
            assert "stays suspended" in notices[0]
            assert _CSRF.sub("", notices[0]) == _CSRF.sub("", notices[1])
            again = [
                await browser.submit(ops_page, f"{ops_page}/cancel-deletion")
                for browser in (ops_c, ops_e)
            ]
            assert again[0].status_code == 409 and _page(again[0]) == _page(again[1])
            assert await conn.fetchval("SELECT count(*) FROM deletion_requests") == 0
            assert await _audited(conn, "account.deletion_cancelled", acme) == 1
            await same(f"{base}/delete")
            await verified(clustered)
            # Nothing of it in the cluster instance's scratch file.
            for table in ("deletion_requests", "audit"):
                assert await clustered.state.db.fetchall(f"SELECT * FROM {table}") == []
        finally:
            await conn.close()


async def _nothing() -> None:
    return None


async def _until_chat_is(relay: RelayServer, secret: str, status: int, started: float) -> None:
    while (answer := await _chat(relay.client, secret, "again")).status_code != status:
        assert time.monotonic() - started < 1.0, f"still {answer.status_code} after 1 s"
        await asyncio.sleep(0.01)


async def test_a_deletion_cancelled_on_one_instance_lets_keys_work_on_the_other_within_1_s(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    async with (
        two_instances(tmp_path, pg_database, redis_server) as (one, two, conn),
        Browser(one) as ops_one,
        Browser(two) as ops_two,
        Browser(two) as owner_two,
    ):
        account = await _account(one.client, "comeback", ["3"])
        _, secret = await _key(one.client, account, "before")
        await _user(one, "owner@comeback.test", account)
        await _user(one, "ops@relay.test", operator=True)
        await ops_one.login("ops@relay.test")
        await ops_two.login("ops@relay.test")
        await owner_two.login("owner@comeback.test")
        assert (await _chat(two.client, secret, "hello")).status_code == 200
        base, ops_page = f"/console/a/{account}", f"/console/operator/accounts/{account}"

        # The owner deletes the account through instance 2: instance 1 refuses its key.
        form = {"confirm_name": "comeback"}
        gone = await owner_two.submit(f"{base}/delete", f"{base}/delete", form)
        assert gone.status_code == 200, gone.text
        await _until_chat_is(one, secret, 401, time.monotonic())
        await verified(one, two)
        refused = await ops_two.submit(ops_page, f"{ops_page}/status", {"status": "active"})
        assert refused.status_code == 409 and "cancel the deletion first" in refused.text

        # Cancelled through instance 1; instance 2 re-activates at once (it reads the
        # request from PostgreSQL) and a new key works there, all within 1 s.
        started = time.monotonic()
        cancelled = await ops_one.submit(ops_page, f"{ops_page}/cancel-deletion")
        assert cancelled.status_code == 303, cancelled.text
        activated = await ops_two.submit(ops_page, f"{ops_page}/status", {"status": "active"})
        assert activated.status_code == 303, activated.text
        _, fresh = await _key(one.client, account, "after")
        await _until_chat_is(two, fresh, 200, started)
        await _until_chat_is(one, fresh, 200, started)
        # As embedded: the keys revoked by the deletion stay revoked.
        assert (await _chat(two.client, secret, "old key")).status_code == 401
        assert await _audited(conn, "account.deletion_cancelled", account) == 1
        assert await conn.fetchval("SELECT status FROM accounts WHERE id = $1", account) == (
            "active"
        )
        await verified(one, two)


async def test_cancellations_race_once_and_a_failed_audit_row_cancels_nothing(
    tmp_path: Path,
    pg_database: str,
    redis_server: Any,
    admin_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with (
        two_instances(tmp_path, pg_database, redis_server) as (one, two, conn),
        Browser(one) as ops_one,
        Browser(two) as ops_two,
    ):
        await _user(one, "ops@relay.test", operator=True)
        await ops_one.login("ops@relay.test")
        await ops_two.login("ops@relay.test")

        # Two cancellations at once, one through each instance: one wins, one audit row.
        for round_ in range(3):
            account = await _account(one.client, f"racing-{round_}", ["1"])
            deletion = await one.client.post(f"/admin/accounts/{account}/deletion")
            assert deletion.status_code == 202
            page = f"/console/operator/accounts/{account}"
            tokens = [
                _CSRF.search((await browser.get(page)).text) for browser in (ops_one, ops_two)
            ]
            assert all(tokens)
            answers = await asyncio.gather(
                *(
                    browser.client.post(
                        f"{page}/cancel-deletion",
                        data={"csrf_token": token.group(0).split('value="')[1][:-1]},
                    )
                    for browser, token in zip((ops_one, ops_two), tokens, strict=True)
                    if token is not None
                )
            )
            assert sorted(a.status_code for a in answers) == [303, 409]
            assert await _audited(conn, "account.deletion_cancelled", account) == 1
        await verified(one, two)

        # The audit row cannot be written: the request stays pending, nothing is audited.
        account = await _account(one.client, "unlucky", ["1"])
        assert (await two.client.post(f"/admin/accounts/{account}/deletion")).status_code == 202
        real_append = pg_account_records.pg_audit.append

        async def failing_append(*args: Any, **kwargs: Any) -> None:
            if kwargs.get("action") == "account.deletion_cancelled":
                raise RuntimeError("injected: the audit row cannot be written")
            await real_append(*args, **kwargs)

        monkeypatch.setattr(pg_account_records.pg_audit, "append", failing_append)
        page = f"/console/operator/accounts/{account}"
        failed = await ops_one.submit(page, f"{page}/cancel-deletion")
        assert failed.status_code == 500
        still = await two.client.get(f"/admin/accounts/{account}/deletion")
        assert still.status_code == 200 and still.json()["account_id"] == account
        assert await _audited(conn, "account.deletion_cancelled", account) == 0
        await verified(one, two)
        monkeypatch.setattr(pg_account_records.pg_audit, "append", real_append)
        retried = await ops_two.submit(page, f"{page}/cancel-deletion")
        assert retried.status_code == 303
        assert (await one.client.get(f"/admin/accounts/{account}/deletion")).status_code == 404
        assert await _audited(conn, "account.deletion_cancelled", account) == 1
        await verified(one, two)
