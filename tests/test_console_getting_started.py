"""The console's acceptance path for a newcomer, in headless Chromium at desktop and phone size.

A new owner signs in, makes a mistake in the key form (the ticked models stay ticked,
the error sits beside its field, named in words, with ``aria-invalid`` and focus), then
creates the key and sees the base URL and copyable curl / Python / Node snippets for
that key's first model. The Python snippet is run as shown and answers. A reload creates
no second key and no longer shows the secret. The "Models" link lists the account's
models with its own prices (multiplier applied), context window, kind and availability.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import pytest
from conftest import make_config
from playwright.async_api import Browser, Page, expect
from support_browser import browser, shot, signed_in  # noqa: F401  (browser: a fixture)
from support_console import create_user, serve_console

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}
# A provider whose key is not in the environment: its model is listed, unavailable.
UNAVAILABLE = """
[[providers]]
name = "offline"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_keys = ["env:RELAY_TEST_UNSET_KEY"]

[[models]]
name = "offline-gpt"
routes = ["offline:gpt-x"]
input_usd_per_mtok = "2.50"
output_usd_per_mtok = "10"
context_window = 200000
"""


def _run_snippet(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "snippet", "exec"), {})  # the page's own snippet, as a user pastes it
    return out.getvalue()


async def _no_sideways_scroll(page: Page, width: int) -> None:
    assert await page.evaluate("document.documentElement.scrollWidth") <= width


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
async def test_newcomer_creates_a_key_and_calls_relay(
    browser: Browser,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    admin_token: str,
    viewport: dict[str, int],
) -> None:
    monkeypatch.delenv("RELAY_TEST_UNSET_KEY", raising=False)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    size = "phone" if viewport is PHONE else "desktop"
    config = make_config(tmp_path, extra=UNAVAILABLE)
    async with serve_console(monkeypatch, config) as relay:
        acme = await relay.create_account("acme")
        await relay.client.patch(f"/admin/accounts/{acme['id']}", json={"price_multiplier": "1.5"})
        await relay.credit(acme["id"], "1234.5", "wire-1")
        await create_user(relay, "new@acme.test", account=acme["id"], role="owner")
        page = await signed_in(browser, relay, "new@acme.test", viewport=viewport)
        # Thousands separators and cents on the balance.
        await expect(page.locator("#balance")).to_have_text("$1,234.50")
        await expect(page.locator("#base-url")).to_have_value(relay.base_url + "/v1")
        await shot(page, shots, f"overview-{size}")

        await page.get_by_role("link", name="Keys", exact=True).click()
        await page.get_by_label("mock-gpt").check()
        await page.get_by_label("Spend cap, USD").fill("1e9")
        await page.get_by_label("Expires").fill("2001-01-01")
        await page.get_by_role("button", name="Create key").click()
        # Nothing was created; what was ticked and typed is still there.
        assert relay.state.store.keys_of(acme["id"]) == []
        await expect(page.get_by_label("mock-gpt")).to_be_checked()
        await expect(page.get_by_label("mock-embedding")).not_to_be_checked()
        await expect(page.get_by_label("Spend cap, USD")).to_have_value("1e9")
        name = page.get_by_label("Name")
        await expect(name).to_have_attribute("aria-invalid", "true")
        await expect(name).to_be_focused()
        await expect(page.locator("#name-error")).to_contain_text("Name")
        await expect(page.locator("#spend_cap_usd-error")).to_contain_text("Spend cap")
        await expect(page.locator("#expires-error")).to_contain_text("in the past")
        assert "spend_cap_usd:" not in await page.content()  # no internal field names
        await shot(page, shots, f"key-form-error-{size}")

        await name.fill("first-app")
        await page.get_by_label("Spend cap, USD").fill("10")
        await page.get_by_label("Expires").fill("")
        await page.get_by_role("button", name="Create key").click()
        await expect(page.get_by_role("status")).to_contain_text("first-app")
        secret = await page.locator("#new-secret").input_value()
        assert secret.startswith("rk_")
        await expect(page.locator("#base-url")).to_have_value(relay.base_url + "/v1")
        curl = page.locator("#snippet-curl")
        await expect(curl).to_contain_text(f"curl {relay.base_url}/v1/chat/completions")
        await expect(curl).to_contain_text(secret)
        await expect(curl).to_contain_text('"model": "mock-gpt"')
        await expect(page.locator("#snippet-node")).to_contain_text("baseURL")
        await shot(page, shots, f"key-created-{size}")
        await _no_sideways_scroll(page, viewport["width"])

        # The Python snippet works as shown.
        python = await page.locator("#snippet-python").inner_text()
        printed = await asyncio.to_thread(_run_snippet, python)
        assert printed.strip()

        # A reload is a GET: no second key, and the secret is gone.
        await page.reload()
        assert [k.label for k in relay.state.store.keys_of(acme["id"])] == ["first-app"]
        await expect(page.locator("#new-secret")).to_have_count(0)
        row = page.get_by_role("row").filter(has_text="first-app")
        await expect(row).to_contain_text("new@acme.test")  # created by
        await expect(row).to_contain_text("never")  # not used yet... (expires: never)

        # Models: names, this account's prices (×1.5), context window, availability.
        await page.get_by_role("link", name="Models", exact=True).click()
        await expect(page.locator("main code").first).to_have_text(relay.base_url + "/v1")
        gpt = page.get_by_role("row").filter(has_text="mock-gpt")
        await expect(gpt).to_contain_text("$0.225")  # 0.15 × 1.5 per 1M input tokens
        await expect(gpt).to_contain_text("$0.90")  # 0.60 × 1.5 per 1M output tokens
        await expect(gpt).to_contain_text("128,000 tokens")
        await expect(gpt).to_contain_text("available")
        offline = page.get_by_role("row").filter(has_text="offline-gpt")
        await expect(offline).to_contain_text("unavailable")
        await expect(offline).to_contain_text("$3.75")
        await expect(page.get_by_role("row").filter(has_text="mock-embedding")).to_contain_text(
            "embedding"
        )
        await shot(page, shots, f"models-{size}")
        await _no_sideways_scroll(page, viewport["width"])


async def test_base_url_comes_from_public_url(
    browser: Browser,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    admin_token: str,
) -> None:
    config = make_config(tmp_path, server_extra='public_url = "https://relay.example.test/"')
    async with serve_console(monkeypatch, config) as relay:
        acme = await relay.create_account("acme")
        await create_user(relay, "o@acme.test", account=acme["id"], role="owner")
        page = await signed_in(browser, relay, "o@acme.test")
        await expect(page.locator("#base-url")).to_have_value("https://relay.example.test/v1")
        await expect(page.locator("#snippet-curl")).to_contain_text(
            "https://relay.example.test/v1/chat/completions"
        )
        await expect(page.locator("#snippet-curl")).to_contain_text("$RELAY_API_KEY")
