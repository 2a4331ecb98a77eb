"""Operator guardrails in the console: create and configure accounts, credits read strictly
and confirmed when large, suspend confirmed, notices naming amount and account, and no
re-activation of an account pending deletion without cancelling the deletion first."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from support_console import Browser, console_relay, create_user

from relay.identity.account_records import SqliteAccountRecords
from relay.identity.data_rights import deletion_request, request_deletion

ACCOUNTS = "/console/operator/accounts"


@pytest.fixture
def relay_dir(tmp_path: Path, admin_token: str) -> Path:
    return tmp_path


async def _follow(ops: Browser, response_location: str) -> str:
    page = await ops.get(response_location)
    assert page.status_code == 200
    return page.text


def _notice(html: str) -> str:
    found = re.search(r'<p class="notice" role="status">([^<]*)</p>', html)
    assert found is not None, "no notice on the page"
    return found.group(1)


async def test_operator_creates_and_configures_an_account(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        await create_user(relay, "ops@relay.test", operator=True)
        async with Browser(relay) as ops:
            await ops.login("ops@relay.test")
            bad = await ops.submit(
                ACCOUNTS,
                ACCOUNTS,
                {"name": "", "mode": "prepaid", "credit_limit_usd": "50", "rpm": "lots"},
            )
            assert bad.status_code == 400
            assert 'id="name-error"' in bad.text and 'id="rpm-error"' in bad.text
            assert "prepaid account has no credit limit" in bad.text
            assert 'value="lots"' in bad.text  # what was typed stays
            assert relay.state.store.accounts == {}

            made = await ops.submit(
                ACCOUNTS,
                ACCOUNTS,
                {
                    "name": "acme",
                    "mode": "postpaid",
                    "credit_limit_usd": "250",
                    "rpm": "600",
                    "tpm": "0",
                    "concurrency": "20",
                    "price_multiplier": "1.25",
                },
            )
            assert made.status_code == 303
            account = relay.state.store.account("acme")
            assert (account.mode, account.credit_limit_micros) == ("postpaid", 250_000_000)
            assert (account.rpm, account.concurrency, account.price_multiplier) == (600, 20, "1.25")
            page = await _follow(ops, made.headers["location"])
            assert "Account “acme” created" in _notice(page)
            # A reload of the redirect target shows no notice again (the flash is one-time).
            assert 'class="notice"' not in (await ops.get(made.headers["location"])).text

            settings = f"{ACCOUNTS}/{account.id}"
            wrong = await ops.submit(
                settings, settings, {"name": "acme", "mode": "prepaid", "price_multiplier": "x"}
            )
            assert wrong.status_code == 400 and 'id="price_multiplier-error"' in wrong.text
            saved = await ops.submit(
                settings,
                settings,
                {"name": "acme", "mode": "prepaid", "price_multiplier": "0.8", "rpm": "60"},
            )
            assert saved.status_code == 303
            account = relay.state.store.account("acme")
            assert (account.mode, account.credit_limit_micros, account.rpm) == ("prepaid", 0, 60)
            assert relay.state.wallet.snapshot(account.id).credit_limit_micros == 0
        actions = [row["action"] for row in await relay.audit()]
        assert "account.create" in actions and "account.update" in actions


async def test_credit_guardrails_and_notices(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        acme = await relay.create_account("acme")
        await create_user(relay, "ops@relay.test", operator=True)
        page = f"{ACCOUNTS}/{acme['id']}"
        credit = page + "/credit"
        async with Browser(relay) as ops:
            await ops.login("ops@relay.test")
            for typo in ("1e9", "Infinity", "-5", "0", "12.3456789"):
                refused = await ops.submit(page, credit, {"amount_usd": typo, "reference": "r"})
                assert refused.status_code == 400, typo
                assert 'id="amount_usd-error"' in refused.text and "Amount" in refused.text
                assert f'value="{typo}"' in refused.text
            huge = await ops.submit(page, credit, {"amount_usd": "2000000", "reference": "r"})
            assert huge.status_code == 400 and "more than one credit may add" in huge.text
            assert relay.state.wallet.snapshot(acme["id"]).balance_micros == 0

            # Above the threshold: a confirmation that names amount and account, no credit yet.
            asked = await ops.submit(
                page, credit, {"amount_usd": "2,500", "reference": "wire-9", "note": "Q4"}
            )
            assert asked.status_code == 200
            assert "Credit $2,500.00 to acme?" in asked.text
            assert relay.state.wallet.snapshot(acme["id"]).balance_micros == 0
            confirmed = await ops.submit(
                page,
                credit,
                {"amount_usd": "2,500", "reference": "wire-9", "note": "Q4", "confirm": "yes"},
            )
            assert confirmed.status_code == 303
            assert "notice=credited" in confirmed.headers["location"]
            assert relay.state.wallet.snapshot(acme["id"]).balance_micros == 2_500_000_000
            assert _notice(await _follow(ops, confirmed.headers["location"])) == (
                "Credited $2,500.00 to “acme” (reference wire-9)."
            )
            # Below the threshold: at once.
            small = await ops.submit(page, credit, {"amount_usd": "7.5", "reference": "wire-10"})
            assert small.status_code == 303
            again = await ops.submit(page, credit, {"amount_usd": "7.5", "reference": "wire-10"})
            assert "already credited" in _notice(await _follow(ops, again.headers["location"]))
            assert relay.state.wallet.snapshot(acme["id"]).balance_micros == 2_507_500_000
        ledger = await relay.ledger(acme["id"])
        assert sorted(r["reference"] for r in ledger) == ["wire-10", "wire-9"]


async def test_suspend_asks_and_pending_deletion_blocks_activation(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        acme = await relay.create_account("acme")
        await create_user(relay, "ops@relay.test", operator=True)
        page = f"{ACCOUNTS}/{acme['id']}"
        status = page + "/status"
        async with Browser(relay) as ops:
            await ops.login("ops@relay.test")
            asked = await ops.submit(page, status, {"status": "suspended"})
            assert asked.status_code == 200 and "Suspend acme?" in asked.text
            assert relay.state.store.account(acme["id"]).status == "active"
            done = await ops.submit(page, status, {"status": "suspended", "confirm": "yes"})
            assert "“acme” is suspended" in _notice(await _follow(ops, done.headers["location"]))
            await ops.submit(page, status, {"status": "active"})
            assert relay.state.store.account(acme["id"]).status == "active"

            state = relay.state
            await request_deletion(
                SqliteAccountRecords(state.db, state.store.audit_key),
                state.store,
                acme["id"],
                actor="o@acme.test",
            )
            shown = (await ops.get(page)).text
            assert "cannot be activated while the deletion is pending" in shown
            assert "Cancel the deletion" in shown and "Activate acme" not in shown
            listing = (await ops.get(ACCOUNTS)).text
            assert "deletion pending" in listing
            forced = await ops.submit(page, status, {"status": "active"})
            assert forced.status_code == 409 and "cancel the deletion first" in forced.text
            assert state.store.account(acme["id"]).status == "suspended"

            cancelled = await ops.submit(page, page + "/cancel-deletion")
            assert cancelled.status_code == 303
            assert "stays suspended" in _notice(await _follow(ops, cancelled.headers["location"]))
            assert await deletion_request(state.db, acme["id"]) is None
            assert state.store.account(acme["id"]).status == "suspended"
            twice = await ops.submit(page, page + "/cancel-deletion")
            assert twice.status_code == 409
            activated = await ops.submit(page, status, {"status": "active"})
            assert activated.status_code == 303
            assert state.store.account(acme["id"]).status == "active"
            query = parse_qs(urlsplit(activated.headers["location"]).query)
            assert set(query) == {"flash"}  # a one-time notice, not one a reload repeats
        actions = [row["action"] for row in await relay.audit()]
        assert "account.deletion_cancelled" in actions
