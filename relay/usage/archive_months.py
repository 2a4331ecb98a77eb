"""How retention cuts rows into monthly archives: the months of a range, and each
archive's name. Shared by the embedded job (``relay.usage.retention``) and PostgreSQL's
(``relay.cluster.pg_retention``)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from relay.money.invoices import month_bounds
from relay.usage.queries import RowRange

__all__ = ["Kind", "archive_base_name", "month_of", "month_ranges"]

Kind = Literal["usage", "audit"]


def month_of(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m")


def month_ranges(kind: Kind, oldest_ms: int, cutoff_ms: int, max_id: int) -> list[RowRange]:
    """Every month from the oldest row's to the cutoff (the last one cut at the cutoff)."""
    ranges: list[RowRange] = []
    start_ms = month_bounds(month_of(oldest_ms))[0]
    while start_ms < cutoff_ms:
        end_ms = month_bounds(month_of(start_ms))[1]
        ranges.append(RowRange(kind, start_ms, min(end_ms, cutoff_ms), max_id=max_id))
        start_ms = end_ms
    return ranges


def archive_base_name(rows: RowRange) -> str:
    """``usage-<account>-<YYYY-MM>`` or ``audit-<YYYY-MM>``; parts add ``-partN``."""
    month = month_of(rows.start_ms)
    if rows.table == "usage":
        account = re.sub(r"[^A-Za-z0-9_]", "_", rows.account_id or "_none")
        return f"usage-{account}-{month}"
    return f"audit-{month}"
