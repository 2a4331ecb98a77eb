"""``relay reload`` and ``relay upstream list|enable|disable``: live operations.

Clients of the running server's admin API like the other management commands. Pool keys
are named by provider and position (``openai 2`` is the second of its ``api_keys``),
never by value.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from relay.cli.client import AdminClient
from relay.cli.commands import AddConfigOption, SubParsers
from relay.cli.format import format_table
from relay.cli.types import positive

__all__ = [
    "add_operation_commands",
    "reload_command",
    "upstream_list_command",
    "upstream_set_command",
]


def _call(args: argparse.Namespace, method: str, path: str) -> Any:
    with AdminClient.from_args(args) as admin:
        return admin.call(method, path)


def reload_command(args: argparse.Namespace) -> Any:
    """Ask the server to re-read its config file (like SIGHUP, but answering what changed)."""
    outcome = _call(args, "POST", "/admin/reload")
    if args.json:
        return outcome
    lines = [f"Reloaded: {len(outcome.get('models', []))} models."]
    for label, field in (
        ("added models", "added_models"),
        ("removed models", "removed_models"),
        ("providers rebuilt", "providers_rebuilt"),
    ):
        if outcome.get(field):
            lines.append(f"{label}: {', '.join(outcome[field])}")
    if outcome.get("restart_required"):
        lines.append(f"restart to apply: {', '.join(outcome['restart_required'])}")
    return "\n".join(lines)


def upstream_list_command(args: argparse.Namespace) -> Any:
    keys = _call(args, "GET", "/admin/upstreams").get("data", [])
    if args.json:
        return keys
    rows = [
        [
            str(k.get("provider")),
            str(k.get("key")),
            "disabled" if k.get("disabled") else "cooling" if k.get("cooling_down_s") else "ok",
            str(k.get("in_flight")),
            str(k.get("disabled") or ""),
        ]
        for k in keys
    ]
    if not rows:
        return "no upstream keys"
    return format_table(["PROVIDER", "KEY", "STATE", "IN FLIGHT", "WHY"], rows)


def upstream_set_command(action: str) -> Any:
    def handler(args: argparse.Namespace) -> Any:
        path = f"/admin/upstreams/{quote(args.provider, safe='')}/keys/{args.position}/{action}"
        key = _call(args, "POST", path)
        return key if args.json else f"{args.provider} key #{args.position} {action}d."

    return handler


def add_operation_commands(commands: SubParsers, add_config_option: AddConfigOption) -> None:
    def with_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_config_option(parser)
        parser.add_argument("--url", help="the relay's base URL (default: from the config)")
        return parser

    reload = with_common(
        commands.add_parser("reload", help="re-read the config file without a restart")
    )
    reload.set_defaults(handler=reload_command)

    upstream = commands.add_parser("upstream", help="show and control upstream pool keys")
    actions = upstream.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = with_common(actions.add_parser("list", help="every pool key and its health"))
    listing.set_defaults(handler=upstream_list_command)
    for action, help in (
        ("enable", "put a key back in rotation (clears a rejection or cool-down)"),
        ("disable", "take a key out of rotation"),
    ):
        parser = with_common(actions.add_parser(action, help=help))
        parser.add_argument("provider", metavar="PROVIDER")
        parser.add_argument("position", type=positive, metavar="N", help="1 = the first key")
        parser.set_defaults(handler=upstream_set_command(action))
