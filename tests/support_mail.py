"""A real local SMTP server (aiosmtpd) for tests of mail relay sends, and the [email] text."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from typing import Any

from aiosmtpd.controller import Controller
from test_server import free_port


class Inbox:
    """Accepts mail; answers ``451`` to the first ``refuse`` messages (a busy server)."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Any]] = []
        self.refuse = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.refuse:
            self.refuse -= 1
            return "451 try again later"
        message = message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append((envelope.rcpt_tos, message))
        return "250 OK"


@contextmanager
def smtp_server() -> Iterator[tuple[Controller, Inbox]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, inbox
    finally:
        controller.stop()


def email_section(port: int, sender: str = "relay@relay.test", **switches: bool) -> str:
    """``[email]`` for the local server (no STARTTLS), with e.g. ``receipts=True``."""
    lines = [
        "[email]",
        'host = "127.0.0.1"',
        f"port = {port}",
        "starttls = false",
        f'from = "{sender}"',
    ]
    lines += [f"{name} = {str(value).lower()}" for name, value in switches.items()]
    return "\n" + "\n".join(lines) + "\n"
