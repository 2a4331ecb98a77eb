"""Every console page of issue 17 in headless Chromium, at desktop (1366 px) and phone
(390 px) sizes: no page scrolls sideways; charts label today and offer their figures as
a table a keyboard reaches; the date-range picker narrows the period; spend shows by key;
logs total the filter and open a single request; the ledger reads per day with its
running balance; an operator's credit above the threshold and a suspend both ask first;
an account pending deletion cannot be activated; invites can be revoked; the favicon is
served. Screenshots go to ``$RELAY_SHOTS`` when set (to look at them), else tmp.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect
from support_accounts import Relay, auth, chat_body
from support_browser import browser, signed_in  # noqa: F401  (browser: a fixture)
from support_console import console_relay, create_user

from relay.identity.account_records import SqliteAccountRecords
from relay.identity.data_rights import request_deletion

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("RELAY_SHOTS", "") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def _check(page: Page, shots: Path, name: str, width: int) -> None:
    """A full-page screenshot, and the page fits its width."""
    await page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    scroll = await page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"{name} scrolls sideways: {scroll} > {width}"


async def _busy_account(relay: Relay) -> tuple[dict[str, str], dict[str, str]]:
    acme = await relay.create_account("acme")
    await relay.credit(acme["id"], "2500", "wire-0001")
    key = await relay.create_key(acme["id"], name="backend-prod")
    other = await relay.create_key(acme["id"], name="nightly-batch")
    for secret, count in ((key["secret"], 3), (other["secret"], 2)):
        for _ in range(count):
            answer = await relay.client.post(
                "/v1/chat/completions", json=chat_body(), headers=auth(secret)
            )
            assert answer.status_code == 200
    embedded = await relay.client.post(
        "/v1/embeddings",
        json={"model": "mock-embedding", "input": "hi"},
        headers=auth(key["secret"]),
    )
    assert embedded.status_code == 200
    await relay.state.db.flush()
    return acme, key


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
async def test_console_pages_at_desktop_and_phone_size(
    browser: Browser,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    admin_token: str,
    viewport: dict[str, int],
) -> None:
    shots = _shots(tmp_path)
    size = "phone" if viewport is PHONE else "desktop"
    width = viewport["width"]
    today = dt.datetime.now(dt.UTC).date()
    async with console_relay(monkeypatch, tmp_path) as relay:
        acme, key = await _busy_account(relay)
        base = f"/console/a/{acme['id']}"
        await create_user(relay, "owner@acme.test", account=acme["id"], role="owner")
        page = await signed_in(browser, relay, "owner@acme.test", viewport=viewport)

        # Overview: today's bar labelled, a table a keyboard reaches, spend by key.
        chart = page.locator("#spend svg.chart").first
        await expect(chart.locator("text", has_text="Today")).to_have_count(1)
        await expect(page.locator("#spend")).to_contain_text("backend-prod")
        await expect(page.locator("#spend")).to_contain_text("nightly-batch")
        summary = page.get_by_text("Spend per day as a table")
        await summary.focus()
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("row").filter(has_text="Today")).to_contain_text("6")
        await _check(page, shots, f"overview-{size}", width)
        # The period picker: a week ago only → nothing spent then, and it says so.
        week_ago = (today - dt.timedelta(days=7)).isoformat()
        await page.get_by_label("From", exact=True).fill(week_ago)
        await page.get_by_label("To", exact=True).fill(week_ago)
        await page.get_by_role("button", name="Show").click()
        await expect(page.locator("#spend")).to_contain_text("No spend in this period")
        await expect(page.locator("#period-spend")).to_have_text("$0.00")
        await page.get_by_role("link", name="7 days").click()
        await expect(page.locator("#period-spend")).not_to_have_text("$0.00")

        # Logs: totals of the filter, a single request, and a bad filter shown inline.
        await page.get_by_role("link", name="Logs", exact=True).click()
        await expect(page.locator("#total-requests")).to_have_text("6")
        await page.get_by_label("Key").select_option(label="nightly-batch")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("#total-requests")).to_have_text("2")
        await _check(page, shots, f"logs-{size}", width)
        await page.get_by_role("link", name="req_").first.click()
        await expect(page.get_by_role("heading", level=1)).to_contain_text("Request")
        await expect(page.locator("dl.entry")).to_contain_text("nightly-batch")
        await _check(page, shots, f"log-entry-{size}", width)
        bad = await page.goto(base + "/logs?since=yesterday")
        assert bad is not None and bad.status == 400
        await expect(page.get_by_role("alert")).to_contain_text("since")
        await expect(page.locator("#total-requests")).to_have_text("6")

        # Keys: Expires, Last used, Created by.
        await page.get_by_role("link", name="Keys", exact=True).click()
        row = page.get_by_role("row").filter(has_text="backend-prod")
        await expect(row).to_contain_text("admin API")
        await expect(row).to_contain_text(today.isoformat())  # last used today
        await _check(page, shots, f"keys-{size}", width)

        # Models, billing (ledger per day, filter by kind), members with an invite.
        await page.get_by_role("link", name="Models", exact=True).click()
        await _check(page, shots, f"models-{size}", width)
        await page.get_by_role("link", name="Billing", exact=True).click()
        day_row = page.locator("#ledger").get_by_role("row").filter(has_text=today.isoformat())
        await expect(day_row).to_contain_text("$2,500.00")
        await expect(day_row).to_contain_text("6 requests")
        await _check(page, shots, f"billing-{size}", width)
        await page.get_by_label("Show").select_option("credit")
        await page.get_by_role("button", name="Show").click()
        await expect(page.locator("#ledger")).to_contain_text("wire-0001")
        await page.get_by_role("link", name="Members", exact=True).click()
        await page.get_by_role("button", name="Create invite link").click()
        await expect(page.locator("#invite-url")).to_be_visible()
        await _check(page, shots, f"members-{size}", width)
        page.once("dialog", lambda dialog: dialog.accept())
        await page.get_by_role("button", name="Revoke the member invite").click()
        await expect(page.get_by_role("status")).to_contain_text("Invite revoked")
        await expect(page.locator(".invites li")).to_have_count(0)

        favicon = await page.context.request.get("/console/static/favicon.svg")
        assert favicon.status == 200 and "svg" in favicon.headers["content-type"]

        # The operator: create an account, credit above the threshold, suspend, deletion.
        await create_user(relay, "ops@relay.test", operator=True)
        ops = await signed_in(
            browser,
            relay,
            "ops@relay.test",
            landing="**/console/operator/accounts",
            viewport=viewport,
        )
        await _check(ops, shots, f"operator-accounts-{size}", width)
        await ops.get_by_label("Name").fill("globex")
        await ops.get_by_label("Billing mode").select_option("postpaid")
        await ops.get_by_label("Credit limit, USD").fill("abc")
        await ops.get_by_role("button", name="Create account").click()
        limit = ops.get_by_label("Credit limit, USD")
        await expect(limit).to_have_attribute("aria-invalid", "true")
        await expect(limit).to_be_focused()
        await expect(ops.get_by_label("Name")).to_have_value("globex")
        await limit.fill("500")
        await ops.get_by_role("button", name="Create account").click()
        await expect(ops.get_by_role("status")).to_contain_text("“globex” created")
        await ops.get_by_label("Amount, USD").fill("1500")
        await ops.get_by_label("Reference").fill("wire-77")
        await ops.get_by_role("button", name="Credit globex").click()
        await expect(ops.get_by_role("heading", level=1)).to_have_text(
            "Credit $1,500.00 to globex?"
        )
        await _check(ops, shots, f"operator-confirm-credit-{size}", width)
        globex = relay.state.store.account("globex")
        assert relay.state.wallet.snapshot(globex.id).balance_micros == 0
        await ops.get_by_role("button", name="Credit $1,500.00").click()
        await expect(ops.get_by_role("status")).to_have_text(
            "Credited $1,500.00 to “globex” (reference wire-77)."
        )
        await expect(ops.locator("#op-balance")).to_have_text("$1,500.00")
        await ops.get_by_role("button", name="Suspend globex").click()
        await expect(ops.get_by_role("heading", level=1)).to_have_text("Suspend globex?")
        await ops.get_by_role("button", name="Suspend globex").click()
        await expect(ops.get_by_role("status")).to_contain_text("is suspended")
        state = relay.state
        await request_deletion(
            SqliteAccountRecords(state.db, state.store.audit_key),
            state.store,
            globex.id,
            actor="ops@relay.test",
        )
        await ops.reload()
        await expect(ops.get_by_role("button", name="Activate globex")).to_have_count(0)
        await expect(ops.locator("main")).to_contain_text("cannot be activated")
        await _check(ops, shots, f"operator-account-{size}", width)
        ops.once("dialog", lambda dialog: dialog.accept())
        await ops.get_by_role("button", name="Cancel the deletion").click()
        await expect(ops.get_by_role("status")).to_contain_text("stays suspended")
        await ops.get_by_role("button", name="Activate globex").click()
        await expect(ops.get_by_role("status")).to_contain_text("active again")
        assert state.store.account(globex.id).status == "active"
