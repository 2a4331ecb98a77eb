"""Refresh docs/console-*.png: relay with demo data on 127.0.0.1, shot by headless Chromium.

    .venv/bin/python scripts/console_screenshots.py [--out docs]

Runs everything locally and offline: a temporary database, the ``mock`` provider under
demo model names, 30 days of usage and charges written straight into SQLite between two
starts (so the wallet is rebuilt from the ledger as after any restart), and Debian's
``chromium`` through Playwright.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from playwright.async_api import async_playwright

from relay.app import create_app
from relay.config import load_config
from relay.money.ledger import insert_entry
from relay.money.records import LedgerEntry
from relay.usage.log import UsageRecord, insert_usage

TOKEN = "docs-screenshots-admin-token-0123456789"
PASSWORD = "correct horse battery"
MODELS = {  # name: (kind, input $/Mtok, output $/Mtok)
    "claude-sonnet": ("chat", "3", "15"),
    "gpt-4o": ("chat", "2.50", "10"),
    "gpt-4o-mini": ("chat", "0.15", "0.60"),
    "text-embedding-3-small": ("embedding", "0.02", "0"),
}
DAY_MS = 86_400_000


def _config_text(database: Path, port: int) -> str:
    text = f"""
[server]
listen = "127.0.0.1:{port}"
database = "{database}"

[[providers]]
name = "mock"
kind = "mock"
"""
    for name, (kind, price_in, price_out) in MODELS.items():
        text += f"""
[[models]]
name = "{name}"
kind = "{kind}"
routes = ["mock:{name}"]
input_usd_per_mtok = "{price_in}"
output_usd_per_mtok = "{price_out}"
"""
    return text


@asynccontextmanager
async def _serving(config_path: Path) -> AsyncIterator[str]:
    config = load_config(config_path)
    app = create_app(config)
    hc = HypercornConfig()
    hc.bind = [config.server.listen]
    hc.accesslog = None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, hc, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    url = f"http://{config.server.listen}"
    async with httpx.AsyncClient() as client:
        for _ in range(100):
            try:
                if (await client.get(url + "/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    try:
        yield url
    finally:
        stop.set()
        await task


async def _seed(url: str) -> dict[str, str]:
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as admin:
        account = (await admin.post("/admin/accounts", json={"name": "acme-ai"})).json()
        account_id = account["id"]
        await admin.post(
            f"/admin/accounts/{account_id}/credits",
            json={"amount_usd": "500", "reference": "INV-2026-10"},
        )
        keys = {}
        for name, models in (
            ("backend-prod", ["gpt-4o", "claude-sonnet"]),
            ("ci-bot", ["gpt-4o-mini"]),
            ("data-notebook", []),
        ):
            made = await admin.post(
                f"/admin/accounts/{account_id}/keys", json={"name": name, "models": models}
            )
            keys[name] = made.json()["id"]
        await admin.post(
            "/admin/users",
            json={
                "email": "maria@acme.test",
                "password": PASSWORD,
                "display_name": "maria",
                "account": account_id,
                "role": "owner",
            },
        )
    return {"account": account_id, **keys}


def _history(database: Path, ids: dict[str, str]) -> None:
    """30 days of requests and their charges, as the writer would have stored them."""
    rng = random.Random(17)
    now = int(time.time() * 1000)
    conn = sqlite3.connect(database)
    with conn:
        n = 0
        for days_ago in range(29, -1, -1):
            for _ in range(rng.randint(30, 70)):
                n += 1
                model = rng.choice(list(MODELS))
                key = rng.choice(["backend-prod", "ci-bot", "data-notebook"])
                prompt, completion = rng.randint(200, 4000), rng.randint(50, 900)
                _, price_in, price_out = MODELS[model]
                cost = int(prompt * float(price_in) + completion * float(price_out)) + 1
                status = 200 if rng.random() > 0.03 else rng.choice([429, 502])
                cost = cost if status == 200 else 0
                ts = now - days_ago * DAY_MS - rng.randint(0, DAY_MS // 2)
                request_id = f"req_demo{n:05d}"
                insert_usage(
                    conn,
                    UsageRecord(
                        request_id=request_id,
                        ts_ms=ts,
                        endpoint="chat" if MODELS[model][0] == "chat" else "embeddings",
                        status=status,
                        account_id=ids["account"],
                        key_id=ids[key],
                        model=model,
                        provider="mock",
                        error_code=None if status == 200 else "upstream_error",
                        prompt_tokens=prompt if status == 200 else 0,
                        completion_tokens=completion if status == 200 else 0,
                        cost_micros=cost,
                        latency_ms=rng.randint(200, 3000),
                    ),
                )
                if cost:
                    entry = LedgerEntry(
                        ids["account"], "charge", -cost, request_id, ids[key], request_id,
                        created_at_ms=ts,
                    )  # fmt: skip
                    insert_entry(conn, entry)
    conn.close()


async def main(out: Path) -> None:
    os.environ["RELAY_ADMIN_TOKEN"] = TOKEN
    with tempfile.TemporaryDirectory() as folder, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        database = Path(folder) / "relay.db"
        config_path = Path(folder) / "relay.toml"
        config_path.write_text(_config_text(database, port))
        async with _serving(config_path) as url:
            ids = await _seed(url)
        _history(database, ids)
        async with _serving(config_path) as url, async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--no-sandbox", "--headless"]
            )
            context = await browser.new_context(
                base_url=url, viewport={"width": 1200, "height": 900}, color_scheme="light"
            )
            page = await context.new_page()
            await page.goto("/console/login")
            await page.get_by_label("Email").fill("maria@acme.test")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_url("**/console/a/**")
            await page.screenshot(path=str(out / "console-overview.png"), full_page=True)
            await page.get_by_role("link", name="Keys", exact=True).click()
            await page.get_by_label("Name").fill("mobile-app")
            await page.get_by_label("gpt-4o-mini").check()
            await page.get_by_role("button", name="Create key").click()
            await page.locator("#new-secret").wait_for()
            await page.screenshot(path=str(out / "console-keys.png"), full_page=True)
            await page.get_by_role("navigation").get_by_role("link", name="Models").click()
            await page.screenshot(path=str(out / "console-models.png"), full_page=True)
            await browser.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    asyncio.run(main(parser.parse_args().out))
