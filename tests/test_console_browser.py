"""The console in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright, against relay served on 127.0.0.1 with the in-process mock model.

One flow, as a team owner would do it: sign in, read the balance, create a key and call
the relay with it through the ``openai`` SDK, find that request and its cost in Logs,
revoke the key, open a ticket. Then the refusals: another account's member cannot see
this account's pages or touch its objects, and a POST without the CSRF token is refused.
Each page is saved as a screenshot in the test's tmp folder.
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from playwright.async_api import Browser, expect
from support_browser import browser, shot, signed_in  # noqa: F401  (browser: a fixture)
from support_console import console_relay, create_user

from relay.console.templating import format_usd, format_usd_exact

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def test_owner_flow_and_refusals(
    browser: Browser,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    admin_token: str,
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with console_relay(monkeypatch, tmp_path) as relay:
        acme = await relay.create_account("acme")
        await relay.credit(acme["id"], "25", "wire-0001")
        await create_user(relay, "owner@acme.test", account=acme["id"], role="owner")
        globex = await relay.create_account("globex")
        await create_user(relay, "dev@globex.test", account=globex["id"], role="member")
        other_key = await relay.create_key(acme["id"], name="made-by-admin")

        # Sign in and see the balance.
        page = await signed_in(browser, relay, "owner@acme.test")
        await expect(page.locator("#balance")).to_have_text("$25.00")
        await shot(page, shots, "overview")

        # Create a key; its secret is shown once.
        await page.get_by_role("link", name="Keys", exact=True).click()
        await page.get_by_label("Name").fill("ci-bot")
        await page.get_by_label("Spend cap, USD").fill("5")
        await page.get_by_role("button", name="Create key").click()
        secret = await page.locator("#new-secret").input_value()
        assert secret.startswith("rk_")
        await expect(page.get_by_role("button", name="Copy", exact=True)).to_be_visible()
        await shot(page, shots, "keys")

        # Use it with the openai SDK against the same relay (the mock model).
        async with openai.AsyncOpenAI(
            base_url=relay.base_url + "/v1", api_key=secret, max_retries=0
        ) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="mock-gpt", messages=[{"role": "user", "content": "Hello"}]
            )
            request_id = raw.headers["x-relay-request-id"]
            cost_micros = int(raw.headers["x-relay-cost-micros"])
            assert raw.parse().choices[0].message.content
            await relay.state.db.flush()

            # The request is in Logs, with its cost.
            await page.get_by_role("link", name="Logs", exact=True).click()
            row = page.get_by_role("row").filter(has_text=request_id)
            await expect(row).to_contain_text("ci-bot")
            await expect(row).to_contain_text(format_usd_exact(cost_micros))
            await expect(row).to_contain_text("200")
            await shot(page, shots, "logs")

            # Revoke it (accepting the confirmation); the next call is refused.
            await page.get_by_role("link", name="Keys", exact=True).click()
            page.once("dialog", lambda dialog: dialog.accept())
            await page.get_by_role("button", name="Revoke ci-bot").click()
            await expect(page.get_by_role("status")).to_contain_text("revoked")
            await expect(page.get_by_role("row").filter(has_text="ci-bot")).to_contain_text(
                "revoked"
            )
            with pytest.raises(openai.AuthenticationError):
                await client.chat.completions.create(
                    model="mock-gpt", messages=[{"role": "user", "content": "Hello"}]
                )

        # Open a ticket about that request.
        await page.get_by_role("link", name="Tickets", exact=True).click()
        await page.get_by_label("Subject").fill("Charge looks high")
        await page.get_by_label("Request id").fill(request_id)
        await page.get_by_label("Message").fill("Could you check this request?")
        await page.get_by_role("button", name="Open ticket").click()
        await expect(page.get_by_role("heading", level=1)).to_contain_text("Charge looks high")
        await expect(page.get_by_text("Could you check this request?")).to_be_visible()
        await shot(page, shots, "ticket")
        for name in ("Billing", "Members", "Overview"):
            await page.get_by_role("link", name=name, exact=True).click()
            await shot(page, shots, name.lower())
        await expect(page.locator("#balance")).to_have_text(format_usd(25_000_000 - cost_micros))

        # A POST without the CSRF token is refused, session cookie or not.
        revoke_url = f"/console/a/{acme['id']}/keys/{other_key['id']}/revoke"
        refused = await page.context.request.post(revoke_url, form={"x": "1"})
        assert refused.status == 403
        assert relay.state.store.key(other_key["id"]).status == "active"

        # Another account's member is refused this account's pages and objects.
        stranger = await signed_in(browser, relay, "dev@globex.test")
        for path in (
            f"/console/a/{acme['id']}",
            f"/console/a/{acme['id']}/keys",
            f"/console/a/{acme['id']}/logs",
            f"/console/a/{acme['id']}/billing",
            f"/console/a/{globex['id']}/keys/{other_key['id']}",
            f"/console/a/{globex['id']}/logs?key={other_key['id']}",
        ):
            response = await stranger.goto(path)
            assert response is not None and response.status == 404, path
        await shot(stranger, shots, "refused")
        await stranger.goto(f"/console/a/{globex['id']}/keys")
        token = await stranger.locator("input[name=csrf_token]").first.input_value()
        forged = await stranger.context.request.post(
            f"/console/a/{globex['id']}/keys/{other_key['id']}/revoke",
            form={"csrf_token": token},
        )
        assert forged.status == 404
        assert relay.state.store.key(other_key["id"]).status == "active"

        # Usable at phone width.
        phone = await signed_in(
            browser, relay, "owner@acme.test", viewport={"width": 390, "height": 844}
        )
        await expect(phone.locator("#balance")).to_be_visible()
        scroll_width = await phone.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= 390
        await shot(phone, shots, "overview-phone")

    for name in ("overview", "keys", "logs", "ticket", "billing", "members", "refused"):
        assert (shots / f"{name}.png").stat().st_size > 0
