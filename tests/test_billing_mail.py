"""Billing mail: a receipt when credit lands and a statement once a month has closed,
sent to the account's owners through a real local SMTP server (aiosmtpd), durable across
a restart and once per (account, month)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from conftest import make_config
from support_accounts import Relay, auth, chat_body, run_relay
from support_console import create_user
from support_mail import Inbox, email_section, smtp_server

from relay.config import Config
from relay.money.display import format_usd
from relay.payments.billing_mail import BillingMailer, closed_month

PROMPT = "the secret plans for the product launch"


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, Inbox]]:
    with smtp_server() as server:
        yield server


class Clock:
    def __init__(self) -> None:
        self.now = time.time_ns() // 1_000_000

    def __call__(self) -> int:
        return self.now


def mail_config(tmp_path: Path, port: int, *, receipts: bool, statements: bool) -> Config:
    email = email_section(port, "billing@relay.test", receipts=receipts, statements=statements)
    return make_config(tmp_path, extra=email)


def mailer_of(relay: Relay) -> BillingMailer:
    mailer: BillingMailer = relay.lifespan_state["billing_mail"]
    return mailer


async def acme_with_owners(relay: Relay) -> dict[str, Any]:
    """Account acme with two owners (who get billing mail) and a member (who does not)."""
    account = await relay.create_account("acme")
    for email, role in (("owner", "owner"), ("second-owner", "owner"), ("member", "member")):
        await create_user(relay, f"{email}@acme.test", account=account["id"], role=role)
    return account


def first_of_next_month(now_ms: int) -> int:
    now = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC)
    first = (now.replace(day=1) + dt.timedelta(days=32)).replace(day=1, hour=1, minute=0)
    return int(first.timestamp() * 1000)


async def test_a_manual_credit_mails_a_receipt_to_the_owners_once(
    tmp_path: Path, admin_token: str, smtp: tuple[Controller, Inbox]
) -> None:
    controller, inbox = smtp
    config = mail_config(tmp_path, controller.port, receipts=True, statements=False)
    async with run_relay(config) as relay:
        account = await acme_with_owners(relay)
        assert (await relay.credit(account["id"], "12.5", "wire-1")).status_code == 201
        mailer = mailer_of(relay)
        await mailer.deliver_due()
        assert await mailer.deliver_due() == 0  # sent once
        [(recipients, message)] = inbox.messages
        assert recipients == ["owner@acme.test", "second-owner@acme.test"]
        assert message["From"] == "billing@relay.test"
        [receipt] = await relay.rows("SELECT number FROM receipts")
        assert f"Receipt {receipt['number']}: $12.50 credited to acme" in message["Subject"]
        body = message.get_content()
        assert "Amount:    $12.50 (USD)" in body and "wire-1" in body
        [row] = await relay.rows("SELECT * FROM billing_mail")
        assert (row["kind"], row["status"], row["ref"]) == ("receipt", "sent", receipt["number"])


async def test_receipts_switched_off_are_skipped_not_sent_later(
    tmp_path: Path, admin_token: str, smtp: tuple[Controller, Inbox]
) -> None:
    controller, inbox = smtp
    config = mail_config(tmp_path, controller.port, receipts=False, statements=False)
    async with run_relay(config) as relay:
        account = await acme_with_owners(relay)
        await relay.credit(account["id"], "3", "wire-1")
        # No owner at all: skipped too, and said why.
        lonely = await relay.create_account("lonely")
        await relay.credit(lonely["id"], "3", "wire-2")
        await mailer_of(relay).deliver_due()
        rows = await relay.rows("SELECT status, last_error FROM billing_mail ORDER BY id")
        assert [r["status"] for r in rows] == ["skipped", "skipped"]
        assert "off in [email]" in rows[0]["last_error"]
    assert inbox.messages == []


async def test_a_refused_mail_is_retried_after_its_backoff(
    tmp_path: Path, admin_token: str, smtp: tuple[Controller, Inbox]
) -> None:
    controller, inbox = smtp
    inbox.refuse = 1
    clock = Clock()
    config = mail_config(tmp_path, controller.port, receipts=True, statements=False)
    async with run_relay(config, wall_clock_ms=clock) as relay:
        account = await acme_with_owners(relay)
        await relay.credit(account["id"], "1", "wire-1")
        mailer = mailer_of(relay)
        assert await mailer.deliver_due() == 0
        [row] = await relay.rows("SELECT status, attempts, last_error FROM billing_mail")
        assert (row["status"], row["attempts"]) == ("pending", 1) and "451" in row["last_error"]
        assert await mailer.deliver_due() == 0  # not yet due
        clock.now += 31_000
        assert await mailer.deliver_due() == 1
        assert len(inbox.messages) == 1


async def test_the_monthly_statement_is_mailed_once_after_the_month_closes(
    tmp_path: Path, admin_token: str, smtp: tuple[Controller, Inbox]
) -> None:
    controller, inbox = smtp
    clock = Clock()
    month = closed_month(first_of_next_month(clock.now))  # the month we are in
    config = mail_config(tmp_path, controller.port, receipts=False, statements=True)
    async with run_relay(config, wall_clock_ms=clock) as relay:
        account = await acme_with_owners(relay)
        await relay.credit(account["id"], "5", "wire-1")
        key = await relay.create_key(account["id"], name="dev-key")
        for _ in range(2):
            body = chat_body(messages=[{"role": "user", "content": PROMPT}])
            reply = await relay.client.post(
                "/v1/chat/completions", json=body, headers=auth(key["secret"])
            )
            assert reply.status_code == 200
        mailer = mailer_of(relay)
        await mailer.step()
        assert inbox.messages == []  # the month is still open
        clock.now = first_of_next_month(clock.now)  # the month closes
        await relay.state.db.flush()
        await mailer.step()
        assert await mailer.step() == 0
        [(recipients, message)] = inbox.messages
        assert recipients == ["owner@acme.test", "second-owner@acme.test"]
        assert message["Subject"] == f"[relay] Statement for {month}: acme"
        text = message.get_content()
        charges = await relay.charges(account["id"])
        spent = -sum(c["amount_micros"] for c in charges)
        assert spent > 0
        assert "Opening balance:  $0.00" in text
        assert "Credits:          $5.00" in text
        assert f"Charges:          {format_usd(spent)}" in text
        assert f"Closing balance:  {format_usd(5_000_000 - spent)}" in text
        assert "mock-gpt:" in text and "over 2 requests" in text
        assert f"dev-key ({key['id']})" in text
        assert PROMPT not in text  # metadata only
        [row] = await relay.rows("SELECT * FROM billing_mail WHERE kind = 'statement'")
        assert (row["account_id"], row["ref"], row["status"]) == (account["id"], month, "sent")
    # A restart in the next month neither loses nor repeats it.
    async with run_relay(config, wall_clock_ms=clock) as relay:
        await mailer_of(relay).step()
        assert len(inbox.messages) == 1
        rows = await relay.rows("SELECT ref FROM billing_mail WHERE kind = 'statement'")
        assert [r["ref"] for r in rows] == [month]


async def test_a_statement_queued_before_a_restart_is_sent_after_it(
    tmp_path: Path, admin_token: str, smtp: tuple[Controller, Inbox]
) -> None:
    controller, inbox = smtp
    clock = Clock()
    config = mail_config(tmp_path, controller.port, receipts=False, statements=True)
    async with run_relay(config, wall_clock_ms=clock) as relay:
        account = await acme_with_owners(relay)
        await relay.credit(account["id"], "4", "wire-1")
        # An account never credited nor charged gets no (empty) statement.
        idle = await relay.create_account("idle")
        await create_user(relay, "idle@idle.test", account=idle["id"], role="owner")
        clock.now = first_of_next_month(clock.now)
        inbox.refuse = 1  # the mail server is busy just before the shutdown
        await mailer_of(relay).step()
        [row] = await relay.rows(
            "SELECT status, account_id FROM billing_mail WHERE kind = 'statement'"
        )
        assert row["status"] == "pending" and row["account_id"] == account["id"]
    clock.now += 3_600_000
    async with run_relay(config, wall_clock_ms=clock) as relay:
        await mailer_of(relay).step()
        [(_, message)] = inbox.messages
        assert "Statement for" in message["Subject"]
        assert "Opening balance:  $0.00" in message.get_content()
        assert "Closing balance:  $4.00" in message.get_content()
