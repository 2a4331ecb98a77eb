"""What the management commands share: parser types, the ``--url`` leaf, request bodies.

Each command module (accounts, keys, wallet, billing, usage, audit, users, data_rights)
adds its commands with a public ``add_*_commands(commands, add_config_option)``; this
module holds the pieces they have in common so none reaches into another.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias
from urllib.parse import quote

from relay.cli import types as cli_types
from relay.cli.client import CommandError

__all__ = [
    "URL_HELP",
    "AddConfigOption",
    "Handler",
    "SubParsers",
    "account_path",
    "add_group",
    "add_leaf",
    "add_limit_options",
    "add_url_option",
    "key_path",
    "nothing_to_update",
    "options",
    "present",
    "segment",
]

Handler: TypeAlias = Callable[[argparse.Namespace], Any]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
AddConfigOption: TypeAlias = Callable[[argparse.ArgumentParser], None]

URL_HELP = "the relay's base URL (default: from the config's server.listen)"


def add_url_option(parser: argparse.ArgumentParser, help: str = URL_HELP) -> None:
    parser.add_argument("--url", help=help)


def add_leaf(
    actions: SubParsers,
    name: str,
    help: str,
    handler: Handler,
    add_config_option: AddConfigOption,
    *,
    target: str | None = None,
) -> argparse.ArgumentParser:
    """One ``relay GROUP ACTION`` command: its positional target, ``-c``/``--json``, ``--url``."""
    parser = actions.add_parser(name, help=help)
    if target == "account":
        parser.add_argument("account", metavar="ACCOUNT", help="account name or id")
    elif target == "key":
        parser.add_argument("key_id", metavar="KEY_ID", help="the key's public id")
    add_config_option(parser)
    add_url_option(parser)
    parser.set_defaults(handler=handler)
    return parser


def add_group(commands: SubParsers, name: str, help: str) -> SubParsers:
    """``relay NAME ACTION ...``: a command whose subcommands are actions."""
    parser = commands.add_parser(name, help=help)
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """``--rpm``, ``--tpm``, ``--concurrency``: shared by accounts and keys."""
    parser.add_argument(
        "--rpm", type=cli_types.count, metavar="N", help="requests per minute (0 = unlimited)"
    )
    parser.add_argument(
        "--tpm", type=cli_types.count, metavar="N", help="tokens per minute (0 = unlimited)"
    )
    parser.add_argument(
        "--concurrency", type=cli_types.count, metavar="N", help="requests in flight at once"
    )


def segment(value: str) -> str:
    """An account name or key id as one path segment (names may hold spaces or slashes)."""
    return quote(value, safe="")


def account_path(account: str) -> str:
    return f"/admin/accounts/{segment(account)}"


def key_path(key_id: str) -> str:
    return f"/admin/keys/{segment(key_id)}"


def present(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Only the optional values the user gave."""
    return {name: value for name, value in fields.items() if value is not None}


def options(args: argparse.Namespace, names: Mapping[str, str]) -> dict[str, Any]:
    """CLI options (argparse dest → admin API field) as a request body."""
    # Options left out stay out of the body, so a PATCH never resets them.
    return present({field: getattr(args, dest, None) for dest, field in names.items()})


def nothing_to_update(command: str) -> CommandError:
    return CommandError(f"nothing to update: give at least one option (relay {command} --help)")
