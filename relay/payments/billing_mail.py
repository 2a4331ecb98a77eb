"""Billing mail for people: a receipt when credit lands, a statement when a month closes.

Both go through one durable table, ``billing_mail``, one row per (kind, account, ref):

* a **receipt** row is written by ``finalize_credit`` inside the credit's own transaction
  (webhook payment, admin or console credit, auto top-up), so a credit that committed
  always has its row and a refused one never has;
* a **statement** row is added for each account once the calendar month (UTC) it covers
  has closed, by ``BillingMailer.enqueue_statements`` (``INSERT OR IGNORE``: the unique
  key makes it once per account and month, whatever restarts happen).

Where the rows live is a ``MailQueue`` (``relay.payments.mail_queue``: SQLite's, or in
cluster mode PostgreSQL's, whose rows the elected job runner sends: ``relay.payments.
pg_mail_queue``); the mail's figures are read through a ``RowReader`` (the same portable SQL
on either engine) and the receipt through the payments' records.

``BillingMailer.deliver_due`` renders each due row from the ledger, the usage rows and the
receipt (amounts are integer micro-dollars until ``relay.money.display`` formats them),
sends it to the account's active owners through ``[email]`` and records the outcome;
failures are retried with backoff. A row whose kind is switched off in ``[email]`` (or
that has no one to go to) is marked skipped, not sent later. SMTP has no transactions: a
crash between the server's "250" and the row's update sends that one mail again after a
restart (at least once), never zero times. Mail carries metadata only: amounts, models,
key names; never a prompt.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from relay.config import Config
from relay.mail.smtp import MailError, send_mail
from relay.money.display import format_usd, format_usd_exact
from relay.money.invoices import Statement, build_statement, month_bounds
from relay.payments.mail_queue import DueMail, MailQueue
from relay.payments.receipts import Receipt
from relay.storage.reader import RowReader

__all__ = [
    "BILLING_MAIL_INTERVAL_S",
    "MAX_ATTEMPTS",
    "BillingMailer",
    "closed_month",
    "enqueue_receipt_mail",
]

# Receipts go out within this long of the credit; a closed month's statements on the next round.
BILLING_MAIL_INTERVAL_S = 15.0

log = logging.getLogger("relay.billing_mail")
MAX_ATTEMPTS = 8
_BATCH = 20
_BACKOFF_BASE_MS = 30_000
_BACKOFF_MAX_MS = 6 * 3_600_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def enqueue_receipt_mail(
    conn: sqlite3.Connection, account_id: str, number: str, at_ms: int
) -> None:
    """Inside the credit's transaction: the receipt's mail row (sent or skipped later)."""
    conn.execute(
        "INSERT OR IGNORE INTO billing_mail (kind, account_id, ref, created_at_ms, "
        "next_attempt_at_ms) VALUES ('receipt', ?, ?, ?, ?)",
        (account_id, number, at_ms, at_ms),
    )


def closed_month(now_ms: int) -> str:
    """The last calendar month (UTC) that has closed at ``now_ms``: ``YYYY-MM``."""
    now = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC)
    last_day = now.replace(day=1) - dt.timedelta(days=1)
    return f"{last_day.year:04d}-{last_day.month:02d}"


class BillingMailer:
    """Adds closed months' statement rows and delivers due rows; the lifespan runs ``step``."""

    def __init__(
        self,
        queue: MailQueue,
        reader: RowReader,
        receipts: Callable[[str], Awaitable[Receipt | None]],
        config: Callable[[], Config],
        *,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._queue = queue
        self._db = reader
        self._receipts = receipts
        self._config = config  # read at each use: a reload may switch mail on or off
        self._clock_ms = clock_ms
        # One delivery pass at a time: two passes would both send a row read before either
        # recorded its outcome.
        self._delivering = asyncio.Lock()

    async def step(self) -> int:
        """One round: statements of the month that just closed, then what is due."""
        await self.enqueue_statements()
        return await self.deliver_due()

    async def enqueue_statements(self) -> int:
        """A statement row for every account with money history by the end of the last
        closed month (one never credited nor charged gets no empty statements)."""
        email = self._config().email
        if email is None or not email.statements:
            return 0
        now = self._clock_ms()
        month = closed_month(now)
        _, end = month_bounds(month)
        return await self._queue.add_statements(month, end, now)

    async def deliver_due(self) -> int:
        """Send every due row once; returns how many were sent."""
        async with self._delivering:
            return await self._deliver_due()

    async def _deliver_due(self) -> int:
        now = self._clock_ms()
        sent = handled = 0
        # At most _BATCH rows a round; a queue may hand them out fewer at a time (the
        # cluster's claims one per send).
        while handled < _BATCH:
            mails = await self._queue.due(now, _BATCH - handled)
            if not mails:
                break
            for mail in mails:
                outcome, error = await self._attempt(mail.kind, mail.account_id, mail.ref)
                await self._record(mail, outcome, error)
                sent += outcome == "sent"
                handled += 1
        return sent

    async def _attempt(self, kind: str, account_id: str, ref: str) -> tuple[str, str | None]:
        email = self._config().email
        if email is None or not (email.receipts if kind == "receipt" else email.statements):
            return "skipped", f"{kind} mail is off in [email]"
        recipients = await self._owners(account_id)
        if not recipients:
            return "skipped", "the account has no active owner with an email address"
        message = await self._render(kind, account_id, ref)
        if message is None:
            return "skipped", f"the {kind} {ref} no longer exists"
        try:
            await send_mail(email, recipients, *message)
        except MailError as exc:
            return "pending", str(exc)[:500]
        return "sent", None

    async def _owners(self, account_id: str) -> list[str]:
        rows = await self._db.fetchall(
            "SELECT u.email FROM console_memberships m JOIN console_users u ON u.id = m.user_id "
            "WHERE m.account_id = ? AND m.role = 'owner' AND u.status = 'active' ORDER BY u.email",
            (account_id,),
        )
        return [row["email"] for row in rows if "@" in row["email"]]

    async def _render(self, kind: str, account_id: str, ref: str) -> tuple[str, str] | None:
        if kind == "receipt":
            receipt = await self._receipts(ref)
            if receipt is None:
                return None
            return render_receipt_mail(receipt_fields(receipt))
        account = await self._db.fetchone(
            "SELECT name, mode, credit_limit_micros FROM accounts WHERE id = ?", (account_id,)
        )
        if account is None:
            return None
        statement = await build_statement(
            self._db,
            account_id=account_id,
            account_name=account["name"],
            mode=account["mode"],
            credit_limit_micros=account["credit_limit_micros"],
            month=ref,
        )
        start, _ = month_bounds(ref)
        opening = await self._db.fetchone(
            "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger "
            "WHERE account_id = ? AND created_at_ms < ?",
            (account_id, start),
        )
        assert opening is not None
        return render_statement_mail(statement, opening_balance_micros=opening[0])

    async def _record(self, mail: DueMail, outcome: str, error: str | None) -> None:
        now, row_id, attempts = self._clock_ms(), mail.id, mail.attempt
        if outcome == "pending" and attempts >= MAX_ATTEMPTS:
            log.error("billing mail %d given up after %d attempts: %s", row_id, attempts, error)
            outcome = "failed"
        elif outcome == "pending":
            log.warning("billing mail %d not sent (attempt %d): %s", row_id, attempts, error)
        backoff = min(_BACKOFF_MAX_MS, _BACKOFF_BASE_MS * 2 ** (attempts - 1))
        await self._queue.record(mail, outcome, error, now_ms=now, next_at_ms=now + backoff)


def receipt_fields(receipt: Receipt) -> dict[str, Any]:
    return {
        "number": receipt.number,
        "buyer": receipt.buyer_name,
        "amount_micros": receipt.amount_micros,
        "currency": receipt.currency.upper(),
        "method": receipt.provider,
        "reference": receipt.payment_reference,
        "issued_at": receipt.issued_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "seller": receipt.seller_name,
    }


def render_receipt_mail(fields: dict[str, Any]) -> tuple[str, str]:
    amount = format_usd_exact(fields["amount_micros"])
    subject = f"[relay] Receipt {fields['number']}: {amount} credited to {fields['buyer']}"
    lines = [
        f"{amount} was credited to the account {fields['buyer']}.",
        "",
        f"Receipt:   {fields['number']}",
        f"Amount:    {amount} ({fields['currency']})",
        f"Method:    {fields['method']}",
        f"Reference: {fields['reference']}",
        f"Issued:    {fields['issued_at']}",
    ]
    if fields["seller"]:
        lines.append(f"Seller:    {fields['seller']}")
    lines += ["", "The printable receipt is in the console."]
    return subject, "\n".join(lines)


def render_statement_mail(statement: Statement, *, opening_balance_micros: int) -> tuple[str, str]:
    s = statement
    subject = f"[relay] Statement for {s.month}: {s.account_name}"
    lines = [
        f"Statement for {s.month} (UTC), account {s.account_name} ({s.account_id}).",
        "",
        f"Opening balance:  {format_usd(opening_balance_micros)}",
        f"Credits:          {format_usd(s.credits_micros)}",
        f"Charges:          {format_usd(s.charges_micros)}",
        f"Closing balance:  {format_usd(s.closing_balance_micros)}",
    ]
    if s.mode == "postpaid":
        lines.append(f"Credit limit:     {format_usd(s.credit_limit_micros)}")
    for group, title in (("model", "Spend by model"), ("key", "Spend by key")):
        rows = [line for line in s.lines if line.group == group]
        lines += ["", f"{title}:"]
        if not rows:
            lines.append("  no usage")
        for line in rows:
            name = line.name
            if group == "key" and line.name in s.key_names:
                name = f"{s.key_names[line.name]} ({line.name})"
            lines.append(
                f"  {name}: {format_usd(line.cost_micros)} over {line.requests:,} requests "
                f"({line.prompt_tokens:,} in, {line.completion_tokens:,} out tokens)"
            )
    lines += ["", "The full statement (HTML, CSV) is in the console."]
    return subject, "\n".join(lines)
