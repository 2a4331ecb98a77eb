"""Management commands (``relay account|key|wallet ...``): clients of the admin API.

They never open the database: the running server owns the state, so every change goes
through ``/admin/...`` (docs/admin-api.md) with the bearer admin token read from the
environment variable the config names. Money goes out as decimal USD strings and is
shown as decimal USD; ``--json`` prints the server's objects as they came back.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias
from urllib.parse import quote

import httpx

from relay.cli import types as cli_types
from relay.cli.format import (
    ACCOUNT,
    ACCOUNT_LIST,
    KEY,
    KEY_LIST,
    LEDGER,
    WALLET,
    table,
    view,
)
from relay.config import ServerConfig, load_config
from relay.money.pricing import micros_to_usd, usd_to_micros

__all__ = ["TIMEOUT_S", "add_admin_commands", "admin_request", "admin_url"]

TIMEOUT_S = 10.0

Handler: TypeAlias = Callable[[argparse.Namespace], Any]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
AddConfigOption: TypeAlias = Callable[[argparse.ArgumentParser], None]


def _command_error(message: str) -> Exception:
    # Imported late: relay.cli.entry imports this module to build its parser.
    from relay.cli.entry import CommandError

    return CommandError(message)


# --- talking to the server ---------------------------------------------------------------


def admin_url(server: ServerConfig) -> str:
    """The base URL of the server the config describes; a wildcard listen means this host."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(server.host, server.host)
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if server.tls_cert else "http"
    return f"{scheme}://{host}:{server.port}"


def _admin_token(server: ServerConfig) -> str:
    token = os.environ.get(server.admin_token_env, "")
    if not token:
        raise _command_error(
            f"set {server.admin_token_env} to the admin token "
            "(the variable the config's [server] admin_token_env names)"
        )
    return token


def _transport() -> httpx.BaseTransport:
    """The real network; tests replace this function with one giving an httpx.MockTransport."""
    return httpx.HTTPTransport()


def _request(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    body: Mapping[str, Any] | None = None,
    params: Mapping[str, str | int] | None = None,
) -> Any:
    """One admin API call; any failure becomes a one-line CommandError without the token."""
    server = load_config(args.config).server
    url = (args.url or admin_url(server)).rstrip("/")
    headers = {"Authorization": f"Bearer {_admin_token(server)}"}
    with httpx.Client(
        base_url=url, headers=headers, timeout=TIMEOUT_S, transport=_transport()
    ) as client:
        try:
            response = client.request(method, path, json=body, params=params)
        except httpx.ConnectError:
            raise _command_error(
                f"cannot reach relay at {url}: is `relay serve` running?"
            ) from None
        except httpx.TimeoutException:
            raise _command_error(f"relay at {url} did not answer within {TIMEOUT_S:g} s") from None
        except httpx.HTTPError as exc:
            raise _command_error(f"request to relay at {url} failed: {exc}") from None
    return _answer(response)


def admin_request(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    body: Mapping[str, Any] | None = None,
) -> Any:
    """One admin API call for commands in other modules (same errors as the ones here)."""
    return _request(args, method, path, body=body)


def _answer(response: httpx.Response) -> Any:
    try:
        payload = response.json()
    except ValueError:  # not JSON at all: a proxy's error page, or not a relay
        payload = None
    if response.is_success:
        if payload is None:
            raise _command_error(f"unexpected answer from relay (HTTP {response.status_code})")
        return payload
    raise _command_error(_error_message(response.status_code, payload))


def _error_message(status: int, payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message.strip():
        return " ".join(message.split())  # the contract is one line on stderr
    return f"relay answered HTTP {status}"


def _segment(value: str) -> str:
    """An account name or key id as one path segment (names may hold spaces or slashes)."""
    return quote(value, safe="")


def _present(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Only the optional values the user gave."""
    return {name: value for name, value in fields.items() if value is not None}


def _items(payload: Any) -> list[Mapping[str, Any]]:
    """The ``data`` array of a list answer."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise _command_error("unexpected answer from relay: no data list")
    return data


# --- commands ----------------------------------------------------------------------------

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


def _options(args: argparse.Namespace, names: Mapping[str, str]) -> dict[str, Any]:
    # Options left out stay out of the body, so a PATCH never resets them.
    return {
        **_present({field: getattr(args, dest, None) for dest, field in names.items()}),
        **_budget_fields(args),
    }


def _budget_fields(args: argparse.Namespace) -> dict[str, Any]:
    """``--budget-period day|week|month|lifetime`` (lifetime = JSON null: no period) and the
    account's ``--budget USD``; absent options stay out of the body."""
    fields: dict[str, Any] = {}
    period = getattr(args, "budget_period", None)
    if period is not None:
        fields["budget_period"] = None if period == "lifetime" else period
    budget = getattr(args, "budget", None)
    if budget is not None:
        fields["budget_usd"] = budget
    return fields


def _add_budget_options(parser: argparse.ArgumentParser, *, account: bool) -> None:
    """Budgets that reset on calendar boundaries (UTC; anchors in [budgets])."""
    if account:
        parser.add_argument(
            "--budget",
            type=cli_types.usd_amount,
            metavar="USD",
            help="account-wide spend budget beside the balance (0 = none)",
        )
    parser.add_argument(
        "--budget-period",
        choices=("day", "week", "month", "lifetime"),
        help=(
            "reset the "
            + ("budget" if account else "spend cap")
            + " each calendar day/week/month (UTC); lifetime = never"
        ),
    )


def _account_path(args: argparse.Namespace) -> str:
    return f"/admin/accounts/{_segment(args.account)}"


def _key_path(args: argparse.Namespace) -> str:
    return f"/admin/keys/{_segment(args.key_id)}"


def _nothing_to_update(command: str) -> Exception:
    return _command_error(f"nothing to update: give at least one option (relay {command} --help)")


def _account_create(args: argparse.Namespace) -> Any:
    body = {"name": args.name, **_options(args, _ACCOUNT_OPTIONS)}
    account = _request(args, "POST", "/admin/accounts", body=body)
    path = f"/admin/accounts/{_segment(account['id'])}"
    credit = key = None
    if args.credit:
        # A fixed reference keeps the first top-up idempotent if the command is retried.
        body = {"amount_usd": args.credit, "reference": f"initial-credit-{account['id']}"}
        credit = _request(args, "POST", f"{path}/credits", body=body)
    if args.key:
        key = _request(args, "POST", f"{path}/keys", body={"name": args.key})
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
    accounts = _items(_request(args, "GET", "/admin/accounts"))
    if args.json:
        return accounts
    return table(accounts, ACCOUNT, only=ACCOUNT_LIST, empty="no accounts")


def _account_show(args: argparse.Namespace) -> Any:
    account = _request(args, "GET", _account_path(args))
    return account if args.json else view(account, ACCOUNT)


def _account_update(args: argparse.Namespace) -> Any:
    body = _options(args, _ACCOUNT_OPTIONS)
    if not body:
        raise _nothing_to_update("account update")
    account = _request(args, "PATCH", _account_path(args), body=body)
    return account if args.json else view(account, ACCOUNT)


def _set_account_status(status: str) -> Handler:
    def handler(args: argparse.Namespace) -> Any:
        account = _request(args, "PATCH", _account_path(args), body={"status": status})
        return account if args.json else f"Account {account.get('name')} is {status}."

    return handler


def _key_create(args: argparse.Namespace) -> Any:
    path = f"{_account_path(args)}/keys"
    key = _request(args, "POST", path, body=_options(args, _KEY_OPTIONS))
    if args.json:
        return key
    return (
        f"Created key {key.get('id')} for account {key.get('account_id')}:\n"
        f"{key.get('secret')}\n"
        "Store this secret now: it is shown only once and cannot be recovered."
    )


def _key_list(args: argparse.Namespace) -> Any:
    params = {"account": args.account} if args.account else None
    keys = _items(_request(args, "GET", "/admin/keys", params=params))
    if args.json:
        return keys
    return table(keys, KEY, only=KEY_LIST, empty="no keys")


def _key_show(args: argparse.Namespace) -> Any:
    key = _request(args, "GET", _key_path(args))
    return key if args.json else view(key, KEY)


def _key_update(args: argparse.Namespace) -> Any:
    body = _options(args, _KEY_OPTIONS)
    if args.never_expires:
        body["expires"] = None
    if not body:
        raise _nothing_to_update("key update")
    key = _request(args, "PATCH", _key_path(args), body=body)
    return key if args.json else view(key, KEY)


def _key_revoke(args: argparse.Namespace) -> Any:
    key = _request(args, "POST", f"{_key_path(args)}/revoke")
    return key if args.json else f"Revoked key {key.get('id')} ({key.get('masked')})."


def _wallet_credit(args: argparse.Namespace) -> Any:
    body = _present({"amount_usd": args.amount, "reference": args.reference, "note": args.note})
    answer = _request(args, "POST", f"{_account_path(args)}/credits", body=body)
    if args.json:
        return answer
    amount = micros_to_usd(usd_to_micros(args.amount))
    if answer.get("credited"):
        headline = f"Credited {amount} USD to {args.account} (reference {args.reference})."
    else:
        headline = f"Already credited: reference {args.reference} was used before; nothing changed."
    return f"{headline}\n\n{view(answer.get('wallet') or {}, WALLET)}"


def _wallet_show(args: argparse.Namespace) -> Any:
    wallet = _request(args, "GET", f"{_account_path(args)}/wallet")
    return wallet if args.json else view(wallet, WALLET)


def _wallet_ledger(args: argparse.Namespace) -> Any:
    params = _present({"limit": args.limit, "before_id": args.before_id})
    entries = _items(_request(args, "GET", f"{_account_path(args)}/ledger", params=params))
    return entries if args.json else table(entries, LEDGER, empty="no ledger entries")


# --- argument parsing --------------------------------------------------------------------


def _add_limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rpm", type=cli_types.count, metavar="N", help="requests per minute (0 = unlimited)"
    )
    parser.add_argument(
        "--tpm", type=cli_types.count, metavar="N", help="tokens per minute (0 = unlimited)"
    )
    parser.add_argument(
        "--concurrency", type=cli_types.count, metavar="N", help="requests in flight at once"
    )


def _add_account_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--postpaid", dest="mode", action="store_const", const="postpaid")
    mode.add_argument("--prepaid", dest="mode", action="store_const", const="prepaid")
    parser.add_argument(
        "--credit-limit", type=cli_types.usd_amount, metavar="USD", help="postpaid only"
    )
    parser.add_argument("--price-multiplier", type=cli_types.multiplier, metavar="X")
    _add_limit_options(parser)
    _add_budget_options(parser, account=True)
    if update:
        parser.add_argument("--name", dest="new_name", metavar="NAME", help="rename the account")


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
    _add_limit_options(parser)
    _add_budget_options(parser, account=False)
    expiry = parser.add_mutually_exclusive_group()
    expiry.add_argument("--expires", type=cli_types.expiry, metavar="YYYY-MM-DD")
    if update:
        expiry.add_argument("--never-expires", action="store_true")


def add_admin_commands(commands: SubParsers, add_config_option: AddConfigOption) -> None:
    """Add ``account``, ``key`` and ``wallet`` with their subcommands to ``relay``'s parser."""

    def group(name: str, help: str) -> SubParsers:
        parser = commands.add_parser(name, help=help)
        return parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def leaf(
        actions: SubParsers, name: str, help: str, handler: Handler, target: str | None
    ) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help)
        if target == "account":
            parser.add_argument("account", metavar="ACCOUNT", help="account name or id")
        elif target == "key":
            parser.add_argument("key_id", metavar="KEY_ID", help="the key's public id")
        add_config_option(parser)
        parser.add_argument(
            "--url", help="the relay's base URL (default: from the config's server.listen)"
        )
        parser.set_defaults(handler=handler)
        return parser

    account = group("account", "manage accounts (through the running server)")
    create = leaf(account, "create", "create an account", _account_create, None)
    create.add_argument("name", metavar="NAME")
    _add_account_options(create, update=False)
    create.add_argument(
        "--credit", type=cli_types.usd_amount, metavar="USD", help="also credit this much at once"
    )
    create.add_argument("--key", metavar="LABEL", help="also create a key with this label")
    leaf(account, "list", "list accounts", _account_list, None)
    leaf(account, "show", "show an account and its balance", _account_show, "account")
    suspend = _set_account_status("suspended")
    leaf(account, "suspend", "refuse the account's requests", suspend, "account")
    activate = _set_account_status("active")
    leaf(account, "activate", "serve the account's requests again", activate, "account")
    update = leaf(account, "update", "change an account's settings", _account_update, "account")
    _add_account_options(update, update=True)
    from relay.cli import data_rights as cli_payments  # late: it builds on this module

    export = leaf(
        account,
        "export",
        "download the account's data (zip)",
        cli_payments.export_command,
        "account",
    )
    export.add_argument("--out", metavar="FILE")
    delete = leaf(
        account,
        "delete",
        "suspend now, erase personal data in 30 days",
        cli_payments.erase_command,
        "account",
    )
    delete.add_argument("--yes", action="store_true", help="confirm")

    key = group("key", "manage API keys")
    create = leaf(key, "create", "create a key; prints its secret once", _key_create, "account")
    _add_key_options(create, update=False)
    listing = leaf(key, "list", "list keys (of one account, or all)", _key_list, None)
    listing.add_argument("account", metavar="ACCOUNT", nargs="?", help="account name or id")
    leaf(key, "show", "show a key", _key_show, "key")
    leaf(key, "revoke", "revoke a key (final)", _key_revoke, "key")
    update = leaf(key, "update", "change a key's models, caps or limits", _key_update, "key")
    _add_key_options(update, update=True)

    wallet = group("wallet", "credit accounts and read balances")
    credit = leaf(
        wallet, "credit", "add credit (idempotent on --reference)", _wallet_credit, "account"
    )
    credit.add_argument("amount", type=cli_types.usd_amount, metavar="USD")
    credit.add_argument("--reference", required=True, metavar="REF", help="e.g. an invoice id")
    credit.add_argument("--note", metavar="TEXT")
    leaf(wallet, "show", "show an account's balance", _wallet_show, "account")
    ledger = leaf(wallet, "ledger", "an account's ledger, newest first", _wallet_ledger, "account")
    ledger.add_argument("--limit", type=cli_types.positive, default=100, metavar="N")
    ledger.add_argument(
        "--before-id", type=cli_types.positive, metavar="ID", help="older than this entry"
    )
