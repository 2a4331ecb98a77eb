"""Many rows in few statements: the writer's inserts, sized so the GIL is taken back rarely.

Python's sqlite3 releases the GIL around every statement step and must take it back after.
While the event loop keeps the GIL busy on another core, each taking back waits for the
loop's switch interval (5 ms): a writer that inserts row by row, or with ``executemany``
(one step per row), then commits at most a few hundred rows a second however short the
rows are, falls behind a loop serving a thousand requests a second, and relay ends up
refusing work as "storage unavailable" (measured: docs/performance.md, "The writer and
the GIL"). One multi-row ``INSERT ... VALUES (...), (...)`` is one step for all its rows.

Statements come in power-of-two sizes, so a batch of any size is at most a dozen
statements and every statement's text is one of a few, which sqlite3's statement cache
keeps prepared. Either every row of a call is inserted or the statement that failed
raised, as with row-by-row inserts inside the caller's transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import cache

__all__ = ["MAX_ROWS_PER_STATEMENT", "insert_rows"]

# 256 rows of 21 columns is 5,376 parameters: far below SQLite's limit (32,766 since
# 3.32), and a statement text of about 20 kB to prepare once.
MAX_ROWS_PER_STATEMENT = 256


@cache
def _statement(head: str, width: int, rows: int, tail: str) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES {', '.join([one] * rows)}{tail}"


def insert_rows(
    conn: sqlite3.Connection,
    head: str,
    rows: Sequence[Sequence[object]],
    *,
    tail: str = "",
) -> None:
    """Run ``head VALUES (?, ...), ... tail`` over ``rows``, in as few statements as sizes allow.

    ``head`` is ``INSERT INTO table (columns)``; ``tail`` an optional ``ON CONFLICT``
    clause. Every row has the same width. Rows are inserted in their order.
    """
    if not rows:
        return
    width = len(rows[0])
    if len(rows) == 1:
        conn.execute(_statement(head, width, 1, tail), rows[0])
        return
    start = 0
    left = len(rows)
    while left:
        size = min(MAX_ROWS_PER_STATEMENT, 1 << (left.bit_length() - 1))
        chunk = rows[start : start + size]
        conn.execute(_statement(head, width, size, tail), [value for row in chunk for value in row])
        start += size
        left -= size
