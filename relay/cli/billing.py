"""``relay invoice``: a postpaid account's monthly statement, printed and written to files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import msgspec

from relay.cli.client import AdminClient
from relay.cli.commands import AddConfigOption, SubParsers, account_path, add_url_option
from relay.cli.format import format_fields, format_table
from relay.money.invoices import Statement, month_bounds, render_csv, render_html
from relay.money.pricing import micros_to_usd

__all__ = ["add_billing_commands"]


def _month(text: str) -> str:
    try:
        month_bounds(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a month (YYYY-MM)") from None
    return text


def _write_files(statement: Statement, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"statement-{statement.account_name}-{statement.month}".replace("/", "_")
    html_path, csv_path = folder / f"{stem}.html", folder / f"{stem}.csv"
    html_path.write_text(render_html(statement), encoding="utf-8")
    csv_path.write_text(render_csv(statement), encoding="utf-8")
    return [html_path, csv_path]


def _summary(statement: Statement) -> str:
    fields = [
        ("account", f"{statement.account_name} ({statement.account_id})"),
        ("month", statement.month),
        ("mode", statement.mode),
        ("credit limit", micros_to_usd(statement.credit_limit_micros)),
        ("charges", micros_to_usd(statement.charges_micros)),
        ("top-ups", micros_to_usd(statement.credits_micros)),
        ("balance at month end", micros_to_usd(statement.closing_balance_micros)),
    ]
    rows = [
        [line.group, line.name, str(line.requests), micros_to_usd(line.cost_micros)]
        for line in statement.lines
    ]
    table = format_table(["BY", "NAME", "REQUESTS", "COST USD"], rows) if rows else "no usage"
    return f"{format_fields(fields)}\n\n{table}"


def _invoice(args: argparse.Namespace) -> Any:
    path = f"{account_path(args.account)}/statement"
    with AdminClient.from_args(args) as admin:
        answer = admin.call("GET", path, params={"month": args.month})
    statement = msgspec.convert(answer, Statement)
    written = _write_files(statement, Path(args.out))
    if args.json:
        return {**answer, "files": [str(p) for p in written]}
    files = "\n".join(f"wrote {p}" for p in written)
    return f"{_summary(statement)}\n\n{files}"


def add_billing_commands(commands: SubParsers, add_config_option: AddConfigOption) -> None:
    """Add ``invoice`` to ``relay``'s parser."""
    invoice = commands.add_parser(
        "invoice", help="an account's monthly statement (printable HTML and CSV)"
    )
    invoice.add_argument("account", metavar="ACCOUNT", help="account name or id")
    invoice.add_argument("--month", required=True, type=_month, metavar="YYYY-MM")
    invoice.add_argument("--out", default=".", metavar="DIR", help="where to write the files")
    add_config_option(invoice)
    add_url_option(invoice, help="the relay's base URL (default: from the config)")
    invoice.set_defaults(handler=_invoice)
