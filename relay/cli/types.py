"""argparse types for the management commands: values checked before any request is sent."""

from __future__ import annotations

import argparse
from datetime import date, datetime

from relay.money.pricing import parse_multiplier, usd_to_micros

__all__ = ["count", "expiry", "multiplier", "name_list", "positive", "usd_amount"]


def usd_amount(text: str) -> str:
    try:
        usd_to_micros(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def multiplier(text: str) -> str:
    try:
        parse_multiplier(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def count(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def positive(text: str) -> int:
    value = count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def name_list(text: str) -> list[str]:
    """ "a, b" → ["a", "b"]; "" → [] (which the API reads as "all")."""
    return [name.strip() for name in text.split(",") if name.strip()]


def expiry(text: str) -> str:
    for parse in (date.fromisoformat, datetime.fromisoformat):
        try:
            parse(text)
        except ValueError:
            continue
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD) or ISO timestamp")
