"""Billing mail across real ``relay serve`` processes: the leader dies mid-send (SIGKILL while
the SMTP server holds its session) and the receipt is still delivered exactly once.

Two instances on one config (tests/support_cluster_serve.py) with ``[email] receipts``; a
real SMTP server (aiosmtpd) that holds the first session at RCPT until the test lets go.
The elected job runner (the instance that logged taking the lead) claims the receipt's row
and connects; it is killed there, before the server accepted anything. The survivor takes
the lead, and once the dead sender's claim lapses (10 × ``[email] timeout_s``) sends the
receipt: one message, its row ``sent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from conftest import mock_upstream
from support_cluster_serve import ADMIN, Cluster, Instance, account, credit
from support_mail import Inbox, email_section
from test_cluster_videos import LEADING
from test_server import free_port

asyncpg = pytest.importorskip("asyncpg")

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

SMTP_TIMEOUT_S = 1.5  # the claim: 15 s


class HoldingInbox(Inbox):
    """Holds the first session at RCPT until ``release`` is set (a leader caught mid-send)."""

    def __init__(self) -> None:
        super().__init__()
        self.held = threading.Event()
        self.release = threading.Event()

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if not self.held.is_set():
            self.held.set()
            await asyncio.to_thread(self.release.wait, 30)
        envelope.rcpt_tos.append(address)
        return "250 OK"


class MailCluster(Cluster):
    smtp_port: int = 0

    def write_config(self) -> Path:
        config = super().write_config()
        email = email_section(self.smtp_port, "billing@relay.test", receipts=True)
        config.write_text(config.read_text() + email + f"timeout_s = {SMTP_TIMEOUT_S}\n")
        return config


@contextlib.asynccontextmanager
async def mail_cluster(
    tmp_path: Path, pg_database: str, redis_server: Any, smtp_port: int
) -> AsyncIterator[MailCluster]:
    upstream = await mock_upstream.start(port=0, options=mock_upstream.MockOptions())
    redis_url = f"redis://127.0.0.1:{redis_server.port}/13"
    cluster = MailCluster(tmp_path, pg_database, redis_url, f"http://127.0.0.1:{upstream.port}/v1")
    cluster.smtp_port = smtp_port
    try:
        yield cluster
    finally:
        await asyncio.to_thread(cluster.stop_all)
        await upstream.close()


async def _leader(instances: list[Instance], timeout_s: float = 15.0) -> Instance:
    deadline = time.monotonic() + timeout_s
    while True:
        leading = [i for i in instances if LEADING in i.log.read_text()]
        if leading:
            assert len(leading) == 1, "two instances lead the cluster's jobs"
            return leading[0]
        assert time.monotonic() < deadline, "no instance took the job runner's lock"
        await asyncio.sleep(0.05)


async def _until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_receipt_is_delivered_once_when_the_leader_dies_mid_send(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    inbox = HoldingInbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        async with mail_cluster(tmp_path, pg_database, redis_server, controller.port) as cluster:
            instances = [cluster.launch(), cluster.launch()]
            await cluster.start_launched(instances)
            leader = await _leader(instances)
            survivor = next(i for i in instances if i is not leader)
            async with survivor.client() as client:
                account_id = await account(client, "acme")
                owner = {
                    "email": "owner@acme.test",
                    "password": "correct horse battery",
                    "account": account_id,
                    "role": "owner",
                }
                made = await client.post("/admin/users", json=owner, headers=ADMIN)
                assert made.status_code == 201, made.text
                assert (await credit(client, account_id, "7", "wire-1")).status_code == 201
            # The leader's next billing mail round (every 15 s) claims the row and connects.
            await _until(inbox.held.is_set, 25.0, "the leader never tried to send")
            leader.process.send_signal(signal.SIGKILL)
            leader.process.wait()
            inbox.release.set()  # its session is gone: nothing was accepted
            await _until(lambda: bool(inbox.messages), 45.0, "the survivor never sent it")
            [(recipients, message)] = inbox.messages
            assert recipients == ["owner@acme.test"]
            assert "$7.00 credited to acme" in message["Subject"]
            conn = await asyncpg.connect(pg_database)
            try:
                row = await conn.fetchrow("SELECT status, attempts FROM billing_mail")
            finally:
                await conn.close()
            assert row["status"] == "sent" and row["attempts"] == 2
            assert LEADING in survivor.log.read_text()
            async with httpx.AsyncClient(base_url=survivor.base_url) as client:
                assert (await client.get("/healthz")).status_code == 200
    finally:
        inbox.release.set()
        controller.stop()
