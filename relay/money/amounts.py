"""Checks on the amounts and limits handed to the wallet: integers of micro-USD, never floats.

A bool is an ``int`` to Python, so it is refused by name: ``True`` must never move a cent.
"""

from __future__ import annotations

from relay.money.records import AccountMode

__all__ = ["check_adjustment", "check_limit", "check_micros", "check_signed_micros"]


def check_micros(name: str, value: int, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int of micro-USD")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'positive' if positive else 'non-negative'}")


def check_signed_micros(name: str, value: int) -> None:
    """Either sign is allowed (a balance, an adjustment)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int of micro-USD")


def check_adjustment(amount_micros: int) -> None:
    """An admin correction moves money one way or the other, never by nothing."""
    check_signed_micros("amount_micros", amount_micros)
    if amount_micros == 0:
        raise ValueError("an adjustment must not be zero")


def check_limit(mode: AccountMode, credit_limit_micros: int) -> None:
    check_micros("credit_limit_micros", credit_limit_micros)
    if mode == "prepaid" and credit_limit_micros != 0:
        raise ValueError("a prepaid account has no credit limit (credit_limit_micros must be 0)")
    if mode not in ("prepaid", "postpaid"):
        raise ValueError(f"mode must be 'prepaid' or 'postpaid', not {mode!r}")
