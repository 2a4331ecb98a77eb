"""``relay export ACCOUNT`` and ``relay erase ACCOUNT``: data rights, through the admin API.

``export`` downloads the zip the server builds (JSON and CSV of everything relay holds
about the account) and writes it to a file. ``erase`` asks for the account's deletion:
the server suspends it and revokes its keys at once, and erases its personal data 30
days later, keeping the money records under a pseudonym.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

import httpx

from relay.cli import admin as cli_admin
from relay.cli.admin import TIMEOUT_S, AddConfigOption, SubParsers, _request, admin_url
from relay.config import load_config

__all__ = ["add_payment_commands", "erase_command", "export_command"]


def _path(account: str, leaf: str) -> str:
    return f"/admin/accounts/{cli_admin._segment(account)}/{leaf}"


def _download(args: argparse.Namespace, path: str) -> bytes:
    """GET a binary answer from the admin API; failures become one-line CommandErrors."""
    server = load_config(args.config).server
    url = (args.url or admin_url(server)).rstrip("/")
    headers = {"Authorization": f"Bearer {cli_admin._admin_token(server)}"}
    with httpx.Client(
        base_url=url, headers=headers, timeout=TIMEOUT_S * 6, transport=cli_admin._transport()
    ) as client:
        try:
            response = client.get(path)
        except httpx.HTTPError as exc:
            raise cli_admin._command_error(
                f"cannot download from relay at {url}: {type(exc).__name__}"
            ) from None
    if not response.is_success:
        cli_admin._answer(response)  # raises the server's one-line message
    return response.content


def export_command(args: argparse.Namespace) -> Any:
    archive = _download(args, _path(args.account, "export"))
    out = Path(args.out or f"relay-export-{args.account}.zip".replace("/", "_"))
    out.write_bytes(archive)
    if args.json:
        return {"account": args.account, "file": str(out), "bytes": len(archive)}
    return f"wrote {out} ({len(archive)} bytes)"


def erase_command(args: argparse.Namespace) -> Any:
    if not args.yes:
        raise cli_admin._command_error(
            "this suspends the account, revokes its keys and erases its personal data in "
            "30 days: run again with --yes to confirm"
        )
    answer = _request(args, "POST", _path(args.account, "deletion"))
    if args.json:
        return answer
    when = dt.datetime.fromtimestamp(int(answer["erase_after_ms"]) / 1000, tz=dt.UTC)
    return (
        f"Account {args.account} is suspended and its keys are revoked; its personal data "
        f"will be erased on {when:%Y-%m-%d} (UTC)."
    )


def add_payment_commands(commands: SubParsers, add_config_option: AddConfigOption) -> None:
    export = commands.add_parser("export", help="download an account's data (zip of JSON+CSV)")
    export.add_argument("account", metavar="ACCOUNT", help="account name or id")
    export.add_argument("--out", metavar="FILE", help="where to write the zip")
    erase = commands.add_parser(
        "erase", help="delete an account: suspend now, erase personal data in 30 days"
    )
    erase.add_argument("account", metavar="ACCOUNT", help="account name or id")
    erase.add_argument("--yes", action="store_true", help="confirm the deletion")
    for parser, handler in ((export, export_command), (erase, erase_command)):
        add_config_option(parser)
        parser.add_argument("--url", help="the relay's base URL (default: from the config)")
        parser.set_defaults(handler=handler)
