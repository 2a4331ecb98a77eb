"""Billing mail in cluster mode (issue 18, part D): receipts and statements queued in
PostgreSQL, sent to the owners found in PostgreSQL's console users, each once.

Two relays served in this process on one cluster config against the throwaway engines of
tests/support_cluster.py and a real local SMTP server (aiosmtpd). The elected job runner
sends the queue every 15 s; these tests also call each instance's sender directly, at
once, as two leaders would overlap (leadership is a schedule, not a fence). A sender that
dies mid-send is a claim never recorded: its row waits for the claim to lapse, then goes
out once.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from conftest import config_text
from support_accounts import Relay, run_relay
from support_mail import Inbox, email_section, smtp_server
from test_billing_mail import acme_with_owners, first_of_next_month, mailer_of
from test_cluster_people import _account_on_both, pg

from relay.cluster.pg_reader import PgReader
from relay.config import Config, parse_config
from relay.payments.billing_mail import BillingMailer, closed_month
from relay.payments.pg_mail_queue import PgMailQueue

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")

pytestmark = pytest.mark.usefixtures("admin_token")


class Clock:
    """The instances' wall clock (mail times, the month a statement covers)."""

    def __init__(self) -> None:
        self.now = time.time_ns() // 1_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, Inbox]]:
    with smtp_server() as server:
        yield server


def cluster_mail_config(tmp_path: Path, dsn: str, redis_port: int, smtp_port: int) -> Config:
    db = 1 + secrets.randbelow(15)
    section = (
        email_section(smtp_port, "billing@relay.test", receipts=True, statements=True)
        + f'\n[storage]\nurl = "{dsn}"\n'
        + f'\n[cluster]\nredis_url = "redis://127.0.0.1:{redis_port}/{db}"\nlease_s = 3\n'
    )
    return parse_config(config_text(tmp_path / "relay.db", extra=section), base_dir=str(tmp_path))


@contextlib.asynccontextmanager
async def mail_cluster(
    tmp_path: Path, pg_database: str, redis_server: Any, port: int, clock: Clock
) -> AsyncIterator[tuple[Relay, Relay]]:
    config = cluster_mail_config(tmp_path, pg_database, redis_server.port, port)
    async with (
        run_relay(config, wall_clock_ms=clock) as one,
        run_relay(config, wall_clock_ms=clock) as two,
    ):
        yield one, two


async def _both_send(one: Relay, two: Relay, rounds: int = 3) -> int:
    """Both instances' senders at once, a few rounds: how many mails they sent."""
    sent = 0
    for _ in range(rounds):
        counts = await asyncio.gather(mailer_of(one).step(), mailer_of(two).step())
        sent += sum(counts)
    return sent


async def test_a_receipt_is_mailed_once_to_the_owners_in_postgresql(
    tmp_path: Path, pg_database: str, redis_server: Any, smtp: tuple[Controller, Inbox]
) -> None:
    controller, inbox = smtp
    clock = Clock()
    async with mail_cluster(tmp_path, pg_database, redis_server, controller.port, clock) as (
        one,
        two,
    ):
        # Owners made through instance 2, the credit through instance 1.
        account = await acme_with_owners(two)
        await _account_on_both(two, one, "other")  # one more account, never credited
        for _ in range(100):
            if account["id"] in one.state.store.accounts:
                break
            await asyncio.sleep(0.02)
        assert (await one.credit(account["id"], "12.5", "wire-1")).status_code == 201
        clock.now = time.time_ns() // 1_000_000 + 1_000  # the credit's row (real time) is due
        assert await _both_send(one, two) + await _both_send(two, one) <= 1
        [(recipients, message)] = inbox.messages
        assert recipients == ["owner@acme.test", "second-owner@acme.test"]
        async with pg(pg_database) as conn:
            number = await conn.fetchval("SELECT number FROM receipts")
            assert f"Receipt {number}: $12.50 credited to acme" in message["Subject"]
            row = await conn.fetchrow("SELECT status, attempts FROM billing_mail")
            assert (row["status"], row["attempts"]) == ("sent", 1)
        # The month closes: both instances add its statements and send them, once each.
        clock.now = first_of_next_month(clock.now)
        await _both_send(one, two)
        statements = [m for _, m in inbox.messages if "Statement" in m["Subject"]]
        assert len(statements) == 1
        assert f"Statement for {closed_month(clock.now)}: acme" in statements[0]["Subject"]
        assert "$12.50" in statements[0].get_content()
        async with pg(pg_database) as conn:
            kinds = await conn.fetch("SELECT kind, status FROM billing_mail ORDER BY id")
        assert [(r["kind"], r["status"]) for r in kinds] == [
            ("receipt", "sent"),
            ("statement", "sent"),
        ]
        assert await one.rows("SELECT * FROM billing_mail") == []  # never the scratch file


async def test_a_sender_that_dies_mid_send_leaves_the_row_to_the_next_once(
    tmp_path: Path, pg_database: str, redis_server: Any, smtp: tuple[Controller, Inbox]
) -> None:
    controller, inbox = smtp
    clock = Clock()
    async with mail_cluster(tmp_path, pg_database, redis_server, controller.port, clock) as (
        one,
        two,
    ):
        account = await acme_with_owners(one)
        assert (await one.credit(account["id"], "3", "wire-9")).status_code == 201
        clock.now = time.time_ns() // 1_000_000 + 1_000
        assert one.state.cluster is not None
        pool = one.state.cluster.pool
        claim_ms = 60_000
        dying = PgMailQueue(pool, lambda: claim_ms)
        # The leader claims the receipt's row, then dies before any outcome is recorded.
        [claimed] = await dying.due(clock.now, 20)
        assert claimed.attempt == 1
        survivor = BillingMailer(
            PgMailQueue(pool, lambda: claim_ms),
            PgReader(pool),
            mailer_of(two)._receipts,
            lambda: two.state.config,
            clock_ms=clock,
        )
        assert await survivor.deliver_due() == 0  # claimed: not sent twice at once
        assert inbox.messages == []
        clock.now += claim_ms + 1  # the claim lapses
        assert await survivor.deliver_due() == 1
        assert await survivor.deliver_due() == 0
        assert len(inbox.messages) == 1
        # The dead sender's late outcome (had it woken) is fenced off by the new claim.
        await dying.record(claimed, "pending", "late", now_ms=clock.now, next_at_ms=clock.now)
        async with pg(pg_database) as conn:
            row = await conn.fetchrow("SELECT status, attempts, last_error FROM billing_mail")
        assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 2, None)
