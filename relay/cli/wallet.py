"""``relay wallet credit|show|ledger``: top up an account and read its balance and ledger.

Clients of ``/admin/accounts/ACCOUNT/{credits,wallet,ledger}`` (through ``AdminClient``).
A credit is idempotent on its ``--reference``: a retried command changes nothing.
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
    present,
)
from relay.cli.format import LEDGER, WALLET, table, view
from relay.money.pricing import micros_to_usd, usd_to_micros

__all__ = ["add_wallet_commands"]


def _wallet_credit(args: argparse.Namespace) -> Any:
    body = present({"amount_usd": args.amount, "reference": args.reference, "note": args.note})
    with AdminClient.from_args(args) as admin:
        answer = admin.call("POST", f"{account_path(args.account)}/credits", body=body)
    if args.json:
        return answer
    amount = micros_to_usd(usd_to_micros(args.amount))
    if answer.get("credited"):
        headline = f"Credited {amount} USD to {args.account} (reference {args.reference})."
    else:
        headline = f"Already credited: reference {args.reference} was used before; nothing changed."
    return f"{headline}\n\n{view(answer.get('wallet') or {}, WALLET)}"


def _wallet_show(args: argparse.Namespace) -> Any:
    with AdminClient.from_args(args) as admin:
        wallet = admin.call("GET", f"{account_path(args.account)}/wallet")
    return wallet if args.json else view(wallet, WALLET)


def _wallet_ledger(args: argparse.Namespace) -> Any:
    params = present({"limit": args.limit, "before_id": args.before_id})
    with AdminClient.from_args(args) as admin:
        entries = admin.items(f"{account_path(args.account)}/ledger", params=params)
    return entries if args.json else table(entries, LEDGER, empty="no ledger entries")


def add_wallet_commands(commands: SubParsers, add_config_option: AddConfigOption) -> None:
    """Add ``wallet`` and its subcommands to ``relay``'s parser."""
    wallet = add_group(commands, "wallet", "credit accounts and read balances")

    def leaf(name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
        return add_leaf(wallet, name, help, handler, add_config_option, target="account")

    credit = leaf("credit", "add credit (idempotent on --reference)", _wallet_credit)
    credit.add_argument("amount", type=cli_types.usd_amount, metavar="USD")
    credit.add_argument("--reference", required=True, metavar="REF", help="e.g. an invoice id")
    credit.add_argument("--note", metavar="TEXT")
    leaf("show", "show an account's balance", _wallet_show)
    ledger = leaf("ledger", "an account's ledger, newest first", _wallet_ledger)
    ledger.add_argument("--limit", type=cli_types.positive, default=100, metavar="N")
    ledger.add_argument(
        "--before-id", type=cli_types.positive, metavar="ID", help="older than this entry"
    )
