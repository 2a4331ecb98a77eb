"""What the single writer thread runs: one transaction per batch of queued writes.

``run_batch`` commits a whole batch at once. Each write is isolated by a savepoint, so
one failing item rolls back only itself; but a savepoint per item costs about as much as
the item (~25 µs measured), so a batch of fire-and-forget writes (plain SQL by contract,
safe to run again) first runs without them and is replayed with them only if one fails.

An item's own error (a UNIQUE violation, a bug) is its outcome. A *storage fault* is not
the item's fault: the engine could not lock, grow, write or sync the file (``SQLITE_BUSY``,
``SQLITE_FULL``, ``SQLITE_IOERR``, ``SQLITE_READONLY``...). Then the whole transaction is
rolled back and ``StorageFault`` raised, so the caller retries the whole batch. SQLite
may already have rolled the transaction back by itself on such an error, which silently
destroys every savepoint: a savepoint is only rolled back to while the transaction is
still open, never after.

A write may leave part of its work to the end of the batch by returning a ``PerBatch``
share (the usage rows' daily rollup: one upsert per account, day and model per batch
instead of one per row). Without savepoints, the shares of the items are applied
together just before COMMIT, in the same transaction; if that fails for a reason of its
own, the batch is replayed with savepoints like any item's failure. With savepoints, each
item applies its own share inside its savepoint, exactly as if it had done it itself, so
a failing share rolls back only its item.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

__all__ = [
    "CONNECTION_PRAGMAS",
    "Outcome",
    "PerBatch",
    "StorageFault",
    "WriteFn",
    "bind_bools_and_none_directly",
    "is_storage_fault",
    "open_writer_connection",
    "run_batch",
]

WriteFn = Callable[[sqlite3.Connection], Any]

DEFAULT_BUSY_TIMEOUT_MS = 5000
CONNECTION_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    f"PRAGMA busy_timeout={DEFAULT_BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys=ON",
)

# Primary result codes that say "the storage could not do it", not "this write is wrong".
_FAULT_CODES = {
    5: "SQLITE_BUSY",
    6: "SQLITE_LOCKED",
    7: "SQLITE_NOMEM",
    8: "SQLITE_READONLY",
    10: "SQLITE_IOERR",
    11: "SQLITE_CORRUPT",
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
    15: "SQLITE_PROTOCOL",
}


class StorageFault(Exception):
    """The batch's transaction could not commit and was rolled back whole: retry it."""

    def __init__(
        self, reason: str, cause: BaseException | None = None, *, name: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause = cause
        self.name = name  # the primary result code, e.g. "SQLITE_FULL"

    @property
    def waits_it_out(self) -> bool:
        """Another connection holds the lock: it ends by itself, unlike a full or broken disk."""
        return self.name in ("SQLITE_BUSY", "SQLITE_LOCKED")


def _fault_name(exc: BaseException) -> str | None:
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return None
    return _FAULT_CODES.get(code & 0xFF)


def is_storage_fault(exc: BaseException) -> bool:
    return _fault_name(exc) is not None


def _fault(exc: BaseException) -> StorageFault:
    name = _fault_name(exc)
    return StorageFault(f"{name or type(exc).__name__}: {exc}", exc, name=name)


class PerBatch:
    """A write's share of work that is cheaper done once per batch (see the docstring).

    A subclass says how the shares of one batch are applied together; ``run_batch`` calls
    it once per batch with the shares of the items that succeeded, in the batch's
    transaction. The result must be what applying each share on its own would give.
    """

    __slots__ = ()

    @classmethod
    def apply_batch(cls, conn: sqlite3.Connection, shares: Sequence[Self]) -> None:
        raise NotImplementedError


@dataclass(slots=True)
class Outcome:
    value: Any = None
    error: Exception | None = None


def _null(value: None) -> None:
    return None


def bind_bools_and_none_directly() -> None:
    """Let sqlite3 bind ``bool`` and ``None`` parameters without its adapter search.

    sqlite3 binds only exact ``int``, ``float``, ``str`` and ``bytearray`` straight away;
    for anything else (a usage row's ``stream`` and ``usage_estimated`` flags, every NULL)
    it first looks for an adapter: a dict miss, then two attribute lookups that each build
    and clear an ``AttributeError``, about 3,800 instructions per parameter and four per
    usage write. A registered adapter is one dict hit. The values bound are the same as
    before: a ``bool`` was bound as the integer it is, ``None`` as NULL. Process-wide (the
    registry is sqlite3's), and the same for every connection, so registering twice is fine.
    """
    sqlite3.register_adapter(bool, int)
    sqlite3.register_adapter(type(None), _null)


def open_writer_connection(
    path: Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    bind_bools_and_none_directly()
    # Autocommit mode: the writer issues BEGIN IMMEDIATE / COMMIT itself. Two threads
    # may run batches on it (the writer's and the background one), one batch at a time.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    for pragma in CONNECTION_PRAGMAS:
        conn.execute(pragma)
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    return conn


def run_batch(
    conn: sqlite3.Connection,
    fns: list[WriteFn],
    *,
    replayable: bool = False,
    durable: bool = False,
) -> list[Outcome]:
    """Run every write in one transaction (in the writer thread); an outcome per write.

    Raises ``StorageFault`` (nothing committed) when the storage failed rather than an
    item. ``durable`` commits with ``synchronous=FULL``: the commit survives a power loss,
    not only a process crash.
    """
    if durable:
        _set_synchronous(conn, "FULL")
    try:
        if replayable:
            outcomes = _try_without_savepoints(conn, fns)
            if outcomes is not None:
                return outcomes
        _begin(conn)
        try:
            outcomes = [_run_in_savepoint(conn, fn) for fn in fns]
            _commit(conn)
        except BaseException:
            _rollback(conn)
            raise
        return outcomes
    finally:
        if durable:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA synchronous=NORMAL")


def _set_synchronous(conn: sqlite3.Connection, level: str) -> None:
    try:
        conn.execute(f"PRAGMA synchronous={level}")
    except sqlite3.Error as exc:
        raise _fault(exc) from exc


def _begin(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:  # busy past busy_timeout, read-only file, I/O error...
        _rollback(conn)
        raise _fault(exc) from exc


def _commit(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:  # SQLITE_FULL / IOERR while writing the WAL, BUSY...
        _rollback(conn)
        raise _fault(exc) from exc


def _rollback(conn: sqlite3.Connection) -> None:
    # The engine may have rolled back already (SQLITE_FULL, IOERR...); a failing ROLLBACK
    # on a broken file changes nothing we could act on: the batch is retried either way.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _try_without_savepoints(conn: sqlite3.Connection, fns: list[WriteFn]) -> list[Outcome] | None:
    """The whole batch committed, or None (rolled back) when one of its writes failed."""
    _begin(conn)
    try:
        try:
            values = [fn(conn) for fn in fns]
            _apply_shares(conn, values)
        except Exception as exc:
            if is_storage_fault(exc) or not conn.in_transaction:
                raise _fault(exc) from exc
            _rollback(conn)  # an item's own failure: the caller replays with savepoints
            return None
        _commit(conn)
    except BaseException:
        _rollback(conn)
        raise
    return [Outcome(value=value) for value in values]


def _apply_shares(conn: sqlite3.Connection, values: list[Any]) -> None:
    """Apply the items' ``PerBatch`` shares, one call per kind of share."""
    if len(values) == 1:  # a batch of one write (a quiet writer): no kinds to sort out
        if isinstance(values[0], PerBatch):
            type(values[0]).apply_batch(conn, values)
        return
    kinds: dict[type[PerBatch], list[PerBatch]] = {}
    for value in values:
        if isinstance(value, PerBatch):
            of_kind = kinds.get(type(value))
            if of_kind is None:
                kinds[type(value)] = [value]
            else:
                of_kind.append(value)
    for kind, shares in kinds.items():
        kind.apply_batch(conn, shares)


def _run_in_savepoint(conn: sqlite3.Connection, fn: WriteFn) -> Outcome:
    conn.execute("SAVEPOINT relay_write")
    try:
        value = fn(conn)
        if isinstance(value, PerBatch):
            type(value).apply_batch(conn, [value])
    except Exception as exc:
        if is_storage_fault(exc) or not conn.in_transaction:
            # The storage failed (or the engine rolled everything back, savepoints
            # included): nothing of this batch can commit; the writer retries it whole.
            raise _fault(exc) from exc
        # The item's own failure: undo only this item, report it to its owner.
        conn.execute("ROLLBACK TO relay_write")
        conn.execute("RELEASE relay_write")
        return Outcome(error=exc)
    conn.execute("RELEASE relay_write")
    return Outcome(value=value)
