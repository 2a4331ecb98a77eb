"""Send one plain-text email through the configured SMTP server.

The standard library's ``smtplib`` is blocking, so each message is sent in a worker
thread: the event loop (and every request on it) never waits for a mail server. The
password is read from the environment variable ``[email] password_env`` names, at send
time, and never logged.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import ssl
from email.message import EmailMessage

from relay.config import EmailConfig

__all__ = ["MailError", "send_mail"]


class MailError(RuntimeError):
    """The SMTP server refused or could not be reached (the message names which)."""


def _message(config: EmailConfig, to: list[str], subject: str, text: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = config.from_
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message.set_content(text)
    return message


def _send_blocking(config: EmailConfig, message: EmailMessage) -> None:
    with smtplib.SMTP(config.host, config.port, timeout=config.timeout_s) as smtp:
        if config.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if config.user is not None and config.password_env is not None:
            password = os.environ.get(config.password_env, "")
            smtp.login(config.user, password)
        smtp.send_message(message)


async def send_mail(config: EmailConfig, to: list[str], subject: str, text: str) -> None:
    """Send or raise ``MailError`` (type and reason only: never the password)."""
    message = _message(config, to, subject, text)
    try:
        await asyncio.to_thread(_send_blocking, config, message)
    except (OSError, smtplib.SMTPException) as exc:
        raise MailError(f"SMTP {config.host}:{config.port}: {type(exc).__name__}: {exc}") from None
