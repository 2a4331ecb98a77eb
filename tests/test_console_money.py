"""Money as people read it across the console: the ledger per day with its running balance
and a filter by kind, statements and CSV exports with key names beside ids and one money
format, and receipts with the seller block from config."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from pathlib import Path

import pytest
from conftest import make_config
from support_accounts import auth, chat_body
from support_console import Browser, create_user, serve_console

SELLER = """
[payments]
provider = "manual"
seller_name = "Relay Ops GmbH"
seller_address = "Hauptstrasse 1\\n10115 Berlin"
seller_tax_id = "DE123456789"
"""


@pytest.fixture
def relay_dir(tmp_path: Path, admin_token: str) -> Path:
    return tmp_path


async def test_ledger_statement_csv_and_receipt_read_alike(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with serve_console(monkeypatch, make_config(relay_dir, extra=SELLER)) as relay:
        acme = await relay.create_account("acme")
        await relay.credit(acme["id"], "1500", "wire-1")
        key = await relay.create_key(acme["id"], name="backend-prod")
        for _ in range(3):
            answer = await relay.client.post(
                "/v1/chat/completions", json=chat_body(), headers=auth(key["secret"])
            )
            assert answer.status_code == 200
        await relay.state.db.flush()
        balance = await relay.ledger_sum(acme["id"])
        spent = 1_500_000_000 - balance
        assert 0 < spent < 10_000  # three tiny charges
        await create_user(relay, "o@acme.test", account=acme["id"], role="owner")
        billing = f"/console/a/{acme['id']}/billing"
        today = dt.datetime.now(dt.UTC).date().isoformat()
        month = today[:7]
        async with Browser(relay) as owner:
            await owner.login("o@acme.test")
            page = (await owner.get(billing)).text
            # One line for today: the credit, the three charges, the balance at day end.
            day_row = page.split(f">{today}</th>")[1].split("</tr>")[0]
            assert "$1,500.00" in day_row and "3 requests" in day_row
            assert "$1,500.00" in day_row.split("Balance at day end")[1]  # rounds to cents
            credits = (await owner.get(billing, params={"kind": "credit"})).text
            assert "wire-1" in credits and "$1,500.00" in credits
            charges = (await owner.get(billing, params={"kind": "charge"})).text
            assert "backend-prod" in charges and key["id"] in charges
            assert re.search(r"\u2212\$0\.0000\d\d", charges)  # per-request: every digit
            mangled = await owner.get(billing, params={"kind": "x", "before_day": "9" * 40})
            assert mangled.status_code == 200  # a bad query string is not an error page

            statement = (await owner.get(billing + "/statement", params={"month": month})).text
            assert "backend-prod" in statement and key["id"] in statement
            assert "$1,500.00" in statement  # top-ups this month, with separator and cents
            sheet = await owner.get(
                billing + "/statement", params={"month": month, "format": "csv"}
            )
            rows = list(csv.DictReader(io.StringIO(sheet.text)))
            by_key = next(r for r in rows if r["group"] == "key")
            assert by_key["name"] == key["id"] and by_key["key_name"] == "backend-prod"
            assert by_key["cost_usd"] == f"0.{spent:06d}".rstrip("0").ljust(4, "0")

            logs = await owner.get(f"/console/a/{acme['id']}/logs.csv")
            first = next(csv.DictReader(io.StringIO(logs.text)))
            assert first["key_id"] == key["id"] and first["key_name"] == "backend-prod"
            assert re.fullmatch(r"0\.0000\d+", first["cost_usd"])

            receipts = re.findall(r'href="(/console/receipts/[^"?]+)"', page)
            assert receipts
            receipt = (await owner.get(receipts[0])).text
            assert "Relay Ops GmbH" in receipt and "10115 Berlin" in receipt
            assert "DE123456789" in receipt and "1,500.00 USD" in receipt
