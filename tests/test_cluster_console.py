"""The console's pages in cluster mode (issue 18, part D): money from PostgreSQL, logs from
its usage rows, and the console's money writes through the cluster's own paths.

Two relays served in this process on one cluster config (the example config's ``mock``
provider) against the throwaway engines of tests/support_cluster.py; checks read
PostgreSQL directly. Neither instance's local wallet or scratch file may answer: they hold
nothing shared (a balance read from them would be $0.00).
"""

from __future__ import annotations

import csv
import io
import re
from html import escape
from typing import Any

import pytest
from starlette.routing import Route
from support_accounts import Relay, chat_body
from support_console import Browser, create_user
from test_cluster_people import _account_on_both, pg, two_instances

from relay.admin.cluster import CLUSTER_ROUTES
from relay.cluster.pg_rollup import catch_up
from relay.console.routes import console_pages
from relay.money.display import format_usd

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")

pytestmark = pytest.mark.usefixtures("admin_token")

_BALANCE = re.compile(r'id="balance">([^<]+)<')


async def _ledger_sum(conn: Any, account_id: str) -> int:
    total = await conn.fetchval(
        "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE account_id = $1", account_id
    )
    return int(total)


async def _chat(relay: Relay, secret: str, n: int) -> list[str]:
    """``n`` chat requests; their request ids (each 200 waits for its commit)."""
    ids = []
    for _ in range(n):
        response = await relay.client.post(
            "/v1/chat/completions",
            json=chat_body("mock-gpt"),
            headers={"authorization": f"Bearer {secret}"},
        )
        assert response.status_code == 200, response.text
        ids.append(response.headers["x-request-id"])
    return ids


async def test_console_pages_answer_from_postgresql_on_either_instance(
    tmp_path: Any, pg_database: str, redis_server: Any
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two):
        acme = await _account_on_both(one, two, "acme")
        account = acme["id"]
        await create_user(one, "ops@relay.test", operator=True)
        await create_user(two, "o@acme.test", account=account)
        base = f"/console/a/{account}"
        ops_page = f"/console/operator/accounts/{account}"
        async with Browser(one) as ops, Browser(two) as owner, pg(pg_database) as conn:
            await ops.login("ops@relay.test")
            await owner.login("o@acme.test")
            # An operator's credit on instance 1: PostgreSQL's ledger, a receipt, audited.
            form = {"amount_usd": "25", "reference": "wire-1", "note": "bank"}
            credited = await ops.submit(ops_page, ops_page + "/credit", form)
            assert credited.status_code == 303 and "notice=credited" in credited.headers["location"]
            again = await ops.submit(ops_page, ops_page + "/credit", form)
            assert "already-credited" in again.headers["location"]
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM ledger WHERE account_id = $1 AND kind = 'credit'", account
                )
                == 1
            )
            receipt = await conn.fetchval(
                "SELECT number FROM receipts WHERE account_id = $1", account
            )
            assert receipt is not None
            # A key with a spend cap made in the console of instance 2: the admin API's path.
            made = await owner.submit(
                f"{base}/keys", f"{base}/keys", {"name": "ci", "spend_cap_usd": "3"}
            )
            assert made.status_code == 303, made.text
            shown = (await owner.get(made.headers["location"])).text  # the flash: same instance
            secret = re.search(r"(rk_[A-Za-z0-9_\-]+)", shown)
            assert secret is not None, shown
            key = await conn.fetchrow(
                "SELECT id, spend_cap_micros FROM api_keys WHERE account_id = $1", account
            )
            assert key["spend_cap_micros"] == 3_000_000
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM console_key_creators WHERE key_id = $1", key["id"]
                )
                == 1
            )
            ids = await _chat(one, secret.group(1), 3) + await _chat(two, secret.group(1), 2)
            total = await _ledger_sum(conn, account)
            balance = await conn.fetchval(
                "SELECT balance_micros FROM accounts WHERE id = $1", account
            )
            spent = await conn.fetchval(
                "SELECT COALESCE(SUM(cost_micros), 0) FROM usage WHERE account_id = $1", account
            )
            assert balance == total == 25_000_000 - spent and spent > 0
            # The period's spend is the daily rollup (the elected runner's job every
            # ROLLUP_INTERVAL_S) plus the rows above its mark: current right after the
            # requests, and counted once after the rows are rolled up.
            assert await conn.fetchval("SELECT count(*) FROM usage_daily") == 0
            for rolled in (False, True):
                if rolled:
                    await catch_up(conn)
                for browser in (ops, owner):  # either instance: the same figures
                    overview = (await browser.get(base)).text
                    found = _BALANCE.search(overview)
                    assert found is not None and found.group(1) == escape(format_usd(total))
                    assert f'id="period-spend">{escape(format_usd(spent))}<' in overview
                    assert "5 requests" in overview
            logs = (await ops.get(f"{base}/logs")).text
            assert all(request_id in logs for request_id in ids)
            entry = await owner.get(f"{base}/logs/{ids[0]}")
            assert entry.status_code == 200 and ids[0] in entry.text
            exported = await ops.get(f"{base}/logs.csv")
            assert len(list(csv.reader(io.StringIO(exported.text)))) == 1 + len(ids)
            keys_page = (await ops.get(f"{base}/keys")).text
            assert escape(format_usd(spent)) in keys_page and "o@acme.test" in keys_page
            billing = (await owner.get(f"{base}/billing")).text
            assert receipt in billing and format_usd(total) in billing
            month = await conn.fetchval("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')")
            statement = await ops.get(f"{base}/billing/statement", params={"month": month})
            assert statement.status_code == 200 and format_usd(25_000_000) in statement.text
            assert (await owner.get(f"/console/receipts/{receipt}")).status_code == 200
            listing = (await ops.get("/console/operator/accounts")).text
            assert format_usd(total) in listing
            audit = await ops.get("/console/operator/audit")
            assert audit.status_code == 200 and "wallet.credit" in audit.text
            assert "Hash chain intact" in audit.text
        for relay in (one, two):  # nothing shared was written to a scratch file
            assert await relay.rows("SELECT * FROM ledger") == []
            assert await relay.rows("SELECT * FROM usage") == []


def test_every_console_page_runs_in_cluster_mode() -> None:
    """The guard lets every console route through (part A added the last: export,
    deletion, its cancellation and the archives); a path it does not list stays 501."""
    allowed = [(method, re.compile(pattern + r"/?")) for method, pattern in CLUSTER_ROUTES]
    checked = 0
    for route in console_pages():
        if not isinstance(route, Route) or route.path == "/{path:path}":
            continue  # the static files' mount, and the console's own 404 page
        path = "/console" + re.sub(r"\{[^}:]+(:int)?\}", "1", route.path)
        for method in route.methods or ():
            listed = any(m == method and p.fullmatch(path) for m, p in allowed)
            assert listed or method == "HEAD", (method, path)
            checked += 1
    assert checked > 50


async def test_the_data_pages_answer_and_an_unlisted_path_answers_501(
    tmp_path: Any, pg_database: str, redis_server: Any
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two):
        acme = await _account_on_both(one, two, "acme")
        await create_user(one, "o@acme.test", account=acme["id"])
        async with Browser(one) as owner:
            await owner.login("o@acme.test")
            for path in ("archives", "delete"):
                answer = await owner.get(f"/console/a/{acme['id']}/{path}")
                assert answer.status_code == 200, path
            unlisted = await owner.get(f"/console/a/{acme['id']}/nowhere")
            assert unlisted.status_code == 501
            assert unlisted.json()["error"]["code"] == "not_available_in_cluster_mode"
