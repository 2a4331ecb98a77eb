"""``relay migrate --to postgresql://…``: copy the embedded database into PostgreSQL.

Unlike the management commands this one works on the files directly, so the relay that
owns the database must be stopped: a running relay would keep writing after the copy's
snapshot. It is refused when something answers on the config's listen address or when
the database's ``-wal`` file exists (SQLite removes it when the last connection closes
cleanly; a relay killed uncleanly leaves it: start and stop relay once). The copy, its
rule (one transaction, verified before commit) and the checks are in
``relay.cluster.pg_copy`` and ``relay.cluster.pg_verify``; docs/scaling.md §6 gives the
procedure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sqlite3
from pathlib import Path
from typing import Any

import msgspec

from relay.cli.client import CommandError
from relay.cli.commands import AddConfigOption, SubParsers
from relay.cluster.pg_copy import BeforeVerify, MigrateError, copy_database, open_embedded
from relay.cluster.pg_verify import MigrationReport
from relay.config import load_config, redact_url
from relay.identity.server_secret import ServerSecret, secret_path_for
from relay.storage.schema_entry import MigrationError
from relay.usage.retention import archive_dir_for

__all__ = ["add_migrate_commands", "run_migration"]

_PROBE_TIMEOUT_S = 0.5


def add_migrate_commands(commands: SubParsers, add_config_option: AddConfigOption) -> None:
    parser = commands.add_parser(
        "migrate", help="copy the embedded database into PostgreSQL and verify the copy"
    )
    add_config_option(parser)
    parser.add_argument("--to", required=True, metavar="URL", help="postgresql://… (empty)")
    parser.add_argument(
        "--from",
        dest="source",
        metavar="PATH",
        help="the SQLite database (default: the config's [server] database)",
    )
    parser.add_argument(
        "--secret",
        metavar="PATH",
        help="the server secret file that keys the audit chain (default: beside the database)",
    )
    parser.set_defaults(handler=_migrate)


def _migrate(args: argparse.Namespace) -> Any:
    if not args.to.startswith(("postgresql://", "postgres://")):
        raise CommandError("--to must be a postgresql:// URL")
    source = _source_path(args)
    _refuse_if_in_use(source)
    secret = Path(args.secret) if args.secret else secret_path_for(source)
    try:
        report = asyncio.run(run_migration(source, args.to, secret))
    except (OSError, sqlite3.Error) as exc:
        raise CommandError(f"migrate: {exc}") from exc
    except MigrateError as exc:
        if exc.report is not None:
            print(_render(exc.report, args.json))
            raise CommandError(
                f"the copy in {redact_url(args.to)} did not verify "
                f"({len(exc.report.problems)} problems); nothing was committed"
            ) from exc
        raise CommandError(str(exc)) from exc
    return msgspec.to_builtins(report) | {"ok": True} if args.json else report.summary()


def _render(report: MigrationReport, as_json: bool) -> str:
    if as_json:
        return json.dumps(msgspec.to_builtins(report) | {"ok": False}, indent=2, sort_keys=True)
    return report.summary()


def _source_path(args: argparse.Namespace) -> Path:
    """``--from``, else the config's database; a reachable listen address means in use."""
    config_file = Path(args.config)
    if args.source is None or config_file.is_file():
        config = load_config(config_file)
        if _answers(config.server.host, config.server.port):
            raise CommandError(
                f"a relay is listening on {config.server.host}:{config.server.port}: stop it "
                "first (a running relay keeps writing after the copy's snapshot)"
            )
        if args.source is None:
            return config.database_path
    return Path(args.source)


def _answers(host: str, port: int) -> bool:
    target = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    with contextlib.suppress(OSError), socket.create_connection((target, port), _PROBE_TIMEOUT_S):
        return True
    return False


def _refuse_if_in_use(database: Path) -> None:
    wal = database.with_name(database.name + "-wal")
    if wal.exists():
        raise CommandError(
            f"{wal} exists: a relay is using {database} (stop it first) or was stopped "
            "uncleanly (start and stop it once, so SQLite folds the log into the database)"
        )


def _audit_key(secret_file: Path) -> bytes | None:
    """The audit chain's key, read without creating a secret (ServerSecret would)."""
    try:
        text = secret_file.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return ServerSecret(bytes.fromhex(text)).subkey("audit")
    except ValueError as exc:
        raise MigrateError(f"{secret_file}: not a relay server secret ({exc})") from exc


async def run_migration(
    source: Path, url: str, secret_file: Path, *, before_verify: BeforeVerify | None = None
) -> MigrationReport:
    """Copy ``source`` into the database at ``url`` and verify it (``pg_copy``'s rule)."""
    try:
        import asyncpg  # the 'cluster' extra
    except ImportError as exc:
        raise MigrateError("relay migrate needs the 'cluster' extra (asyncpg)") from exc

    embedded = open_embedded(source)
    try:
        try:
            target = await asyncpg.connect(url)
        except asyncpg.PostgresError as exc:
            raise MigrateError(f"cannot connect to {redact_url(url)}: {exc}") from exc
        try:
            return await copy_database(
                embedded,
                target,
                audit_key=_audit_key(secret_file),
                before_verify=before_verify,
                archive_dir=archive_dir_for(source),
            )
        except asyncpg.PostgresError as exc:
            raise MigrateError(f"PostgreSQL refused the copy (rolled back): {exc}") from exc
        except MigrationError as exc:  # the target's schema: nothing was copied
            raise MigrateError(str(exc)) from exc
        finally:
            await target.close()
    finally:
        embedded.close()
