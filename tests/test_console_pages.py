"""Console pages over HTTP: logs (filters, paging, CSV), overview, billing, tickets,
members and invites, operator pages; each checked for what it shows and who may see it."""

from __future__ import annotations

import csv
import html
import io
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from support_accounts import Relay, auth, chat_body
from support_console import PASSWORD, Browser, console_relay, create_user

from relay.console.templating import format_time, format_usd
from relay.usage.log import UsageRecord, insert_usage

DAY_MS = 86_400_000


@pytest.fixture
def relay_dir(tmp_path: Path, admin_token: str) -> Path:
    return tmp_path


async def _usage(relay: Relay, rows: list[dict[str, Any]]) -> None:
    """Insert usage rows as the writer does (with the daily rollup)."""
    records = [UsageRecord(**row) for row in rows]

    def write(conn: sqlite3.Connection) -> None:
        for record in records:
            insert_usage(conn, record)

    await relay.state.db.write(write)


def _row(n: int, account: str, key: str, **fields: Any) -> dict[str, Any]:
    row = {
        "request_id": f"req_{n:04d}",
        "ts_ms": int(time.time() * 1000) - n * 1000,
        "account_id": account,
        "key_id": key,
        "endpoint": "chat",
        "model": "mock-gpt",
        "status": 200,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_micros": 100 + n,
    }
    return row | fields


def _request_ids(html: str) -> list[str]:
    # Each id shows twice per row (the link to the request and its text): count it once.
    return list(dict.fromkeys(re.findall(r"req_\d{4}", html)))


async def test_logs_filter_page_and_export(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        acme = await relay.create_account("acme")
        other = await relay.create_account("other")
        k1 = await relay.create_key(acme["id"], name="one")
        k2 = await relay.create_key(acme["id"], name="two")
        stranger_key = await relay.create_key(other["id"], name="theirs")
        rows = [_row(n, acme["id"], k1["id"] if n % 2 else k2["id"]) for n in range(1, 121)]
        rows[4] |= {"status": 429, "error_code": "rate_limit_exceeded"}
        rows[9] |= {"model": "mock-embedding"}
        old_day = int(time.time() * 1000) - 40 * DAY_MS
        rows[10] |= {"ts_ms": old_day}
        rows.append(_row(500, other["id"], stranger_key["id"]))
        # In time order, as relay writes them: req_0001 is the newest row, req_0011 the oldest.
        await _usage(relay, sorted(rows, key=lambda row: row["ts_ms"]))
        await create_user(relay, "o@acme.test", account=acme["id"])
        logs = f"/console/a/{acme['id']}/logs"
        async with Browser(relay) as browser:
            await browser.login("o@acme.test")
            first = (await browser.get(logs)).text
            ids = _request_ids(first)
            assert len(ids) == 50 and ids[0] == "req_0001" and "req_0500" not in first
            older = re.search(r'href="([^"]+before=\d+)"', first)
            assert older is not None
            second = _request_ids((await browser.get(older.group(1).replace("&amp;", "&"))).text)
            assert second[0] == "req_0052" and not set(ids) & set(second)

            by_key = _request_ids((await browser.get(logs, params={"key": k2["id"]})).text)
            assert by_key and all(int(i[4:]) % 2 == 0 for i in by_key)
            errors = (await browser.get(logs, params={"status": "error"})).text
            assert _request_ids(errors) == ["req_0005"] and "rate_limit_exceeded" in errors
            assert _request_ids(
                (await browser.get(logs, params={"model": "mock-embedding"})).text
            ) == ["req_0010"]
            day = time.strftime("%Y-%m-%d", time.gmtime(old_day / 1000))
            dated = await browser.get(logs, params={"since": day, "until": day})
            assert _request_ids(dated.text) == ["req_0011"]
            bad = await browser.get(logs, params={"since": "yesterday"})
            assert bad.status_code == 400
            # Another account's key is not a filter you can use here.
            assert (await browser.get(logs, params={"key": stranger_key["id"]})).status_code == 404

            export = await browser.get(logs + ".csv", params={"key": k1["id"]})
            assert export.headers["content-type"].startswith("text/csv")
            assert "attachment" in export.headers["content-disposition"]
            table = list(csv.DictReader(io.StringIO(export.text)))
            assert len(table) == 60 and {r["key_id"] for r in table} == {k1["id"]}
            assert table[0]["request_id"] == "req_0001" and table[0]["cost_usd"] == "0.000101"


async def test_overview_shows_wallet_charts_and_errors(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        acme = await relay.create_account("acme")
        await relay.credit(acme["id"], "10", "seed")
        key = await relay.create_key(acme["id"], name="one")
        now = int(time.time() * 1000)
        await _usage(
            relay,
            [
                _row(1, acme["id"], key["id"], cost_micros=1_500_000),
                _row(2, acme["id"], key["id"], ts_ms=now - 2 * DAY_MS, cost_micros=500_000),
                _row(
                    3,
                    acme["id"],
                    key["id"],
                    status=502,
                    error_code="upstream_error",
                    model="mock-embedding",
                    cost_micros=0,
                ),  # fmt: skip
                _row(4, acme["id"], key["id"], ts_ms=now - 45 * DAY_MS, cost_micros=9_000_000),
            ],
        )
        await create_user(relay, "v@acme.test", account=acme["id"], role="viewer")
        async with Browser(relay) as browser:
            await browser.login("v@acme.test")
            page = (await browser.get(f"/console/a/{acme['id']}")).text
        assert 'id="balance">$10.00<' in page
        assert "$2.00" in page  # 30 days of spend; the 45-day-old row is outside
        assert page.count('<rect class="bar"') == 30 + 2  # 30 days, 2 models
        assert "3 requests · 1 active key<" in page
        assert "upstream_error" in page and "req_0003" in page
        assert "Billing" not in page and "Members" not in page  # a viewer's navigation


async def test_billing_ledger_top_ups_and_statements(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        acme = await relay.create_account("acme")
        await relay.credit(acme["id"], "20", "wire-42")
        await create_user(relay, "o@acme.test", account=acme["id"])
        await create_user(relay, "a@acme.test", account=acme["id"], role="admin")
        billing = f"/console/a/{acme['id']}/billing"
        async with Browser(relay) as owner:
            await owner.login("o@acme.test")
            page = (await owner.get(billing)).text
            assert "Top-ups and receipts" in page and "wire-42" in page and "$20.00" in page
            month = time.strftime("%Y-%m", time.gmtime())
            assert month in page
            statement = await owner.get(billing + "/statement", params={"month": month})
            assert statement.status_code == 200 and f"Statement for {month}" in statement.text
            assert "unsafe-inline" in statement.headers["content-security-policy"]
            as_csv = await owner.get(
                billing + "/statement", params={"month": month, "format": "csv"}
            )
            assert as_csv.text.startswith("group,name,requests")
            bad = await owner.get(billing + "/statement", params={"month": "2024-13"})
            assert bad.status_code == 400
        async with Browser(relay) as admin:
            await admin.login("a@acme.test")
            assert (await admin.get(billing)).status_code == 403


async def test_tickets_thread_between_customer_and_operator(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        acme = await relay.create_account("acme")
        other = await relay.create_account("other")
        await create_user(relay, "o@acme.test", account=acme["id"])
        await create_user(relay, "x@other.test", account=other["id"])
        await create_user(relay, "ops@relay.test", operator=True)
        tickets = f"/console/a/{acme['id']}/tickets"
        async with Browser(relay) as customer, Browser(relay) as ops, Browser(relay) as stranger:
            await customer.login("o@acme.test")
            empty = await customer.submit(tickets, tickets, {"subject": " ", "body": "x"})
            assert empty.status_code == 400
            opened = await customer.submit(
                tickets,
                tickets,
                {"subject": "<b>Refund?</b>", "body": "Please", "payment_reference": "pi_123"},
            )
            assert opened.status_code == 303
            thread = opened.headers["location"].split("?")[0]
            page = (await customer.get(thread)).text
            assert "&lt;b&gt;Refund?&lt;/b&gt;" in page and "pi_123" in page  # escaped

            await ops.login("ops@relay.test")
            queue = (await ops.get("/console/operator/tickets")).text
            assert "Refund?" in queue and "acme" in queue
            await ops.submit(thread, thread + "/reply", {"body": "Done."})
            assert "answered" in (await customer.get(tickets)).text
            await customer.submit(thread, thread + "/reply", {"body": "Thanks"})
            assert "Refund?" in (await ops.get("/console/operator/tickets?status=open")).text
            await customer.submit(thread, thread + "/close")
            closed = (await ops.get("/console/operator/tickets?status=closed")).text
            assert "Refund?" in closed

            await stranger.login("x@other.test")
            ticket_id = thread.rsplit("/", 1)[1]
            own_path = f"/console/a/{other['id']}/tickets/{ticket_id}"
            assert (await stranger.get(own_path)).status_code == 404
            assert (await stranger.get(thread)).status_code == 404
            assert (await stranger.get("/console/operator/tickets")).status_code == 404


async def test_invite_link_adds_a_member_once_and_owner_manages_roles(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        acme = await relay.create_account("acme")
        owner_user = await create_user(relay, "o@acme.test", account=acme["id"])
        members = f"/console/a/{acme['id']}/members"
        async with Browser(relay) as owner:
            await owner.login("o@acme.test")
            made = await owner.submit(members, members + "/invite", {"role": "admin"})
            assert made.status_code == 303  # POST-redirect-GET; the link waits in a flash
            shown = (await owner.get(made.headers["location"])).text
            link = re.search(r'value="(https?://[^"]+/console/invite/[^"]+)"', shown)
            assert link is not None
            path = "/console/invite/" + link.group(1).rsplit("/console/invite/", 1)[1]
            async with Browser(relay) as newcomer:
                form = await newcomer.get(path)
                assert form.status_code == 200 and "admin" in form.text
                joined = await newcomer.submit(
                    path,
                    path,
                    {"email": "new@acme.test", "display_name": "New Person", "password": PASSWORD},
                )
                assert joined.status_code == 303
                assert (await newcomer.get(f"/console/a/{acme['id']}/keys")).status_code == 200
            async with Browser(relay) as late:
                assert (await late.get(path)).status_code == 404  # one time only
                tampered = path[:-3] + "abc"
                assert (await late.get(tampered)).status_code == 404
            listing = (await owner.get(members)).text
            assert "new@acme.test" in listing
            new_id = re.search(r"/members/(usr_\w+)/role", listing.split("new@acme.test")[1])
            assert new_id is not None
            member_path = f"{members}/{new_id.group(1)}"
            changed = await owner.submit(members, member_path + "/role", {"role": "viewer"})
            assert changed.status_code == 303
            last_owner = f"{members}/{owner_user['id']}"
            demote = await owner.submit(members, last_owner + "/role", {"role": "viewer"})
            assert demote.status_code == 400
            assert (await owner.submit(members, last_owner + "/remove")).status_code == 400
            assert (await owner.submit(members, member_path + "/remove")).status_code == 303
            assert "new@acme.test" not in (await owner.get(members)).text
        actions = [row["action"] for row in await relay.audit()]
        assert {"invite.create", "member.set", "member.remove", "user.create"} <= set(actions)


async def test_operator_credits_suspends_and_reads_the_audit_chain(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        acme = await relay.create_account("acme")
        await create_user(relay, "ops@relay.test", operator=True)
        accounts = "/console/operator/accounts"
        async with Browser(relay) as ops:
            await ops.login("ops@relay.test")
            assert (await ops.get("/console/")).headers["location"] == accounts
            credit = f"/console/operator/accounts/{acme['id']}/credit"
            done = await ops.submit(accounts, credit, {"amount_usd": "7.5", "reference": "inv-1"})
            assert "notice=credited" in done.headers["location"]
            again = await ops.submit(accounts, credit, {"amount_usd": "7.5", "reference": "inv-1"})
            assert "notice=already-credited" in again.headers["location"]
            assert relay.state.wallet.snapshot(acme["id"]).balance_micros == 7_500_000
            bad = await ops.submit(accounts, credit, {"amount_usd": "-1", "reference": "x"})
            assert bad.status_code == 400
            status = f"/console/operator/accounts/{acme['id']}/status"
            asked = await ops.submit(accounts, status, {"status": "suspended"})
            assert asked.status_code == 200 and "Suspend acme?" in asked.text
            assert relay.state.store.account(acme["id"]).status == "active"  # not yet
            await ops.submit(accounts, status, {"status": "suspended", "confirm": "yes"})
            assert relay.state.store.account(acme["id"]).status == "suspended"
            await ops.submit(accounts, status, {"status": "active"})
            assert relay.state.store.account(acme["id"]).status == "active"
            # Operators act as owners in any account.
            assert (await ops.get(f"/console/a/{acme['id']}/billing")).status_code == 200
            audit = (await ops.get("/console/operator/audit")).text
            assert "Hash chain intact" in audit and "account.suspend" in audit
        rows = await relay.audit()
        credit_rows = [r for r in rows if r["action"] == "wallet.credit"]
        assert [r["actor"] for r in credit_rows] == ["ops@relay.test"]
        ledger = await relay.ledger(acme["id"])
        assert [(r["kind"], r["reference"]) for r in ledger] == [("credit", "inv-1")]
        assert format_usd(7_500_000) == "$7.50"


async def test_key_edit_changes_limits_with_an_audit_row(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        acme = await relay.create_account("acme")
        key = await relay.create_key(acme["id"], name="one")
        await create_user(relay, "a@acme.test", account=acme["id"], role="admin")
        page = f"/console/a/{acme['id']}/keys/{key['id']}"
        async with Browser(relay) as admin:
            await admin.login("a@acme.test")
            saved = await admin.submit(
                page,
                page,
                {
                    "name": "renamed",
                    "spend_cap_usd": "3.25",
                    "rpm": "60",
                    "tpm": "0",
                    "concurrency": "4",
                    "expires": "2031-01-31",
                    "models": "mock-gpt",
                },  # fmt: skip
            )
            assert saved.status_code == 303
            wrong = await admin.submit(page, page, {"name": "x", "models": "no-such-model"})
            assert wrong.status_code == 400
            shown = (await admin.get(page)).text
        changed = relay.state.store.key(key["id"])
        assert (changed.label, changed.spend_cap_micros, changed.rpm) == ("renamed", 3_250_000, 60)
        assert changed.models == ("mock-gpt",) and changed.concurrency == 4
        assert 'value="3.25"' in shown and 'value="2031-01-31"' in shown
        update = [r for r in await relay.audit() if r["action"] == "key.update"]
        assert [r["actor"] for r in update] == ["a@acme.test"]


async def test_an_open_invite_can_be_revoked(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        acme = await relay.create_account("acme")
        await create_user(relay, "o@acme.test", account=acme["id"])
        members = f"/console/a/{acme['id']}/members"
        async with Browser(relay) as owner:
            await owner.login("o@acme.test")
            made = await owner.submit(members, members + "/invite", {"role": "member"})
            page = (await owner.get(made.headers["location"])).text
            link = re.search(r'value="https?://[^"]+(/console/invite/[^"]+)"', page)
            ref = re.search(r'name="invite" value="([0-9a-f]{64})"', page)
            assert link is not None and ref is not None
            # The link is shown once: a reload of the same URL no longer shows it.
            assert "/console/invite/" not in (await owner.get(made.headers["location"])).text
            revoked = await owner.submit(members, members + "/invites/revoke", {"invite": ref[1]})
            assert revoked.status_code == 303
            assert "Invite revoked" in (await owner.get(revoked.headers["location"])).text
            again = await owner.submit(members, members + "/invites/revoke", {"invite": ref[1]})
            assert again.status_code == 404
            async with Browser(relay) as newcomer:
                assert (await newcomer.get(link[1])).status_code == 404
        assert "invite.revoke" in [row["action"] for row in await relay.audit()]


async def test_key_edit_errors_keep_the_form_and_refuse_a_past_expiry(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        acme = await relay.create_account("acme")
        key = await relay.create_key(acme["id"], name="one")
        await create_user(relay, "a@acme.test", account=acme["id"], role="admin")
        page = f"/console/a/{acme['id']}/keys/{key['id']}"
        async with Browser(relay) as admin:
            await admin.login("a@acme.test")
            wrong = await admin.submit(
                page,
                page,
                {
                    "name": "renamed",
                    "rpm": "fast",
                    "expires": "2001-02-03",
                    "models": "mock-embedding",
                    "endpoints": "embeddings",
                },
            )
            assert wrong.status_code == 400
            text = wrong.text
            assert 'value="renamed"' in text and 'value="fast"' in text
            assert (
                'value="mock-embedding" checked' in text and 'value="mock-gpt" checked' not in text
            )
            assert 'value="embeddings" checked' in text
            assert 'id="rpm-error"' in text and "Requests per minute must be" in text
            assert 'id="expires-error"' in text and "in the past" in text
            assert 'aria-invalid="true" aria-describedby="rpm-error" autofocus' in text
            assert "Sorry" not in text and "rpm:" not in text
        unchanged = relay.state.store.key(key["id"])
        assert (unchanged.label, unchanged.rpm, unchanged.expires_at_ms) == ("one", 0, None)


async def test_key_edit_sets_a_monthly_cap_and_the_page_shows_its_reset(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        acme = await relay.create_account("acme")
        key = await relay.create_key(acme["id"], name="one")
        await create_user(relay, "a@acme.test", account=acme["id"], role="admin")
        page = f"/console/a/{acme['id']}/keys/{key['id']}"
        async with Browser(relay) as admin:
            await admin.login("a@acme.test")
            form = {"name": "one", "spend_cap_usd": "5", "budget_period": "month"}
            saved = await admin.submit(page, page, {**form, "concurrency": "100"})
            assert saved.status_code == 303
            bad = await admin.submit(page, page, {**form, "budget_period": "fortnight"})
            assert bad.status_code == 400
            shown = (await admin.get(page)).text
        assert relay.state.store.key(key["id"]).budget_period == "month"
        assert '<option value="month" selected>' in shown
        assert "left of this month's cap" in shown.replace("&#39;", "'")
        assert "spent this month; resets" in shown


async def test_the_console_shows_the_account_budget_and_each_keys_period_cap(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        acme = await relay.create_account("acme", budget_usd="20", budget_period="month")
        await relay.credit(acme["id"], "50", "seed")
        key = await relay.create_key(
            acme["id"], name="weekly", spend_cap_usd="5", budget_period="week"
        )
        await relay.create_key(acme["id"], name="lifetime", spend_cap_usd="7")
        reply = await relay.client.post(
            "/v1/chat/completions", json=chat_body(), headers=auth(key["secret"])
        )
        assert reply.status_code == 200
        await create_user(relay, "o@acme.test", account=acme["id"], role="owner")
        wallet = relay.state.wallet
        budget = wallet.account_budget(acme["id"])
        key_spend = wallet.key_snapshot(key["id"])
        assert budget.spent_micros > 0 and key_spend.period_spent_micros == budget.spent_micros
        async with Browser(relay) as owner:
            await owner.login("o@acme.test")
            overview = (await owner.get(f"/console/a/{acme['id']}")).text
            keys = (await owner.get(f"/console/a/{acme['id']}/keys")).text
        section = overview.split('id="account-budget"')[1].split("</div>")[0]
        shown = html.unescape(re.sub(r"<[^>]+>", "", section))
        assert "Budget, this month" in shown
        assert f"{format_usd(budget.spent_micros)} of $20.00" in shown
        assert f"{format_usd(budget.remaining_micros)} left" in shown
        assert f"resets {format_time(budget.resets_at_ms)} UTC" in shown
        row = html.unescape(keys.split(">weekly</a>")[1].split("</tr>")[0])
        assert '$5.00 <span class="muted small">per week</span>' in row
        assert f"{format_usd(key_spend.period_spent_micros)} this week; resets" in row
        assert f"resets {format_time(key_spend.resets_at_ms)} UTC" in row
        lifetime = keys.split(">lifetime</a>")[1].split("</tr>")[0]
        assert "$7.00" in lifetime and "resets" not in lifetime
