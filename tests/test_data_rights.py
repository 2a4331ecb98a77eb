"""Data rights: the export zip holds the account's data and no secret; deletion suspends at
once and erases personal data 30 days later while the money records stay consistent."""

from __future__ import annotations

import io
import json
import sqlite3
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from support_accounts import auth, chat_body
from support_payments import PaymentsRelay, checkout_completed, payments_config, run_payments_relay

from relay.cli import entry as cli
from relay.identity.data_rights import DAY_MS, ErasureJob, pseudonym_for

PASSWORD_HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$console-user-password-hash"


async def _add_console_people(p: PaymentsRelay, account_id: str, other_id: str) -> None:
    now = int(time.time() * 1000)

    def write(conn: sqlite3.Connection) -> None:
        users = [("usr_ada", "ada@example.com", "Ada Lovelace"), ("usr_bob", "bob@ex.com", "Bob")]
        for user_id, email, name in users:
            conn.execute(
                "INSERT INTO console_users (id, email, display_name, password_hash, "
                "created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (user_id, email, name, PASSWORD_HASH, now, now),
            )
            conn.execute(
                "INSERT INTO console_memberships VALUES (?, ?, 'owner', ?)",
                (account_id, user_id, now),
            )
        # Bob also belongs to another account: he keeps his login.
        conn.execute(
            "INSERT INTO console_memberships VALUES (?, 'usr_bob', 'member', ?)", (other_id, now)
        )
        conn.execute(
            "INSERT INTO console_sessions VALUES ('h1', 'usr_ada', 1, ?, ?)", (now, now + DAY_MS)
        )
        conn.execute(
            "INSERT INTO console_tickets (id, account_id, opened_by, subject, created_at_ms, "
            "updated_at_ms) VALUES (1, ?, 'usr_ada', 'My card was charged twice', ?, ?)",
            (account_id, now, now),
        )
        conn.execute(
            "INSERT INTO console_ticket_messages (ticket_id, author_id, body, created_at_ms) "
            "VALUES (1, 'usr_ada', 'Please call me on +44 20 7946 0000', ?)",
            (now,),
        )

    await p.relay.state.db.write(write)


async def _busy_account(p: PaymentsRelay) -> tuple[str, str, str]:
    """An account with a key, a request, a card payment and console people: (id, other, secret)."""
    account, key = await p.relay.funded_key("ada-ltd", "10")
    other = await p.relay.create_account("other-co")
    response = await p.relay.client.post(
        "/v1/chat/completions", json=chat_body(), headers=auth(key["secret"])
    )
    assert response.status_code == 200, response.text
    await p.deliver(checkout_completed("evt_1", "cs_1", account["id"], amount_minor=2000))
    await _add_console_people(p, account["id"], other["id"])
    return str(account["id"]), str(other["id"]), str(key["secret"])


async def _export(p: PaymentsRelay, account_id: str) -> dict[str, str]:
    response = await p.relay.client.get(f"/admin/accounts/{account_id}/export")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        return {name: archive.read(name).decode() for name in archive.namelist()}


async def test_export_holds_the_account_data_and_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as p:
        account_id, _, secret = await _busy_account(p)
        files = await _export(p, account_id)
        for stem in ("keys", "usage", "ledger", "payments", "receipts", "members", "tickets"):
            assert f"{stem}.json" in files and f"{stem}.csv" in files, stem
        assert json.loads(files["profile.json"])["name"] == "ada-ltd"
        assert len(json.loads(files["usage.json"])) == 1
        assert [m["email"] for m in json.loads(files["members.json"])] == [
            "ada@example.com",
            "bob@ex.com",
        ]
        assert "+44 20 7946 0000" in files["ticket_messages.json"]
        [key] = json.loads(files["keys.json"])
        assert set(key) >= {"id", "label", "last4", "status"}

        stored_hash = p.relay.state.store.key_hashes[key["id"]]
        everything = "\n".join(files.values())
        for forbidden in (secret, secret[-12:], stored_hash, "$argon2", "test-admin-token"):
            assert forbidden not in everything
        assert "secret_hash" not in everything and "password_hash" not in everything
        assert "account.export" in [row["action"] for row in await p.relay.audit()]


async def test_deletion_suspends_now_and_erases_after_30_days(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as p:
        account_id, other_id, secret = await _busy_account(p)
        ledger_before = await p.relay.ledger(account_id)
        requested = await p.relay.client.post(f"/admin/accounts/{account_id}/deletion")
        assert requested.status_code == 202, requested.text
        erase_after = requested.json()["erase_after_ms"]
        assert erase_after - requested.json()["requested_at_ms"] == 30 * DAY_MS
        again = await p.relay.client.post(f"/admin/accounts/{account_id}/deletion")
        assert again.json() == requested.json()

        assert p.relay.state.store.account(account_id).status == "suspended"
        # The admin API cannot quietly re-open it either (the console cancels explicitly).
        reopen = await p.relay.client.patch(
            f"/admin/accounts/{account_id}", json={"status": "active"}
        )
        assert reopen.status_code == 409 and "deletion is pending" in reopen.text
        assert p.relay.state.store.account(account_id).status == "suspended"
        refused = await p.relay.client.post(
            "/v1/chat/completions", json=chat_body(), headers=auth(secret)
        )
        assert refused.status_code == 401

        store, db = p.relay.state.store, p.relay.state.db
        early = ErasureJob(db, store, clock_ms=lambda: erase_after - 1)
        assert await early.run_once() == []
        assert store.account(account_id).name == "ada-ltd"
        due = ErasureJob(db, store, clock_ms=lambda: erase_after)
        assert await due.run_once() == [account_id]
        assert await due.run_once() == []  # erased once

        pseudonym = pseudonym_for(account_id)
        assert store.account(account_id).name == pseudonym
        assert store.account(pseudonym).id == account_id
        with pytest.raises(Exception, match="No account"):
            store.account("ada-ltd")
        rows = await p.relay.rows("SELECT name FROM accounts WHERE id = ?", (account_id,))
        assert rows == [{"name": pseudonym}]
        users = {
            row["id"]: row
            for row in await p.relay.rows(
                "SELECT id, email, display_name, status FROM console_users"
            )
        }
        assert users["usr_ada"]["email"].endswith("@invalid")
        assert users["usr_ada"]["display_name"] == "deleted user"
        assert users["usr_ada"]["status"] == "disabled"
        assert users["usr_bob"]["email"] == "bob@ex.com"  # still a member of other-co
        bodies = await p.relay.rows("SELECT body FROM console_ticket_messages")
        assert bodies == [{"body": "[erased]"}]
        assert await p.relay.rows("SELECT * FROM console_sessions") == []
        receipts = await p.relay.rows("SELECT buyer_name FROM receipts")
        assert receipts == [{"buyer_name": pseudonym}] * 2  # the seed credit and the card

        # The money records stay, intact and consistent.
        assert await p.relay.ledger(account_id) == ledger_before
        balance = p.relay.state.wallet.snapshot(account_id).balance_micros
        assert (
            balance
            == await p.relay.ledger_sum(account_id)
            == 10_000_000
            + 20_000_000
            - sum(-row["amount_micros"] for row in ledger_before if row["kind"] == "charge")
        )
        assert len(await p.relay.rows("SELECT * FROM payments")) == 2
        everything = "\n".join((await _export(p, account_id)).values())
        # (Ledger references stay as typed, e.g. the helper's "seed-ada-ltd": money records.)
        for personal in ('"ada-ltd"', "ada@example.com", "Ada Lovelace", "+44 20 7946 0000"):
            assert personal not in everything
        assert other_id and await p.audit_ok()


# --- CLI -----------------------------------------------------------------------------------


def _small_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("profile.json", "{}")
    return buffer.getvalue()


_ZIP = _small_zip()


class AdminFake:
    """A fake admin API for ``relay export`` and ``relay erase``; records what it receives."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if request.url.path == "/admin/accounts/acme/export":
            return httpx.Response(200, content=_ZIP)
        if request.url.path == "/admin/accounts/cut/export":  # no end of central directory
            return httpx.Response(200, content=_ZIP[:-22])
        if request.url.path == "/admin/accounts/acme/deletion":
            body = {"account_id": "acct_1", "requested_at_ms": 0, "erase_after_ms": 30 * DAY_MS}
            return httpx.Response(202, json=body)
        error = {"error": {"message": "No account 'ghost'", "type": "x", "code": "x"}}
        return httpx.Response(404, json=error)

    def run(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
        """``relay ARGV`` against this fake: exit status, stdout, stderr."""
        code = cli.main(argv, transport=self.transport)
        out, err = capsys.readouterr()
        return code, out, err


@pytest.fixture
def admin_fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AdminFake:
    monkeypatch.setenv("RELAY_ADMIN_TOKEN", "tok")
    (tmp_path / "relay.toml").write_text('[server]\nlisten = "127.0.0.1:9911"\n')
    monkeypatch.chdir(tmp_path)
    return AdminFake()


def test_cli_export_writes_the_zip(
    admin_fake: AdminFake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "acme.zip"
    code, message, _ = admin_fake.run(["export", "acme", "--out", str(out)], capsys)
    assert code == 0 and out.read_bytes() == _ZIP and message.startswith("wrote")
    assert admin_fake.seen[0].headers["authorization"] == "Bearer tok"
    assert str(admin_fake.seen[0].url) == "http://127.0.0.1:9911/admin/accounts/acme/export"
    code, _, err = admin_fake.run(["export", "ghost"], capsys)
    assert code == 1 and err == "relay: No account 'ghost'\n"
    # A body without the zip's end: no file, not even the temporary one.
    cut = tmp_path / "cut.zip"
    code, _, err = admin_fake.run(["export", "cut", "--out", str(cut)], capsys)
    assert code == 1 and "ended before its end" in err
    assert not cut.exists() and list(tmp_path.glob("*.part")) == []


def test_cli_erase_needs_yes(admin_fake: AdminFake, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = admin_fake.run(["erase", "acme"], capsys)
    assert code == 1 and "--yes" in err
    assert admin_fake.seen == []
    code, message, _ = admin_fake.run(["erase", "acme", "--yes"], capsys)
    assert code == 0 and "1970-01-31" in message and admin_fake.seen[0].method == "POST"
    code, out, _ = admin_fake.run(["erase", "acme", "--yes", "--json"], capsys)
    assert code == 0 and json.loads(out)["account_id"] == "acct_1"
