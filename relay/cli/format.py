"""How the CLI shows admin API objects to a person: aligned tables and field lists."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from relay.money.pricing import micros_to_usd

__all__ = [
    "ACCOUNT",
    "ACCOUNT_LIST",
    "KEY",
    "KEY_LIST",
    "LEDGER",
    "WALLET",
    "Column",
    "format_fields",
    "format_table",
    "table",
    "view",
]


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Rows of columns, left-aligned, two spaces apart."""
    table = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    )


def format_fields(fields: Sequence[tuple[str, str]]) -> str:
    """``label:  value`` lines with the values aligned."""
    width = max((len(label) for label, _ in fields), default=0) + 1
    return "\n".join(f"{label + ':':<{width}}  {value}" for label, value in fields)


def _usd(micros: Any) -> str:
    return micros_to_usd(micros) if isinstance(micros, int) else "-"


def _limit(value: Any) -> str:
    """rpm, tpm, concurrency: 0 (or absent) means no limit."""
    return str(value) if isinstance(value, int) and value > 0 else "unlimited"


def _cap(micros: Any) -> str:
    return micros_to_usd(micros) if isinstance(micros, int) and micros > 0 else "unlimited"


def _period(value: Any) -> str:
    return "lifetime" if value in (None, "") else str(value)


def _text(value: Any) -> str:
    return "-" if value in (None, "") else str(value)


def _never(value: Any) -> str:
    return "never" if value in (None, "") else str(value)


def _names(values: Any) -> str:
    return ",".join(values) if values else "all"


# (label, field, formatter): one spec serves both the detail view and the table.
Column: TypeAlias = tuple[str, str, Callable[[Any], str]]

ACCOUNT: tuple[Column, ...] = (
    ("id", "id", _text),
    ("name", "name", _text),
    ("mode", "mode", _text),
    ("status", "status", _text),
    ("balance", "balance_micros", _usd),
    ("held", "held_micros", _usd),
    ("available", "available_micros", _usd),
    ("credit limit", "credit_limit_micros", _usd),
    ("rpm", "rpm", _limit),
    ("tpm", "tpm", _limit),
    ("concurrency", "concurrency", _limit),
    ("price multiplier", "price_multiplier", _text),
    ("budget", "budget_micros", _cap),
    ("budget period", "budget_period", _period),
    ("budget spent", "budget_spent_micros", _usd),
    ("budget resets", "budget_resets_at", _never),
    ("created", "created_at", _text),
)
ACCOUNT_LIST = ("id", "name", "mode", "status", "balance", "available", "credit limit")

KEY: tuple[Column, ...] = (
    ("id", "id", _text),
    ("key", "masked", _text),
    ("name", "name", _text),
    ("account", "account_id", _text),
    ("status", "status", _text),
    ("models", "models", _names),
    ("endpoints", "endpoints", _names),
    ("spent", "spent_micros", _usd),
    ("spend cap", "spend_cap_micros", _cap),
    ("cap period", "budget_period", _period),
    ("period use", "period_spent_micros", _usd),
    ("cap resets", "budget_resets_at", _never),
    ("rpm", "rpm", _limit),
    ("tpm", "tpm", _limit),
    ("concurrency", "concurrency", _limit),
    ("expires", "expires_at", _never),
    ("created", "created_at", _text),
    ("last used", "last_used_at", _never),
)
KEY_LIST = ("id", "name", "account", "key", "status", "spent", "spend cap", "expires")

WALLET: tuple[Column, ...] = (
    ("account", "account_id", _text),
    ("mode", "mode", _text),
    ("balance", "balance_micros", _usd),
    ("held", "held_micros", _usd),
    ("available", "available_micros", _usd),
    ("credit limit", "credit_limit_micros", _usd),
)

LEDGER: tuple[Column, ...] = (
    ("id", "id", _text),
    ("time", "created_at", _text),
    ("kind", "kind", _text),
    ("amount", "amount_micros", _usd),
    ("reference", "reference", _text),
    ("key", "key_id", _text),
    ("note", "note", _text),
)


def view(item: Mapping[str, Any], columns: Sequence[Column]) -> str:
    return format_fields([(label, show(item.get(field))) for label, field, show in columns])


def table(
    items: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    only: Sequence[str] | None = None,
    empty: str,
) -> str:
    if not items:
        return empty
    by_label = {column[0]: column for column in columns}
    chosen = list(columns) if only is None else [by_label[label] for label in only]
    return format_table(
        [label.upper() for label, _, _ in chosen],
        ([show(item.get(field)) for _, field, show in chosen] for item in items),
    )
