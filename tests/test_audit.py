"""The audit API and ``relay audit``: the hash chain verifies, and hand edits are caught.

relay runs in-process on 127.0.0.1 (conftest's ``serve_relay``); tampering is done the
way an intruder would, with a separate sqlite3 connection to the live database file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import RelayServer, config_text, make_config, serve_relay

import relay.app
import relay.cli
from relay.identity.audit import verify_stored_chain
from relay.identity.server_secret import ServerSecret, secret_path_for

ACTIONS = 6  # account.create, wallet.credit, account.update, account.suspend, ...activate, update


@dataclass
class Trail:
    server: RelayServer
    database: Path
    config_file: Path

    def tamper(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        with contextlib.closing(sqlite3.connect(self.database)) as conn:
            conn.execute(sql, params)
            conn.commit()

    async def verify(self) -> dict[str, Any]:
        response = await self.server.client.get("/admin/audit/verify")
        assert response.status_code == 200, response.text
        report: dict[str, Any] = response.json()
        return report


@pytest.fixture
async def trail(tmp_path: Path, admin_token: str) -> AsyncIterator[Trail]:
    """A running relay with ACTIONS admin actions in its audit chain."""
    config_file = tmp_path / "relay.toml"
    config_file.write_text(config_text(tmp_path / "relay.db"))
    async with serve_relay(make_config(tmp_path)) as server:
        client = server.client
        created = await client.post("/admin/accounts", json={"name": "acme"})
        assert created.status_code == 201, created.text
        account = created.json()["id"]
        steps = [
            ("POST", f"/admin/accounts/{account}/credits", {"amount_usd": "5", "reference": "r1"}),
            ("PATCH", f"/admin/accounts/{account}", {"rpm": 60}),
            ("PATCH", f"/admin/accounts/{account}", {"status": "suspended"}),
            ("PATCH", f"/admin/accounts/{account}", {"status": "active"}),
            ("PATCH", f"/admin/accounts/{account}", {"name": "acme-renamed"}),
        ]
        for method, path, body in steps:
            response = await client.request(method, path, json=body)
            assert response.is_success, response.text
        yield Trail(server, tmp_path / "relay.db", config_file)


async def test_a_chain_of_admin_actions_verifies(trail: Trail) -> None:
    assert await trail.verify() == {
        "ok": True,
        "rows": ACTIONS,
        "first_id": 1,
        "last_id": ACTIONS,
        "broken_at": None,
        "reason": None,
    }


async def test_key_actions_are_chained_too(trail: Trail) -> None:
    client = trail.server.client
    key = await client.post("/admin/accounts/acme-renamed/keys", json={"name": "ci"})
    assert key.status_code == 201, key.text
    revoked = await client.post(f"/admin/keys/{key.json()['id']}/revoke")
    assert revoked.status_code == 200, revoked.text
    report = await trail.verify()
    assert report["ok"] and report["rows"] == ACTIONS + 2
    rows = (await client.get("/admin/audit", params={"target": key.json()["id"]})).json()["data"]
    assert [row["action"] for row in rows][-1] == "key.create"
    assert key.json()["secret"] not in json.dumps(rows)


async def test_the_list_is_newest_first_with_detail_parsed_and_filters(trail: Trail) -> None:
    client = trail.server.client
    rows = (await client.get("/admin/audit")).json()["data"]
    assert [row["id"] for row in rows] == list(range(ACTIONS, 0, -1))
    assert rows[-1]["action"] == "account.create"
    assert rows[-1]["detail"]["after"]["name"] == "acme"
    assert rows[-1]["actor"] == "admin-token" and rows[-1]["at"].endswith("Z")

    page = (await client.get("/admin/audit", params={"limit": 2, "before_id": 5})).json()["data"]
    assert [row["id"] for row in page] == [4, 3]
    credits = (await client.get("/admin/audit", params={"action": "wallet.credit"})).json()
    assert [row["detail"] for row in credits["data"]] == [
        {"amount_micros": 5_000_000, "reference": "r1"}
    ]
    suspended = await client.get("/admin/audit", params={"action": "account.suspend"})
    assert len(suspended.json()["data"]) == 1


async def test_the_audit_api_needs_the_admin_token(trail: Trail) -> None:
    client = trail.server.client
    for path in ("/admin/audit", "/admin/audit/verify"):
        response = await client.get(path, headers={"authorization": "Bearer wrong"})
        assert response.status_code == 401
    bad = await client.get("/admin/audit", params={"limit": "x"})
    assert bad.status_code == 400


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("detail", '{"amount_micros":500000000,"reference":"r1"}'),
        ("actor", "someone-else"),
        ("ts_ms", 1),
        ("action", "account.delete"),
        ("target", "acct_other"),
        ("hash", "0" * 64),
    ],
)
async def test_editing_any_field_of_a_row_is_caught_at_that_row(
    trail: Trail, column: str, value: object
) -> None:
    trail.tamper(f"UPDATE audit SET {column} = ? WHERE id = 3", (value,))
    report = await trail.verify()
    assert report["ok"] is False
    assert report["broken_at"] == 3
    assert report["rows"] == 2 and report["last_id"] == 2 and report["first_id"] == 1
    assert report["reason"]


async def test_deleting_a_middle_row_is_caught_at_the_next_row(trail: Trail) -> None:
    trail.tamper("DELETE FROM audit WHERE id = 4")
    report = await trail.verify()
    assert (report["ok"], report["broken_at"]) == (False, 5)
    assert report["reason"] == "does not link to the row before it"


async def test_a_rehashed_forgery_without_the_server_key_is_caught(trail: Trail) -> None:
    """Re-linking the next row by hand does not help: the hashes are HMACs."""
    with contextlib.closing(sqlite3.connect(trail.database)) as conn:
        hashes = [row[0] for row in conn.execute("SELECT hash FROM audit ORDER BY id")]
    trail.tamper("DELETE FROM audit WHERE id = 4")
    trail.tamper("UPDATE audit SET id = 4, prev_hash = ? WHERE id = 5", (hashes[2],))
    report = await trail.verify()
    assert (report["ok"], report["broken_at"]) == (False, 4)


@pytest.mark.parametrize("page_size", [1, 2, 3, 5, 100])
async def test_verify_reads_in_pages_and_checks_links_across_them(
    trail: Trail, page_size: int
) -> None:
    state = trail.server.state
    key = ServerSecret.load_or_create(secret_path_for(state.config.database_path)).subkey("audit")
    intact = await verify_stored_chain(state.db, key, page_size=page_size)
    assert (intact["ok"], intact["rows"], intact["last_id"]) == (True, ACTIONS, ACTIONS)

    trail.tamper("DELETE FROM audit WHERE id = 3")  # on a boundary for page sizes 1 and 2
    broken = await verify_stored_chain(state.db, key, page_size=page_size)
    assert (broken["ok"], broken["broken_at"], broken["rows"]) == (False, 4, 2)

    wrong_key = await verify_stored_chain(state.db, b"x" * 32, page_size=page_size)
    assert (wrong_key["broken_at"], wrong_key["rows"], wrong_key["last_id"]) == (1, 0, None)


async def test_an_empty_trail_verifies(tmp_path: Path, admin_token: str) -> None:
    async with serve_relay(make_config(tmp_path)) as server:
        report = (await server.client.get("/admin/audit/verify")).json()
    assert report == {
        "ok": True,
        "rows": 0,
        "first_id": None,
        "last_id": None,
        "broken_at": None,
        "reason": None,
    }


# ------------------------------------------------------------------------- relay audit CLI


@pytest.fixture
def cli(trail: Trail, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    async def run(*argv: str) -> tuple[int, str, str]:
        args = ["audit", *argv, "-c", str(trail.config_file), "--url", trail.server.base_url]
        # In a thread: the CLI's blocking HTTP call must not stall the loop serving it.
        code = await asyncio.to_thread(relay.cli.entry.main, args)
        out, err = capsys.readouterr()
        return code, out, err

    yield run


async def test_cli_verify_reports_an_intact_chain(cli: Any) -> None:
    code, out, err = await cli("verify")
    assert (code, out.strip(), err) == (0, f"audit chain intact: {ACTIONS} rows (ids 1..6)", "")
    code, out, _ = await cli("verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True


async def test_cli_verify_reports_the_first_broken_link_and_exits_1(trail: Trail, cli: Any) -> None:
    trail.tamper("UPDATE audit SET detail = '{}' WHERE id = 5")
    trail.tamper("UPDATE audit SET actor = 'x' WHERE id = 2")
    code, out, err = await cli("verify")
    assert code == 1 and out == ""
    assert err.strip() == "relay: audit chain broken at row 2: its contents do not match its hash"
    code, out, err = await cli("verify", "--json")
    assert code == 1 and json.loads(out)["broken_at"] == 2
    assert "broken at row 2" in err


async def test_cli_list_shows_the_newest_rows(cli: Any) -> None:
    code, out, _ = await cli("list", "--limit", "2")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split() == ["ID", "TIME", "ACTOR", "ACTION", "TARGET"]
    assert [line.split()[0] for line in lines[1:]] == ["6", "5"]
    code, out, _ = await cli("list", "--action", "wallet.credit", "--json")
    assert code == 0 and [row["id"] for row in json.loads(out)] == [2]


async def test_cli_without_a_running_server_fails_in_one_line(
    trail: Trail, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["audit", "verify", "-c", str(trail.config_file), "--url", "http://127.0.0.1:9"]
    code = await asyncio.to_thread(relay.cli.entry.main, args)
    err = capsys.readouterr().err
    assert code == 1 and "cannot reach relay" in err and len(err.strip().splitlines()) == 1


def test_a_secret_created_meanwhile_by_another_instance_is_the_one_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cluster instances starting together on one folder: the one that links its file into
    place second reads the first one's secret (and leaves no partial file behind)."""
    import os

    path = tmp_path / "relay.db.secret"
    theirs = "ab" * 32
    real_link = os.link

    def racing_link(source: Any, target: Any) -> None:
        path.write_text(theirs + "\n")  # the other instance won the race just now
        real_link(source, target)

    monkeypatch.setattr(os, "link", racing_link)
    secret = ServerSecret.load_or_create(path)
    assert secret.subkey("audit") == ServerSecret(bytes.fromhex(theirs)).subkey("audit")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    monkeypatch.undo()
    assert ServerSecret.load_or_create(path).subkey("audit") == secret.subkey("audit")
