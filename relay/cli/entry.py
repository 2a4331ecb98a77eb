"""The ``relay`` command line.

``serve`` and ``check-config`` work on the config file directly. Management commands
are clients of the running server's admin API (``relay.cli.client``), so the
server's in-memory state is never stale. A failing command prints one line on stderr
and exits non-zero; ``--json`` gives machine-readable output.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import httpx
import msgspec

from relay.cli.accounts import add_account_commands
from relay.cli.audit import add_audit_commands
from relay.cli.billing import add_billing_commands
from relay.cli.client import CommandError
from relay.cli.commands import Handler
from relay.cli.data_rights import add_data_rights_commands
from relay.cli.keys import add_key_commands
from relay.cli.migrate import add_migrate_commands
from relay.cli.operations import add_operation_commands
from relay.cli.usage import add_usage_commands
from relay.cli.users import add_user_commands
from relay.cli.wallet import add_wallet_commands
from relay.config import Config, load_config, redact_url
from relay.errors import ConfigError
from relay.identity.admin_token import admin_token_from_env
from relay.process_memory import collector_paused

__all__ = ["CommandError", "add_config_option", "build_parser", "main"]


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``-c/--config`` and ``--json``: every command takes both."""
    parser.add_argument(
        "-c", "--config", default="relay.toml", help="config file (default: relay.toml)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _store_of(config: Config) -> str:
    """Where money and records live, with any password in a URL redacted."""
    if config.storage is not None and config.cluster is not None:
        return f"cluster: {redact_url(config.storage.url)} + {redact_url(config.cluster.redis_url)}"
    return f"database {config.database_path}"


def _check_config(args: argparse.Namespace) -> Any:
    config = load_config(args.config)
    summary: dict[str, Any] = {
        "ok": True,
        "config": args.config,
        "database": str(config.database_path),
        "store": "cluster" if config.cluster_mode else "embedded",
        "providers": [p.name for p in config.providers],
        "models": [m.name for m in config.models],
    }
    if config.storage is not None and config.cluster is not None:
        summary["storage_url"] = redact_url(config.storage.url)
        summary["redis_url"] = redact_url(config.cluster.redis_url)
    if args.json:
        return summary
    return (
        f"{args.config}: OK ({len(config.providers)} providers, {len(config.models)} models; "
        f"{_store_of(config)})"
    )


def _serve(args: argparse.Namespace) -> Any:
    config = load_config(args.config)
    if args.listen:
        try:
            server = msgspec.structs.replace(config.server, listen=args.listen)
        except ValueError as exc:
            raise CommandError(f"--listen: {exc}") from None
        config = msgspec.structs.replace(config, server=server)
    admin_token_from_env(config.server.admin_token_env)  # a short token: refuse before binding
    _configure_logging(config)
    with collector_paused():
        from relay.server import run_server  # imported late: check-config needs no server stack

    run_server(config)
    return None


def _configure_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosqlite logs every statement with its parameters at DEBUG: never let it.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay", description="relay: a self-hosted, single-process LLM API gateway"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway")
    add_config_option(serve)
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="override [server] listen (N cluster instances on one box share one config)",
    )
    serve.set_defaults(handler=_serve)

    check = commands.add_parser("check-config", help="validate a config file and exit")
    add_config_option(check)
    check.set_defaults(handler=_check_config)

    # Management commands: clients of the running server's admin API, in `relay --help` order.
    for add_commands in (
        add_account_commands,
        add_key_commands,
        add_wallet_commands,
        add_billing_commands,
        add_usage_commands,
        add_audit_commands,
        add_user_commands,
        add_data_rights_commands,
        add_operation_commands,
        add_migrate_commands,
    ):
        add_commands(commands, add_config_option)
    return parser


def _print(result: Any, as_json: bool) -> None:
    if result is None:
        return
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(result)


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Run one ``relay`` command; its exit status.

    ``transport`` is the admin API's network (default: the real one); tests pass an
    ``httpx.MockTransport``. It rides on the parsed arguments to ``AdminClient.from_args``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.transport = transport
    handler: Handler = args.handler
    try:
        result = handler(args)
    except (ConfigError, CommandError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    _print(result, getattr(args, "json", False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
