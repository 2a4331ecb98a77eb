"""Paying in the console (relay.console.pages.payments, account_data, topups): card top-ups
through a fake Stripe, receipts and who may open them, auto top-up settings, notice
banners, the data export and account deletion; and the Billing page in a real browser."""

from __future__ import annotations

import io
import re
import sqlite3
import time
import zipfile
from pathlib import Path

import pytest
from playwright.async_api import Browser as Chromium
from playwright.async_api import Page, async_playwright, expect
from support_accounts import Relay, auth, chat_body
from support_console import PASSWORD, Browser, console_relay, create_user
from support_payments import PaymentsRelay, checkout_completed, payments_config, run_payments_relay

from relay.payments.store import add_notice

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def _billing(account: dict[str, str]) -> str:
    return f"/console/a/{account['id']}/billing"


async def _owner(relay: Relay, name: str, email: str) -> dict[str, str]:
    account = await relay.create_account(name)
    await create_user(relay, email, account=account["id"], role="owner")
    return account


async def _pay(paid: PaymentsRelay, owner: Browser, account: dict[str, str], usd: str) -> str:
    """Top up through the form; the fake Checkout Session's id."""
    billing = _billing(account)
    started = await owner.submit(billing, billing + "/topup", {"amount_usd": usd})
    assert started.status_code == 303, started.text
    number = started.headers["location"].rsplit("/", 1)[1]
    return f"cs_test_{number}"


async def test_card_top_up_redirects_credits_and_shows_the_receipt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as paid:
        relay = paid.relay
        acme = await _owner(relay, "acme", "o@acme.test")
        globex = await _owner(relay, "globex", "o@globex.test")
        await create_user(relay, "admin@acme.test", account=acme["id"], role="admin")
        await create_user(relay, "ops@relay.test", operator=True)
        billing = _billing(acme)
        async with Browser(relay) as owner:
            await owner.login("o@acme.test")
            page = await owner.get(billing)
            assert "Top up with card" in page.text and 'min="5"' in page.text
            assert 'max="500"' in page.text and 'for="topup_amount"' in page.text
            assert "https://checkout.stripe.com" in page.headers["content-security-policy"]

            for typed, message in [("2", "between 5 and 500"), ("ten", "amount in USD")]:
                refused = await owner.submit(billing, billing + "/topup", {"amount_usd": typed})
                assert refused.status_code == 400 and message in refused.text
                assert f'value="{typed}"' in refused.text
            assert paid.stripe.of("/v1/checkout/sessions") == []

            started = await owner.submit(billing, billing + "/topup", {"amount_usd": "25"})
            assert started.status_code == 303
            assert started.headers["location"] == "https://checkout.test/1"
            form = paid.stripe.of("/v1/checkout/sessions")[0].form
            assert form["success_url"] == f"https://relay.test{billing}?notice=topup-paid"
            assert form["cancel_url"] == f"https://relay.test{billing}?notice=topup-cancelled"
            pending = (await owner.get(billing)).text
            assert "cs_test_1" in pending and "pending" in pending
            back = await owner.get(billing, params={"notice": "topup-cancelled"})
            assert "nothing was charged" in back.text

            delivered = await paid.deliver(checkout_completed("evt_1", "cs_test_1", acme["id"]))
            assert delivered.json()["credited"] is True
            number = delivered.json()["receipt_number"]
            page = (await owner.get(billing)).text
            assert "Card (Stripe)" in page and "credited" in page and "$25.00" in page
            receipt_url = f"/console/receipts/{number}"
            assert f'href="{receipt_url}"' in page and f'href="{receipt_url}?download=1"' in page
            receipt = await owner.get(receipt_url)
            assert receipt.status_code == 200 and number in receipt.text
            assert "25.00 USD" in receipt.text and "Relay &lt;Test&gt; Ltd" in receipt.text
            download = await owner.get(receipt_url, params={"download": "1"})
            assert download.headers["content-disposition"] == (
                f'attachment; filename="{number}.html"'
            )
            landing = await owner.get("/console/billing", params={"paid": "1"})
            assert landing.headers["location"] == f"{billing}?notice=topup-paid"

        async with Browser(relay) as stranger:
            await stranger.login("o@globex.test")
            assert (await stranger.get(receipt_url)).status_code == 404
            assert (await stranger.get("/console/receipts/R-1999-000001")).status_code == 404
            assert (await stranger.get(billing)).status_code == 404
            own = await stranger.get(_billing(globex))
            assert number not in own.text
        async with Browser(relay) as admin:
            await admin.login("admin@acme.test")
            assert (await admin.get(receipt_url)).status_code == 404
            refused = await admin.submit(
                f"/console/a/{acme['id']}/keys", billing + "/topup", {"amount_usd": "25"}
            )
            assert refused.status_code == 403
        async with Browser(relay) as operator:
            await operator.login("ops@relay.test")
            assert (await operator.get(receipt_url)).status_code == 200
        async with Browser(relay) as anonymous:
            assert (await anonymous.get(receipt_url)).status_code == 303
            forged = await anonymous.client.post(billing + "/topup", data={"amount_usd": "25"})
            assert forged.status_code == 403
        assert len(paid.stripe.of("/v1/checkout/sessions")) == 1
        assert await paid.audit_ok()


async def test_auto_top_up_settings_save_and_validate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as paid:
        relay = paid.relay
        acme = await _owner(relay, "acme", "o@acme.test")
        billing = _billing(acme)
        action = billing + "/auto-topup"
        good = {"enabled": "on", "trigger_usd": "5", "amount_usd": "25", "monthly_cap_usd": "100"}
        async with Browser(relay) as owner:
            await owner.login("o@acme.test")
            page = (await owner.get(billing)).text
            assert 'for="auto_trigger"' in page and "No card is saved yet" in page
            for changes, message in [
                ({"trigger_usd": "lots"}, "balance that triggers a refill must be an amount"),
                ({"amount_usd": "0.001"}, "must be whole cents"),
                ({"amount_usd": "0"}, "refill amount must be more than 0"),
                ({"monthly_cap_usd": "10"}, "monthly cap must be at least the refill amount"),
                ({"amount_usd": "600", "monthly_cap_usd": "900"}, "between 5 and 500"),
            ]:
                refused = await owner.submit(billing, action, good | changes)
                assert refused.status_code == 400, changes
                assert message in refused.text, refused.text
                typed = next(iter(changes.values()))
                assert f'value="{typed}"' in refused.text
            assert acme["id"] not in paid.runtime.service.auto_topups

            saved = await owner.submit(billing, action, good)
            assert saved.status_code == 303
            assert saved.headers["location"].endswith("#auto-topup")
            settings = paid.runtime.service.auto_topups[acme["id"]]
            assert settings.enabled and settings.trigger_micros == 5_000_000
            assert settings.amount_micros == 25_000_000
            assert settings.monthly_cap_micros == 100_000_000
            page = (await owner.get(billing, params={"notice": "auto-topup-saved"})).text
            assert "Auto top-up settings saved." in page
            assert re.search(r'id="auto_enabled" name="enabled" checked', page)
            assert (
                'id="auto_cap" name="monthly_cap_usd" inputmode="decimal" required value="100"'
                in page
            )

            # Switched off, the amount need not fit the card range.
            off = good | {"amount_usd": "600", "monthly_cap_usd": "600"}
            del off["enabled"]
            assert (await owner.submit(billing, action, off)).status_code == 303
            assert not paid.runtime.service.auto_topups[acme["id"]].enabled
        rows = await relay.rows("SELECT actor FROM audit WHERE action = 'auto_topup.update'")
        assert [row["actor"] for row in rows] == ["o@acme.test", "o@acme.test"]


async def test_notice_banner_on_every_page_until_dismissed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as paid:
        relay = paid.relay
        acme = await _owner(relay, "acme", "o@acme.test")
        other = await _owner(relay, "other", "o@other.test")
        await create_user(relay, "dev@acme.test", account=acme["id"], role="member")
        message = "Automatic top-up of 25 USD failed: card_declined."

        def notify(conn: sqlite3.Connection) -> None:
            add_notice(conn, acme["id"], "auto_topup_failed", message, 1_700_000_000_000)
            add_notice(conn, other["id"], "auto_topup_failed", "theirs", 1_700_000_000_000)

        await relay.state.db.write(notify)
        ids = {row["account_id"]: row["id"] for row in await relay.rows("SELECT * FROM notices")}
        base = f"/console/a/{acme['id']}"
        async with Browser(relay) as owner:
            await owner.login("o@acme.test")
            for path in ("", "/keys", "/logs", "/billing", "/tickets", "/members"):
                page = (await owner.get(base + path)).text
                assert message in page and 'aria-label="Account notices"' in page, path
                assert "theirs" not in page
            dismiss = f"{base}/notices/{ids[acme['id']]}/dismiss"
            forged = await owner.client.post(dismiss, data={"next": base + "/keys"})
            assert forged.status_code == 403
            theirs = await owner.submit(
                base, f"{base}/notices/{ids[other['id']]}/dismiss", {"next": base}
            )
            assert theirs.status_code == 404
            done = await owner.submit(base + "/keys", dismiss, {"next": base + "/keys"})
            assert done.status_code == 303
            assert done.headers["location"] == f"{base}/keys?notice=notice-dismissed"
            assert message not in (await owner.get(base + "/keys")).text
            away = await owner.submit(base, dismiss, {"next": "https://evil.test/"})
            assert away.headers["location"] == f"{base}?notice=notice-dismissed"
        async with Browser(relay) as member:
            await member.login("dev@acme.test")
            assert "Account notices" not in (await member.get(base)).text
        rows = await relay.rows("SELECT account_id, dismissed_at_ms FROM notices ORDER BY id")
        assert [row["dismissed_at_ms"] is None for row in rows] == [False, True]


async def test_export_downloads_a_zip_without_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as paid:
        relay = paid.relay
        acme = await _owner(relay, "acme", "o@acme.test")
        await create_user(relay, "admin@acme.test", account=acme["id"], role="admin")
        key = await relay.create_key(acme["id"], name="ci-bot")
        await relay.credit(acme["id"], "20", "wire-42")
        billing = _billing(acme)
        async with Browser(relay) as owner:
            await owner.login("o@acme.test")
            export = await owner.submit(billing, f"/console/a/{acme['id']}/export")
            assert export.status_code == 200
            assert export.headers["content-type"] == "application/zip"
            assert "attachment" in export.headers["content-disposition"]
        archive = zipfile.ZipFile(io.BytesIO(export.content))
        text = "\n".join(archive.read(name).decode() for name in archive.namelist())
        assert "ci-bot" in text and "wire-42" in text and "o@acme.test" in text
        hashes = await relay.rows("SELECT secret_hash FROM api_keys")
        passwords = await relay.rows("SELECT password_hash FROM console_users")
        for secret in [key["secret"], PASSWORD, "test-admin-token"]:
            assert secret not in text
        for row in hashes + passwords:
            assert next(iter(row.values())) not in text
        async with Browser(relay) as admin:
            await admin.login("admin@acme.test")
            keys_page = f"/console/a/{acme['id']}/keys"
            refused = await admin.submit(keys_page, f"/console/a/{acme['id']}/export")
            assert refused.status_code == 403
        exports = await relay.rows("SELECT actor FROM audit WHERE action = 'account.export'")
        assert [row["actor"] for row in exports] == ["o@acme.test"]


async def test_delete_needs_the_typed_name_then_suspends_and_signs_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as paid:
        relay = paid.relay
        acme = await _owner(relay, "acme", "o@acme.test")
        await relay.credit(acme["id"], "5", "wire-1")
        key = await relay.create_key(acme["id"], name="ci-bot")
        assert (
            await relay.client.post(
                "/v1/chat/completions", json=chat_body(), headers=auth(key["secret"])
            )
        ).status_code == 200
        delete = f"/console/a/{acme['id']}/delete"
        async with Browser(relay) as owner:
            await owner.login("o@acme.test")
            form = await owner.get(delete)
            assert 'for="confirm_name"' in form.text
            wrong = await owner.submit(delete, delete, {"confirm_name": "acm"})
            assert wrong.status_code == 400 and "exactly to confirm" in wrong.text
            assert relay.state.store.account(acme["id"]).status == "active"
            done = await owner.submit(delete, delete, {"confirm_name": " acme "})
            assert done.status_code == 200 and "Account deleted" in done.text
            erase_on = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 30 * 86_400))
            assert erase_on in done.text and "You are signed out" in done.text
            after = await owner.get(_billing(acme))
            assert after.status_code == 303 and "/console/login" in after.headers["location"]
        assert relay.state.store.account(acme["id"]).status == "suspended"
        assert relay.state.store.key(key["id"]).status == "revoked"
        refused = await relay.client.post(
            "/v1/chat/completions", json=chat_body(), headers=auth(key["secret"])
        )
        assert refused.status_code == 401
        # An operator deleting an account stays signed in and sees the erasure date.
        globex = await relay.create_account("globex")
        await create_user(relay, "ops@relay.test", operator=True)
        async with Browser(relay) as operator:
            await operator.login("ops@relay.test")
            target = f"/console/a/{globex['id']}/delete"
            done = await operator.submit(target, target, {"confirm_name": "globex"})
            assert done.headers["location"] == f"{_billing(globex)}?notice=deletion-requested"
            page = (await operator.get(done.headers["location"])).text
            assert "Deletion was requested" in page and erase_on in page
            assert "Top up with card" not in page
        requested = await relay.rows("SELECT requested_by FROM deletion_requests ORDER BY 1")
        assert requested == [{"requested_by": "o@acme.test"}, {"requested_by": "ops@relay.test"}]
        assert await paid.audit_ok()


async def test_without_card_payments_the_page_explains_bank_transfers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, admin_token: str
) -> None:
    async with console_relay(monkeypatch, tmp_path) as relay:
        acme = await _owner(relay, "acme", "o@acme.test")
        await create_user(relay, "ops@relay.test", operator=True)
        billing = _billing(acme)
        async with Browser(relay) as operator:
            await operator.login("ops@relay.test")
            credited = await operator.submit(
                "/console/operator/accounts",
                f"/console/operator/accounts/{acme['id']}/credit",
                {"amount_usd": "40", "reference": "wire-7"},
            )
            assert credited.status_code == 303
        async with Browser(relay) as owner:
            await owner.login("o@acme.test")
            page = await owner.get(billing)
            assert "bank transfer" in page.text and "Top up with card" not in page.text
            assert "Auto top-up" not in page.text
            assert "form-action 'self';" in page.headers["content-security-policy"]
            number = re.search(r"/console/receipts/(R-\d{4}-\d{6})", page.text)
            assert number is not None and "Bank transfer / manual" in page.text
            receipt = await owner.get(f"/console/receipts/{number.group(1)}")
            assert receipt.status_code == 200 and "40.00 USD" in receipt.text
            for action in ("/topup", "/auto-topup"):
                refused = await owner.submit(billing, billing + action, {"amount_usd": "25"})
                assert refused.status_code == 404
        credits = await relay.rows("SELECT actor FROM audit WHERE action = 'wallet.credit'")
        assert [row["actor"] for row in credits] == ["ops@relay.test"]


async def _signed_in(chromium: Chromium, relay: Relay, width: int, height: int) -> Page:
    context = await chromium.new_context(
        base_url=relay.base_url, viewport={"width": width, "height": height}
    )
    context.set_default_timeout(10_000)
    page = await context.new_page()
    await page.goto("/console/login")
    await page.get_by_label("Email").fill("o@acme.test")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/console/a/**")
    return page


@pytest.mark.browser
@pytest.mark.slow
async def test_billing_page_in_a_browser(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as paid:
        relay = paid.relay
        acme = await _owner(relay, "acme", "o@acme.test")
        await relay.credit(acme["id"], "20", "wire-42")
        async with Browser(relay) as owner:
            await owner.login("o@acme.test")
            session = await _pay(paid, owner, acme, "25")
        await paid.deliver(checkout_completed("evt_1", session, acme["id"]))
        message = "Automatic top-up of 25 USD failed: card_declined."
        await relay.state.db.write(
            lambda conn: add_notice(
                conn, acme["id"], "auto_topup_failed", message, 1_700_000_000_000
            )
        )
        async with async_playwright() as playwright:
            chromium = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            try:
                for name, (width, height) in [("billing", (1280, 900)), ("phone", (390, 844))]:
                    page = await _signed_in(chromium, relay, width, height)
                    await page.get_by_role("link", name="Billing", exact=True).click()
                    await expect(page.get_by_label("Amount, USD", exact=True)).to_be_visible()
                    await expect(page.get_by_label("Refill amount, USD")).to_be_visible()
                    await expect(page.get_by_text(message)).to_be_visible()
                    top_ups = page.locator("#top-ups")
                    row = top_ups.get_by_role("row").filter(has_text=session)
                    await expect(row).to_contain_text("credited")
                    await page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
                    assert await page.evaluate("document.documentElement.scrollWidth") <= width
                    await page.context.close()
                page = await _signed_in(chromium, relay, 1280, 900)
                await page.get_by_role("button", name="Dismiss this notice").click()
                await expect(page.get_by_role("status")).to_contain_text("Notice dismissed")
                await expect(page.get_by_text(message)).to_have_count(0)
                await page.context.close()
            finally:
                await chromium.close()
    assert (shots / "billing.png").stat().st_size > 0
