"""Form checking that forgives: every field's error at once, in words a person reads.

A handler parses its form into a value and a ``FieldErrors`` (field name → message,
in the form's order). The page is then rendered again with what was typed and each
message beside its field (``aria-invalid``, the first one focused), never a dead-end
error page and never a silently widened default.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import TypeVar

from relay.money.pricing import usd_to_micros

__all__ = ["FieldErrors", "parse_count", "parse_future_day", "parse_usd", "checked"]

T = TypeVar("T")
MAX_COUNT = 10**9
# Plain decimals only: "1e9" or "Infinity" is a typo here, not an amount.
_AMOUNT = re.compile(r"\d{1,12}(\.\d{1,6})?")


class FieldErrors(dict[str, str]):
    """Messages by field name, first error first (dicts keep insertion order)."""

    def add(self, field: str, message: str) -> None:
        self.setdefault(field, message)

    @property
    def first(self) -> str:
        return next(iter(self), "")

    @property
    def summary(self) -> str:
        count = len(self)
        if not count:
            return ""
        if count == 1:
            return "Nothing was saved: one field needs attention (marked below)."
        return f"Nothing was saved: {count} fields need attention (marked below)."


def checked(errors: FieldErrors, field: str, parse: Callable[[], T], default: T) -> T:
    """``parse()``'s value, or ``default`` with its ValueError noted against ``field``."""
    try:
        return parse()
    except ValueError as exc:
        errors.add(field, str(exc))
        return default


def parse_count(text: str, label: str, *, default: int, minimum: int = 0) -> int:
    text = text.strip()
    if not text:
        return default
    if not text.isdigit() or not minimum <= int(text) <= MAX_COUNT:
        raise ValueError(f"{label} must be a whole number from {minimum} to {MAX_COUNT:,}.")
    return int(text)


def parse_usd(text: str, label: str, *, allow_zero: bool = True) -> int:
    """A USD amount typed by a person ("5", "0.25", "1,000") as micro-USD."""
    text = text.strip().removeprefix("$").replace(",", "") or "0"
    if text.startswith("-"):
        raise ValueError(f"{label} must not be negative.")
    if not _AMOUNT.fullmatch(text):
        raise ValueError(
            f"{label} must be an amount in dollars such as 5 or 0.25 (digits, at most 6 decimals)."
        )
    micros = usd_to_micros(text)
    if not allow_zero and micros == 0:
        raise ValueError(f"{label} must be more than $0.")
    return micros


def parse_future_day(text: str, label: str, *, today: dt.date) -> int | None:
    """An optional YYYY-MM-DD from today on, as the end of that day (UTC) in unix ms."""
    text = text.strip()
    if not text:
        return None
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{label} must be a date such as {today.isoformat()}.") from None
    if day < today:
        raise ValueError(f"{label} is in the past: pick today or a later day.")
    return int(dt.datetime.combine(day, dt.time.max, tzinfo=dt.UTC).timestamp() * 1000)
