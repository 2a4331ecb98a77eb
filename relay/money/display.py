"""How money reads to people: the one formatter for the console, statements, receipts, CSV.

Two precisions, one rule each:

* balances, totals, limits and top-ups: whole cents with thousands separators
  (``$1,234.57``), rounded half up on the absolute value; an amount that is not zero
  but rounds to zero cents reads ``<$0.01`` so spend never looks like nothing;
* per-request amounts (a request's cost, a ledger charge): every significant digit down
  to the micro-dollar, at least two decimals (``$0.000025``, ``$1,234.50``).

Amounts stay integer micro-dollars until this point (docs/architecture.md §3): the string is built
from ``divmod``, never from a float. CSV cells use the same rounding without symbol or
grouping (``1234.57``, ``-0.000025``) so spreadsheets read them as numbers.
"""

from __future__ import annotations

from decimal import Decimal

__all__ = [
    "MINUS",
    "format_amount",
    "format_usd",
    "format_usd_exact",
    "format_usd_price",
    "usd_cell",
]

MICROS_PER_USD = 1_000_000
_MICROS_PER_CENT = 10_000
# U+2212: a real minus sign reads better than a hyphen beside a "$".
MINUS = "\u2212"


def _grouped(whole: int) -> str:
    return f"{whole:,}"


def _cents(micros: int) -> tuple[int, int]:
    """``abs(micros)`` rounded half up to whole cents, as (dollars, cents)."""
    cents = (abs(micros) + _MICROS_PER_CENT // 2) // _MICROS_PER_CENT
    return divmod(cents, 100)


def _exact_digits(micros: int) -> tuple[int, str]:
    whole, fraction = divmod(abs(micros), MICROS_PER_USD)
    return whole, f"{fraction:06d}".rstrip("0").ljust(2, "0")


def format_usd(micros: int | None) -> str:
    """2_500_000 → "$2.50", 1_234_567_890 → "$1,234.57", -5_000_000 → "−$5.00", 25 → "<$0.01"."""
    if micros is None:
        return "—"
    dollars, cents = _cents(micros)
    if micros and not dollars and not cents:
        return "<$0.01" if micros > 0 else f"{MINUS}<$0.01"
    sign = MINUS if micros < 0 else ""
    return f"{sign}${_grouped(dollars)}.{cents:02d}"


def format_usd_exact(micros: int | None) -> str:
    """A per-request amount: 25 → "$0.000025", 1_500_000 → "$1.50", -120 → "−$0.00012"."""
    if micros is None:
        return "—"
    whole, digits = _exact_digits(micros)
    sign = MINUS if micros < 0 else ""
    return f"{sign}${_grouped(whole)}.{digits}"


def format_amount(micros: int) -> str:
    """An exact amount without a currency symbol (receipts name the currency): "1,234.50"."""
    whole, digits = _exact_digits(micros)
    return f"{MINUS if micros < 0 else ''}{_grouped(whole)}.{digits}"


def usd_cell(micros: int, *, exact: bool = False) -> str:
    """A CSV cell: "1234.57" (a total) or "0.000101" (per request, ``exact``); ASCII minus."""
    sign = "-" if micros < 0 else ""
    if exact:
        whole, digits = _exact_digits(micros)
        return f"{sign}{whole}.{digits}"
    dollars, cents = _cents(micros)
    if not dollars and not cents:
        sign = ""
    return f"{sign}{dollars}.{cents:02d}"


def format_usd_price(price: Decimal) -> str:
    """A unit price, exact (prices are decimal strings, not micro-USD): "$0.1875", "$2.50"."""
    sign = MINUS if price < 0 else ""
    whole, _, fraction = f"{abs(price).normalize():f}".partition(".")
    return f"{sign}${_grouped(int(whole))}.{fraction.ljust(2, '0')}"
