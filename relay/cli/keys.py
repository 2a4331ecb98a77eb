"""``relay key ...``: create (the secret is printed once), list, show, update and revoke keys.

Clients of ``/admin/keys`` and ``/admin/accounts/ACCOUNT/keys`` (through ``AdminClient``).
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
    key_path,
    nothing_to_update,
    options,
)
from relay.cli.format import KEY, KEY_LIST, table, view

__all__ = ["add_key_commands"]

# CLI option (argparse dest) → admin API field; unset options are left out of the body.
_KEY_OPTIONS = {
    "label": "name",
    "models": "models",
    "endpoints": "endpoints",
    "spend_cap": "spend_cap_usd",
    "rpm": "rpm",
    "tpm": "tpm",
    "concurrency": "concurrency",
    "expires": "expires",
    "price_multiplier": "price_multiplier",
}


def _key_create(args: argparse.Namespace) -> Any:
    path = f"{account_path(args.account)}/keys"
    with AdminClient.from_args(args) as admin:
        key = admin.call("POST", path, body=options(args, _KEY_OPTIONS))
    if args.json:
        return key
    return (
        f"Created key {key.get('id')} for account {key.get('account_id')}:\n"
        f"{key.get('secret')}\n"
        "Store this secret now: it is shown only once and cannot be recovered."
    )


def _key_list(args: argparse.Namespace) -> Any:
    params = {"account": args.account} if args.account else None
    with AdminClient.from_args(args) as admin:
        keys = admin.items("/admin/keys", params=params)
    if args.json:
        return keys
    return table(keys, KEY, only=KEY_LIST, empty="no keys")


def _key_show(args: argparse.Namespace) -> Any:
    with AdminClient.from_args(args) as admin:
        key = admin.call("GET", key_path(args.key_id))
    return key if args.json else view(key, KEY)


def _key_update(args: argparse.Namespace) -> Any:
    body = options(args, _KEY_OPTIONS)
    if args.never_expires:
        body["expires"] = None
    if not body:
        raise nothing_to_update("key update")
    with AdminClient.from_args(args) as admin:
        key = admin.call("PATCH", key_path(args.key_id), body=body)
    return key if args.json else view(key, KEY)


def _key_revoke(args: argparse.Namespace) -> Any:
    with AdminClient.from_args(args) as admin:
        key = admin.call("POST", f"{key_path(args.key_id)}/revoke")
    return key if args.json else f"Revoked key {key.get('id')} ({key.get('masked')})."


def _add_key_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    parser.add_argument("--name", dest="label", required=not update, metavar="LABEL")
    parser.add_argument("--models", type=cli_types.name_list, metavar="A,B", help="'' = all models")
    parser.add_argument(
        "--endpoints",
        type=cli_types.name_list,
        metavar="KINDS",
        help="chat,embeddings,...; '' = all",
    )
    parser.add_argument(
        "--spend-cap", type=cli_types.usd_amount, metavar="USD", help="0 = unlimited"
    )
    parser.add_argument(
        "--price-multiplier",
        type=cli_types.multiplier,
        metavar="X",
        help="discount or markup, e.g. 0.8",
    )
    add_limit_options(parser)
    expiry = parser.add_mutually_exclusive_group()
    expiry.add_argument("--expires", type=cli_types.expiry, metavar="YYYY-MM-DD")
    if update:
        expiry.add_argument("--never-expires", action="store_true")


def add_key_commands(commands: SubParsers, add_config_option: AddConfigOption) -> None:
    """Add ``key`` and its subcommands to ``relay``'s parser."""
    key = add_group(commands, "key", "manage API keys")

    def leaf(name: str, help: str, handler: Handler, target: str | None) -> argparse.ArgumentParser:
        return add_leaf(key, name, help, handler, add_config_option, target=target)

    create = leaf("create", "create a key; prints its secret once", _key_create, "account")
    _add_key_options(create, update=False)
    listing = leaf("list", "list keys (of one account, or all)", _key_list, None)
    listing.add_argument("account", metavar="ACCOUNT", nargs="?", help="account name or id")
    leaf("show", "show a key", _key_show, "key")
    leaf("revoke", "revoke a key (final)", _key_revoke, "key")
    update = leaf("update", "change a key's models, caps or limits", _key_update, "key")
    _add_key_options(update, update=True)
