"""``relay user create EMAIL``: make a console user (the first operator, or a team member).

Like the other management commands it is a client of the running server's admin API
(``POST /admin/users``), never a writer of the database. The password is prompted for
(twice, not echoed) or read from the first line of stdin with ``--password-stdin``; it
never appears in the process's arguments.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from typing import Any, TypeAlias

import httpx

from relay.cli.admin import TIMEOUT_S, admin_url
from relay.config import load_config

__all__ = ["add_user_commands"]

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
AddConfigOption: TypeAlias = Callable[[argparse.ArgumentParser], None]
ROLES = ("owner", "admin", "member", "viewer")


def _command_error(message: str) -> Exception:
    from relay.cli.entry import CommandError  # late: relay.cli imports this module

    return CommandError(message)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise _command_error("the two passwords differ")
    if not password:
        raise _command_error("the password must not be empty")
    return password


def _post(args: argparse.Namespace, path: str, body: dict[str, Any]) -> Any:
    server = load_config(args.config).server
    token = os.environ.get(server.admin_token_env, "")
    if not token:
        raise _command_error(f"set {server.admin_token_env} to the admin token")
    url = (args.url or admin_url(server)).rstrip("/")
    try:
        response = httpx.post(
            url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT_S
        )
    except httpx.ConnectError:
        raise _command_error(f"cannot reach relay at {url}: is `relay serve` running?") from None
    except httpx.HTTPError as exc:
        raise _command_error(f"request to relay at {url} failed: {type(exc).__name__}") from None
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.is_success and isinstance(payload, dict):
        return payload
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    raise _command_error(
        " ".join(str(message).split()) if message else f"HTTP {response.status_code}"
    )


def _user_create(args: argparse.Namespace) -> Any:
    if not args.operator and not args.account:
        raise _command_error("give --operator, or --account ACCOUNT (with --role)")
    body: dict[str, Any] = {
        "email": args.email,
        "password": _read_password(args),
        "display_name": args.name or "",
        "operator": args.operator,
    }
    if args.account:
        body["account"], body["role"] = args.account, args.role
    user = _post(args, "/admin/users", body)
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
    create.add_argument("--url", help="the relay's base URL (default: from the config)")
    add_config_option(create)
    create.set_defaults(handler=_user_create)
