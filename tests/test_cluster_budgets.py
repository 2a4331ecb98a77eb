"""Period budgets in cluster mode (issue 18): enforced across instances by PostgreSQL.

Two relays are served in this process on one cluster config (two pools, two leases: two
instances to PostgreSQL and Redis) with the in-process mock provider. A key's monthly
budget and an account's daily budget, spent through both instances at once, are never
exceeded; the counters ``relay_hold`` checks equal the ledger's charges of the period.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import config_text
from support_accounts import Relay, auth, chat_body, run_relay
from test_server import free_port

from relay.cluster.pg_money import PgMoneyStore
from relay.config import Config, parse_config
from relay.money.budget import BUDGET_PERIODS, BudgetCalendar

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")

# 0.02 USD a token, at most 16 out: a request's worst case is about half a dollar.
DEAR = """
[[models]]
name = "dear-gpt"
routes = ["mock:dear-gpt"]
input_usd_per_mtok = "20000"
output_usd_per_mtok = "20000"
max_output_tokens = 16
"""


def _config(tmp_path: Path, dsn: str, redis_port: int, more: str = "") -> Config:
    db = 1 + secrets.randbelow(15)
    extra = (
        DEAR
        + more
        + f'\n[storage]\nurl = "{dsn}"\n'
        + f'\n[cluster]\nredis_url = "redis://127.0.0.1:{redis_port}/{db}"\nlease_s = 3\n'
    )
    return parse_config(config_text(tmp_path / "relay.db", extra=extra), base_dir=str(tmp_path))


class Clock:
    """The instances' wall clock (budget periods); starts at the real time."""

    def __init__(self) -> None:
        self.now = time.time_ns() // 1_000_000

    def __call__(self) -> int:
        return self.now


@contextlib.asynccontextmanager
async def two_instances(
    tmp_path: Path,
    pg_database: str,
    redis_server: Any,
    clock: Clock | None = None,
    more: str = "",
) -> AsyncIterator[tuple[Relay, Relay]]:
    config = _config(tmp_path, pg_database, redis_server.port, more)
    kwargs: dict[str, Any] = {} if clock is None else {"wall_clock_ms": clock}
    async with run_relay(config, **kwargs) as one, run_relay(config, **kwargs) as two:
        yield one, two


async def _spend_through_both(one: Relay, two: Relay, secret: str, count: int) -> list[int]:
    async def call(relay: Relay) -> int:
        response = await relay.client.post(
            "/v1/chat/completions", json=chat_body("dear-gpt"), headers=auth(secret)
        )
        assert response.status_code in (200, 402), response.text
        return response.status_code

    return list(await asyncio.gather(*(call(one if i % 2 else two) for i in range(count))))


async def _charges(conn: Any, column: str, owner: str) -> int:
    total = await conn.fetchval(
        f"SELECT COALESCE(-SUM(amount_micros), 0) FROM ledger WHERE {column} = $1"
        " AND kind = 'charge'",
        owner,
    )
    return int(total)


async def _settled(conn: Any, account_id: str) -> None:
    for _ in range(200):
        if not await conn.fetchval("SELECT count(*) FROM holds WHERE account_id = $1", account_id):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("holds still open")


async def test_a_monthly_key_budget_spent_through_two_instances_is_never_exceeded(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two):
        account, key = await one.funded_key(
            "acme", amount_usd="100", spend_cap_usd="5", budget_period="month"
        )
        assert key["budget_period"] == "month"
        codes = await _spend_through_both(one, two, key["secret"], 40)
        assert 0 < codes.count(200) and codes.count(402) > 0, codes
        # Refusals under load count the worst cases in flight; once they settled, what is
        # left may still fit a request: spend it, one at a time, until refused.
        for _ in range(10):
            if (await _spend_through_both(one, two, key["secret"], 1)) == [402]:
                break
        conn = await asyncpg.connect(pg_database)
        try:
            await _settled(conn, account["id"])
            spent = await _charges(conn, "key_id", key["id"])
            assert 0 < spent <= 5_000_000
            counter = await conn.fetchval(
                "SELECT spent_micros FROM budget_spend WHERE scope = 'key' AND owner_id = $1",
                key["id"],
            )
            assert counter == spent, "the period counter is the period's charges"
            balance = await conn.fetchval(
                "SELECT balance_micros FROM accounts WHERE id = $1", account["id"]
            )
            assert balance == 100_000_000 - spent
            # Every refused hold undid its part: nothing is left reserved anywhere.
            reserved = await conn.fetchrow(
                "SELECT a.worst_micros + a.held_micros AS account, k.worst_micros + k.held_micros"
                " AS key FROM accounts a JOIN api_keys k ON k.account_id = a.id WHERE k.id = $1",
                key["id"],
            )
            assert tuple(reserved) == (0, 0)
        finally:
            await conn.close()
        # Either instance shows the cluster-wide spend of the period.
        for relay in (one, two):
            shown = (await relay.client.get("/v1/key", headers=auth(key["secret"]))).json()
            assert shown["limits"]["budget_period"] == "month"
            assert shown["period_spent_micros"] == spent and shown["resets_at_ms"] > 0
            assert shown["remaining_micros"] == 5_000_000 - spent
            admin_view = (await relay.client.get(f"/admin/keys/{key['id']}")).json()
            assert admin_view["period_spent_micros"] == spent
            assert admin_view["budget_resets_at"].endswith("T00:00:00Z")
        # Every instance refuses the next request: the budget is cluster-wide.
        for relay in (one, two):
            refused = await relay.client.post(
                "/v1/chat/completions", json=chat_body("dear-gpt"), headers=auth(key["secret"])
            )
            assert refused.status_code == 402
            message = refused.json()["error"]["message"]
            assert "key monthly budget reached" in message and "it resets at" in message


async def test_an_account_daily_budget_binds_all_its_keys_on_all_instances_and_resets(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    clock = Clock()
    async with two_instances(tmp_path, pg_database, redis_server, clock) as (one, two):
        account = await one.create_account("acme")
        assert (await one.credit(account["id"], "100", "seed")).status_code == 201
        patched = await one.client.patch(
            f"/admin/accounts/{account['id']}", json={"budget_usd": "4", "budget_period": "day"}
        )
        assert patched.status_code == 200, patched.text
        first = await one.create_key(account["id"])
        second = await two.create_key(account["id"])
        codes = await _spend_through_both(one, two, first["secret"], 12)
        codes += await _spend_through_both(two, one, second["secret"], 12)
        assert codes.count(402) > 0, codes
        conn = await asyncpg.connect(pg_database)
        try:
            await _settled(conn, account["id"])
            spent = await _charges(conn, "account_id", account["id"])
            assert 0 < spent <= 4_000_000
        finally:
            await conn.close()
        shown = (await one.client.get(f"/admin/accounts/{account['id']}")).json()
        assert (shown["budget_period"], shown["budget_spent_micros"]) == ("day", spent)
        key_view = (await two.client.get("/v1/key", headers=auth(second["secret"]))).json()
        assert key_view["account_budget"]["spent_micros"] == spent
        # The next day (by the instances' calendar) the budget is whole again.
        now = dt.datetime.fromtimestamp(clock.now / 1000, tz=dt.UTC)
        tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0)
        clock.now = int(tomorrow.timestamp()) * 1000
        ok = await two.client.post(
            "/v1/chat/completions", json=chat_body("dear-gpt"), headers=auth(first["secret"])
        )
        assert ok.status_code == 200, ok.text


async def test_a_budget_set_mid_period_counts_what_was_already_spent_in_it(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two):
        account, key = await one.funded_key("acme", amount_usd="100")
        codes = await _spend_through_both(one, two, key["secret"], 6)
        assert codes == [200] * 6
        conn = await asyncpg.connect(pg_database)
        try:
            await _settled(conn, account["id"])
            before = await _charges(conn, "key_id", key["id"])
            # A monthly budget of what was spent plus one dollar: about two more requests.
            cap = before + 1_000_000
            changed = await two.client.patch(
                f"/admin/keys/{key['id']}",
                json={"spend_cap_usd": f"{cap / 1_000_000:.6f}", "budget_period": "month"},
            )
            assert changed.status_code == 200, changed.text
            codes = await _spend_through_both(one, two, key["secret"], 8)
            assert codes.count(402) > 0, codes
            await _settled(conn, account["id"])
            after = await _charges(conn, "key_id", key["id"])
            assert before < after <= cap
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A local webhook on 127.0.0.1: (its URL, the JSON bodies received)."""
    received: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        await runner.cleanup()


async def test_money_alerts_come_once_from_the_elected_instance_with_cluster_wide_figures(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    async with webhook_receiver() as (url, received):
        alerts = f"""
[alerts_settings]
check_interval_s = 1

[[alerts]]
sink = "webhook"
name = "ops"
url = "{url}"
events = ["balance_low", "budget_80", "budget_100"]
balance_below_usd = "5"
"""
        async with two_instances(tmp_path, pg_database, redis_server, more=alerts) as (one, two):
            poor = await one.create_account("poor")
            assert (await one.credit(poor["id"], "2", "seed-poor")).status_code == 201
            _, key = await two.funded_key(
                "spender", amount_usd="100", spend_cap_usd="1", budget_period="month"
            )
            codes = await _spend_through_both(one, two, key["secret"], 4)
            assert codes.count(402) > 0, codes

            def events() -> list[tuple[str, str]]:
                return [(body["event"], body["subject"]) for body in received]

            for _ in range(150):
                seen = {event for event, _ in events()}
                if "balance_low" in seen and seen & {"budget_80", "budget_100"}:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.5)  # more rounds: nothing is sent twice
            low = [subject for event, subject in events() if event == "balance_low"]
            assert low == [f"account:{poor['id']}"], events()
            # The key's budget (80% or all of it, as the charges fell), by the period's spend.
            spent = [subject for event, subject in events() if event.startswith("budget_")]
            assert len(spent) == 1 and spent[0].startswith(f"key:{key['id']}:"), events()


def test_the_period_starts_a_hold_passes_follow_the_clock_and_a_reloaded_calendar() -> None:
    calendar = BudgetCalendar()
    clock = Clock()
    store = PgMoneyStore(None, "instance")
    store.use_periods(lambda: calendar, clock)

    def expected() -> tuple[int, ...]:
        return tuple(calendar.bounds(period, clock.now)[0] for period in BUDGET_PERIODS)

    start = clock.now
    for step_ms in (0, 1, 3_600_000, 86_400_000, 7 * 86_400_000, 40 * 86_400_000):
        clock.now = start + step_ms
        assert store.period_starts() == expected()  # cached or not, always the calendar's
    calendar = BudgetCalendar(day_start_hour=6, week_start=6, month_start_day=15)
    assert store.period_starts() == expected()  # a reload's calendar applies at once
