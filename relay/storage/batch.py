"""What the single writer thread runs: one transaction per batch of queued writes.

``run_batch`` commits a whole batch at once. Each write is isolated by a savepoint, so
one failing item rolls back only itself; but a savepoint per item costs about as much as
the item (~25 µs measured), so a batch of fire-and-forget writes (plain SQL by contract,
safe to run again) first runs without them and is replayed with them only if one fails.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CONNECTION_PRAGMAS", "Outcome", "WriteFn", "open_writer_connection", "run_batch"]

WriteFn = Callable[[sqlite3.Connection], Any]

CONNECTION_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)


@dataclass(slots=True)
class Outcome:
    value: Any = None
    error: Exception | None = None


def open_writer_connection(path: Path) -> sqlite3.Connection:
    # Autocommit mode: the writer issues BEGIN IMMEDIATE / COMMIT itself.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for pragma in CONNECTION_PRAGMAS:
        conn.execute(pragma)
    return conn


def run_batch(
    conn: sqlite3.Connection, fns: list[WriteFn], *, replayable: bool = False
) -> list[Outcome]:
    """Run every write in one transaction (in the writer thread); an outcome per write."""
    if replayable:
        outcomes = _try_without_savepoints(conn, fns)
        if outcomes is not None:
            return outcomes
    conn.execute("BEGIN IMMEDIATE")
    try:
        outcomes = [_run_in_savepoint(conn, fn) for fn in fns]
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def _try_without_savepoints(conn: sqlite3.Connection, fns: list[WriteFn]) -> list[Outcome] | None:
    """The whole batch committed, or None (rolled back) when one of its writes failed."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        try:
            values = [fn(conn) for fn in fns]
        except Exception:  # an item's own failure: the caller replays with savepoints
            conn.execute("ROLLBACK")
            return None
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return [Outcome(value=value) for value in values]


def _run_in_savepoint(conn: sqlite3.Connection, fn: WriteFn) -> Outcome:
    conn.execute("SAVEPOINT relay_write")
    try:
        value = fn(conn)
    except Exception as exc:  # the item's own failure: undo only this item, report it to its owner
        conn.execute("ROLLBACK TO relay_write")
        conn.execute("RELEASE relay_write")
        return Outcome(error=exc)
    conn.execute("RELEASE relay_write")
    return Outcome(value=value)
