"""``relay usage summary|export`` and ``relay archives list|download``: admin API clients.

Like the other management commands they go through ``AdminClient``, never the database.
Exports and archive downloads are streamed to a file or stdout as they arrive, with a
progress line on stderr when it is a terminal; a download is checked against the
SHA-256 the server recorded for the archive.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import IO, Any, BinaryIO

import httpx

from relay.cli.client import AdminClient, CommandError
from relay.cli.commands import AddConfigOption, SubParsers, add_url_option, segment
from relay.cli.format import format_table
from relay.money.pricing import micros_to_usd

__all__ = ["Progress", "add_usage_commands"]


# --- streaming from the admin API ----------------------------------------------------------


@contextlib.contextmanager
def _stream(
    args: argparse.Namespace, path: str, params: Mapping[str, str] | None = None
) -> Iterator[httpx.Response]:
    """A streamed GET from the server the command's config names."""
    with AdminClient.from_args(args) as admin, admin.stream(path, params) as response:
        yield response


class Progress:
    """A ``\\r``-rewritten status line on a terminal; silent when ``stream`` is not one."""

    def __init__(self, stream: IO[str], unit: str, total: int | None) -> None:
        self._stream = stream
        self._enabled = stream.isatty()
        self._unit = unit
        self._total = total
        self._last = 0.0

    def update(self, done: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self._enabled or (not force and now - self._last < 0.2):
            return
        self._last = now
        of = f" of {self._total:,}" if self._total is not None else ""
        self._stream.write(f"\r{done:,}{of} {self._unit}")
        self._stream.flush()

    def finish(self, done: int) -> None:
        self.update(done, force=True)
        if self._enabled:
            self._stream.write("\n")
            self._stream.flush()


@contextlib.contextmanager
def _output(target: str | None) -> Iterator[BinaryIO]:
    """stdout, or ``target`` written as ``target.part`` and renamed once complete."""
    if target is None or target == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    partial = Path(target + ".part")
    try:
        with partial.open("wb") as out:
            yield out
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _header_int(response: httpx.Response, name: str) -> int | None:
    value = response.headers.get(name, "")
    return int(value) if value.isdigit() else None


# --- commands ------------------------------------------------------------------------------


def _usage_summary(args: argparse.Namespace) -> Any:
    params = {
        name: value
        for name, value in {
            "account": args.account,
            "key": args.key,
            "model": args.model,
            "by": args.by,
            "since": args.since,
            "until": args.until,
        }.items()
        if value is not None
    }
    with AdminClient.from_args(args) as admin:
        answer = admin.call("GET", "/admin/usage/summary", params=params)
    if args.json:
        return answer
    groups = answer.get("data") or []
    if not groups:
        return f"no usage from {answer.get('since')} to {answer.get('until')}"
    return format_table(
        [str(answer.get("by", "group")).upper(), "REQUESTS", "TOKENS IN", "TOKENS OUT"]
        + ["COST USD", "ERRORS", "P50 MS", "P95 MS"],
        (_summary_row(group) for group in groups),
    )


def _summary_row(group: Mapping[str, Any]) -> list[str]:
    def number(name: str) -> str:
        value = group.get(name)
        return "-" if value is None else f"{value:,}"

    return [
        str(group.get("group") or "-"),
        number("requests"),
        number("prompt_tokens"),
        number("completion_tokens"),
        micros_to_usd(int(group.get("cost_micros") or 0)),
        f"{float(group.get('error_rate') or 0) * 100:.1f}%",
        number("p50_latency_ms"),
        number("p95_latency_ms"),
    ]


def _usage_export(args: argparse.Namespace) -> Any:
    params = {"month": args.month, "format": args.format}
    if args.account:
        params["account"] = args.account
    lines = 0
    with _stream(args, "/admin/usage/export", params) as response, _output(args.output) as out:
        progress = Progress(sys.stderr, "rows", _header_int(response, "x-relay-rows"))
        for chunk in response.iter_bytes():
            out.write(chunk)
            lines += chunk.count(b"\n")
            progress.update(lines)
        rows = lines - 1 if args.format == "csv" and lines else lines
        progress.finish(rows)
    if args.output in (None, "-"):
        return None  # stdout holds the data; nothing else may go there
    if args.json:
        return {"month": args.month, "rows": rows, "file": args.output, "format": args.format}
    return f"Exported {rows} usage rows of {args.month} to {args.output}."


def _archives_list(args: argparse.Namespace) -> Any:
    params = {
        name: value
        for name, value in {"kind": args.kind, "account": args.account, "month": args.month}.items()
        if value
    }
    with AdminClient.from_args(args) as admin:
        answer = admin.call("GET", "/admin/archives", params=params)
    archives = answer.get("data") or []
    if args.json:
        return archives
    if not archives:
        return "no archives"
    return format_table(
        ["NAME", "KIND", "ACCOUNT", "MONTH", "ROWS", "BYTES", "SHA256", "CREATED"],
        (
            [
                str(item.get("name")),
                str(item.get("kind")),
                str(item.get("account") or "-"),
                str(item.get("month")),
                f"{item.get('rows', 0):,}",
                f"{item.get('bytes', 0):,}",
                str(item.get("sha256", ""))[:16],
                str(item.get("created") or "-"),
            ]
            for item in archives
        ),
    )


def _archives_download(args: argparse.Namespace) -> Any:
    target = args.output or args.name
    digest = hashlib.sha256()
    size = 0
    path = f"/admin/archives/{segment(args.name)}"
    with _stream(args, path) as response, _output(target) as out:
        expected = response.headers.get("x-relay-sha256", "")
        progress = Progress(sys.stderr, "bytes", _header_int(response, "content-length"))
        for chunk in response.iter_bytes():
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            progress.update(size)
        progress.finish(size)
        if digest.hexdigest() != expected:
            # Raised inside _output: the partial file is removed, never renamed into place.
            raise CommandError(
                f"checksum mismatch for {args.name}: got {digest.hexdigest()}, "
                f"the server recorded {expected or 'none'}"
            )
    if target == "-":
        return None
    if args.json:
        return {"name": args.name, "file": target, "bytes": size, "sha256": expected}
    return f"Downloaded {args.name} to {target} ({size:,} bytes, SHA-256 verified)."


# --- argument parsing ----------------------------------------------------------------------


def _day(text: str) -> str:
    try:
        date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None
    return text


def _month(text: str) -> str:
    try:
        date.fromisoformat(text + "-01")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a month (YYYY-MM)") from None
    return text


def add_usage_commands(commands: SubParsers, add_config_option: AddConfigOption) -> None:
    """Add ``usage`` (summary, export) and ``archives`` (list, download) to ``relay``."""

    def leaf(actions: SubParsers, name: str, help: str, handler: Any) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help)
        add_config_option(parser)
        add_url_option(parser)
        parser.set_defaults(handler=handler)
        return parser

    usage = commands.add_parser("usage", help="usage summaries and monthly exports")
    usage_actions = usage.add_subparsers(dest="action", required=True, metavar="ACTION")
    summary = leaf(usage_actions, "summary", "requests, tokens, cost, errors", _usage_summary)
    summary.add_argument("--account", metavar="ACCOUNT", help="account name or id")
    summary.add_argument("--key", metavar="KEY_ID")
    summary.add_argument("--model", metavar="MODEL")
    summary.add_argument("--by", choices=["day", "model", "key", "account"], default="day")
    summary.add_argument("--since", type=_day, metavar="YYYY-MM-DD", help="default: 30 days ago")
    summary.add_argument(
        "--until", type=_day, metavar="YYYY-MM-DD", help="inclusive; default today"
    )
    export = leaf(usage_actions, "export", "one month of usage rows", _usage_export)
    export.add_argument("--month", type=_month, required=True, metavar="YYYY-MM")
    export.add_argument("--account", metavar="ACCOUNT", help="account name or id")
    export.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    export.add_argument("-o", "--output", metavar="FILE", help="default: stdout")

    archives = commands.add_parser("archives", help="usage and audit archives (> 90 days)")
    archive_actions = archives.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = leaf(archive_actions, "list", "list archive files", _archives_list)
    listing.add_argument("--kind", choices=["usage", "audit"])
    listing.add_argument("--account", metavar="ACCOUNT", help="account name or id")
    listing.add_argument("--month", type=_month, metavar="YYYY-MM")
    download = leaf(archive_actions, "download", "download and verify one file", _archives_download)
    download.add_argument("name", metavar="NAME")
    download.add_argument("-o", "--output", metavar="FILE", help="default: NAME; '-' = stdout")
