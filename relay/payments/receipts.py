"""Numbered receipts: one per credited payment, as JSON or a print-ready HTML page.

Numbers run ``R-YYYY-NNNNNN`` per calendar year (UTC) without gaps. ``issue_receipt``
takes the next number inside the credit's own transaction, and the single writer runs
transactions one at a time, so two credits can never draw the same number. Seller
details are copied from the config at issue time: a receipt shows who sold, as it was.
"""

from __future__ import annotations

import datetime as dt
import html
import sqlite3
from typing import Any

import msgspec

from relay.config import PaymentsConfig
from relay.money.display import format_amount
from relay.payments.store import Payment, set_receipt_number
from relay.storage.db import Database

__all__ = [
    "Receipt",
    "SellerDetails",
    "get_receipt",
    "issue_receipt",
    "list_receipts",
    "receipt_view",
    "render_receipt_html",
]


class SellerDetails(msgspec.Struct, frozen=True):
    name: str = ""
    address: str = ""
    tax_id: str | None = None

    @classmethod
    def from_config(cls, config: PaymentsConfig | None) -> SellerDetails:
        if config is None:
            return cls()
        return cls(config.seller_name, config.seller_address, config.seller_tax_id)


class Receipt(msgspec.Struct, frozen=True):
    number: str
    year: int
    seq: int
    payment_id: str
    account_id: str
    buyer_name: str
    provider: str
    payment_reference: str
    amount_micros: int
    currency: str
    amount_minor: int
    seller_name: str
    seller_address: str
    seller_tax_id: str | None
    issued_at_ms: int

    @property
    def issued_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.issued_at_ms / 1000, tz=dt.UTC)

    @property
    def amount(self) -> str:
        """The credited amount in major units, exact, at least two decimals: "12.50"."""
        whole, fraction = divmod(self.amount_micros, 1_000_000)
        digits = f"{fraction:06d}".rstrip("0").ljust(2, "0")
        return f"{whole}.{digits}"


_COLUMNS = ", ".join(Receipt.__struct_fields__)


def issue_receipt(
    conn: sqlite3.Connection,
    payment: Payment,
    *,
    buyer_name: str,
    seller: SellerDetails,
    at_ms: int,
) -> Receipt:
    """Number and store the receipt of a paid payment (inside the credit's transaction)."""
    year = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC).year
    row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM receipts WHERE year = ?", (year,))
    seq = int(row.fetchone()[0]) + 1
    receipt = Receipt(
        number=f"R-{year}-{seq:06d}",
        year=year,
        seq=seq,
        payment_id=payment.id,
        account_id=payment.account_id,
        buyer_name=buyer_name,
        provider=payment.provider,
        payment_reference=payment.provider_payment_id,
        amount_micros=payment.amount_micros,
        currency=payment.currency,
        amount_minor=payment.amount_minor,
        seller_name=seller.name,
        seller_address=seller.address,
        seller_tax_id=seller.tax_id,
        issued_at_ms=at_ms,
    )
    placeholders = ", ".join("?" for _ in Receipt.__struct_fields__)
    conn.execute(
        f"INSERT INTO receipts ({_COLUMNS}) VALUES ({placeholders})",
        msgspec.structs.astuple(receipt),
    )
    set_receipt_number(conn, payment.id, receipt.number)
    return receipt


async def get_receipt(db: Database, number: str) -> Receipt | None:
    row = await db.fetchone(f"SELECT {_COLUMNS} FROM receipts WHERE number = ?", (number,))
    return None if row is None else Receipt(*tuple(row))


async def list_receipts(db: Database, account_id: str) -> list[Receipt]:
    rows = await db.fetchall(
        f"SELECT {_COLUMNS} FROM receipts WHERE account_id = ? ORDER BY year, seq",
        (account_id,),
    )
    return [Receipt(*tuple(row)) for row in rows]


def receipt_view(receipt: Receipt) -> dict[str, Any]:
    view = msgspec.structs.asdict(receipt)
    view["amount"] = receipt.amount
    view["issued_at"] = receipt.issued_at.isoformat(timespec="seconds").replace("+00:00", "Z")
    return view


def render_receipt_html(receipt: Receipt, seller_now: SellerDetails | None = None) -> str:
    """A self-contained page that prints on one sheet (no PDF toolchain needed).

    The seller block is the one stored when the receipt was issued; a receipt issued
    before the operator filled in ``[payments] seller_*`` shows the configured one
    (``seller_now``) rather than a blank header.
    """
    r = receipt
    e = html.escape
    name, address, tax_id = r.seller_name, r.seller_address, r.seller_tax_id
    if not (name or address) and seller_now is not None:
        name, address, tax_id = seller_now.name, seller_now.address, seller_now.tax_id
    seller = [f"<strong>{e(name)}</strong>" if name else "&nbsp;", *map(e, address.splitlines())]
    if tax_id:
        seller.append(f"Tax ID: {e(tax_id)}")
    rows = {
        "Receipt number": e(r.number),
        "Date": r.issued_at.strftime("%Y-%m-%d %H:%M UTC"),
        "Billed to": f"{e(r.buyer_name)} ({e(r.account_id)})",
        "Description": "Prepaid credit for relay API usage",
        "Payment method": "card (Stripe)" if r.provider == "stripe" else "bank transfer / manual",
        "Payment reference": e(r.payment_reference),
        "Amount paid": f"{format_amount(r.amount_micros)} {e(r.currency.upper())}",
    }
    table = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Receipt {e(r.number)}</title>
<style>
body{{font:14px/1.45 system-ui,sans-serif;max-width:40rem;margin:2rem auto;color:#111}}
table{{border-collapse:collapse;width:100%;margin:1.5rem 0}}
th,td{{border-bottom:1px solid #ddd;padding:.4rem .5rem;text-align:left;vertical-align:top}}
th{{width:40%;font-weight:600}} .seller{{color:#333}} @media print{{body{{margin:0}}}}
</style></head><body>
<h1>Receipt</h1>
<p class="seller">{"<br>".join(seller)}</p>
<table>{table}</table>
<p>Paid in full. Thank you.</p>
</body></html>
"""
