"""Helpers for the console's browser tests: headless Debian ``chromium`` through Playwright
(never a downloaded browser build), a signed-in page, and screenshots."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from support_accounts import Relay
from support_console import PASSWORD

__all__ = ["CHROMIUM", "browser", "shot", "signed_in"]

CHROMIUM = "/usr/bin/chromium"
_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 10_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        found = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=_ARGS, headless=True
        )
        try:
            yield found
        finally:
            await found.close()


async def signed_in(
    browser: Browser,
    relay: Relay,
    email: str,
    *,
    landing: str = "**/console/a/**",
    **options: object,
) -> Page:
    """A new browser context signed in through the real form."""
    context: BrowserContext = await browser.new_context(base_url=relay.base_url, **options)  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    await page.goto("/console/login")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(landing)
    return page


async def shot(page: Page, folder: Path, name: str) -> None:
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
