"""Email for people: password reset by an emailed one-time link, invites sent by email.
A real local SMTP server (aiosmtpd) receives the mail."""

from __future__ import annotations

import re
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from conftest import make_config
from support_console import Browser, create_user, serve_console
from test_server import free_port

NEW_PASSWORD = "a brand new passphrase"


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Any]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(
            (envelope.rcpt_tos, message_from_bytes(envelope.content, policy=policy.default))
        )
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, Inbox]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, inbox
    finally:
        controller.stop()


def mail_config(tmp_path: Path, port: int) -> Any:
    email = f"""
[email]
host = "127.0.0.1"
port = {port}
starttls = false
from = "relay@relay.test"
"""
    # http, not https: an https public_url makes the console's cookies Secure, which this
    # plain-http test browser would then never send back.
    return make_config(
        tmp_path, server_extra='public_url = "http://relay.example.test"', extra=email
    )


def body_of(message: Any) -> str:
    payload: str = message.get_content()
    return payload


async def test_password_reset_by_emailed_one_time_link(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, admin_token: str, smtp: Any
) -> None:
    controller, inbox = smtp
    async with serve_console(monkeypatch, mail_config(tmp_path, controller.port)) as relay:
        acme = await relay.create_account("acme")
        await create_user(relay, "ann@acme.test", account=acme["id"])
        async with Browser(relay) as visitor:
            unknown = await visitor.submit(
                "/console/forgot", "/console/forgot", {"email": "nobody@acme.test"}
            )
            known = await visitor.submit(
                "/console/forgot", "/console/forgot", {"email": "ann@acme.test"}
            )
            # The same answer either way: the form does not tell who has an account.
            assert unknown.status_code == known.status_code == 200
            assert "reset link is on its way" in unknown.text and "on its way" in known.text
            [(recipients, message)] = inbox.messages
            assert recipients == ["ann@acme.test"]
            link = re.search(r"http://relay\.example\.test(/console/reset/\S+)", body_of(message))
            assert link is not None, body_of(message)
            path = link.group(1)
            mismatch = await visitor.submit(
                path, path, {"new_password": NEW_PASSWORD, "new_password_again": "other words"}
            )
            assert mismatch.status_code == 400
            done = await visitor.submit(
                path, path, {"new_password": NEW_PASSWORD, "new_password_again": NEW_PASSWORD}
            )
            assert done.status_code == 303  # signed in with a fresh session
            again = await visitor.get(path)
            assert again.status_code == 404  # the link works once
        async with Browser(relay) as fresh:
            assert (await fresh.login("ann@acme.test", NEW_PASSWORD)).status_code == 303
        actions = [row["action"] for row in await relay.audit()]
        assert "password.reset_requested" in actions


async def test_reset_needs_email_and_a_public_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, admin_token: str
) -> None:
    async with serve_console(monkeypatch, make_config(tmp_path)) as relay:
        async with Browser(relay) as visitor:
            page = await visitor.get("/console/forgot")
            assert "not set up on this relay" in page.text
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            refused = await visitor.client.post(
                "/console/forgot",
                data={"email": "x@y.test", "csrf_token": token.group(1) if token else ""},
            )
            assert refused.status_code in (403, 404)


async def test_an_invite_is_sent_by_email(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, admin_token: str, smtp: Any
) -> None:
    controller, inbox = smtp
    async with serve_console(monkeypatch, mail_config(tmp_path, controller.port)) as relay:
        acme = await relay.create_account("acme")
        await create_user(relay, "owner@acme.test", account=acme["id"], role="owner")
        async with Browser(relay) as owner:
            await owner.login("owner@acme.test")
            page = f"/console/a/{acme['id']}/members"
            sent = await owner.submit(
                page, page + "/invite", {"role": "member", "email": "new@acme.test"}
            )
            # POST-redirect-GET: the next page says where the link went (from the flash).
            assert sent.status_code == 303
            shown = await owner.get(sent.headers["location"])
            assert "Sent to new@acme.test" in shown.text
        [(recipients, message)] = inbox.messages
        assert recipients == ["new@acme.test"]
        assert "http://relay.example.test/console/invite/" in body_of(message)
        assert "acme" in message["Subject"]
