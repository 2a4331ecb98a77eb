"""Receipts: sequential numbers per year, issued with the credit, shown as JSON and HTML."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from support_payments import checkout_completed, payments_config, run_payments_relay

from relay.payments.receipts import Receipt, render_receipt_html


async def test_each_credit_gets_the_next_number_and_both_views(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    year = dt.datetime.now(dt.UTC).year
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as p:
        account = await p.relay.create_account("Ada & Co")
        await p.deliver(checkout_completed("evt_1", "cs_1", account["id"], amount_minor=1999))
        await p.relay.credit(account["id"], "3", "wire-1")
        await p.deliver(checkout_completed("evt_2", "cs_2", account["id"], amount_minor=500))

        listed = (await p.relay.client.get(f"/admin/accounts/{account['id']}/receipts")).json()
        numbers = [r["number"] for r in listed["data"]]
        assert numbers == [f"R-{year}-000001", f"R-{year}-000002", f"R-{year}-000003"]
        payments = await p.relay.rows("SELECT receipt_number FROM payments ORDER BY 1")
        assert [row["receipt_number"] for row in payments] == numbers

        first = await p.relay.client.get(f"/admin/receipts/{numbers[0]}")
        assert first.status_code == 200
        body = first.json()
        assert body["amount"] == "19.99" and body["currency"] == "usd"
        assert body["payment_reference"] == "cs_1" and body["buyer_name"] == "Ada & Co"
        assert body["seller_name"] == "Relay <Test> Ltd" and body["seller_tax_id"] == "GB123"

        page = await p.relay.client.get(f"/admin/receipts/{numbers[1]}", params={"format": "html"})
        assert page.headers["content-type"].startswith("text/html")
        assert "content-disposition" not in page.headers
        assert "Relay &lt;Test&gt; Ltd" in page.text and "Ada &amp; Co" in page.text
        assert "3.00 USD" in page.text and "wire-1" in page.text and "Tax ID: GB123" in page.text
        download = await p.relay.client.get(
            f"/admin/receipts/{numbers[2]}", params={"format": "html", "download": "1"}
        )
        disposition = download.headers["content-disposition"]
        assert disposition == f'attachment; filename="{numbers[2]}.html"'

        missing = await p.relay.client.get("/admin/receipts/R-1999-000001")
        assert missing.status_code == 404
        anonymous = await p.relay.client.get(
            f"/admin/receipts/{numbers[0]}", headers={"authorization": "Bearer nope"}
        )
        assert anonymous.status_code == 401


def test_receipt_html_shows_exact_amounts_and_escapes_everything() -> None:
    receipt = Receipt(
        number="R-2026-000042",
        year=2026,
        seq=42,
        payment_id="pay_1",
        account_id="acct_1",
        buyer_name="<script>x</script>",
        provider="manual",
        payment_reference="ref",
        amount_micros=1_234_567,
        currency="usd",
        amount_minor=123,
        seller_name="S",
        seller_address="A\nB",
        seller_tax_id=None,
        issued_at_ms=1_767_225_600_000,  # 2026-01-01 00:00 UTC
    )
    page = render_receipt_html(receipt)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "1.234567 USD" in page and "2026-01-01 00:00 UTC" in page
    assert "A<br>B" in page and "Tax ID" not in page
    assert receipt.amount == "1.234567"
