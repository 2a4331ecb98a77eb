"""Alerts: detected off the request path, queued in the durable outbox, delivered to a
local webhook (HMAC-signed), a Slack-compatible webhook and a real local SMTP server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from conftest import config_text, make_config
from support_accounts import Relay, run_relay
from support_alert_prune import (
    START_MS,
    check_horizon_follows_the_longest_rearm,
    check_pruning,
    prune_config,
)
from support_hooks import Hook
from support_mail import Inbox, email_section, smtp_server

from relay.alerts.outbox import MAX_ATTEMPTS, AlertOutbox
from relay.alerts.outbox_store import SqliteOutbox
from relay.alerts.watch import AlertWatcher
from relay.config import load_config, parse_config
from relay.errors import ConfigError
from relay.storage.db import Database
from relay.usage.retention import RetentionJob, RetentionReport

HOOK_SECRET = "hook-secret"


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, Inbox]]:
    with smtp_server() as server:
        yield server


async def settle(outbox: AlertOutbox, done: Any) -> None:
    """Deliver what is due (the background loop may beat us to it) until ``done()``."""
    for _ in range(200):
        await outbox.deliver_due()
        if done():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the alert was not delivered")


def watcher_of(relay: Relay) -> AlertWatcher:
    watcher: AlertWatcher = relay.lifespan_state["alert_watcher"]
    return watcher


def outbox_of(relay: Relay) -> AlertOutbox:
    assert relay.state.alerts is not None
    return relay.state.alerts


async def test_low_balance_reaches_a_signed_webhook_once_per_rearm(
    tmp_path: Path, admin_token: str, hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", HOOK_SECRET)
    extra = f"""
[[alerts]]
sink = "webhook"
name = "ops-hook"
url = "{hook.url}"
secret_env = "HOOK_SECRET"
events = ["balance_low"]
balance_below_usd = "5"
"""
    async with run_relay(make_config(tmp_path, extra=extra)) as relay:
        account = await relay.create_account("acme")
        await relay.credit(account["id"], "2", "seed")
        rich = await relay.create_account("rich")
        await relay.credit(rich["id"], "50", "seed-rich")
        await watcher_of(relay).check()
        await settle(outbox_of(relay), lambda: hook.received)
        [(headers, body)] = hook.received
        alert = json.loads(body)
        assert alert["event"] == "balance_low" and alert["subject"] == f"account:{account['id']}"
        assert "acme" in alert["message"] and alert["detail"]["available_micros"] == 2_000_000
        expected = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["x-relay-signature"] == expected
        # Still low a moment later: deduplicated until the re-arm interval has passed.
        await watcher_of(relay).check()
        await outbox_of(relay).deliver_due()
        assert len(hook.received) == 1
        [row] = await relay.rows("SELECT * FROM alert_outbox")
        assert row["delivered_at_ms"] is not None and row["sink_name"] == "ops-hook"


async def test_a_disabled_upstream_key_reaches_a_local_smtp_server(
    tmp_path: Path, admin_token: str, smtp: Any
) -> None:
    controller, inbox = smtp
    extra = f"""
[email]
host = "127.0.0.1"
port = {controller.port}
starttls = false
from = "relay@relay.test"

[[alerts]]
sink = "email"
to = ["ops@relay.test"]
events = ["upstream_key_disabled", "provider_cooling"]
"""
    config = make_config(
        tmp_path, upstream_url="http://127.0.0.1:9", upstream_keys=("sk-1", "sk-2"), extra=extra
    )
    async with run_relay(config) as relay:
        pool = relay.state.providers["fake"].pool
        pool.disable(pool.keys[1], 401)
        await watcher_of(relay).check()
        await settle(outbox_of(relay), lambda: inbox.messages)
    [(recipients, message)] = inbox.messages
    assert recipients == ["ops@relay.test"]
    assert message["From"] == "relay@relay.test"
    assert "provider fake key #2 left the rotation" in message["Subject"]
    assert "sk-2" not in message.as_string()


async def test_failed_deliveries_are_retried_with_backoff_then_given_up(
    tmp_path: Path, hook: Hook
) -> None:
    config = parse_config(
        f'[[alerts]]\nsink = "slack"\nurl = "{hook.url}"\nevents = ["provider_cooling"]\n'
        "rearm_s = 0\n"
    )
    db = await Database.open(tmp_path / "relay.db", flush_interval_s=0.01)
    now = [1_000_000]
    outbox = AlertOutbox(SqliteOutbox(db), lambda: config, clock_ms=lambda: now[0])
    try:
        hook.statuses = [500, 503]
        assert outbox.raise_alert("provider_cooling", "openai", "every key is cooling") == 1
        assert await outbox.deliver_due() == 0  # 500
        assert await outbox.deliver_due() == 0  # not due yet: backing off
        now[0] += 5_000
        assert await outbox.deliver_due() == 0  # 503
        now[0] += 10_000
        assert await outbox.deliver_due() == 1
        assert [body for body in hook.bodies()] == [{"text": "[relay] every key is cooling"}] * 3
        row = await db.fetchone("SELECT attempts, delivered_at_ms, last_error FROM alert_outbox")
        assert row is not None and row[0] == 3 and row[1] is not None
        assert "503" in row[2]
        # A sink that never answers well is given up after MAX_ATTEMPTS, the row kept.
        hook.statuses = [500] * MAX_ATTEMPTS
        outbox.raise_alert("provider_cooling", "anthropic", "every key is cooling")
        for _ in range(MAX_ATTEMPTS):
            now[0] += 3_600_000
            await outbox.deliver_due()
        row = await db.fetchone(
            "SELECT attempts, failed_at_ms FROM alert_outbox WHERE subject = 'anthropic'"
        )
        assert row is not None and row[0] == MAX_ATTEMPTS and row[1] is not None
    finally:
        await outbox.aclose()
        await db.close()


async def test_the_http_client_is_built_at_the_first_delivery(
    tmp_path: Path, hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up builds no HTTP client (it loads the CA store); the first delivery does,
    and later ones reuse it."""
    built: list[httpx.AsyncClient] = []
    real_client = httpx.AsyncClient

    def counting_client(**kwargs: Any) -> httpx.AsyncClient:
        built.append(real_client(**kwargs))
        return built[-1]

    monkeypatch.setattr(httpx, "AsyncClient", counting_client)
    config = parse_config(f'[[alerts]]\nsink = "webhook"\nurl = "{hook.url}"\nrearm_s = 0\n')
    db = await Database.open(tmp_path / "relay.db", flush_interval_s=0.01)
    outbox = AlertOutbox(SqliteOutbox(db), lambda: config)
    try:
        await outbox.start()
        assert await outbox.deliver_due() == 0
        assert built == []
        outbox.raise_alert("provider_cooling", "openai", "every key is cooling")
        await settle(outbox, lambda: len(hook.received) == 1)
        outbox.raise_alert("provider_cooling", "anthropic", "every key is cooling")
        await settle(outbox, lambda: len(hook.received) == 2)
        assert len(built) == 1
    finally:
        await outbox.aclose()
        await db.close()
    assert built[0].is_closed


async def test_undelivered_alerts_survive_a_restart_and_dedupe_resumes(
    tmp_path: Path, hook: Hook
) -> None:
    config = parse_config(
        f'[[alerts]]\nsink = "webhook"\nurl = "{hook.url}"\nevents = ["budget_80"]\n'
    )
    db = await Database.open(tmp_path / "relay.db", flush_interval_s=0.01)
    outbox = AlertOutbox(SqliteOutbox(db), lambda: config)
    assert outbox.raise_alert("budget_80", "key:k1:0", "key k1 is 80% spent") == 1
    await db.flush()
    await outbox.aclose()  # stopped before delivering
    await db.close()
    db = await Database.open(tmp_path / "relay.db", flush_interval_s=0.01)
    outbox = AlertOutbox(SqliteOutbox(db), lambda: config, poll_s=0.05)
    try:
        await outbox.start()  # the background loop delivers what is due
        for _ in range(100):
            if hook.received:
                break
            await asyncio.sleep(0.05)
        assert [b["event"] for b in hook.bodies()] == ["budget_80"]
        assert outbox.raise_alert("budget_80", "key:k1:0", "again") == 0  # still deduplicated
    finally:
        await outbox.aclose()
        await db.close()


async def test_storage_alerts_skip_the_outbox(tmp_path: Path, hook: Hook) -> None:
    config = parse_config(f'[[alerts]]\nsink = "webhook"\nurl = "{hook.url}"\n')
    db = await Database.open(tmp_path / "relay.db", flush_interval_s=0.01)
    outbox = AlertOutbox(SqliteOutbox(db), lambda: config)
    try:
        outbox.notify_storage(False, "disk I/O error")
        outbox.notify_storage(True)
        for _ in range(100):
            if len(hook.received) == 2:
                break
            await asyncio.sleep(0.02)
        events = sorted(b["event"] for b in hook.bodies())
        assert events == ["storage_recovered", "storage_unavailable"]
        assert (await db.fetchone("SELECT COUNT(*) FROM alert_outbox"))[0] == 0  # type: ignore[index]
    finally:
        await outbox.aclose()
        await db.close()


async def test_budget_alerts_at_80_and_100_percent(
    tmp_path: Path, admin_token: str, hook: Hook
) -> None:
    extra = (
        f'[[alerts]]\nsink = "webhook"\nurl = "{hook.url}"\nevents = ["budget_80", "budget_100"]\n'
    )
    async with run_relay(make_config(tmp_path, extra=extra)) as relay:
        account, key = await relay.funded_key("acme", spend_cap_usd="1", budget_period="month")
        wallet = relay.state.wallet
        hold = wallet.hold(
            account["id"], key["id"], estimate_micros=850_000, worst_case_micros=850_000
        )
        wallet.settle(hold, 850_000, reference="r-80")
        await watcher_of(relay).check()
        hold = wallet.hold(
            account["id"], key["id"], estimate_micros=150_000, worst_case_micros=150_000
        )
        wallet.settle(hold, 150_000, reference="r-100")
        await watcher_of(relay).check()
        await settle(outbox_of(relay), lambda: len(hook.received) == 2)
    assert [b["event"] for b in hook.bodies()] == ["budget_80", "budget_100"]
    assert "monthly cap is 80% spent" in hook.bodies()[0]["message"]


async def test_one_alert_reaches_a_local_webhook_and_a_local_smtp_server_on_its_own(
    tmp_path: Path, admin_token: str, hook: Hook, smtp: Any
) -> None:
    """The acceptance line end to end: nothing calls the watcher; its configured interval
    (``[alerts_settings] check_interval_s``) finds the low balance and both sinks get it."""
    controller, inbox = smtp
    extra = (
        email_section(controller.port)
        + f"""
[alerts_settings]
check_interval_s = 1

[[alerts]]
sink = "webhook"
url = "{hook.url}"
events = ["balance_low"]

[[alerts]]
sink = "email"
to = ["ops@relay.test"]
events = ["balance_low"]
"""
    )
    async with run_relay(make_config(tmp_path, extra=extra)) as relay:
        watcher = watcher_of(relay)
        assert watcher.interval_s == 1
        account = await relay.create_account("acme")
        await relay.credit(account["id"], "2", "seed")
        for _ in range(150):  # the watcher's own loop, then the outbox's (bounded: 15 s)
            if hook.received and inbox.messages:
                break
            await asyncio.sleep(0.1)
        [alert] = hook.bodies()
        assert alert["event"] == "balance_low" and "acme" in alert["message"]
        [(recipients, message)] = inbox.messages
        assert recipients == ["ops@relay.test"] and "acme" in message["Subject"]


def test_alert_settings_are_bounded_and_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"alerts_settings\.check_interval_s"):
        parse_config("[alerts_settings]\ncheck_interval_s = 0.1\n")
    with pytest.raises(ConfigError, match=r"alerts\[0\]\.rearm_s"):
        parse_config('[[alerts]]\nsink = "slack"\nurl = "https://x.test"\nrearm_s = 9e9\n')
    settings = parse_config("[alerts_settings]\ncheck_interval_s = 60\n").alerts_settings
    assert settings.check_interval_s == 60


async def test_a_reload_changes_the_watch_interval(tmp_path: Path, admin_token: str) -> None:
    path = tmp_path / "relay.toml"
    base = config_text(tmp_path / "relay.db")
    path.write_text(base + "\n[alerts_settings]\ncheck_interval_s = 30\n")
    async with run_relay(load_config(path)) as relay:
        watcher = watcher_of(relay)
        assert watcher.interval_s == 30
        path.write_text(base + "\n[alerts_settings]\ncheck_interval_s = 2\n")
        assert (await relay.client.post("/admin/reload")).status_code == 200
        await watcher.check()  # the round in progress picks up the new interval
        assert watcher.interval_s == 2


async def test_retention_prunes_sent_alerts_past_the_rearm_horizon_in_batches(
    tmp_path: Path, hook: Hook
) -> None:
    config = prune_config(hook.url)
    db = await Database.open(tmp_path / "relay.db", flush_interval_s=0.01)
    clock = [START_MS]
    store = SqliteOutbox(db)
    outbox = AlertOutbox(store, lambda: config, clock_ms=lambda: clock[0])

    async def subjects() -> list[tuple[str, bool]]:
        rows = await db.fetchall("SELECT subject, delivered_at_ms FROM alert_outbox ORDER BY id")
        return [(row[0], row[1] is not None) for row in rows]

    async def run_job(prune: Callable[[int], Awaitable[int]]) -> RetentionReport:
        job = RetentionJob(db, tmp_path / "archives", clock_ms=lambda: clock[0], prune_outbox=prune)
        return await job.run_once()

    try:
        await check_pruning(outbox, store, clock, subjects, run_job)
        await check_horizon_follows_the_longest_rearm(store, hook.url)
    finally:
        await outbox.aclose()
        await db.close()


class _StuckStore(SqliteOutbox):
    """An outbox on a disk that never commits: its flush never returns."""

    def __init__(self) -> None:
        self.flushes = 0

    async def flush(self) -> None:
        self.flushes += 1
        await asyncio.Event().wait()


async def test_closing_skips_the_wait_for_a_store_known_to_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shutdown on a failing disk is not held up by the outbox (the database's own close
    still tries its rows); on a healthy one it waits for them, bounded."""
    config = parse_config("")
    failing = _StuckStore()
    outbox = AlertOutbox(failing, lambda: config)
    async with asyncio.timeout(1.0):
        await outbox.aclose(store_failing=lambda: True)
    assert failing.flushes == 0
    monkeypatch.setattr("relay.alerts.outbox._CLOSE_FLUSH_S", 0.05)
    healthy = _StuckStore()
    outbox = AlertOutbox(healthy, lambda: config)
    async with asyncio.timeout(1.0):
        await outbox.aclose()
    assert healthy.flushes == 1
