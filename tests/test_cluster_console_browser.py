"""The console in a real browser across two cluster instances (issue 18, part D): headless
Chromium (Debian's ``chromium``) through Playwright, two relays served in this process on
one cluster config against the throwaway PostgreSQL and Redis.

Signed in on instance 1, the same browser (its cookie: one host, any port) opens the
account on instance 2, creates a key there, calls the relay on instance 1 with it, and
finds the request in instance 2's Logs; the balance both instances show is the ledger sum
in PostgreSQL.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import openai
import pytest
from playwright.async_api import Browser, expect
from support_browser import browser, shot, signed_in  # noqa: F401  (browser: a fixture)
from support_console import create_user
from test_cluster_people import _account_on_both, pg, two_instances

from relay.console.templating import format_usd

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.usefixtures("admin_token")]


async def test_signed_in_on_one_instance_the_browser_works_on_the_other(
    browser: Browser,  # noqa: F811
    tmp_path: Path,
    pg_database: str,
    redis_server: Any,
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two):
        acme = await _account_on_both(one, two, "acme")
        assert (await one.credit(acme["id"], "25", "wire-0001")).status_code == 201
        await create_user(two, "owner@acme.test", account=acme["id"], role="owner")
        page = await signed_in(browser, one, "owner@acme.test")
        await expect(page.locator("#balance")).to_have_text("$25.00")
        await shot(page, shots, "overview-instance-1")

        # The session row is PostgreSQL's: instance 2 knows this browser.
        await page.goto(f"{two.base_url}/console/a/{acme['id']}/keys")
        await expect(page.get_by_role("button", name="Create key")).to_be_visible()
        await page.get_by_label("Name").fill("ci-bot")
        await page.get_by_label("Spend cap, USD").fill("5")
        await page.get_by_role("button", name="Create key").click()
        secret = await page.locator("#new-secret").input_value()
        assert secret.startswith("rk_")
        await shot(page, shots, "keys-instance-2")

        async with openai.AsyncOpenAI(
            base_url=one.base_url + "/v1", api_key=secret, max_retries=0
        ) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="mock-gpt", messages=[{"role": "user", "content": "Hello"}]
            )
            request_id = raw.headers["x-relay-request-id"]
        await page.goto(f"{two.base_url}/console/a/{acme['id']}/logs")
        row = page.get_by_role("row").filter(has_text=request_id)
        await expect(row).to_contain_text("ci-bot")
        await shot(page, shots, "logs-instance-2")

        async with pg(pg_database) as conn:
            total = await conn.fetchval(
                "SELECT SUM(amount_micros) FROM ledger WHERE account_id = $1", acme["id"]
            )
        assert 0 < total < 25_000_000
        for relay in (one, two):
            await page.goto(f"{relay.base_url}/console/a/{acme['id']}")
            balance = await page.locator("#balance").inner_html()
            assert balance == escape(format_usd(int(total)))
