"""``POST /admin/users`` and ``GET /admin/users``, and ``relay user create`` as their client."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from pathlib import Path

import pytest
from conftest import config_text
from support_console import PASSWORD, Browser, console_relay

from relay.cli.entry import CommandError
from relay.cli.users import add_user_commands


@pytest.fixture
def relay_dir(tmp_path: Path, admin_token: str) -> Path:
    return tmp_path


async def test_create_users_through_the_admin_api(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        acme = await relay.create_account("acme")
        op = await relay.client.post(
            "/admin/users",
            json={"email": " Ops@Relay.TEST ", "password": PASSWORD, "operator": True},
        )
        assert op.status_code == 201
        assert op.json()["email"] == "ops@relay.test" and op.json()["operator"] is True
        assert "password" not in op.text and "argon2" not in op.text
        member = await relay.client.post(
            "/admin/users",
            json={
                "email": "m@acme.test",
                "password": PASSWORD,
                "display_name": "Mia",
                "account": "acme",
                "role": "member",
            },  # fmt: skip
        )
        assert member.json()["memberships"] == [
            {"account_id": acme["id"], "account": "acme", "role": "member"}
        ]
        for body, status in (
            ({"email": "ops@relay.test", "password": PASSWORD, "operator": True}, 409),
            (
                {"email": "x@acme.test", "password": "short", "account": "acme", "role": "owner"},
                400,
            ),
            (
                {"email": "x@acme.test", "password": PASSWORD, "account": "acme", "role": "boss"},
                400,
            ),
            ({"email": "x@acme.test", "password": PASSWORD}, 400),
            ({"email": "not-an-email", "password": PASSWORD, "operator": True}, 400),
            (
                {"email": "x@acme.test", "password": PASSWORD, "account": "nope", "role": "owner"},
                404,
            ),
        ):
            response = await relay.client.post("/admin/users", json=body)
            assert response.status_code == status, (body, response.text)
        anonymous = await relay.client.post(
            "/admin/users",
            json={"email": "e@x.test", "password": PASSWORD, "operator": True},
            headers={"authorization": ""},
        )
        assert anonymous.status_code == 401
        listing = (await relay.client.get("/admin/users")).json()["data"]
        assert [u["email"] for u in listing] == ["ops@relay.test", "m@acme.test"]
        async with Browser(relay) as browser:
            assert (await browser.login("ops@relay.test")).status_code == 303
        audit = [(r["action"], r["actor"]) for r in await relay.audit()]
        assert ("user.create", "admin-token") in audit and ("member.set", "admin-token") in audit


async def test_cli_creates_the_first_operator(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def add_config_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-c", "--config")
        parser.add_argument("--json", action="store_true")

    parser = argparse.ArgumentParser(prog="relay")
    add_user_commands(parser.add_subparsers(dest="command"), add_config_option)
    config = relay_dir / "relay.toml"
    config.write_text(config_text(relay_dir / "relay.db"))
    async with console_relay(monkeypatch, relay_dir) as relay:
        monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
        args = parser.parse_args(
            [
                "user",
                "create",
                "root@relay.test",
                "--operator",
                "--password-stdin",
                "-c",
                str(config),
                "--url",
                relay.base_url,
                "--json",
            ]  # fmt: skip
        )
        # The CLI is synchronous (like every management command); run it off the loop.
        user = await asyncio.to_thread(args.handler, args)
        assert user["operator"] is True and user["email"] == "root@relay.test"
        assert PASSWORD not in json.dumps(user)
        async with Browser(relay) as browser:
            assert (await browser.login("root@relay.test")).status_code == 303
        monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
        args = parser.parse_args(
            [
                "user",
                "create",
                "root@relay.test",
                "--operator",
                "--password-stdin",
                "-c",
                str(config),
                "--url",
                relay.base_url,
            ]  # fmt: skip
        )
        with pytest.raises(CommandError, match="already exists"):
            await asyncio.to_thread(args.handler, args)
        without_role = parser.parse_args(
            ["user", "create", "x@relay.test", "-c", str(config), "--url", relay.base_url]
        )
        with pytest.raises(CommandError, match="--operator"):
            without_role.handler(without_role)
