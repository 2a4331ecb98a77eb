"""CSV text for every export relay writes, with spreadsheet formulas neutralised.

Key names, ticket text and account names are chosen by users; a cell such as
``=cmd|' /C calc'!A0`` in a usage export would run as a formula when an operator opens
the file in a spreadsheet (CSV injection). Following OWASP's rule, a text cell that
starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading single
quote, which spreadsheets show as text. Numbers are left alone, including negative
amounts written as decimal strings (``-1.25``), so statements stay summable.

Every CSV writer in relay goes through ``csv_text``; nothing else calls ``csv.writer``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable

__all__ = ["csv_text", "safe_cell"]

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A plain decimal number is never a formula, even with a leading minus.
_DECIMAL = re.compile(r"-?\d+(\.\d+)?")


def safe_cell(value: object) -> object:
    """``value`` as it may go into a CSV cell: text that could start a formula is quoted."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_STARTS):
        return value
    if _DECIMAL.fullmatch(value):
        return value
    return "'" + value


def csv_text(rows: Iterable[Iterable[object]], *, line_end: str = "\r\n") -> str:
    """The rows as CSV text, each cell passed through ``safe_cell``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=line_end)
    writer.writerows([safe_cell(value) for value in row] for row in rows)
    return out.getvalue()
