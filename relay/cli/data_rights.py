"""``relay export ACCOUNT`` and ``relay erase ACCOUNT``: data rights, through the admin API.

``export`` streams the zip the server builds (JSON and CSV of everything relay holds
about the account) into a file, never whole in memory: it is written beside the target
under a temporary name and moved into place only once complete (the HTTP body ended and
the zip has its end record), so an interrupted export never leaves a file that looks whole.
``erase`` asks for the account's deletion: the server suspends it and revokes its keys at
once, and erases its personal data 30 days later, keeping the money records under a pseudonym.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import zipfile
from pathlib import Path
from typing import Any

from relay.cli.client import TIMEOUT_S, AdminClient, CommandError
from relay.cli.commands import AddConfigOption, SubParsers, account_path, add_url_option

__all__ = ["add_data_rights_commands", "erase_command", "export_command"]

# The server compresses a large part whole before its bytes come: give it longer than a
# JSON call between pieces.
EXPORT_TIMEOUT_S = TIMEOUT_S * 6


def export_command(args: argparse.Namespace) -> Any:
    out = Path(args.out or f"relay-export-{args.account}.zip".replace("/", "_"))
    partial = out.with_name(out.name + ".part")
    try:
        size = _download_export(args, partial)
        os.replace(partial, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    if args.json:
        return {"account": args.account, "file": str(out), "bytes": size}
    return f"wrote {out} ({size} bytes)"


def _download_export(args: argparse.Namespace, partial: Path) -> int:
    """The export's bytes into ``partial``; their count. A broken body fails here."""
    path = f"{account_path(args.account)}/export"
    size = 0
    with (
        AdminClient.from_args(args, timeout=EXPORT_TIMEOUT_S) as admin,
        admin.stream(path) as response,
        partial.open("wb") as file,
    ):
        for piece in response.iter_bytes():
            size += file.write(piece)
    if not zipfile.is_zipfile(partial):
        raise CommandError("the export ended before its end: no file written (try again)")
    return size


def erase_command(args: argparse.Namespace) -> Any:
    if not args.yes:
        raise CommandError(
            "this suspends the account, revokes its keys and erases its personal data in "
            "30 days: run again with --yes to confirm"
        )
    with AdminClient.from_args(args) as admin:
        answer = admin.call("POST", f"{account_path(args.account)}/deletion")
    if args.json:
        return answer
    when = dt.datetime.fromtimestamp(int(answer["erase_after_ms"]) / 1000, tz=dt.UTC)
    return (
        f"Account {args.account} is suspended and its keys are revoked; its personal data "
        f"will be erased on {when:%Y-%m-%d} (UTC)."
    )


def add_data_rights_commands(commands: SubParsers, add_config_option: AddConfigOption) -> None:
    """Add ``export`` and ``erase`` to ``relay``'s parser."""
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
        add_url_option(parser, help="the relay's base URL (default: from the config)")
        parser.set_defaults(handler=handler)
