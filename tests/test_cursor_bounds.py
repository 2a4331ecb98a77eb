"""Issue 14 item 2: ids, cursors, dates and limits beyond what SQLite or Python's
calendar hold are a 4xx (or clamped), never a 500, on the admin API and the console."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_config
from support_accounts import run_relay
from support_console import Browser, create_user

HUGE = "9" * 30


async def test_admin_cursors_dates_and_limits_never_500(tmp_path: Path, admin_token: str) -> None:
    async with run_relay(make_config(tmp_path)) as relay:
        account = await relay.create_account("acme")
        ledger = f"/admin/accounts/{account['id']}/ledger"
        for path in (
            f"{ledger}?before_id={HUGE}",
            f"{ledger}?before_id=-{HUGE}",
            f"/admin/audit?before_id={HUGE}",
            f"/admin/audit?before_id=-{HUGE}",
        ):
            response = await relay.client.get(path)
            assert response.status_code == 200, (path, response.text)
        for path in (
            "/admin/usage/summary?until=9999-12-31",
            "/admin/usage/summary?since=0001-01-01&until=9999-12-31",
            "/admin/usage/summary?until=0001-01-05",
        ):
            response = await relay.client.get(path)
            assert response.status_code in (200, 400), (path, response.text)
        for field in ("rpm", "tpm", "concurrency"):
            response = await relay.client.post(
                f"/admin/accounts/{account['id']}/keys", json={"name": "k", field: 2**63}
            )
            assert response.status_code == 400, (field, response.text)
            assert field in response.json()["error"]["message"]
        credit = await relay.credit(account["id"], "1" + "0" * 40, "huge")
        assert credit.status_code == 400, credit.text


async def test_console_cursors_dates_and_ticket_ids_never_500(
    tmp_path: Path, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_relay(make_config(tmp_path)) as relay:
        account = await relay.create_account("acme")
        await create_user(relay, "op@example.com", operator=True)
        async with Browser(relay) as browser:
            assert (await browser.login("op@example.com")).status_code in (200, 303)
            base = f"/console/a/{account['id']}"
            for path in (
                f"{base}/logs?before={HUGE}",
                f"{base}/logs?until=9999-12-31",
                f"{base}/logs?since=9999-12-31&until=9999-12-31",
                f"{base}/billing?before={HUGE}",
                f"/console/operator/audit?before={HUGE}",
            ):
                response = await browser.get(path)
                assert response.status_code in (200, 400), (path, response.status_code)
            response = await browser.get(f"{base}/tickets/{HUGE}")
            assert response.status_code == 404
