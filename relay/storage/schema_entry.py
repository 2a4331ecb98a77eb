"""One schema change for both engines: the entry type of ``relay.storage.schema_list``.

An entry carries its SQLite script (the embedded relay's, applied by
``relay.storage.migrations.apply_migrations``) and its PostgreSQL script (cluster mode's,
applied by ``relay.cluster.pg_schema.migrate``). Both appliers walk the same list and record
the same numbers, so ``schema_migrations`` says the same thing on either engine.

A change that concerns one engine only leaves the other script empty; whatever exists on
one engine and not the other (a table, a column, an index) is named in ``sqlite_only`` or
``postgresql_only``, with the reason in ``why_engines_differ``.
``tests/test_cluster_schema.py`` applies the whole list to both engines and fails on any
difference no entry names.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "EngineOnly",
    "Migration",
    "MigrationError",
    "check_numbering",
    "now_ms",
    "refuse_newer_database",
]


class EngineOnly(NamedTuple):
    """What one engine has and the other has not. Columns are ``table.column``; the
    columns and indexes of a table named in ``tables`` need not be listed again."""

    tables: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    indexes: tuple[str, ...] = ()


class Migration(NamedTuple):
    number: int
    name: str
    sqlite: str
    postgresql: str = ""
    sqlite_only: EngineOnly = EngineOnly()
    postgresql_only: EngineOnly = EngineOnly()
    # Required whenever a script is empty or something is engine-only.
    why_engines_differ: str = ""


class MigrationError(RuntimeError):
    """The database's schema cannot be brought to what this code expects."""


def check_numbering(migrations: Sequence[Migration]) -> None:
    numbers = [m.number for m in migrations]
    if numbers != list(range(1, len(numbers) + 1)):
        raise MigrationError(f"migrations must be numbered 1, 2, 3, ... in order; got {numbers}")


def refuse_newer_database(recorded: Iterable[int], migrations: Sequence[Migration]) -> None:
    """Running old code against a newer schema could silently corrupt money data."""
    known = max((m.number for m in migrations), default=0)
    newest = max(recorded, default=0)
    if newest > known:
        raise MigrationError(
            f"database schema is at migration {newest}, but this relay only knows up to "
            f"{known}: upgrade relay or restore a matching database"
        )


def now_ms() -> int:
    return time.time_ns() // 1_000_000
