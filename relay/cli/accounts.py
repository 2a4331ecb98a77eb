"""``relay account ...``: create, list, show, update, suspend and activate accounts.

Clients of ``/admin/accounts`` (through ``AdminClient``). Money goes out as decimal USD
strings and is shown as decimal USD; ``--json`` prints the server's objects as they came
back. ``account export`` and ``account delete`` are the data-rights commands of
``relay.cli.data_rights`` under this group.
"""

from __future__ import annotations

import argparse
from typing import Any

from relay.cli import types as cli_types
from relay.cli.client import AdminClient
from relay.cli.commands import (
    AddConfigOption,
    Handler,
    SubParsers,
    account_path,
    add_group,
    add_leaf,
    add_limit_options,
    nothing_to_update,
    options,
)
from relay.cli.data_rights import erase_command, export_command
from relay.cli.format import ACCOUNT, ACCOUNT_LIST, table, view

__all__ = ["add_account_commands"]

# CLI option (argparse dest) → admin API field; unset options are left out of the body.
_ACCOUNT_OPTIONS = {
    "new_name": "name",
    "mode": "mode",
    "credit_limit": "credit_limit_usd",
    "rpm": "rpm",
    "tpm": "tpm",
    "concurrency": "concurrency",
    "price_multiplier": "price_multiplier",
}


def _account_create(args: argparse.Namespace) -> Any:
    body = {"name": args.name, **options(args, _ACCOUNT_OPTIONS)}
    with AdminClient.from_args(args) as admin:
        account = admin.call("POST", "/admin/accounts", body=body)
        path = account_path(account["id"])
        credit = key = None
        if args.credit:
            # A fixed reference keeps the first top-up idempotent if the command is retried.
            body = {"amount_usd": args.credit, "reference": f"initial-credit-{account['id']}"}
            credit = admin.call("POST", f"{path}/credits", body=body)
        if args.key:
            key = admin.call("POST", f"{path}/keys", body={"name": args.key})
    if args.json:
        return {
            **account,
            **({"credit": credit} if credit else {}),
            **({"key": key} if key else {}),
        }
    lines = [f"Created account {account.get('name')}.", "", view(account, ACCOUNT)]
    if credit:
        wallet = credit.get("wallet") or {}
        lines += ["", f"Credited {args.credit} USD; balance {wallet.get('balance_usd')} USD."]
    if key:
        lines += [
            "",
            f"Created key {key.get('id')} ({args.key}):",
            str(key.get("secret")),
            "Store this secret now: it is shown only once and cannot be recovered.",
        ]
    return "\n".join(lines)


def _account_list(args: argparse.Namespace) -> Any:
    with AdminClient.from_args(args) as admin:
        accounts = admin.items("/admin/accounts")
    if args.json:
        return accounts
    return table(accounts, ACCOUNT, only=ACCOUNT_LIST, empty="no accounts")


def _account_show(args: argparse.Namespace) -> Any:
    with AdminClient.from_args(args) as admin:
        account = admin.call("GET", account_path(args.account))
    return account if args.json else view(account, ACCOUNT)


def _account_update(args: argparse.Namespace) -> Any:
    body = options(args, _ACCOUNT_OPTIONS)
    if not body:
        raise nothing_to_update("account update")
    with AdminClient.from_args(args) as admin:
        account = admin.call("PATCH", account_path(args.account), body=body)
    return account if args.json else view(account, ACCOUNT)


def _set_account_status(status: str) -> Handler:
    def handler(args: argparse.Namespace) -> Any:
        with AdminClient.from_args(args) as admin:
            path = account_path(args.account)
            account = admin.call("PATCH", path, body={"status": status})
        return account if args.json else f"Account {account.get('name')} is {status}."

    return handler


def _add_account_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--postpaid", dest="mode", action="store_const", const="postpaid")
    mode.add_argument("--prepaid", dest="mode", action="store_const", const="prepaid")
    parser.add_argument(
        "--credit-limit", type=cli_types.usd_amount, metavar="USD", help="postpaid only"
    )
    parser.add_argument("--price-multiplier", type=cli_types.multiplier, metavar="X")
    add_limit_options(parser)
    if update:
        parser.add_argument("--name", dest="new_name", metavar="NAME", help="rename the account")


def add_account_commands(commands: SubParsers, add_config_option: AddConfigOption) -> None:
    """Add ``account`` and its subcommands to ``relay``'s parser."""
    account = add_group(commands, "account", "manage accounts (through the running server)")

    def leaf(name: str, help: str, handler: Handler, target: str | None) -> argparse.ArgumentParser:
        return add_leaf(account, name, help, handler, add_config_option, target=target)

    create = leaf("create", "create an account", _account_create, None)
    create.add_argument("name", metavar="NAME")
    _add_account_options(create, update=False)
    create.add_argument(
        "--credit", type=cli_types.usd_amount, metavar="USD", help="also credit this much at once"
    )
    create.add_argument("--key", metavar="LABEL", help="also create a key with this label")
    leaf("list", "list accounts", _account_list, None)
    leaf("show", "show an account and its balance", _account_show, "account")
    leaf("suspend", "refuse the account's requests", _set_account_status("suspended"), "account")
    activate = _set_account_status("active")
    leaf("activate", "serve the account's requests again", activate, "account")
    update = leaf("update", "change an account's settings", _account_update, "account")
    _add_account_options(update, update=True)
    export = leaf("export", "download the account's data (zip)", export_command, "account")
    export.add_argument("--out", metavar="FILE")
    delete = leaf("delete", "suspend now, erase personal data in 30 days", erase_command, "account")
    delete.add_argument("--yes", action="store_true", help="confirm")
