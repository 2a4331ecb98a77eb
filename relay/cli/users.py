"""``relay user create EMAIL``: make a console user (the first operator, or a team member).

Like the other management commands it is a client of the running server's admin API
(``POST /admin/users``), never a writer of the database. The password is prompted for
(twice, not echoed) or read from the first line of stdin with ``--password-stdin``; it
never appears in the process's arguments.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from relay.cli.client import AdminClient, CommandError
from relay.cli.commands import AddConfigOption, SubParsers, add_url_option

__all__ = ["ROLES", "add_user_commands"]

ROLES = ("owner", "admin", "member", "viewer")


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise CommandError("the two passwords differ")
    if not password:
        raise CommandError("the password must not be empty")
    return password


def _user_create(args: argparse.Namespace) -> Any:
    if not args.operator and not args.account:
        raise CommandError("give --operator, or --account ACCOUNT (with --role)")
    body: dict[str, Any] = {
        "email": args.email,
        "password": _read_password(args),
        "display_name": args.name or "",
        "operator": args.operator,
    }
    if args.account:
        body["account"], body["role"] = args.account, args.role
    with AdminClient.from_args(args) as admin:
        user = admin.call("POST", "/admin/users", body=body)
    if args.json:
        return user
    kind = "operator" if user.get("operator") else "user"
    where = "".join(
        f"\n  {m.get('role')} of {m.get('account') or m.get('account_id')}"
        for m in user.get("memberships", [])
    )
    return f"Created {kind} {user.get('email')} ({user.get('id')}).{where}\nSign in at /console/."


def add_user_commands(commands: SubParsers, add_config_option: AddConfigOption) -> None:
    """Add ``user create`` to ``relay``'s parser."""
    user = commands.add_parser("user", help="manage console users (through the running server)")
    actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a console user or operator")
    create.add_argument("email", metavar="EMAIL")
    create.add_argument("--name", metavar="NAME", help="display name (default: from the email)")
    create.add_argument("--operator", action="store_true", help="a site operator (all accounts)")
    create.add_argument("--account", metavar="ACCOUNT", help="account name or id to join")
    create.add_argument("--role", choices=ROLES, default="owner", help="role in --account")
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    add_url_option(create, help="the relay's base URL (default: from the config)")
    add_config_option(create)
    create.set_defaults(handler=_user_create)
