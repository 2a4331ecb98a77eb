"""``relay audit verify|list``: the audit trail, through the running server's admin API.

Like the other management commands they are clients (``AdminClient``) of
``/admin/audit``: the server holds the audit HMAC key and is the database's only
writer. ``verify`` exits 1 when the chain is broken, naming the first broken row.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from relay.cli import types as cli_types
from relay.cli.client import AdminClient, CommandError
from relay.cli.commands import AddConfigOption, Handler, SubParsers, add_url_option
from relay.cli.format import format_table

__all__ = ["add_audit_commands"]


def _audit_verify(args: argparse.Namespace) -> Any:
    with AdminClient.from_args(args) as admin:
        report = admin.call("GET", "/admin/audit/verify")
    if not report.get("ok"):
        if args.json:
            # The report goes to stdout for scripts; the one-line failure to stderr.
            print(json.dumps(report, indent=2, sort_keys=True))
        raise CommandError(
            f"audit chain broken at row {report.get('broken_at')}: {report.get('reason')}"
        )
    if args.json:
        return report
    rows = report.get("rows", 0)
    if not rows:
        return "audit chain intact: 0 rows"
    return (
        f"audit chain intact: {rows} rows (ids {report.get('first_id')}..{report.get('last_id')})"
    )


def _audit_list(args: argparse.Namespace) -> Any:
    params = {
        name: value
        for name, value in (
            ("limit", args.limit),
            ("before_id", args.before_id),
            ("action", args.filter_action),
            ("target", args.target),
        )
        if value is not None
    }
    with AdminClient.from_args(args) as admin:
        payload = admin.call("GET", "/admin/audit", params=params)
    rows: list[Mapping[str, Any]] = payload.get("data", []) if isinstance(payload, dict) else []
    if args.json:
        return rows
    if not rows:
        return "no audit rows"
    return format_table(
        ("ID", "TIME", "ACTOR", "ACTION", "TARGET"),
        (
            (
                str(row.get("id")),
                str(row.get("at") or row.get("ts_ms")),
                str(row.get("actor")),
                str(row.get("action")),
                str(row.get("target") or "-"),
            )
            for row in rows
        ),
    )


def add_audit_commands(commands: SubParsers, add_config_option: AddConfigOption) -> None:
    """Add ``audit verify`` and ``audit list`` to ``relay``'s parser."""
    audit = commands.add_parser("audit", help="check and read the audit trail")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")

    def leaf(name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help)
        add_config_option(parser)
        add_url_option(parser)
        parser.set_defaults(handler=handler)
        return parser

    leaf("verify", "check the audit hash chain; exit 1 at the first broken row", _audit_verify)
    listing = leaf("list", "audit rows, newest first", _audit_list)
    listing.add_argument("--limit", type=cli_types.positive, default=50, metavar="N")
    listing.add_argument(
        "--before-id", type=cli_types.positive, metavar="ID", help="older than this row"
    )
    # dest differs from "action": that name already holds the chosen subcommand.
    listing.add_argument("--action", dest="filter_action", metavar="ACTION", help="e.g. key.create")
    listing.add_argument("--target", metavar="ID", help="an account or key id")
